// EK CA CRLs (policy ekCrlFiles), with a real swtpm whose EK certificate swtpm_localca issued: the operator drops a
// CRL made by `openssl ca` with that CA's key next to the running sigild, and from the next request on the runner
// neither renews nor enrolls, with the reason, in the audit log. `sigild config validate` names an unusable CRL file.
import 'reflect-metadata';
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { stringify, parse } from 'yaml';
import { readFileSync } from 'node:fs';
import { status as Status, type ServiceError } from '@grpc/grpc-js';
import { signAsBuilder } from '../helpers/builder.ts';
import { rejectsWith } from '../helpers/assert.ts';
import { missingTools } from '../helpers/hw.ts';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.ts';
import { startSwtpm, withTpmClient, type Swtpm } from '../helpers/swtpm.ts';
import { rpc } from '../../src/cli/client.ts';
import { Attestor, type Identity } from '../../src/cli/agent/attestor.ts';
import type { AuditEntry } from '../../src/audit/entry.ts';
import { readEk } from '../../src/tpm/attestation-client.ts';
import { spkiOf } from '../../src/tpm/structures.ts';

const skip = missingTools('swtpm', 'swtpm_setup', 'openssl', 'softhsm', 'softhsm2-util');
const PCRS = [0, 1, 2, 3, 4, 5, 6, 7];
const ZEROS = Object.fromEntries(PCRS.map((i) => [String(i), '00'.repeat(32)]));
const run = promisify(execFile);
const bin = (name: string) => new URL(`../../bin/${name}.js`, import.meta.url).pathname;

