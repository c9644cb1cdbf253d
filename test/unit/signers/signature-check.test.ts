import assert from 'node:assert/strict';
import { constants, createHash, createPublicKey, generateKeyPairSync, sign, verify, type KeyObject } from 'node:crypto';
import { p256, p384 } from '@noble/curves/nist.js';
import { test } from 'node:test';
import fc from 'fast-check';
import { silentLogger } from '../../../src/log.ts';
import { checkedSigner, verifierFor } from '../../../src/signers/signature-check.ts';
import type { Algorithm, KeySigner } from '../../../src/signers/signer.ts';
import { assertCode } from '../../helpers/assert.ts';

// Signatures made by node:crypto over the message (it hashes), checked over the digest as backends sign it.
interface Pair {
  privateKey: KeyObject;
  spki: Buffer;
}

function pair(kind: 'p256' | 'p384' | 'rsa2048' | 'rsa2047' | 'rsa2049' | 'rsa3072' | 'ed25519'): Pair {
  const k =
    kind === 'p256' ? generateKeyPairSync('ec', { namedCurve: 'prime256v1' })
    : kind === 'p384' ? generateKeyPairSync('ec', { namedCurve: 'secp384r1' })
    : kind === 'ed25519' ? generateKeyPairSync('ed25519')
    : generateKeyPairSync('rsa', { modulusLength: Number(kind.slice(3)) });
  return { privateKey: k.privateKey, spki: k.publicKey.export({ format: 'der', type: 'spki' }) };
}

function nodeSign(alg: Algorithm, key: KeyObject, msg: Buffer): Buffer {
  switch (alg) {
    case 'ECDSA_P256_SHA256':
      return sign('sha256', msg, { key, dsaEncoding: 'der' });
    case 'ECDSA_P384_SHA384':
      return sign('sha384', msg, { key, dsaEncoding: 'der' });
    case 'RSA_PKCS1_SHA256':
      return sign('sha256', msg, key);
    case 'RSA_PSS_SHA256':
      return sign('sha256', msg, { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 });
    case 'ED25519':
      return sign(null, msg, key);
  }
}

function inputOf(alg: Algorithm, msg: Buffer): Buffer {
  if (alg === 'ED25519') return msg;
  return createHash(alg === 'ECDSA_P384_SHA384' ? 'sha384' : 'sha256').update(msg).digest();
}

const CASES: Array<[Algorithm, Parameters<typeof pair>[0]]> = [
  ['ECDSA_P256_SHA256', 'p256'],
  ['ECDSA_P384_SHA384', 'p384'],
  ['RSA_PKCS1_SHA256', 'rsa2048'],
  ['RSA_PKCS1_SHA256', 'rsa2047'],
  ['RSA_PSS_SHA256', 'rsa2048'],
  ['RSA_PSS_SHA256', 'rsa2047'],
  // A modulus of 8k+1 bits: the encoded message is a byte shorter than the modulus (RFC 8017 9.1.2 step 1).
  ['RSA_PSS_SHA256', 'rsa2049'],
  ['RSA_PSS_SHA256', 'rsa3072'],
  ['ED25519', 'ed25519'],
];

for (const [alg, kind] of CASES) {
  test(`${alg} (${kind}): a node-made signature verifies over the digest; another key's, another digest's and a flipped bit do not`, () => {
    const mine = pair(kind);
    const other = pair(kind);
    const ok = verifierFor(mine.spki, alg);
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 0, maxLength: 200 }), fc.nat(), (m, bit) => {
        const msg = Buffer.from(m);
        const sig = nodeSign(alg, mine.privateKey, msg);
        assert.ok(ok(inputOf(alg, msg), sig), 'own signature');
        assert.ok(!ok(inputOf(alg, msg), nodeSign(alg, other.privateKey, msg)), "another key's signature");
        assert.ok(!ok(inputOf(alg, Buffer.concat([msg, Buffer.of(1)])), sig), "another digest's signature");
        const flipped = Buffer.from(sig);
        const at = bit % (flipped.length * 8);
        flipped[at >> 3]! ^= 1 << (at & 7);
        assert.ok(!ok(inputOf(alg, msg), flipped), 'a flipped bit');
      }),
      { numRuns: alg.startsWith('RSA') ? 15 : 100 },
    );
  });
}

test('ECDSA: out-of-range r or s, empty and garbage signatures are refused without throwing', () => {
  const k = pair('p256');
  const ok = verifierFor(k.spki, 'ECDSA_P256_SHA256');
  const d = inputOf('ECDSA_P256_SHA256', Buffer.from('m'));
  const n = Buffer.from('ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551', 'hex');
  const der = (r: Buffer, s: Buffer) => {
    const int = (b: Buffer) => (b[0]! & 0x80 ? Buffer.concat([Buffer.of(0x02, b.length + 1, 0), b]) : Buffer.concat([Buffer.of(0x02, b.length), b]));
    const body = Buffer.concat([int(r), int(s)]);
    return Buffer.concat([Buffer.of(0x30, body.length), body]);
  };
  assert.ok(!ok(d, der(n, Buffer.of(1))), 'r = n');
  assert.ok(!ok(d, der(Buffer.of(1), n)), 's = n');
  assert.ok(!ok(d, der(Buffer.of(0), Buffer.of(1))), 'r = 0');
  assert.ok(!ok(d, Buffer.alloc(0)), 'empty');
  assert.ok(!ok(d, Buffer.alloc(64, 7)), 'raw r||s instead of der');
});

