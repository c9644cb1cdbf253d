import assert from 'node:assert/strict';
import { createECDH, createHash } from 'node:crypto';
import { test } from 'node:test';
import fc from 'fast-check';
import { isSigilError } from '../../../src/errors.ts';
import { TpmFormatError } from '../../../src/tpm/marshal.ts';
import { cfbKey, cryptFirstParameter, eccSalt } from '../../../src/tpm/salted-session.ts';
import type { TpmPublic } from '../../../src/tpm/structures.ts';
import { SRK_TEMPLATE_ECC } from '../../../src/tpm/templates.ts';
import { TPM_ALG, TPM_ECC } from '../../../src/tpm/constants.ts';

const hex = (s: string) => Buffer.from(s, 'hex');

// Known answers computed with Python's `cryptography` (ECDH on SECP256R1, SHA-256 by hand for KDFe,
// HMAC-SHA-256 by hand for KDFa, AES-128 in CFB mode), not with this code: SRK private scalar 0x11..11,
// ephemeral scalar 0x22..22.
const SRK_X = hex('0217e617f0b6443928278f96999e69a23a4f2c152bdf6d6cdf66e5b80282d4ed');
const SRK_Y = hex('194a7debcb97712d2dda3ca85aa8765a56f45fc758599652f2897c65306e5794');
const EPHEMERAL = Buffer.alloc(32, 0x22);
const QE_X = hex('d65a93977caa3d1b081852ff57a79e465f1660577304baead505dd3a48589cf3');
const QE_Y = hex('50185e895372df6221ea3a137557e473fddb6755f05bd507c3c533fce9c91285');
const SALT = hex('561b780c6fd5a0632e3f18bb7139c240b264fd3ce7747b7ca35a02d9895d348b');

function srkWith(x: Buffer, y: Buffer): TpmPublic {
  return { ...SRK_TEMPLATE_ECC, ecc: { ...SRK_TEMPLATE_ECC.ecc!, x, y }, raw: Buffer.alloc(0) };
}

test('eccSalt: salt and ephemeral point match values computed independently (Part 1, Annex C.6.1)', () => {
  const s = eccSalt(srkWith(SRK_X, SRK_Y), EPHEMERAL);
  assert.deepEqual(s.salt, SALT);
  // TPMS_ECC_POINT: TPM2B x, TPM2B y.
  assert.deepEqual(s.encryptedSalt, Buffer.concat([hex('0020'), QE_X, hex('0020'), QE_Y]));
});

test('eccSalt: the tpm side (srk private key and the sent point) derives the same salt; a fresh ephemeral key each time', () => {
  const srk = createECDH('prime256v1');
  srk.generateKeys();
  const pub = srk.getPublicKey();
  const a = eccSalt(srkWith(pub.subarray(1, 33), pub.subarray(33)));
  const b = eccSalt(srkWith(pub.subarray(1, 33), pub.subarray(33)));
  assert.notDeepEqual(a.salt, b.salt);
  for (const s of [a, b]) {
    const qe = Buffer.concat([Buffer.of(4), s.encryptedSalt.subarray(2, 34), s.encryptedSalt.subarray(36)]);
    const z = srk.computeSecret(qe);
    const want = createHash('sha256').update(hex('00000001')).update(z).update('SECRET\0').update(qe.subarray(1, 33)).update(pub.subarray(1, 33)).digest();
    assert.deepEqual(s.salt, want);
  }
  // Another SRK's private key does not.
  const other = createECDH('prime256v1');
  other.generateKeys();
  assert.notDeepEqual(other.computeSecret(Buffer.concat([Buffer.of(4), a.encryptedSalt.subarray(2, 34), a.encryptedSalt.subarray(36)])), srk.computeSecret(Buffer.concat([Buffer.of(4), a.encryptedSalt.subarray(2, 34), a.encryptedSalt.subarray(36)])));
});

test('eccSalt: refuses a key that is not p-256 with a sha-256 name, and a point off the curve', () => {
  const bad = (p: TpmPublic) => assert.throws(() => eccSalt(p), (e) => isSigilError(e, 'INVALID_ARGUMENT') && !/\.$/.test(e.message));
  bad({ ...srkWith(SRK_X, SRK_Y), nameAlg: TPM_ALG.SHA384 });
  bad(srkWith(SRK_X, Buffer.alloc(32, 1)));
  bad({ ...srkWith(SRK_X, SRK_Y), ecc: { ...SRK_TEMPLATE_ECC.ecc!, curve: TPM_ECC.NIST_P384, x: SRK_X, y: SRK_Y } });
  bad({ type: TPM_ALG.RSA, nameAlg: TPM_ALG.SHA256, objectAttributes: 0, authPolicy: Buffer.alloc(0), raw: Buffer.alloc(0) });
  bad(srkWith(Buffer.alloc(33, 1), SRK_Y));
});

test('cfbKey and cryptFirstParameter match an independent AES-128-CFB over a TPM2B_SENSITIVE_CREATE (Part 1, 21.3)', () => {
  const sessionKey = Buffer.from(Array.from({ length: 32 }, (_, i) => i));
  const nonceNewer = Buffer.from(Array.from({ length: 32 }, (_, i) => 0xa0 + (i % 16)));
  const nonceOlder = Buffer.alloc(32, 0x50);
  const k = cfbKey(sessionKey, Buffer.alloc(0), nonceNewer, nonceOlder);
  assert.deepEqual(k.key, hex('f31b06b1f6baf78326476933c4303e39'));
  assert.deepEqual(k.iv, hex('fdc735f994a412df57238a17613f40ab'));
  const plain = hex('002400205a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a000000047461696c');
  const cipher = hex('0024234ff290f6c66d3e85cd1f55dc360baf1e4adbb54895764069db08c8e81dd43bab402ddd00047461696c');
  assert.deepEqual(cryptFirstParameter(plain, k), cipher);
  assert.deepEqual(cryptFirstParameter(cipher, k, true), plain);
  // The authValue of the authorized entity enters the key, without trailing zeros.
  assert.notDeepEqual(cfbKey(sessionKey, Buffer.of(1), nonceNewer, nonceOlder).key, k.key);
  assert.deepEqual(cfbKey(sessionKey, Buffer.of(1, 0, 0), nonceNewer, nonceOlder), cfbKey(sessionKey, Buffer.of(1), nonceNewer, nonceOlder));
});

test('cryptFirstParameter (fuzz): any bytes either round-trip with size field and tail untouched, or are refused as malformed', () => {
  const k = cfbKey(Buffer.alloc(32, 7), Buffer.alloc(0), Buffer.alloc(32, 1), Buffer.alloc(32, 2));
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 300 }), (arr) => {
      const b = Buffer.from(arr);
      let enc: Buffer;
      try {
        enc = cryptFirstParameter(b, k);
      } catch (err) {
        assert.ok(err instanceof TpmFormatError, String(err));
        assert.ok(b.length < 2 || b.readUInt16BE(0) > b.length - 2);
        return;
      }
      const size = b.readUInt16BE(0);
      assert.equal(enc.length, b.length);
      assert.deepEqual(enc.subarray(0, 2), b.subarray(0, 2));
      assert.deepEqual(enc.subarray(2 + size), b.subarray(2 + size));
      assert.deepEqual(cryptFirstParameter(enc, k, true), b);
    }),
    { numRuns: 500 },
  );
});