describe('ek certificates revoked by their ca', { skip: skip ?? false }, () => {
  let sw: Swtpm;
  let td: TestDaemon;
  let dir: string;
  let crlFile: string;
  let ekPem: string;
  let ekHash: string;
  let serial: string;

  /** `openssl ca` over the swtpm local CA's intermediate (the EK certificates' issuer), with its database in `dir`. */
  const ca = (args: string[]) =>
    execFileSync('openssl', ['ca', '-config', join(dir, 'ca.cnf'), '-keyfile', sw.ekIssuer.keyFile, '-cert', sw.ekIssuer.certFile, ...args], { stdio: 'pipe' });
  const agent = (): Attestor => new Attestor({ addr: td.daemon.address, ca: td.ca, tpm: sw.tcti, policy: 'ci', ek: 'rsa', ak: 'ecc', claims: { repository: 'acme/widgets' }, lifetimeSeconds: 0 });
  const sign = async (id: Identity): Promise<void> => void (await signAsBuilder(td, id));
  const refused = (act: string, why: RegExp): AuditEntry | undefined =>
    td.auditEntries().find((e) => e.act === act && e.result === 'refused' && e.reason === 'PERMISSION_DENIED' && why.test(String((e.detail as { why?: string }).why)));

  before(async () => {
    if (skip) return;
    sw = await startSwtpm();
    dir = mkdtempSync(join(tmpdir(), 'sigil-ekcrl-'));
    const ek = await withTpmClient(sw, async (tpm) => {
      const e = await readEk(tpm, 'rsa');
      await tpm.flushContext(e.handle);
      return e;
    });
    assert.ok(ek.cert, 'swtpm has an rsa ek certificate');
    ekHash = createHash('sha256').update(spkiOf(ek.public)).digest('hex');
    ekPem = join(dir, 'ek.pem');
    writeFileSync(join(dir, 'ek.der'), ek.cert);
    execFileSync('openssl', ['x509', '-inform', 'DER', '-in', join(dir, 'ek.der'), '-out', ekPem]);
    serial = execFileSync('openssl', ['x509', '-in', ekPem, '-noout', '-serial'], { encoding: 'utf8' }).trim().replace(/^serial=/, '');
    writeFileSync(join(dir, 'index.txt'), '');
    writeFileSync(join(dir, 'crlnumber'), '01\n');
    writeFileSync(join(dir, 'ca.cnf'), `[ca]\ndefault_ca = c\n[c]\ndatabase = ${join(dir, 'index.txt')}\ncrlnumber = ${join(dir, 'crlnumber')}\ndefault_md = sha256\ndefault_crl_days = 30\n`);
    // The vendor's CRL before it revoked anything: PEM.
    crlFile = join(dir, 'ek-ca.crl');
    ca(['-gencrl', '-out', crlFile]);
    td = await startTestDaemon({
      extraConfig: {
        identity: { trustDomain: 'sigil.test' },
        authorization: { builders: [{ keys: ['ci/*'], identities: [{ san: 'spiffe://sigil.test/builder/tpm/*' }] }] },
        attestation: { policies: { ci: { pcrs: { bank: 'sha256', select: PCRS }, golden: [ZEROS], ekCaFiles: [sw.ekCaFile], ekCrlFiles: [crlFile] } } },
      },
    });
    await rpc.createKey(td.client('admin'), { name: 'ci/provenance', algorithm: 1, backend: '' });
  });
  after(async () => {
    await td?.stop();
    await sw?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test('the ca revokes the ek certificate: renewal and a new enrollment are refused with serial and reason, and audited', async () => {
    const a = agent();
    const id = await a.enroll();
    const renewed = await a.renew(id);
    await sign(renewed);

    // The vendor revokes the EK certificate; the operator drops its new CRL (DER this time) over the old file.
    ca(['-revoke', ekPem, '-crl_reason', 'keyCompromise']);
    ca(['-gencrl', '-out', join(dir, 'new.crl')]);
    execFileSync('openssl', ['crl', '-in', join(dir, 'new.crl'), '-outform', 'DER', '-out', crlFile]);

    const why = `ek certificate revoked by its ca (serial ${serial}, reason keyCompromise)`;
    // The identity itself lasts until it expires: renewal applies EK trust.
    await sign(renewed);
    await rejectsWith(a.renew(renewed), Status.PERMISSION_DENIED, new RegExp(`^ek no longer trusted: ${why.replace(/[()]/g, '\\$&')}$`));
    const r = refused('renewal', /^ek no longer trusted: ek certificate revoked by its ca/);
    assert.ok(r, 'the refused renewal is in the audit log');
    assert.equal((r.detail as { ekHash?: string }).ekHash, ekHash);

    await rejectsWith(agent().enroll(), Status.PERMISSION_DENIED, new RegExp(`^${why.replace(/[()]/g, '\\$&')}$`));
    assert.ok(refused('enrollment', /^ek certificate revoked by its ca \(serial [0-9A-F]+, reason keyCompromise\)$/), 'the refused enrollment is in the audit log');
  });

  test('a crl the ca did not sign: config validate names the file, a running sigild refuses rather than skip it', async () => {
    // Same issuer name, another key: a self-signed "swtpm-localca" signs a CRL.
    const forgedKey = join(dir, 'forged.key');
    const forgedCert = join(dir, 'forged.pem');
    const subject = '/CN=swtpm-localca';
    execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', forgedKey, '-subj', subject, '-days', '30', '-out', forgedCert], { stdio: 'pipe' });
    execFileSync('openssl', ['ca', '-config', join(dir, 'ca.cnf'), '-keyfile', forgedKey, '-cert', forgedCert, '-gencrl', '-out', crlFile], { stdio: 'pipe' });

    const cfg = parse(readFileSync(td.configFile, 'utf8')) as Record<string, unknown>;
    const file = join(dir, 'validate.yaml');
    writeFileSync(file, stringify(cfg));
    const out = await run(process.execPath, [bin('sigild'), 'config', 'validate', file]).then(
      () => assert.fail('config validate accepted a forged crl'),
      (e: { code: number; stderr: string }) => e,
    );
    assert.equal(out.code, 2);
    assert.match(out.stderr, new RegExp(`attestation\\.policies\\.ci\\.ekCrlFiles\\.0: ${crlFile.replace(/[.]/g, '\\.')}: the crl signature does not verify with the key of ek ca CN=swtpm-localca`));

    // Running: the enrollment fails closed with a generic error; the log has the file and why.
    await assert.rejects(agent().enroll(), (e: ServiceError) => Status[e.code] === Status[Status.INTERNAL]);
    assert.ok(
      td.logs().some((l) => JSON.stringify(l).includes('the crl signature does not verify') && JSON.stringify(l).includes(crlFile)),
      'the log names the file and the problem',
    );
  });
});
