import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { Reader, TpmFormatError } from '../../../src/tpm/marshal.ts';
import {
  marshalAttest,
  marshalPublic,
  marshalSignature,
  objectName,
  parseAttest,
  parseNvPublic,
  parsePcrSelections,
  parsePublic,
  parsePublic2B,
  parseSignature,
  publicKeyOf,
} from '../../../src/tpm/structures.ts';
import { VECTORS } from './vectors.ts';

const hex = (s: string) => Buffer.from(s, 'hex');

// Runs a parser and reports success; anything thrown but TpmFormatError fails the property.
function tolerant<T>(f: () => T): T | undefined {
  try {
    return f();
  } catch (err) {
    if (err instanceof TpmFormatError) return undefined;
    throw err;
  }
}

const parsers: Record<string, (b: Buffer) => unknown> = {
  parsePublic: (b) => {
    const p = parsePublic(b);
    objectName(p);
    publicKeyOf(p);
    return p;
  },
  parsePublic2B: (b) => parsePublic2B(b),
  parseAttest: (b) => parseAttest(b),
  parseSignature: (b) => parseSignature(b),
  parseNvPublic: (b) => parseNvPublic(b),
  parsePcrSelections: (b) => {
    const r = new Reader(b);
    const s = parsePcrSelections(r);
    r.end();
    return s;
  },
};

const valid: Array<[keyof typeof parsers, Buffer]> = [
  ['parsePublic2B', hex(VECTORS.EK_RSA_PUB)],
  ['parsePublic2B', hex(VECTORS.EK_ECC_PUB)],
  ['parsePublic', hex(VECTORS.AK_ECC_PUB).subarray(2)],
  ['parsePublic', hex(VECTORS.AK_RSA_PUB).subarray(2)],
  ['parseAttest', hex(VECTORS.QUOTE_ECC_MSG)],
  ['parseAttest', hex(VECTORS.QUOTE_RSA_MSG)],
  ['parseSignature', hex(VECTORS.QUOTE_ECC_SIG)],
  ['parseSignature', hex(VECTORS.QUOTE_RSA_SIG)],
  ['parseNvPublic', hex('01c00002000b62072801000003f8')],
  ['parsePcrSelections', hex('00000002000b03838181000403000000')],
];

// A mutation of a valid encoding: flip, overwrite, insert, delete or truncate.
const mutation = fc.oneof(
  fc.record({ kind: fc.constant('flip' as const), at: fc.nat(), bit: fc.integer({ min: 0, max: 7 }) }),
  fc.record({ kind: fc.constant('set' as const), at: fc.nat(), value: fc.integer({ min: 0, max: 255 }) }),
  fc.record({ kind: fc.constant('insert' as const), at: fc.nat(), bytes: fc.uint8Array({ minLength: 1, maxLength: 8 }) }),
  fc.record({ kind: fc.constant('delete' as const), at: fc.nat(), n: fc.integer({ min: 1, max: 8 }) }),
  fc.record({ kind: fc.constant('truncate' as const), at: fc.nat() }),
);
type Mutation = typeof mutation extends fc.Arbitrary<infer T> ? T : never;

function mutate(b: Buffer, ms: Mutation[]): Buffer {
  let out = Buffer.from(b);
  for (const m of ms) {
    const at = out.length === 0 ? 0 : m.at % (out.length + 1);
    if (m.kind === 'flip' && at < out.length) out[at]! ^= 1 << m.bit;
    else if (m.kind === 'set' && at < out.length) out[at] = m.value;
    else if (m.kind === 'insert') out = Buffer.concat([out.subarray(0, at), m.bytes, out.subarray(at)]);
    else if (m.kind === 'delete') out = Buffer.concat([out.subarray(0, at), out.subarray(at + m.n)]);
    else if (m.kind === 'truncate') out = out.subarray(0, at);
  }
  return out;
}

test('every parser over arbitrary bytes throws nothing but TpmFormatError', () => {
  for (const [name, parse] of Object.entries(parsers)) {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 600 }), (bytes) => {
        tolerant(() => parse(Buffer.from(bytes)));
      }),
      { numRuns: 1500, seed: 0x5161 + name.length },
    );
  }
});

test('every parser over mutations of valid structures throws nothing but TpmFormatError', () => {
  fc.assert(
    fc.property(fc.integer({ min: 0, max: valid.length - 1 }), fc.array(mutation, { minLength: 1, maxLength: 4 }), (i, ms) => {
      const [name, bytes] = valid[i]!;
      tolerant(() => parsers[name]!(mutate(bytes, ms)));
    }),
    { numRuns: 8000 },
  );
});

test('whatever parses re-marshals to the same bytes (public, signature) or the same meaning (attest)', () => {
  fc.assert(
    fc.property(fc.integer({ min: 0, max: valid.length - 1 }), fc.array(mutation, { minLength: 1, maxLength: 3 }), (i, ms) => {
      const [name, bytes] = valid[i]!;
      const b = mutate(bytes, ms);
      if (name === 'parsePublic') {
        const p = tolerant(() => parsePublic(b));
        if (p !== undefined) assert.deepEqual(marshalPublic(p), b);
      } else if (name === 'parseSignature') {
        const s = tolerant(() => parseSignature(b));
        if (s !== undefined) assert.deepEqual(marshalSignature(s), b);
      } else if (name === 'parseAttest') {
        const a = tolerant(() => parseAttest(b));
        if (a !== undefined) {
          const again = parseAttest(marshalAttest(a));
          assert.deepEqual({ ...again, raw: undefined }, { ...a, raw: undefined });
        }
      }
    }),
    { numRuns: 4000 },
  );
});

test('the mutation fuzzer reaches both outcomes (it is not vacuous)', () => {
  let parsed = 0;
  let rejected = 0;
  fc.assert(
    fc.property(fc.integer({ min: 0, max: valid.length - 1 }), fc.array(mutation, { minLength: 1, maxLength: 2 }), (i, ms) => {
      const [name, bytes] = valid[i]!;
      if (tolerant(() => parsers[name]!(mutate(bytes, ms))) === undefined) rejected++;
      else parsed++;
    }),
    { numRuns: 2000, seed: 42 },
  );
  assert.ok(parsed > 100, `parsed ${parsed}`);
  assert.ok(rejected > 100, `rejected ${rejected}`);
});
