/** Every error sigil raises carries one of these codes; `server/status.ts` maps each to a gRPC status. */
export type ErrorCode =
  | 'INVALID_ARGUMENT'
  | 'KEY_NOT_FOUND'
  | 'KEY_EXISTS'
  | 'UNSUPPORTED_ALGORITHM'
  | 'MESSAGE_TOO_LARGE'
  | 'UNAUTHENTICATED'
  | 'PERMISSION_DENIED'
  | 'FAILED_PRECONDITION'
  | 'NOT_IMPLEMENTED'
  | 'BACKEND_UNAVAILABLE'
  | 'BACKEND_ERROR'
  | 'TPM_ERROR'
  | 'CONFIG_INVALID'
  | 'AUDIT_UNAVAILABLE'
  | 'INTERNAL';

/**
 * The one error class of sigil: a stable string code, a lower-case message safe to show a caller
 * (never a PIN or key material) and an optional cause that is logged but never sent.
 */
export class SigilError extends Error {
  readonly code: ErrorCode;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'SigilError';
    this.code = code;
  }
}

/** True when `err` is a SigilError, optionally with the given code. */
export function isSigilError(err: unknown, code?: ErrorCode): err is SigilError {
  return err instanceof SigilError && (code === undefined || err.code === code);
}
