import assert from 'node:assert/strict';
import { createHash, generateKeyPairSync, X509Certificate } from 'node:crypto';
import { test } from 'node:test';
import { ekHash } from '../../../src/attest/ek.ts';
import { EkCrls } from '../../../src/attest/ek-crl.ts';
import { MemoryEnrollmentRecords } from '../../../src/attest/enrollment-records.ts';
import type { AttestationPolicy } from '../../../src/attest/policy.ts';
import { akQualifiedName, Verifier } from '../../../src/attest/verifier.ts';
import { isSigilError } from '../../../src/errors.ts';
import { TPM_ALG, TPMA_OBJECT } from '../../../src/tpm/constants.ts';
import { objectName, spkiOf } from '../../../src/tpm/structures.ts';
import { OpensslCas, signCrl } from './ek-certs.ts';
import { softActivate, softAk, softEk, softQuote, type SoftKey } from './soft-tpm.ts';

const SELECT = [0, 1, 2, 3, 4, 5, 6, 7];
const SEL = { hash: TPM_ALG.SHA256, pcrs: SELECT };
const values = (fill: number) => new Map(SELECT.map((p) => [p, Buffer.alloc(32, fill)]));

function clock() {
  let t = Date.UTC(2030, 0, 1);
  return { now: () => new Date(t), advance: (ms: number) => (t += ms) };
}

/** A software TPM: EK, AK, and the quote it makes for a nonce. */
class SoftTpm {
  ek = softEk('rsa');
  ak: SoftKey = softAk('ecdsa');
  pcrs = values(0);
  resetCount = 5;
  restartCount = 1;
  clock = 1000n;
  safe = true;
  /** The AK's parent as the quote's qualifiedSigner shows it: the EK unless a test says otherwise. */
  parent: SoftKey | null = null;

  quote(nonce: Buffer, spki: Buffer) {
    const sorted = SELECT.map((p) => this.pcrs.get(p)!);
    const q = softQuote(this.ak, {
      extraData: createHash('sha256').update(nonce).update(spki).digest(),
      selection: [SEL],
      values: sorted,
      resetCount: this.resetCount,
      restartCount: this.restartCount,
      clock: this.clock,
      safe: this.safe,
      qualifiedSigner: akQualifiedName((this.parent ?? this.ek).pub, this.ak.pub),
    });
    return { quote: q.attest, quoteSignature: q.signature, pcrValues: new Map(this.pcrs) };
  }
}

function setup<R extends MemoryEnrollmentRecords = MemoryEnrollmentRecords>(tpm: SoftTpm, over: Partial<AttestationPolicy> = {}, records: R = new MemoryEnrollmentRecords() as R) {
  const c = clock();
  const p: AttestationPolicy = {
    name: 'ci',
    ekCas: [],
    ekHashes: new Set([ekHash(spkiOf(tpm.ek.pub))]),
    pcrs: { bank: 'sha256', hashAlg: TPM_ALG.SHA256, select: SELECT },
    golden: [values(9), values(0)],
    akAlgorithms: new Set(['rsa', 'ecc']),
    ...over,
  };
  const v = new Verifier({ policies: new Map([['ci', p]]), clock: c, nonceTtlMs: 60_000, records });
  return { v, c, records };
}

const spki = () => generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ type: 'spki', format: 'der' });
/** A PERMISSION_DENIED with message `m` and reason `reason` (the code itself unless the refusal names one). */
const denied = (m: string, reason = 'PERMISSION_DENIED') => (e: unknown) => isSigilError(e, 'PERMISSION_DENIED') && e.message === m && e.reason === reason;
/** The refusal an enrollment gets when the TPM's `what` went backwards: what happened and how an admin lets it in again. */
const wentBackwards = (what: string, ekHash: string) =>
  `tpm ${what} went backwards (the tpm was cleared, or its state rolled back): if this runner was re-imaged, an admin can let it enroll again with sigilctl enrollment forget ${ekHash}`;

