import pkcs11js from 'pkcs11js';
import { SigilError, type ErrorCode } from '../../errors.ts';

// PKCS#11 v2.40 section 3.6 return values sigil is most likely to meet; anything else prints in hex.
const CKR_NAMES = new Map<number, string>([
  [0x00, 'CKR_OK'],
  [0x01, 'CKR_CANCEL'],
  [0x02, 'CKR_HOST_MEMORY'],
  [0x03, 'CKR_SLOT_ID_INVALID'],
  [0x05, 'CKR_GENERAL_ERROR'],
  [0x06, 'CKR_FUNCTION_FAILED'],
  [0x07, 'CKR_ARGUMENTS_BAD'],
  [0x10, 'CKR_ATTRIBUTE_READ_ONLY'],
  [0x11, 'CKR_ATTRIBUTE_SENSITIVE'],
  [0x12, 'CKR_ATTRIBUTE_TYPE_INVALID'],
  [0x13, 'CKR_ATTRIBUTE_VALUE_INVALID'],
  [0x20, 'CKR_DATA_INVALID'],
  [0x21, 'CKR_DATA_LEN_RANGE'],
  [0x30, 'CKR_DEVICE_ERROR'],
  [0x31, 'CKR_DEVICE_MEMORY'],
  [0x32, 'CKR_DEVICE_REMOVED'],
  [0x50, 'CKR_FUNCTION_CANCELED'],
  [0x54, 'CKR_FUNCTION_NOT_SUPPORTED'],
  [0x60, 'CKR_KEY_HANDLE_INVALID'],
  [0x62, 'CKR_KEY_SIZE_RANGE'],
  [0x63, 'CKR_KEY_TYPE_INCONSISTENT'],
  [0x68, 'CKR_KEY_FUNCTION_NOT_PERMITTED'],
  [0x70, 'CKR_MECHANISM_INVALID'],
  [0x71, 'CKR_MECHANISM_PARAM_INVALID'],
  [0x82, 'CKR_OBJECT_HANDLE_INVALID'],
  [0x90, 'CKR_OPERATION_ACTIVE'],
  [0x91, 'CKR_OPERATION_NOT_INITIALIZED'],
  [0xa0, 'CKR_PIN_INCORRECT'],
  [0xa1, 'CKR_PIN_INVALID'],
  [0xa2, 'CKR_PIN_LEN_RANGE'],
  [0xa3, 'CKR_PIN_EXPIRED'],
  [0xa4, 'CKR_PIN_LOCKED'],
  [0xb0, 'CKR_SESSION_CLOSED'],
  [0xb1, 'CKR_SESSION_COUNT'],
  [0xb3, 'CKR_SESSION_HANDLE_INVALID'],
  [0xb5, 'CKR_SESSION_READ_ONLY'],
  [0xc0, 'CKR_SIGNATURE_INVALID'],
  [0xc1, 'CKR_SIGNATURE_LEN_RANGE'],
  [0xd0, 'CKR_TEMPLATE_INCOMPLETE'],
  [0xd1, 'CKR_TEMPLATE_INCONSISTENT'],
  [0xe0, 'CKR_TOKEN_NOT_PRESENT'],
  [0xe1, 'CKR_TOKEN_NOT_RECOGNIZED'],
  [0xe2, 'CKR_TOKEN_WRITE_PROTECTED'],
  [0x100, 'CKR_USER_ALREADY_LOGGED_IN'],
  [0x101, 'CKR_USER_NOT_LOGGED_IN'],
  [0x102, 'CKR_USER_PIN_NOT_INITIALIZED'],
  [0x103, 'CKR_USER_TYPE_INVALID'],
  [0x150, 'CKR_BUFFER_TOO_SMALL'],
  [0x190, 'CKR_CRYPTOKI_NOT_INITIALIZED'],
  [0x191, 'CKR_CRYPTOKI_ALREADY_INITIALIZED'],
]);

/** Return values meaning the token or the login is gone rather than this one request being bad. */
const UNAVAILABLE = new Set<number>([0x30, 0x31, 0x32, 0xb0, 0xb3, 0xe0, 0xe1, 0x101, 0x190]);

/**
 * What a failure says the backend must repair before the operation can succeed again: `session` (the
 * session is closed), `login` (this application is no longer logged in), `handle` (a cached object
 * handle is stale: the object was re-created, the token re-initialised, or the login lost and private
 * objects hidden), `token` (the token or device is gone).
 */
export type Fault = 'session' | 'login' | 'handle' | 'token';

// PKCS#11 v2.40 section 3.6 (return values) grouped by what recovers from them.
const FAULTS = new Map<number, Fault>([
  [0xb0, 'session'], // CKR_SESSION_CLOSED
  [0xb3, 'session'], // CKR_SESSION_HANDLE_INVALID
  [0x101, 'login'], // CKR_USER_NOT_LOGGED_IN
  [0x60, 'handle'], // CKR_KEY_HANDLE_INVALID
  [0x82, 'handle'], // CKR_OBJECT_HANDLE_INVALID
  [0x03, 'token'], // CKR_SLOT_ID_INVALID
  [0x30, 'token'], // CKR_DEVICE_ERROR
  [0x32, 'token'], // CKR_DEVICE_REMOVED
  [0xe0, 'token'], // CKR_TOKEN_NOT_PRESENT
  [0xe1, 'token'], // CKR_TOKEN_NOT_RECOGNIZED
]);

/** The fault a pkcs11js error reports, or null when it is not one the backend recovers from. */
export function faultOf(err: unknown): Fault | null {
  return err instanceof pkcs11js.Pkcs11Error ? (FAULTS.get(err.code) ?? null) : null;
}

/** The PKCS#11 return value carried by a pkcs11js error, or null when it is not a Pkcs11Error. */
export function ckrCode(err: unknown): number | null {
  return err instanceof pkcs11js.Pkcs11Error ? err.code : null;
}

/** The CKR_* name of a return value, e.g. `CKR_PIN_INCORRECT`, or its hex value when unknown. */
export function ckrName(code: number): string {
  return CKR_NAMES.get(code) ?? `CKR_0x${code.toString(16).padStart(8, '0')}`;
}

/** A short description of any pkcs11js error for messages: the CKR_* name, or a generic word for others. */
export function describe(err: unknown): string {
  const code = ckrCode(err);
  return code === null ? 'native error' : ckrName(code);
}

/**
 * Wraps a pkcs11js error as a SigilError `"<what> failed: CKR_..."`: BACKEND_UNAVAILABLE when the token
 * or session is gone, `code` otherwise. pkcs11js messages hold only the CKR name, never call arguments
 * (such as a PIN), so the original error is safe to keep as the cause.
 */
export function pkcs11Error(what: string, err: unknown, code: ErrorCode = 'BACKEND_ERROR'): SigilError {
  if (err instanceof SigilError) return err;
  const ckr = ckrCode(err);
  const c = ckr !== null && UNAVAILABLE.has(ckr) ? 'BACKEND_UNAVAILABLE' : code;
  return new SigilError(c, `${what} failed: ${describe(err)}`, { cause: err });
}
