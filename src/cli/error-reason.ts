import type { ServiceError } from '@grpc/grpc-js';
import { decodeStatusDetails, ERROR_DOMAIN, STATUS_DETAILS_HEADER, type ErrorInfo } from '../status-details.ts';

/**
 * The ErrorInfo sigild sent with a failed call (from its grpc-status-details-bin trailer), or undefined when
 * there is none: not an answer from sigild (a connection failure, a local error), or one from a sigild older
 * than reasons. Only an ErrorInfo of sigil's domain whose status code is the call's counts.
 */
export function errorInfoOf(err: unknown): ErrorInfo | undefined {
  const e = err as Partial<ServiceError> | null | undefined;
  if (typeof e?.code !== 'number' || typeof e.metadata?.get !== 'function') return undefined;
  for (const v of e.metadata.get(STATUS_DETAILS_HEADER)) {
    if (!Buffer.isBuffer(v)) continue;
    const s = decodeStatusDetails(v);
    if (s !== undefined && s.code === e.code && s.info.domain === ERROR_DOMAIN) return s.info;
  }
  return undefined;
}

/** The machine-readable reason of a failed call (`ENROLL_AGAIN`, `KEY_NOT_FOUND`, ...), or undefined as for errorInfoOf. */
export function reasonOf(err: unknown): string | undefined {
  return errorInfoOf(err)?.reason;
}
