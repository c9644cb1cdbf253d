// sigil-agent's decisions after a failed renewal or enrollment follow sigild's ErrorInfo reason, not the wording
// of its message; only without an ErrorInfo (a sigild older than reasons) do they fall back to the message.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Metadata, status as Status, type ServiceError } from '@grpc/grpc-js';
import { enrollmentOutcome, renewalOutcome } from '../../../src/cli/agent/agent.ts';
import { AkUnavailableError } from '../../../src/cli/agent/attestor.ts';
import { errorInfoOf, reasonOf } from '../../../src/cli/error-reason.ts';
import { encodeStatusDetails, ERROR_DOMAIN } from '../../../src/status-details.ts';

/** A ServiceError as grpc-js hands it over: with grpc-status-details-bin when `reason` is given. */
function answer(code: Status, details: string, reason?: string, o: { domain?: string; statusCode?: number } = {}): Partial<ServiceError> {
  const metadata = new Metadata();
  if (reason !== undefined) {
    metadata.set('grpc-status-details-bin', encodeStatusDetails({ code: o.statusCode ?? code, message: details, info: { reason, domain: o.domain ?? ERROR_DOMAIN, metadata: {} } }));
  }
  return { code, details, message: `${code} ${Status[code]}: ${details}`, metadata };
}

const D = Status.PERMISSION_DENIED;

test('renewal: ENROLL_AGAIN and TPM_CLOCK_WENT_BACKWARDS enroll afresh whatever the message says', () => {
  assert.equal(renewalOutcome(answer(D, 'please re-enroll, we lost your record', 'ENROLL_AGAIN')), 'enroll');
  assert.equal(renewalOutcome(answer(D, 'the tpm time travelled', 'TPM_CLOCK_WENT_BACKWARDS')), 'enroll');
  assert.equal(renewalOutcome(new AkUnavailableError('the tpm no longer loads the enrolled ak')), 'enroll');
});

test('renewal: another reason retries, even when the message reads like one that enrolls', () => {
  assert.equal(renewalOutcome(answer(D, 'ek no longer trusted: x; enroll again', 'PERMISSION_DENIED')), 'retry');
  assert.equal(renewalOutcome(answer(Status.UNAUTHENTICATED, 'builder tpm revoked', 'BUILDER_REVOKED')), 'retry');
  assert.equal(renewalOutcome(answer(Status.UNAVAILABLE, 'the audit log cannot be written', 'AUDIT_UNAVAILABLE')), 'retry');
});

test('renewal: without an ErrorInfo (an older sigild), the message decides, as before reasons', () => {
  assert.equal(renewalOutcome(answer(D, 'no enrollment for this ek (never made, or forgotten by an admin); enroll again')), 'enroll');
  assert.equal(renewalOutcome(answer(D, 'tpm resetCount went backwards')), 'enroll');
  assert.equal(renewalOutcome(answer(D, 'please re-enroll, we lost your record')), 'retry');
  assert.equal(renewalOutcome(new Error('socket hang up')), 'retry');
});

test('enrollment: BUILDER_REVOKED stops for good whatever the message says; other refusals retry slowly', () => {
  assert.equal(enrollmentOutcome(answer(D, 'this tpm may not enroll any more', 'BUILDER_REVOKED')), 'stop');
  assert.equal(enrollmentOutcome(answer(D, 'builder tpm revoked (reworded meaning: something else)', 'PERMISSION_DENIED')), 'refused');
  assert.equal(enrollmentOutcome(answer(D, 'tpm clock went backwards (...)', 'TPM_CLOCK_WENT_BACKWARDS')), 'refused');
  assert.equal(enrollmentOutcome(answer(Status.FAILED_PRECONDITION, 'nonce expired', 'FAILED_PRECONDITION')), 'refused');
  assert.equal(enrollmentOutcome(answer(Status.UNAVAILABLE, 'no connection established')), 'retry');
  // sigild's table of pending challenges is full: a busy service, not a refusal; retried within the minute.
  assert.equal(enrollmentOutcome(answer(Status.RESOURCE_EXHAUSTED, 'too many pending attestation challenges (limit 4096); try again later', 'LIMIT_REACHED')), 'retry');
  // Older sigild: the message.
  assert.equal(enrollmentOutcome(answer(D, 'builder tpm revoked')), 'stop');
  assert.equal(enrollmentOutcome(answer(D, 'this tpm may not enroll any more')), 'refused');
});

test('the reader takes only an ErrorInfo of sigil\'s domain whose status code is the call\'s', () => {
  assert.deepEqual(errorInfoOf(answer(D, 'x', 'BUILDER_REVOKED')), { reason: 'BUILDER_REVOKED', domain: ERROR_DOMAIN, metadata: {} });
  assert.equal(reasonOf(answer(D, 'x', 'BUILDER_REVOKED', { domain: 'example.com' })), undefined);
  assert.equal(reasonOf(answer(D, 'x', 'BUILDER_REVOKED', { statusCode: Status.NOT_FOUND })), undefined);
  assert.equal(reasonOf(answer(D, 'x')), undefined);
  const garbage = answer(D, 'x');
  garbage.metadata!.set('grpc-status-details-bin', Buffer.from([0xff, 0xff, 0xff]));
  assert.equal(reasonOf(garbage), undefined);
  assert.equal(reasonOf({ code: D, details: 'no metadata' }), undefined);
  assert.equal(reasonOf(new Error('local')), undefined);
  assert.equal(reasonOf(null), undefined);
});
