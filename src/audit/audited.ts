import { randomUUID } from 'node:crypto';
import { SigilError, isSigilError } from '../errors.ts';
import type { AuditEvent, AuditResult, AuditSink } from './audit-sink.ts';

// Codes that mean the request was turned down (by policy or for its content), not that sigil failed to do it.
const REFUSALS: ReadonlySet<string> = new Set([
  'INVALID_ARGUMENT',
  'KEY_NOT_FOUND',
  'KEY_EXISTS',
  'UNSUPPORTED_ALGORITHM',
  'MESSAGE_TOO_LARGE',
  'LIMIT_REACHED',
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
 * Writes ahead the intent of an act about to run (`result: 'started'`, `detail.intent` a fresh id) and
 * returns that id, which the act's outcome entry repeats. Resolves only once the intent is durable; rejects
 * AUDIT_UNAVAILABLE when it cannot be written, and then the act must not run.
 */
export async function recordIntent(sink: AuditSink, event: Omit<AuditEvent, 'result' | 'reason'>): Promise<string> {
  const intent = randomUUID();
  try {
    await sink.record({ ...event, result: 'started', detail: { ...event.detail, intent } });
  } catch (err) {
    throw isSigilError(err, 'AUDIT_UNAVAILABLE') ? err : new SigilError('AUDIT_UNAVAILABLE', 'the audit log cannot be written', { cause: err });
  }
  return intent;
}

/**
 * Runs an audited admin act, fail closed and written ahead: its intent entry is durable before the act
 * starts (the act is refused with AUDIT_UNAVAILABLE when it cannot be written, which is also the write that
 * heals a log that failed before), then the outcome (ok, or refused/failed with the reason) carrying the same
 * `detail.intent`, and only then does the result return. When the outcome cannot be written the act's result
 * is dropped and the caller gets AUDIT_UNAVAILABLE; the intent stays in the log.
 */
export async function audited<T>(
  sink: AuditSink,
  event: Omit<AuditEvent, 'result' | 'reason'>,
  act: () => Promise<T> | T,
  onOk?: (r: T) => Partial<Omit<AuditEvent, 'result'>>,
): Promise<T> {
  const intent = await recordIntent(sink, event);
  return outcome(sink, event, intent, act, onOk);
}

/** A sink that tells where an entry landed (the audit log). */
export interface IndexedAuditSink extends AuditSink {
  /** Like `record`, resolving with the entry's index once it is durable. */
  recordAt(e: AuditEvent): Promise<number>;
}

/** `audited`, for an act that must name its own intent entry (an archive record points at it): `act` gets the intent's index. */
export async function auditedAt<T>(sink: IndexedAuditSink, event: Omit<AuditEvent, 'result' | 'reason'>, act: (intentIndex: number) => Promise<T> | T): Promise<T> {
  const intent = randomUUID();
  let at: number;
  try {
    at = await sink.recordAt({ ...event, result: 'started', detail: { ...event.detail, intent } });
  } catch (err) {
    throw isSigilError(err, 'AUDIT_UNAVAILABLE') ? err : new SigilError('AUDIT_UNAVAILABLE', 'the audit log cannot be written', { cause: err });
  }
  return outcome(sink, event, intent, () => act(at));
}

async function outcome<T>(
  sink: AuditSink,
  event: Omit<AuditEvent, 'result' | 'reason'>,
  intent: string,
  act: () => Promise<T> | T,
  onOk?: (r: T) => Partial<Omit<AuditEvent, 'result'>>,
): Promise<T> {
  let r: T;
  try {
    r = await act();
  } catch (err) {
    await sink.record({ ...event, detail: { ...event.detail, intent }, result: resultOf(err), reason: reasonOf(err) });
    throw err;
  }
  const extra = onOk?.(r);
  await sink.record({ ...event, ...extra, detail: { ...(extra?.detail ?? event.detail), intent }, result: 'ok' });
  return r;
}