async function enroll(v: Verifier, tpm: SoftTpm, tamper: (ev: Parameters<Verifier['finish']>[0]) => void = () => {}) {
  const ch = await v.begin({ policy: 'ci', ekPublic: tpm.ek.pub.raw, akPublic: tpm.ak.pub.raw });
  const id = spki();
  const ev = { nonce: ch.nonce, activatedSecret: softActivate(tpm.ek, objectName(tpm.ak.pub), ch), identitySpki: id, ...tpm.quote(ch.nonce, id) };
  tamper(ev);
  return v.finish(ev);
}

test('a software enrollment passes (second golden set) and is recorded', async () => {
  const tpm = new SoftTpm();
  const { v, records } = setup(tpm);
  const a = await enroll(v, tpm);
  assert.equal(a.ekHash, ekHash(spkiOf(tpm.ek.pub)));
  assert.equal(a.akName, objectName(tpm.ak.pub).toString('hex'));
  assert.deepEqual(a.akPublic, tpm.ak.pub.raw);
  const rec = await records.get(a.ekHash);
  assert.equal(rec?.resetCount, 5);
  assert.equal(rec?.restartCount, 1);
  assert.equal(rec?.updatedAt.getTime(), Date.UTC(2030, 0, 1));
});

test('begin checks the policy, then the ek, then the ak', async () => {
  const tpm = new SoftTpm();
  const { v } = setup(tpm);
  const badAk = softAk('ecdsa', (a) => void (a.objectAttributes &= ~TPMA_OBJECT.restricted)).pub.raw;
  await assert.rejects(v.begin({ policy: 'none', ekPublic: softEk().pub.raw, akPublic: badAk }), (e: unknown) => isSigilError(e, 'FAILED_PRECONDITION') && e.message === 'no attestation policy none');
  await assert.rejects(v.begin({ policy: 'ci', ekPublic: softEk().pub.raw, akPublic: badAk }), denied('ek not on the allowlist'));
  await assert.rejects(v.begin({ policy: 'ci', ekPublic: tpm.ek.pub.raw, akPublic: badAk }), denied('ak is not restricted'));
  await assert.rejects(v.begin({ policy: 'ci', ekPublic: tpm.ek.pub.raw, akPublic: Buffer.from([1, 2, 3]) }), (e: unknown) => isSigilError(e, 'INVALID_ARGUMENT'));
});

test('refusals record nothing: wrong secret, expired nonce, golden mismatch', async () => {
  const tpm = new SoftTpm();
  const { v, c, records } = setup(tpm);
  const hash = ekHash(spkiOf(tpm.ek.pub));
  await assert.rejects(enroll(v, tpm, (ev) => void (ev.activatedSecret = Buffer.alloc(32))), denied('activated secret does not match the credential'));
  await assert.rejects(enroll(v, tpm, (ev) => void (ev.activatedSecret = Buffer.alloc(0))), denied('activated secret does not match the credential'));
  await assert.rejects(enroll(v, tpm, () => c.advance(60_000)), (e: unknown) => isSigilError(e, 'FAILED_PRECONDITION') && e.message === 'nonce expired');
  tpm.pcrs.set(3, Buffer.alloc(32, 9));
  await assert.rejects(enroll(v, tpm), denied("pcr values match none of the policy's golden sets"));
  tpm.pcrs.set(3, Buffer.alloc(32, 7));
  await assert.rejects(enroll(v, tpm), denied("pcr values match none of the policy's golden sets (pcr 3 match no set)"));
  await assert.rejects(enroll(v, tpm, (ev) => void (ev.identitySpki = Buffer.from('not a key'))), (e: unknown) => isSigilError(e, 'INVALID_ARGUMENT'));
  assert.equal(await records.get(hash), undefined);
});

