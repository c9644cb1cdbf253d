import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { checkAttestation, checkClaims, encodeBuilderExtensions, BUILDER_OIDS, SIGIL_ARC } from '../../../src/identity/builder-extensions.ts';
import { DerReader, derSequence, derUint, derUtf8, TAG, tlv } from '../../../src/identity/der.ts';
import { isSigilError } from '../../../src/errors.ts';

const hexBytes = (min: number, max: number): fc.Arbitrary<string> => fc.uint8Array({ minLength: min, maxLength: max }).map((b) => Buffer.from(b).toString('hex'));
const claimName = fc.stringMatching(/^[a-z][a-z0-9_.-]{0,63}$/);
const claimValue = fc.stringMatching(/^[\x20-\x7e]{1,256}$/);

test('the arc is a uuid-derived oid below 2^128', () => {
  const uuid = BigInt(SIGIL_ARC.split('.')[2]!);
  assert.ok(uuid > 0n && uuid < 2n ** 128n);
  assert.equal(BUILDER_OIDS.claims, `${SIGIL_ARC}.6`);
});

test('claims and pcr selections encode and decode to their canonical form', () => {
  fc.assert(
    fc.property(
      fc.dictionary(claimName, claimValue, { maxKeys: 32 }),
      fc.uniqueArray(fc.constantFrom('sha1', 'sha256', 'sha384', 'sha512'), { minLength: 1, maxLength: 4 }),
      fc.uniqueArray(fc.integer({ min: 0, max: 31 }), { minLength: 1, maxLength: 24 }),
      hexBytes(2, 66),
      hexBytes(20, 64),
      (claims, banks, pcrs, akName, pcrDigest) => {
        const att = checkAttestation({
          ekHash: 'AB'.repeat(32),
          akName,
          pcrSelection: banks.map((b) => `${b}:${pcrs.join(',')}`).join('+'),
          pcrDigest,
          policy: 'p',
          claims,
        });
        assert.equal(att.ekHash, 'ab'.repeat(32), 'hex is lower-cased');
        const sorted = [...pcrs].sort((a, b) => a - b).join(',');
        const order = ['sha1', 'sha256', 'sha384', 'sha512'].filter((b) => (banks as string[]).includes(b));
        assert.equal(att.pcrSelection, order.map((b) => `${b}:${sorted}`).join('+'));
        assert.deepEqual(checkAttestation(att), att, 'canonical form is a fixed point');
        const ext = encodeBuilderExtensions(att);
        // The claims extension decodes back, in name order.
        const claimsDer = ext.find((e) => e.oid === BUILDER_OIDS.claims)!.value;
        const r = new DerReader(claimsDer, 'claims').sequence();
        const back: Array<[string, string]> = [];
        while (!r.done) {
          const c = r.sequence();
          back.push([c.utf8(), c.utf8()]);
        }
        assert.deepEqual(back, Object.entries(checkClaims(claims)));
        assert.deepEqual(back.map(([k]) => k), Object.keys(claims).sort((a, b) => (a < b ? -1 : 1)));
      },
    ),
    { numRuns: 200 },
  );
});

test('the der reader refuses malformed input with INVALID_ARGUMENT and never throws anything else', () => {
  const bad = (buf: Buffer, fn: (r: DerReader) => unknown): void =>
    assert.throws(() => {
      const r = new DerReader(buf, 'x');
      fn(r);
      r.end();
    }, (e: unknown) => isSigilError(e, 'INVALID_ARGUMENT'));
  bad(Buffer.from([0x04, 0x81, 0x05, 1, 2, 3, 4, 5]), (r) => r.octets()); // non-minimal length
  bad(Buffer.from([0x04, 0x80]), (r) => r.octets()); // indefinite length
  bad(Buffer.from([0x04, 0x03, 1]), (r) => r.octets()); // truncated
  bad(Buffer.from([0x04, 0x01, 1, 0]), (r) => r.octets()); // trailing byte
  bad(Buffer.from([0x02, 0x02, 0x00, 0x01]), (r) => r.uint()); // non-minimal integer
  bad(Buffer.from([0x02, 0x01, 0x80]), (r) => r.uint()); // negative
  bad(Buffer.from([0x0c, 0x01, 0xff]), (r) => r.utf8()); // invalid utf-8
  bad(Buffer.from([0x0c, 0x00]), (r) => r.octets()); // wrong tag
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 64 }), (bytes) => {
      try {
        const r = new DerReader(Buffer.from(bytes), 'fuzz').sequence();
        while (!r.done) r.sequence().utf8();
      } catch (e) {
        assert.ok(isSigilError(e, 'INVALID_ARGUMENT'), String(e));
      }
    }),
    { numRuns: 2000 },
  );
});

test('der writers produce minimal encodings that the reader accepts', () => {
  fc.assert(
    fc.property(fc.integer({ min: 0, max: 0x7fffffff }), fc.string({ maxLength: 300 }), (n, s) => {
      const r = new DerReader(derSequence([derUint(n), derUtf8(s)]), 'x').sequence();
      assert.equal(r.uint(), n);
      assert.equal(r.utf8(), s);
      r.end();
    }),
  );
  assert.deepEqual(tlv(TAG.OCTET_STRING, Buffer.alloc(200)).subarray(0, 3), Buffer.from([0x04, 0x81, 200]));
  assert.deepEqual(derUint(128), Buffer.from([0x02, 0x02, 0x00, 0x80]));
});
