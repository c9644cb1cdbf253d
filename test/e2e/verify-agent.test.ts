// sigil-agent sign --dsse: an attested builder signs provenance as a DSSE envelope through its agent, and a
// consumer verifies it offline with sigilctl verify --dsse against the trusted root.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { missingTools } from '../helpers/hw.ts';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.ts';
import { startSwtpm, type Swtpm } from '../helpers/swtpm.ts';
import { rpc } from '../../src/cli/client.ts';
import { Agent } from '../../src/cli/agent/agent.ts';

const run = promisify(execFile);
const root = new URL('../..', import.meta.url).pathname;
const skip = missingTools('swtpm', 'swtpm_setup', 'openssl', 'softhsm');
const PCRS = [0, 1, 2, 3, 4, 5, 6, 7];

let sw: Swtpm;
let td: TestDaemon;

before(async () => {
  if (skip) return;
  sw = await startSwtpm();
  td = await startTestDaemon({
    extraConfig: {
      identity: { trustDomain: 'sigil.test' },
      authorization: { builders: [{ keys: ['ci/*'], identities: [{ san: 'spiffe://sigil.test/builder/tpm/*', policy: 'ci' }] }] },
      attestation: { policies: { ci: { ekCaFiles: [sw.ekCaFile], pcrs: { bank: 'sha256', select: PCRS }, golden: [Object.fromEntries(PCRS.map((i) => [String(i), '00'.repeat(32)]))] } } },
    },
  });
  await rpc.createKey(td.client('admin'), { name: 'ci/provenance', algorithm: 1, backend: '' });
});

after(async () => {
  await td?.stop();
  await sw?.stop();
});

test('sigil-agent sign --dsse through an attested builder writes an envelope sigilctl verify --dsse accepts offline', { skip: skip ?? false }, async () => {
  const agent = new Agent({ addr: td.address, ca: td.ca, tpm: sw.tcti, policy: 'ci', ek: 'rsa', ak: 'ecc', claims: { repository: 'acme/widgets' }, lifetimeSeconds: 0 }, () => {});
  const sock = join(td.dir, 'agent', 'agent.sock');
  const file = (n: string): string => join(td.dir, n);
  try {
    await agent.enroll();
    await agent.listen(sock);
    const statement = Buffer.from(JSON.stringify({ _type: 'https://in-toto.io/Statement/v1', subject: [{ name: 'widget.tar', digest: { sha256: '00'.repeat(32) } }], predicateType: 'https://slsa.dev/provenance/v1', predicate: { buildDefinition: {} } }));
    writeFileSync(file('statement.json'), statement);
    const { stdout } = await run(process.execPath, [join(root, 'bin/sigil-agent.js'), 'sign', '--dsse', '--key', 'ci/provenance', '--file', file('statement.json'), '--out', file('prov.dsse.json'), '--socket', sock]);
    assert.match(stdout, /signed .*statement\.json \(\d+ bytes, application\/vnd\.in-toto\+json\) with ci\/provenance@1; dsse envelope written to/);
    const env = JSON.parse(readFileSync(file('prov.dsse.json'), 'utf8')) as { payload: string; signatures: Array<{ keyid: string }> };
    assert.deepEqual(Buffer.from(env.payload, 'base64'), statement);
    assert.equal(env.signatures[0]!.keyid, 'ci/provenance@1');

    // The consumer: the trusted root fetched once (trust on first use here), then verified offline.
    const ctlEnv = { ...process.env, SIGIL_ADDR: td.address, SIGIL_CACERT: td.ca };
    await run(process.execPath, [join(root, 'bin/sigilctl.js'), 'trusted-root', 'get', '--pub', file('pin.pem'), '--out', file('root.json'), '--sig', file('root.sig')], { env: ctlEnv });
    const v = await run(process.execPath, [join(root, 'bin/sigilctl.js'), 'verify', '--dsse', file('prov.dsse.json'), '--payload-type', 'application/vnd.in-toto+json', '--payload-out', file('verified.json'), '--trusted-root', file('root.json'), '--root-sig', file('root.sig'), '--root-key', file('pin.pem')], { env: { PATH: process.env.PATH } });
    assert.match(v.stdout, /verified the dsse envelope .*: signed by ci\/provenance@1 \(ECDSA_P256_SHA256\), valid now/);
    assert.deepEqual(readFileSync(file('verified.json')), statement);
  } finally {
    await agent.stop();
  }
});
