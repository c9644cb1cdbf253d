import assert from 'node:assert/strict';
import { test } from 'node:test';
import { status as Status } from '@grpc/grpc-js';
import { describeError } from '../../../src/cli/errors.ts';

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
