import { status as Status, type ServiceError } from '@grpc/grpc-js';
import type { ErrorCode } from '../errors.ts';
import { SigilError } from '../errors.ts';
import type { Logger } from '../log.ts';
import { ERROR_DOMAIN, type ErrorInfo } from '../status-details.ts';

/** The one table from sigil error codes to gRPC status codes. */
export const STATUS_OF = {
  INVALID_ARGUMENT: Status.INVALID_ARGUMENT,
  KEY_NOT_FOUND: Status.NOT_FOUND,
  KEY_EXISTS: Status.ALREADY_EXISTS,
  UNSUPPORTED_ALGORITHM: Status.INVALID_ARGUMENT,
  MESSAGE_TOO_LARGE: Status.RESOURCE_EXHAUSTED,
  LIMIT_REACHED: Status.RESOURCE_EXHAUSTED,
  UNAUTHENTICATED: Status.UNAUTHENTICATED,
  PERMISSION_DENIED: Status.PERMISSION_DENIED,
  FAILED_PRECONDITION: Status.FAILED_PRECONDITION,
  NOT_IMPLEMENTED: Status.UNIMPLEMENTED,
  BACKEND_UNAVAILABLE: Status.UNAVAILABLE,
  BACKEND_ERROR: Status.INTERNAL,
  TPM_ERROR: Status.INTERNAL,
  CONFIG_INVALID: Status.FAILED_PRECONDITION,
  // Fail closed: the act was refused because its audit entry could not be made durable.
  AUDIT_UNAVAILABLE: Status.UNAVAILABLE,
  INTERNAL: Status.INTERNAL,
} as const satisfies Record<ErrorCode, Status>;

/** A status ready to send: code, a safe message, sigil's error code and the ErrorInfo for clients. */
export interface WireError {
  code: Status;
  details: string;
  /** sigil's error code (what SignError.reason carries). */
  errorCode: ErrorCode;
  /** The machine-readable reason (the error code unless the error names a more precise one) and its metadata. */
  info: ErrorInfo;
}

const INTERNAL_INFO: ErrorInfo = Object.freeze({ reason: 'INTERNAL', domain: ERROR_DOMAIN, metadata: Object.freeze({}) as Record<string, string> });

/**
 * Turns any thrown value into what the caller may see. A SigilError keeps its message (written to be
 * safe); anything else becomes INTERNAL with a generic message while the cause goes to the log.
 * Backend errors are logged with their cause too, since the cause is not sent.
 */
export function toWireError(err: unknown, log: Logger, rpc: string): WireError {
  if (err instanceof SigilError) {
    if (err.code === 'BACKEND_ERROR' || err.code === 'TPM_ERROR' || err.code === 'INTERNAL' || err.code === 'BACKEND_UNAVAILABLE' || err.code === 'AUDIT_UNAVAILABLE') {
      log.error({ err, rpc }, 'request failed in a backend');
    } else if (err.code === 'UNAUTHENTICATED' || err.code === 'PERMISSION_DENIED') {
      // Refusals are security events: always logged, with the reason (never with secrets).
      log.warn({ rpc, reason: err.code, detail: err.message }, 'request refused');
    }
    return { code: STATUS_OF[err.code], details: err.message, errorCode: err.code, info: { reason: err.reason, domain: ERROR_DOMAIN, metadata: { ...err.metadata } } };
  }
  log.error({ err, rpc }, 'unexpected error');
  return { code: Status.INTERNAL, details: 'internal error', errorCode: 'INTERNAL', info: INTERNAL_INFO };
}

/**
 * A grpc-js ServiceError for a callback or a stream's error event, with the ErrorInfo the server sends
 * in grpc-status-details-bin (`server/h2/call.ts` statusOf).
 */
export function toServiceError(w: WireError): Partial<ServiceError> & { errorInfo: ErrorInfo } {
  return { code: w.code, details: w.details, message: w.details, errorInfo: w.info };
}