test('monotonicity per ek; renewal with the enrolled ak only', async () => {
  const tpm = new SoftTpm();
  const { v, records } = setup(tpm);
  const a = await enroll(v, tpm);
  // Equal counters pass; restartCount may grow; a new resetCount resets the restart counter.
  await enroll(v, tpm);
  tpm.restartCount = 4;
  await enroll(v, tpm);
  tpm.resetCount = 6;
  tpm.restartCount = 0;
  await enroll(v, tpm);
  tpm.restartCount = 0;
  tpm.resetCount = 5;
  await assert.rejects(enroll(v, tpm), denied(wentBackwards('resetCount', a.ekHash), 'TPM_CLOCK_WENT_BACKWARDS'));
  assert.equal((await records.get(a.ekHash))!.resetCount, 6);
  // At renewal the short message stays: sigil-agent then enrolls, and that refusal says what to do.
  const nb = await v.renewChallenge({ ekHash: a.ekHash, akName: a.akName });
  const idb = spki();
  await assert.rejects(v.renew({ nonce: nb, identitySpki: idb, ...tpm.quote(nb, idb) }), denied('tpm resetCount went backwards', 'TPM_CLOCK_WENT_BACKWARDS'));
  tpm.resetCount = 6;
  tpm.restartCount = 2;
  await enroll(v, tpm);
  tpm.restartCount = 1;
  await assert.rejects(enroll(v, tpm), denied(wentBackwards('restartCount', a.ekHash), 'TPM_CLOCK_WENT_BACKWARDS'));
  tpm.restartCount = 2;

  tpm.resetCount = 6;
  const nonce = await v.renewChallenge({ ekHash: a.ekHash, akName: a.akName });
  const id = spki();
  const r = await v.renew({ nonce, identitySpki: id, ...tpm.quote(nonce, id) });
  assert.equal(r.akName, a.akName);
  // A renewal nonce does not finish an enrollment, and the reverse.
  const n2 = await v.renewChallenge({ ekHash: a.ekHash, akName: a.akName });
  await assert.rejects(v.finish({ nonce: n2, activatedSecret: Buffer.alloc(32), identitySpki: id, ...tpm.quote(n2, id) }), (e: unknown) => isSigilError(e, 'FAILED_PRECONDITION'));
  // Re-enrolling with a new AK replaces the record; the old AK gets no challenge.
  tpm.ak = softAk('rsassa');
  const b = await enroll(v, tpm);
  assert.notEqual(b.akName, a.akName);
  await assert.rejects(v.renewChallenge({ ekHash: a.ekHash, akName: a.akName }), denied('no enrollment for this ek and ak'));
  await assert.rejects(v.renewChallenge({ ekHash: '00'.repeat(32), akName: a.akName }), denied('no enrollment for this ek (never made, or forgotten by an admin); enroll again', 'ENROLL_AGAIN'));
  // A quote by another key over a renewal nonce fails the signature.
  const n3 = await v.renewChallenge({ ekHash: b.ekHash, akName: b.akName });
  const wrong = new SoftTpm();
  wrong.ak = softAk('rsassa');
  await assert.rejects(v.renew({ nonce: n3, identitySpki: id, ...wrong.quote(n3, id) }), denied('quote signature does not verify'));
});