for (const [alg, curve, name] of [['ECDSA_P256_SHA256', p256, 'prime256v1'], ['ECDSA_P384_SHA384', p384, 'secp384r1']] as const) {
  test(`${alg}: the all-zero digest (u1 = 0) verifies and another key's does not; a signature under -Q (private key n - d) is refused`, () => {
    const k = generateKeyPairSync('ec', { namedCurve: name });
    const spki = k.publicKey.export({ format: 'der', type: 'spki' });
    const ok = verifierFor(spki, alg);
    const d = BigInt(`0x${Buffer.from(k.privateKey.export({ format: 'jwk' }).d!, 'base64url').toString('hex')}`);
    const n = curve.Point.CURVE().n;
    const bytes = curve.Point.Fn.BYTES;
    const secret = (x: bigint) => Buffer.from(x.toString(16).padStart(2 * bytes, '0'), 'hex');
    const zero = Buffer.alloc(bytes);
    assert.ok(ok(zero, Buffer.from(curve.sign(zero, secret(d), { prehash: false, format: 'der' }))), 'u1 = 0');
    assert.ok(!ok(zero, Buffer.from(curve.sign(zero, secret(d === 1n ? 2n : d - 1n), { prehash: false, format: 'der' }))), "another key's, u1 = 0");
    const digest = createHash(alg === 'ECDSA_P256_SHA256' ? 'sha256' : 'sha384').update('neg').digest();
    // Whole points, not x-coordinates alone: x(u1·G - u2·Q) is not taken for x(u1·G + u2·Q).
    assert.equal(ok(digest, Buffer.from(curve.sign(digest, secret(n - d), { prehash: false, format: 'der' }))), false);
  });
}

test('RSA-PSS with a salt other than the digest length is refused', () => {
  const k = pair('rsa2048');
  const msg = Buffer.from('m');
  const sig = sign('sha256', msg, { key: k.privateKey, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 20 });
  assert.ok(!verifierFor(k.spki, 'RSA_PSS_SHA256')(inputOf('RSA_PSS_SHA256', msg), sig));
});

test('a key that does not fit the algorithm is refused when the verifier is made', () => {
  assert.throws(() => verifierFor(pair('p256').spki, 'ECDSA_P384_SHA384'), /cannot verify ECDSA_P384_SHA384/);
  assert.throws(() => verifierFor(pair('rsa2048').spki, 'ECDSA_P256_SHA256'), /cannot verify/);
  assert.throws(() => verifierFor(pair('p256').spki, 'RSA_PSS_SHA256'), /cannot verify/);
  assert.throws(() => verifierFor(Buffer.from('not a key'), 'RSA_PSS_SHA256'), /does not decode/);
});

test('checkedSigner passes a good signature through and refuses, logs and counts a bad one', async () => {
  const k = pair('p256');
  const other = pair('p256');
  const scalar = (p: Pair) => Buffer.from(p.privateKey.export({ format: 'jwk' }).d!, 'base64url');
  let signWith = scalar(k);
  // A stand-in for a backend whose answers the test controls: the check is what is under test here; the
  // tpm, awskms and gcpkms integration tests drive the same check through the real backends.
  const inner: KeySigner = {
    algorithm: 'ECDSA_P256_SHA256',
    dropsAbandoned: true,
    sign: async (d) => Buffer.from(p256.sign(d, signWith, { prehash: false, format: 'der' })),
  };
  let counted = 0;
  const lines: unknown[] = [];
  const log = silentLogger();
  log.error = ((o: unknown) => void lines.push(o)) as typeof log.error;
  const s = checkedSigner(inner, k.spki, { uri: 'test:key', kind: 'test', log, onMismatch: () => counted++ });
  assert.equal(s.dropsAbandoned, true, 'the wrapper keeps dropsAbandoned');
  const d = createHash('sha256').update('payload').digest();
  const sig = await s.sign(d);
  assert.ok(verify('sha256', Buffer.from('payload'), { key: createPublicKey({ key: k.spki, format: 'der', type: 'spki' }), dsaEncoding: 'der' }, sig));
  assert.equal(counted, 0);
  signWith = scalar(other);
  await assertCode(s.sign(d), 'BACKEND_ERROR', /^test signature with test:key does not verify under the key version's recorded public key; refused$/);
  assert.equal(counted, 1);
  assert.equal(lines.length, 1);
});

test('a key\'s verifier is made once and kept (backends make a signer per request), per key and algorithm', () => {
  const a = pair('p256');
  const b = pair('p256');
  const va = verifierFor(a.spki, 'ECDSA_P256_SHA256');
  assert.equal(verifierFor(a.spki, 'ECDSA_P256_SHA256'), va);
  assert.notEqual(verifierFor(b.spki, 'ECDSA_P256_SHA256'), va);
  // A refusal is not kept: the same bad input is refused again.
  for (let i = 0; i < 2; i++) assert.throws(() => verifierFor(a.spki, 'ECDSA_P384_SHA384'), /cannot verify ECDSA_P384_SHA384/);
});
