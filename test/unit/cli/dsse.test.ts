import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { envelopeJson, MAX_ENVELOPE_BYTES, MAX_PAYLOAD_BYTES, pae, parseEnvelope } from '../../../src/cli/dsse.ts';
import { readBounded } from '../../../src/cli/files.ts';
import { SigilError } from '../../../src/errors.ts';
import { missingTools } from '../../helpers/hw.ts';

const bad = (bytes: string | Buffer, re: RegExp): void => {
  assert.throws(() => parseEnvelope(Buffer.from(bytes)), (e: unknown) => e instanceof SigilError && e.code === 'INVALID_ARGUMENT' && re.test(e.message));
};

test('PAE is the DSSE v1 encoding (the example of protocol.md), lengths in bytes', () => {
  assert.equal(pae('http://example.com/HelloWorld', Buffer.from('hello world')).toString(), 'DSSEv1 29 http://example.com/HelloWorld 11 hello world');
  // Lengths count UTF-8 bytes, not characters; an empty body still has its separator.
  assert.equal(pae('t/é', Buffer.alloc(0)).toString(), 'DSSEv1 4 t/é 0 ');
});

test('an envelope sigil writes parses back to the same fields', () => {
  const e = { payloadType: 'application/vnd.in-toto+json', payload: Buffer.from('{"_type":"https://in-toto.io/Statement/v1"}'), signatures: [{ keyid: 'ci/prov@3', sig: Buffer.from([1, 2, 3, 250]) }] };
  const json = envelopeJson(e);
  assert.deepEqual(Object.keys(JSON.parse(json.toString()) as object), ['payload', 'payloadType', 'signatures']);
  assert.deepEqual(parseEnvelope(json), e);
});

test('standard and url-safe base64, padded or not, are accepted (DSSE allows either)', () => {
  const payload = Buffer.from([0xfb, 0xff]);
  for (const enc of ['+/8=', '-_8=', '+/8', '-_8']) {
    const env = parseEnvelope(Buffer.from(JSON.stringify({ payload: enc, payloadType: 't', signatures: [{ sig: 'AA==' }] })));
    assert.deepEqual(env.payload, payload, enc);
    assert.equal(env.signatures[0]!.keyid, '', 'a missing keyid is empty');
  }
  // Mixed alphabets and padding in the middle are not base64.
  bad('{"payload":"+_8=","payloadType":"t","signatures":[{"sig":"AA=="}]}', /payload is not valid base64/);
  bad('{"payload":"+/8","payloadType":"t","signatures":[{"sig":"A=A="}]}', /sig is not valid base64/);
});

test('malformed envelopes are refused with what is wrong', () => {
  bad('', /not json/);
  bad('[1]', /not a json object/);
  bad('{"payloadType":"t","signatures":[{"sig":"AA=="}]}', /payload must be a base64 string/);
  bad('{"payload":"a*b=","payloadType":"t","signatures":[{"sig":"AA=="}]}', /payload is not valid base64/);
  bad('{"payload":"abcde","payloadType":"t","signatures":[{"sig":"AA=="}]}', /payload is not valid base64/);
  bad('{"payload":"","payloadType":"","signatures":[{"sig":"AA=="}]}', /payloadType must be a non-empty string/);
  bad('{"payload":"","payloadType":"t","signatures":[]}', /signatures must be a non-empty array/);
  bad('{"payload":"","payloadType":"t","signatures":[{"keyid":1,"sig":"AA=="}]}', /signature 1: keyid must be a string/);
  bad('{"payload":"","payloadType":"t","signatures":[{"keyid":"k@1","sig":""}]}', /signature 1: sig is empty/);
  bad('{"payload":"","payloadType":"t","signatures":[{"keyid":"k@1","sig":"AA=="},null]}', /signature 2 is not a json object/);
  bad(Buffer.alloc(MAX_ENVELOPE_BYTES + 1, 0x20), /larger than 64 MiB/);
});