test('a renewal whose record an admin forgets while it is judged does not bring the record back', async () => {
  // The forget lands between the renewal's read of the record and its write (as ForgetEnrollment can, in the
  // daemon): the renewal is refused as not enrolled, and the record stays forgotten.
  class ForgottenAfterRead extends MemoryEnrollmentRecords {
    forgetAtNextRead = false;
    reenrollAtNextRead = false;
    override async get(ekHash: string) {
      const r = await super.get(ekHash);
      if (this.forgetAtNextRead) {
        this.forgetAtNextRead = false;
        this.delete(ekHash);
      }
      if (this.reenrollAtNextRead && r !== undefined) {
        // Forgotten, and the same TPM enrolled afresh with the same AK, between the renewal's read and its write.
        this.reenrollAtNextRead = false;
        await this.put({ ...r, resetCount: r.resetCount + 1, updatedAt: new Date(r.updatedAt.getTime() + 1000) });
      }
      return r;
    }
  }
  const tpm = new SoftTpm();
  const { v, records } = setup(tpm, {}, new ForgottenAfterRead());
  const a = await enroll(v, tpm);
  const nonce = await v.renewChallenge({ ekHash: a.ekHash, akName: a.akName });
  records.forgetAtNextRead = true;
  const id = spki();
  await assert.rejects(v.renew({ nonce, identitySpki: id, ...tpm.quote(nonce, id) }), denied('no enrollment for this ek (never made, or forgotten by an admin); enroll again', 'ENROLL_AGAIN'));
  assert.equal(await records.get(a.ekHash), undefined, 'the forgotten record stays forgotten');
  // A new enrollment between the read and the write: the stale renewal does not write its older counters over it.
  const b = await enroll(v, tpm);
  const fresh = (await records.get(b.ekHash))!;
  const n2 = await v.renewChallenge({ ekHash: b.ekHash, akName: b.akName });
  records.reenrollAtNextRead = true;
  await assert.rejects(v.renew({ nonce: n2, identitySpki: id, ...tpm.quote(n2, id) }), denied('no enrollment for this ek (never made, or forgotten by an admin); enroll again', 'ENROLL_AGAIN'));
  assert.equal((await records.get(b.ekHash))!.resetCount, fresh.resetCount + 1, "the new enrollment's counters stay");
});

test('logs name the builder, never the secret or the nonce', async () => {
  const { pino } = await import('pino');
  const lines: string[] = [];
  const log = pino({ level: 'debug' }, { write: (s: string) => void lines.push(s) });
  const tpm = new SoftTpm();
  const v = new Verifier({
    policies: new Map([['ci', { name: 'ci', ekCas: [], ekHashes: new Set([ekHash(spkiOf(tpm.ek.pub))]), pcrs: { bank: 'sha256', hashAlg: TPM_ALG.SHA256, select: SELECT }, golden: [values(0)], akAlgorithms: new Set(['ecc']) } as AttestationPolicy]]),
    clock: clock(),
    records: new MemoryEnrollmentRecords(),
    log,
  });
  const ch = await v.begin({ policy: 'ci', ekPublic: tpm.ek.pub.raw, akPublic: tpm.ak.pub.raw });
  const secret = softActivate(tpm.ek, objectName(tpm.ak.pub), ch);
  const id = spki();
  await v.finish({ nonce: ch.nonce, activatedSecret: secret, identitySpki: id, ...tpm.quote(ch.nonce, id) });
  const out = lines.join('');
  assert.match(out, /builder enrolled/);
  assert.match(out, new RegExp(ekHash(spkiOf(tpm.ek.pub))));
  for (const b of [secret, ch.nonce, ch.encryptedSecret, ch.credentialBlob]) {
    assert.ok(!out.includes(b.toString('hex')) && !out.includes(b.toString('base64')), 'a secret reached the log');
  }
});

test('the quote must carry the qualified name of the ak as a child of the enrolled ek, at enrollment and renewal', async () => {
  const tpm = new SoftTpm();
  const { v, records } = setup(tpm);
  const other = softEk();
  tpm.parent = other;
  await assert.rejects(enroll(v, tpm), denied('quote qualifiedSigner is not the qualified name of the ak as a child of the enrolled ek'));
  assert.equal(await records.get(ekHash(spkiOf(tpm.ek.pub))), undefined);
  tpm.parent = null;
  const a = await enroll(v, tpm);
  const rec = (await records.get(a.ekHash))!;
  assert.deepEqual(rec.ekPublic, tpm.ek.pub.raw, 'the ek public area is kept for renewals');
  assert.equal(rec.ekCertificate, null, 'no certificate was presented');
  tpm.parent = other;
  const nonce = await v.renewChallenge({ ekHash: a.ekHash, akName: a.akName });
  const id = spki();
  await assert.rejects(v.renew({ nonce, identitySpki: id, ...tpm.quote(nonce, id) }), denied('quote qualifiedSigner is not the qualified name of the ak as a child of the enrolled ek'));
  tpm.parent = null;
  const n2 = await v.renewChallenge({ ekHash: a.ekHash, akName: a.akName });
  await v.renew({ nonce: n2, identitySpki: id, ...tpm.quote(n2, id) });
});

