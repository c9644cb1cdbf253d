import type { Logger } from '../log.ts';

/**
 * The outcome of an audited act, or `started`: the intent an admin act writes before it runs (write-ahead),
 * which the outcome entry with the same `detail.intent` follows.
 */
export type AuditResult = 'ok' | 'refused' | 'failed' | 'started';

/** One act as the audit log records it; the log adds the time. Never holds a secret. */
export interface AuditEvent {
  /** Who acted: the client certificate subject, or `sigild` for the daemon's own timers. */
  who: string;
  /** What was done, dotted lower-case: `sign`, `key.rotate`, `approval.approve`, `identity.revoke`, ... */
  act: string;
  /** The key version concerned, `name@N`, where there is one. */
  key?: string | undefined;
  /** The digest signed (lower-case hex), for signatures. */
  digest?: string | undefined;
  result: AuditResult;
  /** The error code when the result is not ok. */
  reason?: string | undefined;
  /** Further facts of the act: ids, versions, windows. Values must be JSON. */
  detail?: Record<string, unknown> | undefined;
}

/**
 * Where audited acts go. `record` resolves once the entry is durable; when it rejects (code
 * AUDIT_UNAVAILABLE) the act must be refused and its result must not leave the daemon (fail closed).
 */
export interface AuditSink {
  record(event: AuditEvent): Promise<void>;
  /** Throws AUDIT_UNAVAILABLE when the log cannot take entries now, so an act is refused before it starts. */
  ready(): void;
}

/** A sink that only logs to the audit channel: not durable, for unit tests of modules that audit. */
export function loggingSink(audit: Logger): AuditSink {
  return {
    record: async (e) => {
      audit.info(e, e.act);
    },
    ready: () => {},
  };
}
