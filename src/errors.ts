/** Every error sigil raises carries one of these codes; `server/status.ts` maps each to a gRPC status. */
export type ErrorCode =
  | 'INVALID_ARGUMENT'
  | 'KEY_NOT_FOUND'
  | 'KEY_EXISTS'
  | 'UNSUPPORTED_ALGORITHM'
  | 'MESSAGE_TOO_LARGE'
  /** A bounded table is full (pending attestation challenges): the same request may succeed later. */
  | 'LIMIT_REACHED'
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
 * Stable machine-readable reasons for the refusals a client may act on, sent as the `reason` of a
 * google.rpc.ErrorInfo (table in docs/architecture.md, "Errors"). Never reworded: clients branch on them.
 */
export type ErrorReason =
  /** The builder must enroll afresh: its EK has no enrollment record, or one whose EK trust cannot be re-checked. */
  | 'ENROLL_AGAIN'
  /** The TPM's clock, resetCount or restartCount is below what was recorded: cleared or rolled back. */
  | 'TPM_CLOCK_WENT_BACKWARDS'
  /** The builder's TPM (EK, or EK and AK) is revoked: it can neither enroll nor sign. */
  | 'BUILDER_REVOKED'
  /** The builder certificate the call was made with is revoked. */
  | 'IDENTITY_REVOKED'
  /** The client certificate has expired. */
  | 'CERTIFICATE_EXPIRED'
  /** The key version is DISABLED or scheduled for destruction (it may be enabled again). */
  | 'KEY_VERSION_DISABLED'
  /** The key version is destroyed or being destroyed. */
  | 'KEY_VERSION_DESTROYED'
  /** The key version was disabled as compromised: it never signs again. */
  | 'KEY_VERSION_COMPROMISED'
  /** The key version is below the key's min_sign_version. */
  | 'BELOW_MIN_SIGN_VERSION'
  /** The key version is below the key's min_verify_version: its public key is no longer served. */
  | 'BELOW_MIN_VERIFY_VERSION';

/** A refusal decided outside the error's thrower (revocation checks): its reason and message. */
export interface Refusal {
  reason: ErrorReason;
  message: string;
}

/** What a SigilError may carry beside code and message. */
export interface SigilErrorOptions {
  /** Logged, never sent. */
  cause?: unknown;
  /** A stable reason for clients; the code stands in when absent. */
  reason?: ErrorReason;
  /** Safe string fields sent with the reason (`key_version`); never a secret. */
  metadata?: Readonly<Record<string, string>>;
}

const NO_METADATA: Readonly<Record<string, string>> = Object.freeze({});

/**
 * The one error class of sigil: a stable string code, a lower-case message safe to show a caller
 * (never a PIN or key material), a machine-readable reason (the code unless a more precise one is
 * given) with safe metadata, and an optional cause that is logged but never sent.
 */
export class SigilError extends Error {
  readonly code: ErrorCode;
  readonly reason: ErrorReason | ErrorCode;
  readonly metadata: Readonly<Record<string, string>>;

  constructor(code: ErrorCode, message: string, options?: SigilErrorOptions) {
    super(message, options !== undefined && 'cause' in options ? { cause: options.cause } : undefined);
    this.name = 'SigilError';
    this.code = code;
    this.reason = options?.reason ?? code;
    this.metadata = options?.metadata ?? NO_METADATA;
  }
}

/** True when `err` is a SigilError, optionally with the given code. */
export function isSigilError(err: unknown, code?: ErrorCode): err is SigilError {
  return err instanceof SigilError && (code === undefined || err.code === code);
}
