import { SigilError } from '../errors.ts';
import type { AuditEvent, AuditResult, AuditSink } from './audit-sink.ts';

// Codes that mean the request was turned down (by policy or for its content), not that sigil failed to do it.
const REFUSALS: ReadonlySet<string> = new Set([
  'INVALID_ARGUMENT',
  'KEY_NOT_FOUND',
  'KEY_EXISTS',
  'UNSUPPORTED_ALGORITHM',
  'MESSAGE_TOO_LARGE',
  'UNAUTHENTICATED',
  'PERMISSION_DENIED',
  'FAILED_PRECONDITION',
  'NOT_IMPLEMENTED',
  'AUDIT_UNAVAILABLE',
]);

/** The error code an audit entry records for `err`. */
export function reasonOf(err: unknown): string {
  return err instanceof SigilError ? err.code : 'INTERNAL';
}

/** `refused` for a request turned down, `failed` for one sigil could not carry out. */
export function resultOf(err: unknown): AuditResult {
  return REFUSALS.has(reasonOf(err)) ? 'refused' : 'failed';
}

/**
 * Runs an audited act, fail closed: refuses before starting when the log cannot take entries, records the
 * outcome (ok, or refused/failed with the reason) and returns only once that entry is durable. When the
 * entry cannot be written the act's result is dropped and the caller gets AUDIT_UNAVAILABLE.
 */
export async function audited<T>(
  sink: AuditSink,
  event: Omit<AuditEvent, 'result' | 'reason'>,
  act: () => Promise<T> | T,
  onOk?: (r: T) => Partial<Omit<AuditEvent, 'result'>>,
): Promise<T> {
  let r: T;
  try {
    sink.ready();
    r = await act();
  } catch (err) {
    await sink.record({ ...event, result: resultOf(err), reason: reasonOf(err) });
    throw err;
  }
  await sink.record({ ...event, ...onOk?.(r), result: 'ok' });
  return r;
}
