import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { crc32c } from '../../../src/signers/gcpkms/crc32c.ts';

// RFC 3720 appendix B.4 "CRC Examples" (the RFC lists the CRC bytes as stored, least significant first).
test('matches the RFC 3720 CRC32C test vectors', () => {
  assert.equal(crc32c(Buffer.alloc(32, 0x00)), 0x8a9136aa);
  assert.equal(crc32c(Buffer.alloc(32, 0xff)), 0x62a8ab43);
  assert.equal(crc32c(Buffer.from(Array.from({ length: 32 }, (_, i) => i))), 0x46dd794e);
  assert.equal(crc32c(Buffer.from(Array.from({ length: 32 }, (_, i) => 31 - i))), 0x113fdb5c);
  const iscsiRead = Buffer.from(
    '01c000000000000000000000000000001400000000000400000000140000001828000000000000000200000000000000',
    'hex',
  );
  assert.equal(iscsiRead.length, 48);
  assert.equal(crc32c(iscsiRead), 0xd9963a56);
});

test('gives the catalogued check value and the empty-input value', () => {
  assert.equal(crc32c(Buffer.from('123456789', 'ascii')), 0xe3069283);
  assert.equal(crc32c(new Uint8Array(0)), 0);
});

test('agrees with a bitwise reference and returns an unsigned 32-bit number', () => {
  const bitwise = (data: Uint8Array): number => {
    let c = 0xffffffff;
    for (const b of data) {
      c ^= b;
      for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
    }
    return (c ^ 0xffffffff) >>> 0;
  };
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 600 }), (data) => {
      const c = crc32c(data);
      assert.ok(Number.isInteger(c) && c >= 0 && c <= 0xffffffff);
      assert.equal(c, bitwise(data));
    }),
  );
});

test('detects every single-bit flip', () => {
  fc.assert(
    fc.property(fc.uint8Array({ minLength: 1, maxLength: 300 }), fc.nat(), fc.nat(7), (data, at, bit) => {
      const flipped = Buffer.from(data);
      flipped[at % flipped.length]! ^= 1 << bit;
      assert.notEqual(crc32c(flipped), crc32c(data));
    }),
  );
});
