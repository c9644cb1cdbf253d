// The grpc-status-details-bin codec: what sigild encodes decodes back whole, and the decoder meets any bytes
// (arbitrary, truncated or corrupted encodings) with undefined or a well-formed value, never a throw.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { BinaryWriter, WireType } from '@bufbuild/protobuf/wire';
import { decodeStatusDetails, encodeStatusDetails, ERROR_DOMAIN, type StatusWithInfo } from '../../src/status-details.ts';

const TYPE_URL = Buffer.from('type.googleapis.com/google.rpc.ErrorInfo');

const text = fc.string({ unit: 'grapheme', maxLength: 40 });
const status: fc.Arbitrary<StatusWithInfo> = fc.record({
  code: fc.integer({ min: 1, max: 16 }),
  message: text,
  info: fc.record({
    reason: fc.stringMatching(/^[A-Z][A-Z0-9_]{0,40}$/),
    domain: fc.constant(ERROR_DOMAIN),
    metadata: fc.dictionary(fc.stringMatching(/^[a-z_]{1,12}$/), text, { maxKeys: 4 }),
  }),
});

/** Shape check for whatever the decoder returns. */
function wellFormed(s: StatusWithInfo | undefined): void {
  if (s === undefined) return;
  assert.ok(Number.isInteger(s.code));
  assert.equal(typeof s.message, 'string');
  assert.ok(typeof s.info.reason === 'string' && s.info.reason !== '');
  assert.equal(typeof s.info.domain, 'string');
  for (const [k, v] of Object.entries(s.info.metadata)) assert.ok(typeof k === 'string' && typeof v === 'string');
}

test('encode then decode gives back code, message, reason, domain and metadata', () => {
  fc.assert(
    fc.property(status, (s) => {
      const d = decodeStatusDetails(encodeStatusDetails(s));
      assert.ok(d !== undefined);
      assert.equal(d.code, s.code);
      assert.equal(d.message, s.message);
      assert.equal(d.info.reason, s.info.reason);
      assert.equal(d.info.domain, s.info.domain);
      assert.deepEqual(Object.entries(d.info.metadata).sort(), Object.entries(s.info.metadata).sort());
    }),
  );
});

test('arbitrary bytes never throw, and are not taken for an ErrorInfo', () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 512 }), (bytes) => {
      const d = decodeStatusDetails(bytes);
      // Without the ErrorInfo type URL in them, no bytes can carry one.
      if (!Buffer.from(bytes).includes(TYPE_URL)) assert.equal(d, undefined);
      wellFormed(d);
    }),
    { numRuns: 2000 },
  );
});

test('truncated and corrupted encodings never throw', () => {
  fc.assert(
    fc.property(status, fc.nat(), fc.nat(), fc.integer({ min: 0, max: 255 }), (s, cut, at, byte) => {
      const enc = encodeStatusDetails(s);
      wellFormed(decodeStatusDetails(enc.subarray(0, cut % (enc.length + 1))));
      const bad = Buffer.from(enc);
      bad[at % bad.length] = byte;
      wellFormed(decodeStatusDetails(bad));
    }),
    { numRuns: 2000 },
  );
});

test('a Status without an ErrorInfo, or with another detail type, is undefined; unknown fields are skipped', () => {
  const plain = new BinaryWriter().tag(1, WireType.Varint).int32(5).tag(2, WireType.LengthDelimited).string('no key').finish();
  assert.equal(decodeStatusDetails(plain), undefined);
  const other = new BinaryWriter()
    .tag(1, WireType.Varint).int32(5)
    .tag(3, WireType.LengthDelimited).fork().tag(1, WireType.LengthDelimited).string('type.googleapis.com/google.rpc.RetryInfo').tag(2, WireType.LengthDelimited).bytes(new Uint8Array([8, 1])).join()
    .finish();
  assert.equal(decodeStatusDetails(other), undefined);
  assert.equal(decodeStatusDetails(new Uint8Array(0)), undefined);
  const s: StatusWithInfo = { code: 9, message: 'key k@1 is DISABLED and cannot sign', info: { reason: 'KEY_VERSION_DISABLED', domain: ERROR_DOMAIN, metadata: { key_version: 'k@1' } } };
  // A field a later google.rpc.Status might add, before and after the known ones.
  const extended = Buffer.concat([new BinaryWriter().tag(99, WireType.Varint).uint32(7).finish(), encodeStatusDetails(s), new BinaryWriter().tag(98, WireType.LengthDelimited).string('x').finish()]);
  assert.deepEqual(decodeStatusDetails(extended), s);
  // A map key `__proto__` stays data.
  const proto = decodeStatusDetails(encodeStatusDetails({ ...s, info: { ...s.info, metadata: JSON.parse('{"__proto__":"x"}') as Record<string, string> } }));
  assert.equal(Object.getPrototypeOf(proto!.info.metadata), Object.prototype);
  assert.equal(proto!.info.metadata['__proto__'], 'x');
});
