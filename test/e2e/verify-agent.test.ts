// sigil-agent sign --dsse: an attested builder signs provenance as a DSSE envelope through its agent, and a
// consumer verifies it offline with sigilctl verify --dsse against the trusted root.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { missingTools } from '../helpers/hw.ts';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.ts';
import { builderConfig } from '../helpers/builder.ts';
import { startSwtpm, type Swtpm } from '../helpers/swtpm.ts';
import { rpc } from '../../src/cli/client.ts';
import { Agent } from '../../src/cli/agent/agent.ts';

const run = promisify(execFile);
const root = new URL('../..', import.meta.url).pathname;
const skip = missingTools('swtpm', 'swtpm_setup', 'openssl', 'softhsm');

let sw: Swtpm;
let td: TestDaemon;

before(async () => {
  if (skip) return;
  sw = await startSwtpm();
  td = await startTestDaemon({
    extraConfig: {
      ...builderConfig(sw.ekCaFile),
      // Small, so an Ed25519 file over it needs no large file.
      limits: { maxMessageBytes: 1024 * 1024 },
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
    const v = await run(process.execPath, [join(root, 'bin/sigilctl.js'), 'verify', '--dsse', file('prov.dsse.json'), '--key', 'ci/provenance', '--payload-type', 'application/vnd.in-toto+json', '--payload-out', file('verified.json'), '--trusted-root', file('root.json'), '--root-sig', file('root.sig'), '--root-key', file('pin.pem')], { env: { PATH: process.env.PATH } });
    assert.match(v.stdout, /verified the dsse envelope .*: signed by ci\/provenance@1 \(ECDSA_P256_SHA256\), valid now/);
    assert.deepEqual(readFileSync(file('verified.json')), statement);
  } finally {
    await agent.stop();
  }
});

test('sigil-agent status prints the identity, --cert-out writes the builder certificate openssl reads; sign checks --out and the size first', { skip: skip ?? false }, async () => {
  const agent = new Agent({ addr: td.address, ca: td.ca, tpm: sw.tcti, policy: 'ci', ek: 'rsa', ak: 'ecc', claims: {}, lifetimeSeconds: 0 }, () => {});
  const sock = join(td.dir, 'agent2', 'agent.sock');
  const file = (n: string): string => join(td.dir, n);
  const agentCli = async (args: string[]): Promise<{ stdout: string; stderr: string; code: number }> =>
    run(process.execPath, [join(root, 'bin/sigil-agent.js'), ...args, '--socket', sock]).then(
      (r) => ({ ...r, code: 0 }),
      (e: { stdout: string; stderr: string; code: number }) => ({ stdout: e.stdout, stderr: e.stderr, code: e.code }),
    );
  try {
    const id = await agent.enroll();
    await agent.listen(sock);
    const text = await agentCli(['status', '--cert-out', file('builder.pem')]);
    assert.equal(text.code, 0, text.stderr);
    assert.equal(text.stdout, `spiffe id:   ${id.spiffeId}\nnot before:  ${id.notBefore.toISOString()}\nnot after:   ${id.notAfter.toISOString()}\ncertificate written to ${file('builder.pem')}\n`);
    const san = (await run('openssl', ['x509', '-in', file('builder.pem'), '-noout', '-ext', 'subjectAltName'])).stdout;
    assert.match(san, new RegExp(`URI:${id.spiffeId.replace(/[/.]/g, '\\$&')}\\s*$`));
    const json = await agentCli(['status', '-o', 'json']);
    assert.equal(json.code, 0, json.stderr);
    const j = JSON.parse(json.stdout) as { spiffeId: string; certificatePem: string };
    assert.equal(j.spiffeId, id.spiffeId);
    assert.equal(j.certificatePem, readFileSync(file('builder.pem'), 'utf8'));

    // sign: a bad --out is refused before anything is signed (no sign entry in the audit log), naming --out.
    const signs = (): number => td.auditEntries().filter((e) => e.act === 'sign').length;
    const before = signs();
    writeFileSync(file('art.bin'), 'artifact');
    const badOut = await agentCli(['sign', '--key', 'ci/provenance', '--file', file('art.bin'), '--out', file('none/art.sig')]);
    assert.deepEqual({ code: badOut.code, stderr: badOut.stderr }, { code: 2, stderr: `sigil-agent: cannot write ${file('none/art.sig')} (--out): no such file or directory\n` });
    const badDsse = await agentCli(['sign', '--dsse', '--key', 'ci/provenance', '--file', file('art.bin'), '--out', td.dir]);
    assert.deepEqual({ code: badDsse.code, stderr: badDsse.stderr }, { code: 2, stderr: `sigil-agent: cannot write ${td.dir} (--out): it is a directory\n` });
    // An Ed25519 file over sigild's limit: refused before it is read or sent.
    await rpc.createKey(td.client('admin'), { name: 'ci/firmware', algorithm: 5, backend: '' });
    writeFileSync(file('fw.img'), Buffer.alloc(1024 * 1024 + 1));
    const big = await agentCli(['sign', '--key', 'ci/firmware', '--file', file('fw.img'), '--out', file('fw.sig')]);
    assert.deepEqual(
      { code: big.code, stderr: big.stderr },
      { code: 2, stderr: `sigil-agent: --file ${file('fw.img')} is ${1024 * 1024 + 1} bytes: an Ed25519 key signs the whole file and sigild takes at most ${1024 * 1024} bytes (limits.maxMessageBytes); use an ECDSA or RSA key for large images\n` },
    );
    assert.equal(signs(), before, 'nothing was signed');
    assert.ok(!existsSync(file('fw.sig')));
    assert.deepEqual(readdirSync(td.dir).filter((f) => f.endsWith('.tmp')), []);
    const ok = await agentCli(['sign', '--key', 'ci/provenance', '--file', file('art.bin'), '--out', file('art.sig')]);
    assert.equal(ok.code, 0, ok.stderr);
    assert.equal(signs(), before + 1);
    // With -o json every error is a json document on stdout: sigild's refusal with its reason, a usage mistake too.
    await rpc.createKey(td.client('admin'), { name: 'rel/other', algorithm: 1, backend: '' });
    const refused = await agentCli(['sign', '-o', 'json', '--key', 'rel/other', '--file', file('art.bin'), '--out', file('other.sig')]);
    assert.equal(refused.code, 1);
    const r = JSON.parse(refused.stdout) as { error: { code: string; reason?: string; message: string } };
    assert.deepEqual([r.error.code, r.error.reason], ['PERMISSION_DENIED', 'PERMISSION_DENIED']);
    assert.match(r.error.message, /may not use key rel\/other/);
    const usage = await agentCli(['sign', '-o', 'json', '--key', 'ci/provenance', '--file', file('art.bin')]);
    assert.equal(usage.code, 2);
    assert.deepEqual(JSON.parse(usage.stdout), { error: { code: 'INVALID_ARGUMENT', message: "required option '--out <path>' not specified (see --help)" } });
  } finally {
    await agent.stop();
  }
});
