import 'reflect-metadata';
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as x509 from '@peculiar/x509';
import { missingTools } from '../../helpers/hw.ts';
import { tempToken, type TempToken } from '../../helpers/softhsm.ts';
import { SqliteStore } from '../../../src/store/sqlite.ts';
import { BackendRegistry } from '../../../src/signers/registry.ts';
import { KeyService } from '../../../src/keys/key-service.ts';
import { IdentityCa, type IssueRequest, type IssuedCertificate } from '../../../src/identity/identity-ca.ts';
import { Revocations } from '../../../src/revocation/revocations.ts';
import { silentLogger } from '../../../src/log.ts';
import { isSigilError } from '../../../src/errors.ts';
import type { AuditEvent, AuditSink } from '../../../src/audit/audit-sink.ts';

const skip = missingTools('softhsm', 'softhsm2-util', 'openssl');

const HOUR = 3_600_000;
const clock = { offsetMs: 0, now: () => new Date(Date.now() + clock.offsetMs) };

/** An AuditSink that keeps what it was given and can be made to fail. */
function memorySink(): AuditSink & { events: AuditEvent[]; down: boolean } {
  const s = {
    events: [] as AuditEvent[],
    down: false,
    ready: () => {
      if (s.down) throw Object.assign(new Error('down'), { code: 'AUDIT_UNAVAILABLE' });
    },
    record: async (e: AuditEvent) => {
      if (s.down) throw new Error('down');
      s.events.push(e);
    },
  };
  return s;
}

const request = (ekHash: string): IssueRequest => ({
  spki: generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ format: 'der', type: 'spki' }),
  ekHash,
  akName: '000b' + 'ab'.repeat(32),
  pcrSelection: 'sha256:0,1,2,3,4,5,6,7',
  pcrDigest: 'cd'.repeat(32),
  policy: 'ci',
  claims: { repository: 'acme/app' },
});

/** Runs openssl; its exit code and stdout and stderr together (it says "verify OK" on stderr). */
function openssl(args: string[]): { code: number; out: string } {
  const r = spawnSync('openssl', args, { encoding: 'utf8' });
  return { code: r.status ?? -1, out: `${r.stdout}${r.stderr}` };
}

