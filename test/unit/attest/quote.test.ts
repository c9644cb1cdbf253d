import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { verifyQuote, type QuoteCheck } from '../../../src/attest/quote.ts';
import { isSigilError } from '../../../src/errors.ts';
import { TPM_ALG, TPM_ST } from '../../../src/tpm/constants.ts';
import { softAk, softQuote, softSign, type SoftAkKind, type SoftKey, type SoftQuote } from './soft-tpm.ts';

const SEL = { hash: TPM_ALG.SHA256, pcrs: [0, 1, 2, 3, 4, 5, 6, 7] };
const values = SEL.pcrs.map((i) => Buffer.alloc(32, i));
const extra = Buffer.alloc(32, 0xee);
const aks: Record<SoftAkKind, SoftKey> = { rsassa: softAk('rsassa'), rsapss: softAk('rsapss'), ecdsa: softAk('ecdsa') };

function check(ak: SoftKey, q: Partial<SoftQuote> = {}, over: Partial<QuoteCheck> = {}): QuoteCheck {
  const { attest, signature } = softQuote(ak, { extraData: extra, selection: [SEL], values, ...q });
  return {
    akPublic: ak.pub,
    attest,
    signature,
    expectedExtraData: extra,
    selection: SEL,
    pcrValues: new Map(SEL.pcrs.map((p, i) => [p, values[i]!])),
    ...over,
  };
}

const denied = (message: string | RegExp) => (e: unknown) =>
  isSigilError(e, 'PERMISSION_DENIED') && (typeof message === 'string' ? e.message === message : message.test(e.message));

for (const kind of ['rsassa', 'rsapss', 'ecdsa'] as const) {
  test(`a genuine-shaped ${kind} quote verifies and returns its clock info`, () => {
    const v = verifyQuote(check(aks[kind], { resetCount: 9, restartCount: 2 }));
    assert.equal(v.clockInfo.resetCount, 9);
    assert.equal(v.clockInfo.restartCount, 2);
    assert.equal(v.pcrDigest.length, 32);
  });
}

test('each refusal names its check', () => {
  const ak = aks.ecdsa;
  const other = softAk('ecdsa');
  const c = check(ak);
  assert.throws(() => verifyQuote({ ...c, signature: check(other).signature }), denied('quote signature does not verify'));
  assert.throws(() => verifyQuote({ ...c, akPublic: other.pub }), denied('quote signature does not verify'));
  assert.throws(() => verifyQuote(check(ak, { magic: 0x12345678 })), denied('quote magic is not TPM_GENERATED'));
  assert.throws(() => verifyQuote(check(ak, { type: TPM_ST.ATTEST_CERTIFY })), denied('attestation of type 0x8017 is not a quote'));
  assert.throws(() => verifyQuote(check(ak, { extraData: Buffer.alloc(32, 1) })), denied('quote extraData does not bind the nonce and identity key'));
  assert.throws(() => verifyQuote(check(ak, { extraData: Buffer.alloc(0) })), denied('quote extraData does not bind the nonce and identity key'));
  assert.throws(
    () => verifyQuote(check(ak, { selection: [{ hash: TPM_ALG.SHA1, pcrs: [] }] })),
    denied('quote covers pcr selection sha1:[] but policy wants sha256:[0,1,2,3,4,5,6,7]'),
  );
  assert.throws(() => verifyQuote(check(ak, { selection: [{ hash: TPM_ALG.SHA256, pcrs: [0, 1, 2] }] })), denied(/covers pcr selection sha256:\[0,1,2\]/));
  assert.throws(() => verifyQuote(check(ak, { selection: [SEL, { hash: TPM_ALG.SHA1, pcrs: [] }] })), denied(/sha256:\[0,1,2,3,4,5,6,7\] sha1:\[\]/));
  assert.throws(() => verifyQuote(check(ak, { digest: Buffer.alloc(32) })), denied('pcr values do not match the quoted pcr digest'));
  const tampered = new Map(c.pcrValues);
  tampered.set(7, Buffer.alloc(32, 0x77));
  assert.throws(() => verifyQuote({ ...c, pcrValues: tampered }), denied('pcr values do not match the quoted pcr digest'));
});

test('the signature scheme is pinned to the ak', () => {
  // A PSS signature by the same key where the AK says RSASSA (and the reverse) is refused.
  const ss = aks.rsassa;
  const c = check(ss);
  assert.throws(() => verifyQuote({ ...c, signature: softSign(ss, Buffer.from(c.attest), TPM_ALG.RSAPSS) }), denied(/scheme 0x16\/0xb is not the ak's 0x14\/0xb/));
  assert.throws(() => verifyQuote({ ...c, signature: softSign(ss, Buffer.from(c.attest), TPM_ALG.RSASSA, TPM_ALG.SHA384) }), denied(/is not the ak's/));
  const ps = aks.rsapss;
  const p = check(ps);
  assert.throws(() => verifyQuote({ ...p, signature: softSign(ps, Buffer.from(p.attest), TPM_ALG.RSASSA) }), denied(/is not the ak's/));
});

test('malformed bytes and missing values are INVALID_ARGUMENT', () => {
  const c = check(aks.ecdsa);
  const bad = (e: unknown) => isSigilError(e, 'INVALID_ARGUMENT');
  assert.throws(() => verifyQuote({ ...c, attest: Buffer.from(c.attest).subarray(0, 20) }), bad);
  assert.throws(() => verifyQuote({ ...c, attest: Buffer.concat([Buffer.from(c.attest), Buffer.from([0])]) }), bad);
  assert.throws(() => verifyQuote({ ...c, signature: Buffer.from([0, 0x18]) }), bad);
  const missing = new Map(c.pcrValues);
  missing.delete(3);
  assert.throws(() => verifyQuote({ ...c, pcrValues: missing }), (e: unknown) => bad(e) && /no value given for quoted pcr 3/.test((e as Error).message));
  const extraPcr = new Map(c.pcrValues);
  extraPcr.set(9, Buffer.alloc(32));
  assert.throws(() => verifyQuote({ ...c, pcrValues: extraPcr }), (e: unknown) => bad(e) && /outside the quoted selection/.test((e as Error).message));
  const short = new Map(c.pcrValues);
  short.set(0, Buffer.alloc(20));
  assert.throws(() => verifyQuote({ ...c, pcrValues: short }), (e: unknown) => bad(e) && /20 bytes, expected 32/.test((e as Error).message));
});

test('qualifiedSigner: the expected one passes, any other signed one is refused, none expected leaves it unchecked', () => {
  const ak = aks.ecdsa;
  const want = Buffer.concat([Buffer.from([0, 0x0b]), Buffer.alloc(32, 0x5a)]);
  verifyQuote(check(ak, { qualifiedSigner: want }, { qualifiedSigner: want }));
  verifyQuote(check(ak, { qualifiedSigner: Buffer.alloc(34, 1) }));
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 66 }), (signer) => {
      const got = Buffer.from(signer);
      fc.pre(!got.equals(want));
      assert.throws(() => verifyQuote(check(ak, { qualifiedSigner: got }, { qualifiedSigner: want })), denied('quote qualifiedSigner is not the qualified name of the ak as a child of the enrolled ek'));
    }),
    { numRuns: 200 },
  );
});
