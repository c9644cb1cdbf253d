import assert from 'node:assert/strict';
import { generateKeyPairSync, sign, verify } from 'node:crypto';
import { test } from 'node:test';
import fc from 'fast-check';
import { ecdsaRawToDer, keyTypeOfSpki } from '../../../src/signers/signer.ts';

test('ecdsaRawToDer encodes r||s as a DER ECDSA-Sig-Value', () => {
  const raw = Buffer.concat([Buffer.alloc(32, 0x01), Buffer.alloc(32, 0x02)]);
  const der = ecdsaRawToDer(raw);
  assert.equal(der.toString('hex'), `3044` + `0220${'01'.repeat(32)}` + `0220${'02'.repeat(32)}`);
});

test('ecdsaRawToDer pads high-bit integers and strips leading zeros', () => {
  const r = Buffer.alloc(32, 0xff);
  const s = Buffer.concat([Buffer.alloc(31), Buffer.from([0x05])]);
  assert.equal(ecdsaRawToDer(Buffer.concat([r, s])).toString('hex'), `3026` + `022100${'ff'.repeat(32)}` + `020105`);
  const zero = ecdsaRawToDer(Buffer.alloc(64));
  assert.equal(zero.toString('hex'), '3006020100020100');
});

test('ecdsaRawToDer uses the long length form for P-384 and P-521 sizes', () => {
  const der = ecdsaRawToDer(Buffer.alloc(132, 0xff));
  assert.deepEqual([...der.subarray(0, 3)], [0x30, 0x81, 2 * (2 + 1 + 66)]);
});

/** The plain reading of RFC 3279 2.2.3 the encoder must agree with: minimal positive INTEGERs in a SEQUENCE. */
function referenceDer(raw: Uint8Array): Buffer {
  const int = (b: Uint8Array): Buffer => {
    let i = 0;
    while (i < b.length - 1 && b[i] === 0) i++;
    const v = Buffer.from(b.subarray(i));
    const body = v[0]! & 0x80 ? Buffer.concat([Buffer.of(0), v]) : v;
    return Buffer.concat([Buffer.of(0x02, body.length), body]);
  };
  const half = raw.length / 2;
  const seq = Buffer.concat([int(raw.subarray(0, half)), int(raw.subarray(half))]);
  return Buffer.concat([seq.length < 0x80 ? Buffer.of(0x30, seq.length) : Buffer.of(0x30, 0x81, seq.length), seq]);
}

test('ecdsaRawToDer agrees with the plain encoding for every r||s, leading zeros and high bits included', () => {
  const half = (n: number) =>
    fc.tuple(fc.nat({ max: n }), fc.uint8Array({ minLength: n, maxLength: n })).map(([zeros, b]) => {
      b.fill(0, 0, zeros);
      return b;
    });
  fc.assert(
    fc.property(fc.constantFrom(32, 48, 66).chain((n) => fc.tuple(half(n), half(n))), ([r, s]) => {
      const raw = Buffer.concat([r, s]);
      assert.equal(ecdsaRawToDer(raw).toString('hex'), referenceDer(raw).toString('hex'));
    }),
    { numRuns: 2000 },
  );
});

test('ecdsaRawToDer refuses odd or empty input', () => {
  assert.throws(() => ecdsaRawToDer(Buffer.alloc(0)), RangeError);
  assert.throws(() => ecdsaRawToDer(Buffer.alloc(63)), RangeError);
});

test('property: ecdsaRawToDer matches what node:crypto verifies for P-256 and P-384', () => {
  const keys = [
    { curve: 'P-256', hash: 'sha256', ...generateKeyPairSync('ec', { namedCurve: 'P-256' }) },
    { curve: 'P-384', hash: 'sha384', ...generateKeyPairSync('ec', { namedCurve: 'P-384' }) },
  ];
  fc.assert(
    fc.property(fc.constantFrom(...keys), fc.uint8Array({ maxLength: 64 }), (k, msg) => {
      const raw = sign(k.hash, msg, { key: k.privateKey, dsaEncoding: 'ieee-p1363' });
      const der = ecdsaRawToDer(raw);
      assert.ok(verify(k.hash, msg, { key: k.publicKey, dsaEncoding: 'der' }, der));
    }),
    { numRuns: 200 },
  );
});

test('property: the DER integers of ecdsaRawToDer equal the raw halves', () => {
  const big = (b: Uint8Array): bigint => (b.length === 0 ? 0n : BigInt(`0x${Buffer.from(b).toString('hex')}`));
  fc.assert(
    fc.property(fc.constantFrom(32, 48, 66), fc.infiniteStream(fc.integer({ min: 0, max: 255 })), fc.nat(40), (half, bytes, zeros) => {
      const it = bytes[Symbol.iterator]();
      const raw = Uint8Array.from({ length: 2 * half }, (_, i) => (i < Math.min(zeros, half) ? 0 : it.next().value as number));
      const der = ecdsaRawToDer(raw);
      const long = der[1] === 0x81;
      let off = long ? 3 : 2;
      assert.equal(der[0], 0x30);
      assert.equal((long ? der[2]! : der[1]!) + off, der.length);
      const ints: bigint[] = [];
      for (let i = 0; i < 2; i++) {
        assert.equal(der[off], 0x02);
        const len = der[off + 1]!;
        ints.push(big(der.subarray(off + 2, off + 2 + len)));
        off += 2 + len;
      }
      assert.equal(ints[0], big(raw.subarray(0, half)));
      assert.equal(ints[1], big(raw.subarray(half)));
    }),
    { numRuns: 1000 },
  );
});

test('keyTypeOfSpki names the key types sigil signs with', () => {
  const spki = (k: ReturnType<typeof generateKeyPairSync>['publicKey']): Buffer => k.export({ format: 'der', type: 'spki' });
  assert.equal(keyTypeOfSpki(spki(generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey)), 'EC_P256');
  assert.equal(keyTypeOfSpki(spki(generateKeyPairSync('ec', { namedCurve: 'P-384' }).publicKey)), 'EC_P384');
  assert.equal(keyTypeOfSpki(spki(generateKeyPairSync('ec', { namedCurve: 'secp256k1' }).publicKey)), null);
  assert.equal(keyTypeOfSpki(spki(generateKeyPairSync('ed25519').publicKey)), 'ED25519');
});