describe('revocations and the identity ca crl', { skip: skip ?? false }, () => {
  let token: TempToken;
  let dir: string;
  let store: SqliteStore;
  let backends: BackendRegistry;
  let ca: IdentityCa;
  let sink: ReturnType<typeof memorySink>;
  let rev: Revocations;
  const ek1 = '11'.repeat(32);
  const ek2 = '22'.repeat(32);
  let certA: IssuedCertificate;
  let certB: IssuedCertificate;

  before(async () => {
    token = await tempToken('sigil');
    dir = mkdtempSync(join(tmpdir(), 'sigil-rev-'));
    const log = silentLogger();
    store = new SqliteStore(join(dir, 'sigil.db'));
    backends = new BackendRegistry({ hsm: token.config }, { log, production: false });
    const keys = new KeyService({ store, backends, defaultBackend: 'hsm', maxMessageBytes: 1 << 20, log, clock });
    ca = await IdentityCa.open({ keys, store, clock, log, trustDomain: 'sigil.test' });
    sink = memorySink();
    rev = new Revocations({ store, sink, clock, log, ca });
    certA = await ca.issue(request(ek1));
    certB = await ca.issue(request(ek2));
    writeFileSync(join(dir, 'ca.pem'), ca.caCertificatePem());
    writeFileSync(join(dir, 'a.pem'), certA.certificatePem);
    writeFileSync(join(dir, 'b.pem'), certB.certificatePem);
  });

  after(async () => {
    rev?.stop();
    await backends?.closeAll();
    store?.close();
    await token?.cleanup();
    rmSync(dir, { recursive: true, force: true });
  });

  test('issued certificates are recorded by canonical serial', () => {
    const canonical = BigInt(`0x${certA.serial}`).toString(16);
    const rec = store.getIssuedCertificate(canonical);
    assert.ok(rec);
    assert.equal(rec.ekHash, ek1);
    assert.equal(rec.san, certA.san);
    assert.equal(rec.notAfter.getTime(), certA.notAfter.getTime());
  });

  test('an empty crl verifies with openssl and lists nothing; both certificates pass -crl_check', async () => {
    const crl = await rev.crl();
    writeFileSync(join(dir, 'crl0.pem'), crl.pem);
    const text = openssl(['crl', '-in', join(dir, 'crl0.pem'), '-noout', '-text', '-CAfile', join(dir, 'ca.pem')]);
    assert.equal(text.code, 0, text.out);
    assert.match(text.out, /verify OK/);
    assert.match(text.out, /Version 2/);
    assert.match(text.out, /No Revoked Certificates/);
    for (const f of ['a.pem', 'b.pem']) {
      const v = openssl(['verify', '-crl_check', '-CAfile', join(dir, 'ca.pem'), '-CRLfile', join(dir, 'crl0.pem'), join(dir, f)]);
      assert.equal(v.code, 0, v.out);
    }
  });

  test('revoking by serial: audited, checked in O(1), and on the next crl with reason and number', async () => {
    const before = await rev.crl();
    // openssl prints serials upper-case with colons; both spellings name the same certificate.
    const spelled = certA.serial.toUpperCase().match(/../g)!.join(':');
    const r = await rev.revokeIdentity(spelled, 'keyCompromise', 'CN=test-admin');
    const canonical = BigInt(`0x${certA.serial}`).toString(16);
    assert.equal(r.serial, canonical);
    assert.equal(r.ekHash, ek1);
    assert.ok(rev.isIdentityRevoked(canonical));
    assert.ok(!rev.isIdentityRevoked(BigInt(`0x${certB.serial}`).toString(16)));
    // Written ahead: the intent (what was asked) is durable before the revocation, the outcome repeats its id.
    const [intent, outcome] = sink.events.slice(-2);
    assert.deepEqual({ ...intent, detail: { ...intent!.detail, intent: undefined } }, { who: 'CN=test-admin', act: 'identity.revoke', result: 'started', detail: { serial: spelled, reason: 'keyCompromise', intent: undefined } });
    assert.match(String(intent!.detail!.intent), /^[0-9a-f-]{36}$/);
    assert.deepEqual(outcome, { who: 'CN=test-admin', act: 'identity.revoke', result: 'ok', detail: { serial: canonical, reason: 'keyCompromise', ekHash: ek1, san: certA.san, notAfter: certA.notAfter.toISOString(), caVersion: 1, intent: intent!.detail!.intent } });

    const crl = await rev.crl();
    assert.ok(crl.number > before.number, 'the crl number grows');
    writeFileSync(join(dir, 'crl1.pem'), crl.pem);
    const text = openssl(['crl', '-in', join(dir, 'crl1.pem'), '-noout', '-text', '-CAfile', join(dir, 'ca.pem')]);
    assert.equal(text.code, 0, text.out);
    assert.match(text.out, /verify OK/);
    assert.match(text.out, new RegExp(`Serial Number: 0*${certA.serial.toUpperCase().replace(/^0+/, '')}`));
    assert.match(text.out, /Key Compromise/);
    assert.match(text.out, new RegExp(`X509v3 CRL Number:\\s*\\n\\s*${crl.number}`));
    assert.match(text.out, /X509v3 Authority Key Identifier/);

    const a = openssl(['verify', '-crl_check', '-CAfile', join(dir, 'ca.pem'), '-CRLfile', join(dir, 'crl1.pem'), join(dir, 'a.pem')]);
    assert.notEqual(a.code, 0);
    assert.match(a.out, /certificate revoked/);
    const b = openssl(['verify', '-crl_check', '-CAfile', join(dir, 'ca.pem'), '-CRLfile', join(dir, 'crl1.pem'), join(dir, 'b.pem')]);
    assert.equal(b.code, 0, b.out);

    // An independent parser agrees, and the signature verifies with the CA's public key.
    const parsed = new x509.X509Crl(crl.der);
    assert.equal(parsed.issuer, 'CN=sigil identity CA');
    assert.equal(parsed.entries.length, 1);
    assert.equal(parsed.entries[0]!.serialNumber.replace(/^0+/, ''), canonical);
    assert.equal(parsed.entries[0]!.reason, x509.X509CrlReason.keyCompromise);
    assert.equal(parsed.thisUpdate.getTime(), crl.thisUpdate.getTime());
    assert.equal(parsed.nextUpdate!.getTime(), crl.thisUpdate.getTime() + HOUR);
    assert.ok(await parsed.verify({ publicKey: new x509.X509Certificate(ca.caCertificateDer()) }));
  });

  test('refusals: unknown serial, twice revoked, bad input; each audited as refused', async () => {
    const n = sink.events.length;
    await assert.rejects(rev.revokeIdentity('abcdef', '', 'CN=a'), (e) => isSigilError(e, 'KEY_NOT_FOUND'));
    await assert.rejects(rev.revokeIdentity(certA.serial, '', 'CN=a'), (e) => isSigilError(e, 'FAILED_PRECONDITION') && /already revoked/.test(e.message));
    await assert.rejects(rev.revokeIdentity('not-hex', '', 'CN=a'), (e) => isSigilError(e, 'INVALID_ARGUMENT'));
    await assert.rejects(rev.revokeIdentity(certB.serial, 'certificateHold', 'CN=a'), (e) => isSigilError(e, 'INVALID_ARGUMENT') && /unknown revocation reason/.test(e.message));
    assert.deepEqual(sink.events.slice(n).map((e) => [e.act, e.result, e.reason]), [
      ['identity.revoke', 'started', undefined],
      ['identity.revoke', 'refused', 'KEY_NOT_FOUND'],
      ['identity.revoke', 'started', undefined],
      ['identity.revoke', 'refused', 'FAILED_PRECONDITION'],
      ['identity.revoke', 'started', undefined],
      ['identity.revoke', 'refused', 'INVALID_ARGUMENT'],
      ['identity.revoke', 'started', undefined],
      ['identity.revoke', 'refused', 'INVALID_ARGUMENT'],
    ]);
    // Each outcome names the intent just before it.
    const evs = sink.events.slice(n);
    for (let i = 0; i < evs.length; i += 2) assert.equal(evs[i + 1]!.detail!.intent, evs[i]!.detail!.intent);
    assert.ok(!rev.isIdentityRevoked(BigInt(`0x${certB.serial}`).toString(16)));
  });

  test('revoking a builder by ek hash, or one ak of it', async () => {
    assert.equal(rev.refuseEnrollment(ek2, '000b' + 'ab'.repeat(32)), null);
    await rev.revokeBuilder(ek2.toUpperCase(), 'cessationOfOperation', 'CN=test-admin');
    assert.ok(rev.isBuilderRevoked(ek2));
    assert.deepEqual(rev.refuseEnrollment(ek2, '000b' + 'ff'.repeat(32)), { reason: 'BUILDER_REVOKED', message: 'builder tpm revoked' });
    assert.deepEqual(rev.refuseBuilder({ serial: 'ff', ekHash: ek2, akName: 'x' }), { reason: 'BUILDER_REVOKED', message: 'builder tpm revoked' });
    const ek3 = '33'.repeat(32);
    const ak = '000b' + '44'.repeat(32);
    await rev.revokeBuilder(ek3, '', 'CN=test-admin', ak);
    assert.ok(rev.isBuilderRevoked(ek3, ak));
    assert.ok(!rev.isBuilderRevoked(ek3, '000b' + '55'.repeat(32)), 'another ak of that tpm may still enroll');
    assert.ok(!rev.isBuilderRevoked(ek3));
    await assert.rejects(rev.revokeBuilder(ek2, '', 'CN=a'), (e) => isSigilError(e, 'FAILED_PRECONDITION'));
    await assert.rejects(rev.revokeBuilder('12', '', 'CN=a'), (e) => isSigilError(e, 'INVALID_ARGUMENT'));
    const list = rev.list();
    assert.deepEqual(list.builders.map((b) => [b.ekHash, b.akName, b.reason]), [[ek2, null, 'cessationOfOperation'], [ek3, ak, 'unspecified']]);
  });

  test('a new Revocations over the same store knows every revocation (the sets come from the store)', () => {
    const again = new Revocations({ store, sink, clock, log: silentLogger(), ca });
    assert.ok(again.isIdentityRevoked(BigInt(`0x${certA.serial}`).toString(16)));
    assert.ok(again.isBuilderRevoked(ek2));
  });

  test('fail closed: with the audit log down a revocation is refused before it happens', async () => {
    sink.down = true;
    try {
      await assert.rejects(rev.revokeIdentity(certB.serial, '', 'CN=a'), (e) => isSigilError(e, 'AUDIT_UNAVAILABLE'));
    } finally {
      sink.down = false;
    }
    assert.ok(!rev.isIdentityRevoked(BigInt(`0x${certB.serial}`).toString(16)));
    // Nor in the store: a daemon started from it does not see the revocation either.
    const fresh = new Revocations({ store, sink, clock, log: silentLogger(), ca });
    assert.ok(!fresh.isIdentityRevoked(BigInt(`0x${certB.serial}`).toString(16)));
  });

  test('the crl is made anew past half its validity, and drops entries whose certificate expired', async () => {
    const short = new Revocations({ store, sink, clock, log: silentLogger(), ca, crlValidityMs: 10 * 60_000 });
    const first = await short.crl();
    assert.equal((await short.crl()).number, first.number, 'fresh: the same crl');
    clock.offsetMs += 6 * 60_000;
    const second = await short.crl();
    assert.ok(second.number > first.number);
    assert.equal(second.nextUpdate.getTime() - second.thisUpdate.getTime(), 10 * 60_000);
    assert.equal(new x509.X509Crl(second.der).entries.length, 1);
    // Past the revoked certificate's notAfter (15 minutes) the entry may leave.
    clock.offsetMs += 10 * 60_000;
    const third = await short.crl();
    assert.equal(new x509.X509Crl(third.der).entries.length, 0);
    clock.offsetMs = 0;
  });
});
