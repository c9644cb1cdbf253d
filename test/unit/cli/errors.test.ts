import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Metadata, status as Status } from '@grpc/grpc-js';
import { describeError, errorJson } from '../../../src/cli/errors.ts';
import { parseUtcTime, UsageError } from '../../../src/cli/commands/context.ts';
import { encodeStatusDetails, ERROR_DOMAIN } from '../../../src/status-details.ts';

// The UNAVAILABLE details grpc-js 1.14 gives when a channel cannot connect, as sigilctl receives them.
const failed = (why: string) => ({ code: Status.UNAVAILABLE, details: `No connection established. Last error: ${why}. Resolution note: ` });

test('a connection that failed says which address and what to check', () => {
  const at = (why: string) => describeError(failed(why), '10.0.0.1:8443');
  assert.equal(at('Error: connect ECONNREFUSED 10.0.0.1:8443'), 'UNAVAILABLE: cannot reach sigild at 10.0.0.1:8443: connection refused (is sigild running there?)');
  assert.equal(at('Error: self-signed certificate in certificate chain'), 'UNAVAILABLE: cannot reach sigild at 10.0.0.1:8443: its certificate is not signed by the CA bundle given with --ca (SIGIL_CACERT)');
  assert.equal(at('Error: unable to verify the first certificate'), 'UNAVAILABLE: cannot reach sigild at 10.0.0.1:8443: its certificate is not signed by the CA bundle given with --ca (SIGIL_CACERT)');
  assert.equal(
    at("Error [ERR_TLS_CERT_ALTNAME_INVALID]: Hostname/IP does not match certificate's altnames: IP: 10.0.0.1 is not in the cert's list: 127.0.0.1"),
    'UNAVAILABLE: cannot reach sigild at 10.0.0.1:8443: its certificate does not name this host: use an address its certificate names',
  );
  assert.equal(at('Error: certificate has expired'), 'UNAVAILABLE: cannot reach sigild at 10.0.0.1:8443: its certificate has expired');
  assert.equal(at('Error: connect ETIMEDOUT 10.0.0.1:8443'), 'UNAVAILABLE: cannot reach sigild at 10.0.0.1:8443: the network did not get through (ETIMEDOUT)');
  assert.equal(describeError({ code: Status.UNAVAILABLE, details: 'Name resolution failed for target dns:nowhere.invalid:443' }, 'nowhere.invalid:443'), 'UNAVAILABLE: cannot reach sigild at nowhere.invalid:443: unknown host');
  // Anything else grpc-js reports is passed on without its wrapping.
  assert.equal(at('Error: something new'), 'UNAVAILABLE: cannot reach sigild at 10.0.0.1:8443: something new');
});

test("sigild's own answers keep their code and details, UNAVAILABLE ones included", () => {
  assert.equal(describeError({ code: Status.NOT_FOUND, details: 'no key named x' }), 'NOT_FOUND: no key named x');
  assert.equal(describeError({ code: Status.UNAVAILABLE, details: 'backend aws is unavailable (circuit breaker open, next try in 2 s)' }), 'UNAVAILABLE: backend aws is unavailable (circuit breaker open, next try in 2 s)');
});

test('file errors name the file and say what is wrong in words', () => {
  const errno = (code: string, syscall: string, path: string) => Object.assign(new Error(`${code}: x, ${syscall} '${path}'`), { code, syscall, path });
  assert.equal(describeError(errno('ENOENT', 'open', '/a/b.sig')), 'cannot open /a/b.sig: no such file or directory');
  assert.equal(describeError(errno('EACCES', 'open', '/etc/shadow')), 'cannot open /etc/shadow: permission denied');
  assert.equal(describeError(errno('ENOENT', 'stat', '/absent')), 'cannot read /absent: no such file or directory');
  assert.equal(describeError(errno('EWHAT', 'fsync', '/x')), 'cannot use /x: EWHAT');
  assert.equal(describeError(new Error('plain')), 'plain');
  assert.equal(describeError('text'), 'text');
});

test('the json form of an error: the status name, sigild\'s reason and metadata when it sent them, the message', () => {
  const metadata = new Metadata();
  metadata.set('grpc-status-details-bin', encodeStatusDetails({ code: Status.FAILED_PRECONDITION, message: 'key k@1 is DISABLED and cannot sign', info: { reason: 'KEY_VERSION_DISABLED', domain: ERROR_DOMAIN, metadata: { key_version: 'k@1', state: 'DISABLED' } } }));
  assert.deepEqual(errorJson({ code: Status.FAILED_PRECONDITION, details: 'key k@1 is DISABLED and cannot sign', metadata }), {
    code: 'FAILED_PRECONDITION',
    reason: 'KEY_VERSION_DISABLED',
    message: 'key k@1 is DISABLED and cannot sign',
    metadata: { key_version: 'k@1', state: 'DISABLED' },
  });
  // A sigild older than reasons, and a connection that failed: no reason, the same words as the text form.
  assert.deepEqual(errorJson({ code: Status.NOT_FOUND, details: 'no key named x', metadata: new Metadata() }), { code: 'NOT_FOUND', message: 'no key named x' });
  assert.deepEqual(errorJson(failed('Error: connect ECONNREFUSED 10.0.0.1:8443'), '10.0.0.1:8443'), { code: 'UNAVAILABLE', message: 'cannot reach sigild at 10.0.0.1:8443: connection refused (is sigild running there?)' });
  assert.deepEqual(errorJson(new Error('unknown algorithm dsa'), undefined, true), { code: 'INVALID_ARGUMENT', message: 'unknown algorithm dsa' });
  assert.deepEqual(errorJson(new Error('plain')), { code: 'UNKNOWN', message: 'plain' });
});

test('times on the command line: a UTC offset is required, and every field must exist (no February 30 rolled into March)', () => {
  assert.equal(parseUtcTime('2028-02-29T00:00:00Z', '--at').toISOString(), '2028-02-29T00:00:00.000Z');
  assert.equal(parseUtcTime('2026-03-01T12:00:00.5+01:00', '--at').toISOString(), '2026-03-01T11:00:00.500Z');
  for (const t of ['2026-03-01T12:00:00', '2026-02-30T00:00:00Z', '2026-02-29T00:00:00Z', '2026-01-01T24:00:00Z', '2026-13-01T00:00:00Z', '2026-03-01T12:00:60Z', '2026-03-01T12:00:00+15:00']) {
    assert.throws(() => parseUtcTime(t, '--since'), (e: unknown) => e instanceof UsageError && /^--since takes an ISO 8601 time with a UTC offset/.test(e.message), t);
  }
  // The message says what is wrong: no offset, an offset without its colon, or a field that does not exist.
  assert.throws(() => parseUtcTime('2026-03-01T12:00:00', '--at'), /a time without an offset would be read in this machine's local time\)$/);
  assert.throws(() => parseUtcTime('2026-03-01T12:00:00+0100', '--at'), /write the offset with a colon, e\.g\. \+01:00\)$/);
  assert.throws(() => parseUtcTime('2026-02-30T00:00:00Z', '--at'), /"2026-02-30T00:00:00Z" is no real time: /);
});