test('the tpm clock may not go backwards while safe says no higher value was reported', async () => {
  const tpm = new SoftTpm();
  const { v, records } = setup(tpm);
  tpm.clock = 5000n;
  const a = await enroll(v, tpm);
  tpm.clock = 4999n;
  await assert.rejects(enroll(v, tpm), denied(wentBackwards('clock', a.ekHash), 'TPM_CLOCK_WENT_BACKWARDS'));
  assert.equal((await records.get(a.ekHash))!.clock, 5000n);
  // safe NO: after a power loss the TPM may report a lower Clock than it did before, and says so.
  tpm.safe = false;
  await enroll(v, tpm);
  assert.equal((await records.get(a.ekHash))!.clock, 4999n);
});

test('renewal re-checks ek trust under the current policy: allowlist removed, ca removed, certificate expired; old records', async () => {
  const cas = new OpensslCas();
  try {
    const root = cas.root('ek root');
    const otherRoot = cas.root('another ek root');
    const tpm = new SoftTpm();
    const hash = ekHash(spkiOf(tpm.ek.pub));
    const ekCert = cas.ekCert(root, tpm.ek.key);
    const c = clock();
    const records = new MemoryEnrollmentRecords();
    const base: AttestationPolicy = {
      name: 'ci', ekCas: [], ekHashes: new Set(), pcrs: { bank: 'sha256', hashAlg: TPM_ALG.SHA256, select: SELECT }, golden: [values(0)], akAlgorithms: new Set(['rsa', 'ecc']),
    };
    const policies = new Map<string, AttestationPolicy>();
    const v = new Verifier({ policies, clock: c, nonceTtlMs: 60_000, records });
    const renew = async () => {
      const nonce = await v.renewChallenge({ ekHash: hash, akName: objectName(tpm.ak.pub).toString('hex') });
      const id = spki();
      return v.renew({ nonce, identitySpki: id, ...tpm.quote(nonce, id) });
    };
    const enrollWith = async (ekCert?: Buffer) => {
      const ch = await v.begin({ policy: 'ci', ...(ekCert ? { ekCert } : {}), ekPublic: tpm.ek.pub.raw, akPublic: tpm.ak.pub.raw });
      const id = spki();
      return v.finish({ nonce: ch.nonce, activatedSecret: softActivate(tpm.ek, objectName(tpm.ak.pub), ch), identitySpki: id, ...tpm.quote(ch.nonce, id) });
    };

    // By allowlist: renews while listed, refused once the hash is taken off.
    policies.set('ci', { ...base, ekHashes: new Set([hash]) });
    await enrollWith();
    await renew();
    policies.set('ci', { ...base, ekHashes: new Set(['ab'.repeat(32)]) });
    await assert.rejects(renew(), denied('ek no longer trusted: ek not on the allowlist'));

    // By certificate: renews while its CA is trusted; refused once the CA is another one, and once it expired.
    policies.set('ci', { ...base, ekCas: [new X509Certificate(root.pem)] });
    await enrollWith(ekCert);
    assert.deepEqual((await records.get(hash))!.ekCertificate, ekCert, 'the ek certificate is kept');
    await renew();
    assert.deepEqual((await records.get(hash))!.ekCertificate, ekCert, 'a renewal keeps it');
    policies.set('ci', { ...base, ekCas: [new X509Certificate(otherRoot.pem)] });
    await assert.rejects(renew(), denied('ek no longer trusted: untrusted ek certificate: no trusted ca issued CN=ek'));
    // The challenge passed, then the policy changed before the answer: refused at the answer.
    policies.set('ci', { ...base, ekCas: [new X509Certificate(root.pem)] });
    const nonce = await v.renewChallenge({ ekHash: hash, akName: objectName(tpm.ak.pub).toString('hex') });
    policies.set('ci', { ...base, ekHashes: new Set(['ab'.repeat(32)]) });
    const id = spki();
    await assert.rejects(v.renew({ nonce, identitySpki: id, ...tpm.quote(nonce, id) }), denied('ek no longer trusted: untrusted ek certificate: the policy trusts no ek ca; ek not on the allowlist'));
    policies.set('ci', { ...base, ekCas: [new X509Certificate(root.pem)] });
    c.advance(20 * 365 * 86_400_000);
    await assert.rejects(renew(), (e: unknown) => isSigilError(e, 'PERMISSION_DENIED') && /^ek no longer trusted: untrusted ek certificate: CN=ek expired /.test(e.message));
    // Expired but allowlisted as well: still trusted.
    policies.set('ci', { ...base, ekCas: [new X509Certificate(root.pem)], ekHashes: new Set([hash]) });
    await renew();

    // A record from before the ek was kept: the allowlist alone can vouch for it, no qualifiedSigner check.
    const rec = (await records.get(hash))!;
    await records.put({ ...rec, ekCertificate: null, ekPublic: null });
    tpm.parent = softEk();
    await renew();
    assert.equal((await records.get(hash))!.ekPublic, null, 'a renewal does not invent what enrollment did not keep');
    policies.set('ci', { ...base, ekCas: [new X509Certificate(root.pem)] });
    await assert.rejects(renew(), denied('ek trust cannot be re-checked: this enrollment was recorded before sigild kept ek certificates; enroll again', 'ENROLL_AGAIN'));
    policies.set('ci', { ...base, ekHashes: new Set(['ab'.repeat(32)]) });
    await assert.rejects(renew(), denied('ek no longer trusted: ek not on the allowlist'));
  } finally {
    cas.cleanup();
  }
});

