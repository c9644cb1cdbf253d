import { SigilError, type ErrorCode } from '../../errors.ts';

// AWS KMS exception names by the code sigil gives them. Names not listed fall back on the HTTP status.
const BY_NAME: ReadonlyMap<string, { code: ErrorCode; reason: string }> = new Map([
  ['NotFoundException', { code: 'KEY_NOT_FOUND', reason: 'key not found' }],
  ['DisabledException', { code: 'FAILED_PRECONDITION', reason: 'key is disabled' }],
  ['KMSInvalidStateException', { code: 'FAILED_PRECONDITION', reason: 'key state does not allow this (pending deletion or pending import)' }],
  ['KMSInternalException', { code: 'BACKEND_UNAVAILABLE', reason: 'aws kms internal error' }],
  ['DependencyTimeoutException', { code: 'BACKEND_UNAVAILABLE', reason: 'aws kms dependency timeout' }],
  ['ThrottlingException', { code: 'BACKEND_UNAVAILABLE', reason: 'aws kms throttled the request' }],
  ['TooManyRequestsException', { code: 'BACKEND_UNAVAILABLE', reason: 'aws kms throttled the request' }],
  ['RequestLimitExceeded', { code: 'BACKEND_UNAVAILABLE', reason: 'aws kms throttled the request' }],
  ['ServiceUnavailableException', { code: 'BACKEND_UNAVAILABLE', reason: 'aws kms is unavailable' }],
  ['KeyUnavailableException', { code: 'BACKEND_UNAVAILABLE', reason: 'key material is unavailable (custom key store disconnected)' }],
  ['ValidationException', { code: 'INVALID_ARGUMENT', reason: 'aws kms rejected the request parameters' }],
  ['InvalidArnException', { code: 'INVALID_ARGUMENT', reason: 'aws kms rejected the arn' }],
  ['InvalidAliasNameException', { code: 'INVALID_ARGUMENT', reason: 'aws kms rejected the alias name' }],
  ['InvalidKeyUsageException', { code: 'INVALID_ARGUMENT', reason: 'key usage or key spec does not allow this signing algorithm' }],
  ['AlreadyExistsException', { code: 'KEY_EXISTS', reason: 'the alias already exists' }],
  ['UnsupportedOperationException', { code: 'UNSUPPORTED_ALGORITHM', reason: 'aws kms does not support this operation for the key' }],
  ['LimitExceededException', { code: 'BACKEND_ERROR', reason: 'aws kms quota exceeded' }],
  // Credentials and permissions: the request never got to the key. Never echo the service's text here.
  ['AccessDeniedException', { code: 'BACKEND_ERROR', reason: 'access denied by aws (check the iam policy of the credentials)' }],
  ['InvalidSignatureException', { code: 'BACKEND_ERROR', reason: 'aws refused the request signature (wrong secret access key or clock skew)' }],
  ['IncompleteSignatureException', { code: 'BACKEND_ERROR', reason: 'aws refused the request signature as incomplete' }],
  ['UnrecognizedClientException', { code: 'BACKEND_ERROR', reason: 'aws does not know the access key id or session token' }],
  ['MissingAuthenticationTokenException', { code: 'BACKEND_ERROR', reason: 'the request carried no aws credentials' }],
  ['ExpiredTokenException', { code: 'BACKEND_ERROR', reason: 'the aws session token has expired' }],
  ['InvalidClientTokenId', { code: 'BACKEND_ERROR', reason: 'aws does not know the access key id' }],
]);

// Socket-level failures: the service or the path to it is down, a retry may succeed.
const NETWORK_CODES = new Set([
  'ECONNREFUSED', 'ECONNRESET', 'ECONNABORTED', 'ETIMEDOUT', 'EPIPE', 'EHOSTUNREACH', 'ENETUNREACH', 'ENETDOWN',
  'EHOSTDOWN', 'EAI_AGAIN', 'ENOTFOUND', 'ERR_SOCKET_CONNECTION_TIMEOUT', 'UND_ERR_SOCKET', 'ERR_STREAM_PREMATURE_CLOSE',
]);
const TIMEOUT_NAMES = new Set(['TimeoutError', 'AbortError', 'RequestTimeout', 'RequestTimeoutException']);

interface AwsErrorShape {
  name?: unknown;
  code?: unknown;
  $fault?: unknown;
  $metadata?: { httpStatusCode?: unknown };
  cause?: unknown;
}

/** The AWS exception name of an SDK error (e.g. `NotFoundException`), or null for a non-service error. */
export function awsErrorName(err: unknown): string | null {
  const e = err as AwsErrorShape | null;
  if (e === null || typeof e !== 'object' || e.$metadata === undefined || typeof e.name !== 'string') return null;
  return e.name;
}

/**
 * Classifies an error of an AWS SDK call as a SigilError `<what>: <reason>`: transient faults are
 * BACKEND_UNAVAILABLE (the caller's retry layer decides), key states FAILED_PRECONDITION, credential
 * problems BACKEND_ERROR. The service's own message is never copied (it can quote request details); the
 * original error stays as the cause, for the log.
 */
export function mapAwsError(err: unknown, what: string, timeoutMs: number): SigilError {
  if (err instanceof SigilError) return err;
  const e = (err ?? {}) as AwsErrorShape;
  const name = typeof e.name === 'string' ? e.name : '';
  const status = typeof e.$metadata?.httpStatusCode === 'number' ? e.$metadata.httpStatusCode : undefined;
  if (e.$metadata !== undefined && status !== undefined) {
    const known = BY_NAME.get(name);
    if (known) return new SigilError(known.code, `${what}: ${known.reason}`, { cause: err });
    if (status >= 500 || status === 429 || e.$fault === 'server') {
      return new SigilError('BACKEND_UNAVAILABLE', `${what}: aws kms answered http ${status}${safeName(name)}`, { cause: err });
    }
    return new SigilError('BACKEND_ERROR', `${what}: aws kms refused the request${safeName(name)}`, { cause: err });
  }
  // The SDK's HTTP handler renames socket resets (ECONNRESET, EPIPE, ETIMEDOUT) `TimeoutError`, keeping the
  // code: a reset of a pooled connection the service closed is not a timeout, so the code is read first.
  const code = networkCode(err);
  if (code !== null) return new SigilError('BACKEND_UNAVAILABLE', `${what}: aws kms unreachable (${code.toLowerCase()})`, { cause: err });
  if (TIMEOUT_NAMES.has(name)) {
    return new SigilError('BACKEND_UNAVAILABLE', `${what}: no answer from aws kms within ${timeoutMs} ms`, { cause: err });
  }
  if (name === 'CredentialsProviderError') {
    return new SigilError('BACKEND_ERROR', `${what}: no aws credentials found (set credentialsFile or the sdk's standard sources)`, { cause: err });
  }
  return new SigilError('BACKEND_ERROR', `${what}: aws kms call failed${safeName(name)}`, { cause: err });
}

function networkCode(err: unknown): string | null {
  // Node nests the socket error as the cause of some wrappers; two levels are enough for the SDK's.
  let e = err as AwsErrorShape | undefined;
  for (let i = 0; i < 3 && e !== undefined && e !== null && typeof e === 'object'; i++) {
    if (typeof e.code === 'string' && NETWORK_CODES.has(e.code)) return e.code;
    e = e.cause as AwsErrorShape | undefined;
  }
  return null;
}

function safeName(name: string): string {
  return /^[A-Za-z][A-Za-z0-9]{0,80}$/.test(name) && name !== 'Error' ? ` (${name})` : '';
}
