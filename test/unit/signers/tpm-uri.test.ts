import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { isSigilError } from '../../../src/errors.ts';
import { formatTpmUri, parseTpmKeyUri, parseTpmUri } from '../../../src/signers/tpm/uri.ts';

const FIRST = 0x81000000;
const LAST = 0x817fffff;

function assertInvalid(uri: string): void {
  assert.throws(() => parseTpmUri(uri), (e) => isSigilError(e, 'INVALID_ARGUMENT') && !/\.$/.test(e.message), uri);
}

test('parses the canonical form at both ends of the owner persistent range', () => {
  assert.equal(parseTpmUri('tpm:handle=0x81000000'), FIRST);
  assert.equal(parseTpmUri('tpm:handle=0x810001ff'), 0x810001ff);
  assert.equal(parseTpmUri('tpm:handle=0x817fffff'), LAST);
  assert.equal(formatTpmUri(0x81000100), 'tpm:handle=0x81000100');
});

test('refuses non-canonical, out-of-range and malformed uris', () => {
  for (const uri of [
    '', 'tpm', 'tpm:', 'tpm:handle=', 'tpm:handle=0x8100010', 'tpm:handle=0x810001000', 'tpm:handle=0X81000100',
    'tpm:handle=0x810001FF', 'tpm:handle=81000100', 'tpm:handle=2164261120', 'tpm:handle=%30x81000100',
    'tpm:handle=0x81000100;handle=0x81000101', 'tpm:handle=0x81000100;id=1', 'tpm:id=0x81000100', 'tpm:handle=0x81000100?pin-value=1',
    'tpm:handle=0x80ffffff', 'tpm:handle=0x81800000', 'tpm:handle=0x81010001x', 'tpm:handle=0x01c00002', 'tpm:handle=0x40000001',
    'pkcs11:handle=0x81000100', 'TPM:handle=0x81000100', 'tpm:handle= 0x81000100', 'tpm:handle=-0x81000100',
  ]) {
    assertInvalid(uri);
  }
});

test('fuzz: any handle in the owner range round-trips, any other 32-bit value is refused', () => {
  fc.assert(
    fc.property(fc.integer({ min: FIRST, max: LAST }), (h) => {
      assert.equal(parseTpmUri(formatTpmUri(h)), h);
    }),
  );
  fc.assert(
    fc.property(fc.integer({ min: 0, max: 0xffffffff }).filter((h) => h < FIRST || h > LAST), (h) => {
      assertInvalid(formatTpmUri(h));
    }),
  );
});

test('fuzz: arbitrary text either parses to an owner handle whose canonical uri is that text, or is INVALID_ARGUMENT', () => {
  const near = fc.oneof(
    fc.string({ maxLength: 40 }),
    fc.string({ unit: 'binary', maxLength: 40 }),
    fc.tuple(fc.constantFrom('tpm:', 'tpm:handle=', 'tpm:handle=0x', 'tpm:handle=0x81', ''), fc.string({ maxLength: 16 })).map(([a, b]) => a + b),
    fc.tuple(fc.oneof(fc.integer({ min: 0, max: 0xffffffff }), fc.integer({ min: 0x80fffff0, max: 0x81800010 })), fc.constantFrom('', '', ';', '%20', 'x', ';handle=0x81000000')).map(([h, tail]) => `tpm:handle=0x${h.toString(16).padStart(8, '0')}${tail}`),
  );
  fc.assert(
    fc.property(near, (uri) => {
      let h: number;
      try {
        h = parseTpmUri(uri);
      } catch (e) {
        assert.ok(isSigilError(e, 'INVALID_ARGUMENT'), `unexpected ${String(e)}`);
        return;
      }
      assert.ok(h >= FIRST && h <= LAST);
      assert.equal(formatTpmUri(h), uri);
    }),
    { numRuns: 2000 },
  );
});

const NAME = `000b${'ab'.repeat(32)}`;

test('a name attribute after the handle is parsed when it is nameAlg || digest of that size', () => {
  assert.deepEqual(parseTpmKeyUri(`tpm:handle=0x81000100;name=${NAME}`), { handle: 0x81000100, name: Buffer.from(NAME, 'hex') });
  assert.deepEqual(parseTpmKeyUri('tpm:handle=0x81000100'), { handle: 0x81000100, name: null });
  assert.equal(parseTpmUri(`tpm:handle=0x81000100;name=${NAME}`), 0x81000100);
  assert.equal(formatTpmUri(0x81000100, Buffer.from(NAME, 'hex')), `tpm:handle=0x81000100;name=${NAME}`);
  assert.equal(parseTpmKeyUri(`tpm:handle=0x81000100;name=000c${'01'.repeat(48)}`).name?.length, 50);
  for (const uri of [
    `tpm:name=${NAME};handle=0x81000100`, // order
    `tpm:handle=0x81000100;name=${NAME.toUpperCase()}`,
    `tpm:handle=0x81000100;name=${NAME}0`,
    `tpm:handle=0x81000100;name=${NAME}00`, // digest longer than SHA-256's
    `tpm:handle=0x81000100;name=000b${'ab'.repeat(20)}`, // SHA-1 size under the SHA-256 id
    'tpm:handle=0x81000100;name=',
    'tpm:handle=0x81000100;name=000b',
    `tpm:handle=0x81000100;name=ffff${'ab'.repeat(32)}`,
    `tpm:handle=0x81000100;name=${NAME};name=${NAME}`,
    `tpm:handle=0x81000100;name=%30${NAME.slice(1)}`,
    `tpm:handle=0x81000100;name=${NAME};id=1`,
  ]) {
    assert.throws(() => parseTpmKeyUri(uri), (e) => isSigilError(e, 'INVALID_ARGUMENT'), uri);
  }
});

test('fuzz: handle and name uris round-trip; mutated ones parse only to their own canonical text', () => {
  const digestOf: Record<number, number> = { 0x0004: 20, 0x000b: 32, 0x000c: 48, 0x000d: 64, 0x0012: 32 };
  const name = fc.constantFrom(0x0004, 0x000b, 0x000c, 0x000d, 0x0012).chain((alg) =>
    fc.uint8Array({ minLength: digestOf[alg]!, maxLength: digestOf[alg]! }).map((d) => Buffer.concat([Buffer.from([alg >> 8, alg & 0xff]), d])),
  );
  fc.assert(
    fc.property(fc.integer({ min: FIRST, max: LAST }), name, (h, n) => {
      assert.deepEqual(parseTpmKeyUri(formatTpmUri(h, n)), { handle: h, name: n });
    }),
  );
  const mutated = fc.tuple(fc.integer({ min: FIRST, max: LAST }), name, fc.nat(), fc.string({ maxLength: 4 })).map(([h, n, at, ins]) => {
    const u = formatTpmUri(h, n);
    const i = at % (u.length + 1);
    return u.slice(0, i) + ins + u.slice(i + (at % 3));
  });
  fc.assert(
    fc.property(mutated, (uri) => {
      let parsed;
      try {
        parsed = parseTpmKeyUri(uri);
      } catch (e) {
        assert.ok(isSigilError(e, 'INVALID_ARGUMENT'), `unexpected ${String(e)}`);
        return;
      }
      assert.equal(formatTpmUri(parsed.handle, parsed.name), uri);
    }),
    { numRuns: 3000 },
  );
});