test('renewal consults the ek ca crls read at that moment: revoked refused, an out-of-date crl refused as such, not as a bad record', async () => {
  const cas = new OpensslCas();
  try {
    const root = cas.root('ek root');
    const tpm = new SoftTpm();
    const hash = ekHash(spkiOf(tpm.ek.pub));
    const ekCert = cas.ekCert(root, tpm.ek.key);
    const serial = new X509Certificate(ekCert).serialNumber;
    const c = clock();
    const records = new MemoryEnrollmentRecords();
    const files = new Map<string, Buffer>();
    const policy = (expired: 'refuse' | 'warn'): AttestationPolicy => ({
      name: 'ci', ekCas: [new X509Certificate(root.pem)], ekHashes: new Set(), pcrs: { bank: 'sha256', hashAlg: TPM_ALG.SHA256, select: SELECT }, golden: [values(0)], akAlgorithms: new Set(['rsa', 'ecc']),
      ekCrls: new EkCrls({ files: ['/crl'], cas: [new X509Certificate(root.pem)], expired, readFile: (p) => files.get(p)! }),
    });
    const policies = new Map([['ci', policy('refuse')]]);
    const warnings: string[] = [];
    const log = { warn: (_o: unknown, m: string) => warnings.push(m), info: () => {}, debug: () => {} } as unknown as ConstructorParameters<typeof Verifier>[0]['log'];
    const v = new Verifier({ policies, clock: c, nonceTtlMs: 60_000, records, log });
    const renew = async () => {
      const nonce = await v.renewChallenge({ ekHash: hash, akName: objectName(tpm.ak.pub).toString('hex') });
      const id = spki();
      return v.renew({ nonce, identitySpki: id, ...tpm.quote(nonce, id) });
    };
    files.set('/crl', await signCrl({ now: c.now(), by: root }));
    const ch = await v.begin({ policy: 'ci', ekCert, ekPublic: tpm.ek.pub.raw, akPublic: tpm.ak.pub.raw });
    const id = spki();
    await v.finish({ nonce: ch.nonce, activatedSecret: softActivate(tpm.ek, objectName(tpm.ak.pub), ch), identitySpki: id, ...tpm.quote(ch.nonce, id) });
    await renew();

    // Eight days on, the CRL's nextUpdate (a week) has passed: refused until the operator refreshes it.
    c.advance(8 * 86_400_000);
    await assert.rejects(renew(), (e: unknown) => isSigilError(e, 'FAILED_PRECONDITION') && /^the ek crl of CN=ek root is out of date/.test(e.message));
    policies.set('ci', policy('warn'));
    await renew();
    assert.match(warnings.join('\n'), /out of date .*: refresh \/crl/);
    // The CA revokes the certificate: the renewal is refused with the serial and the reason.
    files.set('/crl', await signCrl({ now: c.now(), by: root, serials: [{ serial, reason: 1 }] }));
    await assert.rejects(renew(), denied(`ek no longer trusted: ek certificate revoked by its ca (serial ${serial}, reason keyCompromise)`));
    await assert.rejects(v.begin({ policy: 'ci', ekCert, ekPublic: tpm.ek.pub.raw, akPublic: tpm.ak.pub.raw }), denied(`ek certificate revoked by its ca (serial ${serial}, reason keyCompromise)`));
  } finally {
    cas.cleanup();
  }
});

