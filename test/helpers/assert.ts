import assert from 'node:assert/strict';
import { inspect } from 'node:util';
import { status as Status, type ServiceError } from '@grpc/grpc-js';
import { isSigilError, type ErrorCode } from '../../src/errors.ts';
import { reasonOf } from '../../src/cli/error-reason.ts';

/**
 * Asserts that `p` rejects with a SigilError of `code` whose message follows the house style (no trailing
 * period), and, when given, matches `check` (a pattern, or a function that asserts on the message).
 */
export async function assertCode(p: Promise<unknown>, code: ErrorCode, check?: RegExp | ((message: string) => void)): Promise<void> {
  await assert.rejects(p, (e) => {
    assert.ok(isSigilError(e), `expected a SigilError, got ${inspect(e)}`);
    assert.equal(e.code, code, e.message);
    assert.doesNotMatch(e.message, /\.$/, 'no trailing period');
    if (check instanceof RegExp) assert.match(e.message, check);
    else check?.(e.message);
    return true;
  });
}

/**
 * Asserts that a gRPC call rejects with status `code` and, when given, details matching `re` and the ErrorInfo
 * reason `reason` (from grpc-status-details-bin).
 */
export function rejectsWith(p: Promise<unknown>, code: Status, re?: RegExp, reason?: string): Promise<void> {
  return assert.rejects(p, (e: ServiceError) => {
    assert.equal(Status[e.code], Status[code], `got ${Status[e.code]}: ${e.details}`);
    if (re) assert.match(e.details, re);
    if (reason !== undefined) assert.equal(reasonOf(e), reason, `reason of ${Status[e.code]}: ${e.details}`);
    return true;
  });
}
