import assert from 'node:assert/strict';
import { test } from 'node:test';
import { p256, p384 } from '@noble/curves/nist.js';
import {
  DependencyTimeoutException,
  DisabledException,
  KMSInternalException,
  KMSInvalidStateException,
  KMSServiceException,
  NotFoundException,
} from '@aws-sdk/client-kms';
import fc from 'fast-check';
import { ecdsaRawToDer } from '../../../src/signers/signer.ts';
import { isDerEcdsaSignature } from '../../../src/signers/signer.ts';
import { mapAwsError } from '../../../src/signers/awskms/errors.ts';

const meta = (status: number) => ({ $metadata: { httpStatusCode: status } });

test('a socket reset the SDK renames TimeoutError reads as unreachable, a real timeout as no answer', () => {
  // What the SDK's HTTP handler throws when a pooled connection the service closed is reused.
  const reset = Object.assign(new Error('socket hang up'), { code: 'ECONNRESET', name: 'TimeoutError' });
  const e1 = mapAwsError(reset, 'aws kms sign with k', 1000);
  assert.equal(e1.code, 'BACKEND_UNAVAILABLE');
  assert.equal(e1.message, 'aws kms sign with k: aws kms unreachable (econnreset)');
  const timeout = Object.assign(new Error('Connection timed out after 1000 ms'), { name: 'TimeoutError' });
  assert.equal(mapAwsError(timeout, 'aws kms sign with k', 1000).message, 'aws kms sign with k: no answer from aws kms within 1000 ms');
});

test('maps the SDK exception classes to sigil codes', () => {
  const cases: Array<[unknown, string]> = [
    [new NotFoundException({ message: 'Key does not exist', ...meta(400) }), 'KEY_NOT_FOUND'],
    [new DisabledException({ message: 'x is disabled.', ...meta(400) }), 'FAILED_PRECONDITION'],
    [new KMSInvalidStateException({ message: 'x is pending deletion.', ...meta(400) }), 'FAILED_PRECONDITION'],
    [new KMSInternalException({ message: 'boom', ...meta(500) }), 'BACKEND_UNAVAILABLE'],
    [new DependencyTimeoutException({ message: 'slow', ...meta(503) }), 'BACKEND_UNAVAILABLE'],
    [new KMSServiceException({ name: 'ThrottlingException', $fault: 'client', message: 'Rate exceeded', ...meta(400) }), 'BACKEND_UNAVAILABLE'],
    [new KMSServiceException({ name: 'SomethingNew', $fault: 'server', message: 'x', ...meta(502) }), 'BACKEND_UNAVAILABLE'],
    [new KMSServiceException({ name: 'SomethingNew', $fault: 'client', message: 'x', ...meta(400) }), 'BACKEND_ERROR'],
    [new KMSServiceException({ name: 'InvalidSignatureException', $fault: 'client', message: 'The Canonical String for this request should have been AKIA...', ...meta(400) }), 'BACKEND_ERROR'],
    [Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:1'), { code: 'ECONNREFUSED' }), 'BACKEND_UNAVAILABLE'],
    [Object.assign(new Error('socket hang up'), { code: 'ECONNRESET' }), 'BACKEND_UNAVAILABLE'],
    [Object.assign(new Error('This operation was aborted'), { name: 'AbortError' }), 'BACKEND_UNAVAILABLE'],
    [Object.assign(new Error('Could not load credentials from any providers'), { name: 'CredentialsProviderError' }), 'BACKEND_ERROR'],
    [new Error('anything else'), 'BACKEND_ERROR'],
  ];
  for (const [err, code] of cases) {
    const e = mapAwsError(err, 'aws kms sign with k', 1000);
    assert.equal(e.code, code, `${(err as Error).name}: ${e.message}`);
    assert.match(e.message, /^aws kms sign with k: [^A-Z]/);
    assert.doesNotMatch(e.message, /\.$|AKIA|Canonical/);
    assert.equal(e.cause, err);
  }
});

test('accepts the DER signatures of real ECDSA keys and refuses malformed ones', () => {
  for (const [curve, size] of [[p256, 32], [p384, 48]] as const) {
    const { secretKey } = curve.keygen();
    for (let i = 0; i < 50; i++) {
      const der = curve.sign(crypto.getRandomValues(new Uint8Array(size)), secretKey, { prehash: false, format: 'der' });
      assert.ok(isDerEcdsaSignature(der, size));
      assert.ok(!isDerEcdsaSignature(Buffer.concat([der, Buffer.from([0])]), size), 'trailing byte');
      assert.ok(!isDerEcdsaSignature(der.subarray(0, der.length - 1), size), 'truncated');
    }
  }
  const r = Buffer.alloc(32, 0x11);
  assert.ok(isDerEcdsaSignature(ecdsaRawToDer(Buffer.concat([r, r])), 32));
  assert.ok(!isDerEcdsaSignature(ecdsaRawToDer(Buffer.concat([r, r])), 31), 'integer longer than the order');
  assert.ok(!isDerEcdsaSignature(Buffer.from('3006020100020101', 'hex'), 32), 'zero r');
  assert.ok(!isDerEcdsaSignature(Buffer.from('30080202007f020101', 'hex'), 32), 'non-minimal r');
  assert.ok(!isDerEcdsaSignature(Buffer.from('3006020181020101', 'hex'), 32), 'negative r');
  assert.ok(!isDerEcdsaSignature(Buffer.alloc(64, 1), 32), 'raw r||s');
});

test('property: what isDerEcdsaSignature accepts is exactly the canonical DER of some nonzero (r, s)', () => {
  const reencode = (der: Uint8Array): Buffer => {
    const off = der[1]! === 0x81 ? 3 : 2;
    const rLen = der[off + 1]!;
    const r = der.subarray(off + 2, off + 2 + rLen);
    const s = der.subarray(off + 4 + rLen);
    const pad = (v: Uint8Array) => Buffer.concat([Buffer.alloc(48), v]).subarray(-48);
    return ecdsaRawToDer(Buffer.concat([pad(r), pad(s)]));
  };
  const nearDer = fc.tuple(fc.uint8Array({ minLength: 1, maxLength: 49 }), fc.uint8Array({ minLength: 1, maxLength: 49 })).map(([r, s]) =>
    Buffer.concat([Buffer.from([0x30, r.length + s.length + 4, 0x02, r.length]), r, Buffer.from([0x02, s.length]), s]),
  );
  fc.assert(
    fc.property(fc.oneof(fc.uint8Array({ maxLength: 120 }), nearDer), (b) => {
      if (isDerEcdsaSignature(b, 48)) assert.deepEqual(reencode(b), Buffer.from(b));
    }),
    { numRuns: 5000 },
  );
  fc.assert(
    fc.property(fc.uint8Array({ minLength: 48, maxLength: 48 }), fc.uint8Array({ minLength: 48, maxLength: 48 }), (r, s) => {
      const nonzero = r.some((x) => x !== 0) && s.some((x) => x !== 0);
      assert.equal(isDerEcdsaSignature(ecdsaRawToDer(Buffer.concat([r, s])), 48), nonzero);
    }),
  );
});