test('property: the parser returns an envelope or throws INVALID_ARGUMENT, nothing else, on any json or bytes', () => {
  const envelopeLike = fc.record(
    {
      payload: fc.oneof(fc.base64String(), fc.string(), fc.jsonValue()),
      payloadType: fc.oneof(fc.string(), fc.jsonValue()),
      signatures: fc.oneof(fc.array(fc.record({ keyid: fc.oneof(fc.string(), fc.jsonValue()), sig: fc.oneof(fc.base64String(), fc.string(), fc.jsonValue()) }, { requiredKeys: [] })), fc.jsonValue()),
    },
    { requiredKeys: [] },
  );
  const input = fc.oneof(
    fc.uint8Array({ maxLength: 300 }).map((b) => Buffer.from(b)),
    fc.jsonValue().map((v) => Buffer.from(JSON.stringify(v) ?? 'null')),
    envelopeLike.map((v) => Buffer.from(JSON.stringify(v))),
  );
  fc.assert(
    fc.property(input, (bytes) => {
      try {
        const e = parseEnvelope(bytes);
        assert.equal(typeof e.payloadType, 'string');
        assert.ok(e.payloadType.length > 0 && e.signatures.length > 0 && Buffer.isBuffer(e.payload));
      } catch (err) {
        assert.ok(err instanceof SigilError, `not a SigilError: ${String(err)}`);
        assert.equal(err.code, 'INVALID_ARGUMENT');
        assert.match(err.message, /^dsse envelope: [a-z0-9]/);
      }
    }),
    { numRuns: 2000 },
  );
});

test('readBounded refuses a file above the limit before reading it, and reads one at the limit', () => {
  const dir = mkdtempSync(join(tmpdir(), 'sigil-dsse-'));
  try {
    const f = join(dir, 'f');
    writeFileSync(f, Buffer.alloc(1025, 7));
    assert.throws(() => readBounded(f, 1024, 'the payload'), (e: unknown) => e instanceof SigilError && e.code === 'MESSAGE_TOO_LARGE' && /the payload .* is larger than/.test(e.message));
    assert.equal(readBounded(f, 1025, 'the payload').length, 1025);
    assert.throws(() => readBounded(dir, 1024, 'the payload'), /is a directory/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('readBounded reads a FIFO (no size to go by) up to the limit, and refuses one that passes it', { skip: missingTools('mkfifo') ?? false }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'sigil-fifo-'));
  try {
    // A child process writes; readBounded blocks this thread in open and read until it has written and closed.
    const through = async (bytes: number, max: number): Promise<Buffer | Error> => {
      const f = join(dir, `fifo-${bytes}-${max}`);
      execFileSync('mkfifo', [f]);
      const child = spawn('sh', ['-c', `head -c ${bytes} /dev/urandom > "$1" || true`, 'sh', f], { stdio: 'ignore' });
      const exited = new Promise((resolve) => child.once('exit', resolve));
      let r: Buffer | Error;
      try {
        r = readBounded(f, max, 'the envelope');
      } catch (err) {
        r = err as Error;
      }
      await exited;
      return r;
    };
    // Several pipe buffers' worth (64 KiB each on Linux), exactly at the limit.
    const atLimit = await through(300_000, 300_000);
    assert.ok(Buffer.isBuffer(atLimit), String(atLimit));
    assert.equal(atLimit.length, 300_000);
    const small = await through(10, 1024);
    assert.ok(Buffer.isBuffer(small) && small.length === 10);
    const over = await through(300_001, 300_000);
    assert.ok(over instanceof SigilError && over.code === 'MESSAGE_TOO_LARGE' && /the envelope .*fifo-300001-300000 is larger than/.test(over.message), String(over));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('every envelope sign --dsse can write, verify --dsse reads: the largest payload, the longest payload type, a 4096-bit RSA signature', () => {
  const env = envelopeJson({
    payloadType: '"'.repeat(256),
    payload: Buffer.alloc(MAX_PAYLOAD_BYTES, 0xff),
    signatures: [{ keyid: `${'k/'.repeat(60)}x@99999`, sig: Buffer.alloc(512, 0xff) }],
  });
  assert.ok(env.length <= MAX_ENVELOPE_BYTES, `${env.length} bytes`);
  assert.equal(parseEnvelope(env).payload.length, MAX_PAYLOAD_BYTES);
});