test('a policy replaced between challenge and answer (config reload): the answer is judged by the policy in force at the answer', async () => {
  const tpm = new SoftTpm();
  const c = clock();
  const base: AttestationPolicy = {
    name: 'ci',
    ekCas: [],
    ekHashes: new Set([ekHash(spkiOf(tpm.ek.pub))]),
    pcrs: { bank: 'sha256', hashAlg: TPM_ALG.SHA256, select: SELECT },
    golden: [values(0)],
    akAlgorithms: new Set(['rsa', 'ecc']),
  };
  const policies = new Map([['ci', base]]);
  const v = new Verifier({ policies, clock: c, nonceTtlMs: 60_000, records: new MemoryEnrollmentRecords() });
  const reloadingTo = (next: AttestationPolicy | undefined) => () => {
    if (next === undefined) policies.delete('ci');
    else policies.set('ci', next);
  };
  // New golden values (after a firmware update): the old PCRs no longer pass.
  await assert.rejects(enroll(v, tpm, reloadingTo({ ...base, golden: [values(9)] })), denied("pcr values match none of the policy's golden sets (pcr 0, 1, 2, 3, 4, 5, 6, 7 match no set)"));
  // The EK taken off the allowlist, or the AK's algorithm no longer accepted: refused at the answer too.
  policies.set('ci', base);
  await assert.rejects(enroll(v, tpm, reloadingTo({ ...base, ekHashes: new Set(['ab'.repeat(32)]) })), denied('ek not on the allowlist'));
  policies.set('ci', base);
  await assert.rejects(enroll(v, tpm, reloadingTo({ ...base, akAlgorithms: new Set(['rsa']) })), (e: unknown) => isSigilError(e, 'PERMISSION_DENIED') && /ak/.test(e.message));
  // The policy removed: the pending answer is refused with the reason.
  policies.set('ci', base);
  await assert.rejects(enroll(v, tpm, reloadingTo(undefined)), (e: unknown) => isSigilError(e, 'FAILED_PRECONDITION') && e.message === 'attestation policy ci is no longer configured');
  // Replaced by an equal policy: passes.
  policies.set('ci', base);
  const a = await enroll(v, tpm, reloadingTo({ ...base }));
  assert.equal(a.policy, 'ci');
});
