import { SigilError } from '../errors.ts';

// Response codes: TPM 2.0 Part 2, 6.6 (TPM_RC), and the tpm2-tss layer convention (TSS 2.0 TPM
// Command Transmission Interface / Overview, "TSS2_RC": layer in bits 16..23, base code below).

const RC_VER1 = 0x100;
const RC_FMT1 = 0x080;
const RC_WARN = 0x900;

/** Format-zero errors (TPM_RC_VER1 + n), TPM 2.0 Part 2, Table 16. */
export const RC_VER1_CODES: ReadonlyMap<number, [string, string]> = new Map([
  [0x000, ['TPM_RC_INITIALIZE', 'TPM not initialized by TPM2_Startup or already initialized']],
  [0x001, ['TPM_RC_FAILURE', 'commands not being accepted because of a TPM failure']],
  [0x003, ['TPM_RC_SEQUENCE', 'improper use of a sequence handle']],
  [0x00b, ['TPM_RC_PRIVATE', 'not currently used']],
  [0x019, ['TPM_RC_HMAC', 'not currently used']],
  [0x020, ['TPM_RC_DISABLED', 'the command is disabled']],
  [0x021, ['TPM_RC_EXCLUSIVE', 'command failed because audit sequence required exclusivity']],
  [0x024, ['TPM_RC_AUTH_TYPE', 'authorization handle is not correct for command']],
  [0x025, ['TPM_RC_AUTH_MISSING', 'command requires an authorization session for handle and it is not present']],
  [0x026, ['TPM_RC_POLICY', 'policy failure in math operation or an invalid authPolicy value']],
  [0x027, ['TPM_RC_PCR', 'PCR check fail']],
  [0x028, ['TPM_RC_PCR_CHANGED', 'PCR have changed since checked']],
  [0x02d, ['TPM_RC_UPGRADE', 'the TPM is in field upgrade mode']],
  [0x02e, ['TPM_RC_TOO_MANY_CONTEXTS', 'context ID counter is at maximum']],
  [0x02f, ['TPM_RC_AUTH_UNAVAILABLE', 'authValue or authPolicy is not available for selected entity']],
  [0x030, ['TPM_RC_REBOOT', 'a _TPM_Init and Startup(CLEAR) is required before the TPM can resume operation']],
  [0x031, ['TPM_RC_UNBALANCED', 'the protection algorithms (hash and symmetric) are not reasonably balanced']],
  [0x042, ['TPM_RC_COMMAND_SIZE', 'command commandSize value is inconsistent with contents of the command buffer']],
  [0x043, ['TPM_RC_COMMAND_CODE', 'command code not supported']],
  [0x044, ['TPM_RC_AUTHSIZE', 'the value of authorizationSize is out of range or the number of octets in the authorization area is greater than required']],
  [0x045, ['TPM_RC_AUTH_CONTEXT', 'use of an authorization session with a context command or another command that cannot have an authorization session']],
  [0x046, ['TPM_RC_NV_RANGE', 'NV offset+size is out of range']],
  [0x047, ['TPM_RC_NV_SIZE', 'requested allocation size is larger than allowed']],
  [0x048, ['TPM_RC_NV_LOCKED', 'NV access locked']],
  [0x049, ['TPM_RC_NV_AUTHORIZATION', 'NV access authorization fails in command actions']],
  [0x04a, ['TPM_RC_NV_UNINITIALIZED', 'an NV Index is used before being initialized or the state saved by TPM2_Shutdown(STATE) could not be restored']],
  [0x04b, ['TPM_RC_NV_SPACE', 'insufficient space for NV allocation']],
  [0x04c, ['TPM_RC_NV_DEFINED', 'NV Index or persistent object already defined']],
  [0x050, ['TPM_RC_BAD_CONTEXT', 'context in TPM2_ContextLoad() is not valid']],
  [0x051, ['TPM_RC_CPHASH', 'cpHash value already set or not correct for use']],
  [0x052, ['TPM_RC_PARENT', 'handle for parent is not a valid parent']],
  [0x053, ['TPM_RC_NEEDS_TEST', 'some function needs testing']],
  [0x054, ['TPM_RC_NO_RESULT', 'returned when an internal function cannot process a request due to an unspecified problem']],
  [0x055, ['TPM_RC_SENSITIVE', 'the sensitive area did not unmarshal correctly after decryption']],
]);

/** Format-one errors (TPM_RC_FMT1 + n), TPM 2.0 Part 2, Table 16. */
export const RC_FMT1_CODES: ReadonlyMap<number, [string, string]> = new Map([
  [0x001, ['TPM_RC_ASYMMETRIC', 'asymmetric algorithm not supported or not correct']],
  [0x002, ['TPM_RC_ATTRIBUTES', 'inconsistent attributes']],
  [0x003, ['TPM_RC_HASH', 'hash algorithm not supported or not appropriate']],
  [0x004, ['TPM_RC_VALUE', 'value is out of range or is not correct for the context']],
  [0x005, ['TPM_RC_HIERARCHY', 'hierarchy is not enabled or is not correct for the use']],
  [0x007, ['TPM_RC_KEY_SIZE', 'key size is not supported']],
  [0x008, ['TPM_RC_MGF', 'mask generation function not supported']],
  [0x009, ['TPM_RC_MODE', 'mode of operation not supported']],
  [0x00a, ['TPM_RC_TYPE', 'the type of the value is not appropriate for the use']],
  [0x00b, ['TPM_RC_HANDLE', 'the handle is not correct for the use']],
  [0x00c, ['TPM_RC_KDF', 'unsupported key derivation function or function not appropriate for use']],
  [0x00d, ['TPM_RC_RANGE', 'value was out of allowed range']],
  [0x00e, ['TPM_RC_AUTH_FAIL', 'the authorization HMAC check failed and DA counter incremented']],
  [0x00f, ['TPM_RC_NONCE', 'invalid nonce size or nonce value mismatch']],
  [0x010, ['TPM_RC_PP', 'authorization requires assertion of PP']],
  [0x012, ['TPM_RC_SCHEME', 'unsupported or incompatible scheme']],
  [0x015, ['TPM_RC_SIZE', 'structure is the wrong size']],
  [0x016, ['TPM_RC_SYMMETRIC', 'unsupported symmetric algorithm or key size, or not appropriate for instance']],
  [0x017, ['TPM_RC_TAG', 'incorrect structure tag']],
  [0x018, ['TPM_RC_SELECTOR', 'union selector is incorrect']],
  [0x01a, ['TPM_RC_INSUFFICIENT', 'the TPM was unable to unmarshal a value because there were not enough octets in the input buffer']],
  [0x01b, ['TPM_RC_SIGNATURE', 'the signature is not valid']],
  [0x01c, ['TPM_RC_KEY', 'key fields are not compatible with the selected use']],
  [0x01d, ['TPM_RC_POLICY_FAIL', 'a policy check failed']],
  [0x01f, ['TPM_RC_INTEGRITY', 'integrity check failed']],
  [0x020, ['TPM_RC_TICKET', 'invalid ticket']],
  [0x021, ['TPM_RC_RESERVED_BITS', 'reserved bits not set to zero as required']],
  [0x022, ['TPM_RC_BAD_AUTH', 'authorization failure without DA implications']],
  [0x023, ['TPM_RC_EXPIRED', 'the policy has expired']],
  [0x024, ['TPM_RC_POLICY_CC', 'the commandCode in the policy is not the commandCode of the command or the command code in a policy command references a command that is not implemented']],
  [0x025, ['TPM_RC_BINDING', 'public and sensitive portions of an object are not cryptographically bound']],
  [0x026, ['TPM_RC_CURVE', 'curve not supported']],
  [0x027, ['TPM_RC_ECC_POINT', 'point is not on the required curve']],
]);

/** Warnings (TPM_RC_WARN + n), TPM 2.0 Part 2, Table 16. */
export const RC_WARN_CODES: ReadonlyMap<number, [string, string]> = new Map([
  [0x001, ['TPM_RC_CONTEXT_GAP', 'gap for context ID is too large']],
  [0x002, ['TPM_RC_OBJECT_MEMORY', 'out of memory for object contexts']],
  [0x003, ['TPM_RC_SESSION_MEMORY', 'out of memory for session contexts']],
  [0x004, ['TPM_RC_MEMORY', 'out of shared object/session memory or need space for internal operations']],
  [0x005, ['TPM_RC_SESSION_HANDLES', 'out of session handles; a session must be flushed before a new session may be created']],
  [0x006, ['TPM_RC_OBJECT_HANDLES', 'out of object handles; the handle space for objects is depleted and a reboot is required']],
  [0x007, ['TPM_RC_LOCALITY', 'bad locality']],
  [0x008, ['TPM_RC_YIELDED', 'the TPM has suspended operation on the command; forward progress was made and the command may be retried']],
  [0x009, ['TPM_RC_CANCELED', 'the command was canceled']],
  [0x00a, ['TPM_RC_TESTING', 'TPM is performing self-tests']],
  [0x010, ['TPM_RC_REFERENCE_H0', 'the 1st handle in the handle area references a transient object or session that is not loaded']],
  [0x011, ['TPM_RC_REFERENCE_H1', 'the 2nd handle in the handle area references a transient object or session that is not loaded']],
  [0x012, ['TPM_RC_REFERENCE_H2', 'the 3rd handle in the handle area references a transient object or session that is not loaded']],
  [0x013, ['TPM_RC_REFERENCE_H3', 'the 4th handle in the handle area references a transient object or session that is not loaded']],
  [0x014, ['TPM_RC_REFERENCE_H4', 'the 5th handle in the handle area references a transient object or session that is not loaded']],
  [0x015, ['TPM_RC_REFERENCE_H5', 'the 6th handle in the handle area references a transient object or session that is not loaded']],
  [0x016, ['TPM_RC_REFERENCE_H6', 'the 7th handle in the handle area references a transient object or session that is not loaded']],
  [0x018, ['TPM_RC_REFERENCE_S0', 'the 1st authorization session handle references a session that is not loaded']],
  [0x019, ['TPM_RC_REFERENCE_S1', 'the 2nd authorization session handle references a session that is not loaded']],
  [0x01a, ['TPM_RC_REFERENCE_S2', 'the 3rd authorization session handle references a session that is not loaded']],
  [0x01b, ['TPM_RC_REFERENCE_S3', 'the 4th authorization session handle references a session that is not loaded']],
  [0x01c, ['TPM_RC_REFERENCE_S4', 'the 5th authorization session handle references a session that is not loaded']],
  [0x01d, ['TPM_RC_REFERENCE_S5', 'the 6th authorization session handle references a session that is not loaded']],
  [0x01e, ['TPM_RC_REFERENCE_S6', 'the 7th authorization session handle references a session that is not loaded']],
  [0x020, ['TPM_RC_NV_RATE', 'the TPM is rate-limiting accesses to prevent wearout of NV']],
  [0x021, ['TPM_RC_LOCKOUT', 'authorizations for objects subject to DA protection are not allowed at this time because the TPM is in DA lockout mode']],
  [0x022, ['TPM_RC_RETRY', 'the TPM was not able to start the command']],
  [0x023, ['TPM_RC_NV_UNAVAILABLE', 'the command may require writing of NV and NV is not current accessible']],
  [0x07f, ['TPM_RC_NOT_USED', 'this value is reserved and shall not be returned by the TPM']],
]);

/** tpm2-tss layers (bits 16..23 of a TSS2_RC). */
export const TSS_LAYERS: ReadonlyMap<number, string> = new Map([
  [0, 'tpm'],
  [6, 'fapi'],
  [7, 'esapi'],
  [8, 'sapi'],
  [9, 'marshaling'],
  [10, 'tcti'],
  [11, 'resource manager'],
  [12, 'resource manager (tpm)'],
]);

/** tpm2-tss base response codes (TSS2_BASE_RC_*), shared by every non-TPM layer. */
export const TSS_BASE_CODES: ReadonlyMap<number, string> = new Map([
  [1, 'TSS2_BASE_RC_GENERAL_FAILURE'],
  [2, 'TSS2_BASE_RC_NOT_IMPLEMENTED'],
  [3, 'TSS2_BASE_RC_BAD_CONTEXT'],
  [4, 'TSS2_BASE_RC_ABI_MISMATCH'],
  [5, 'TSS2_BASE_RC_BAD_REFERENCE'],
  [6, 'TSS2_BASE_RC_INSUFFICIENT_BUFFER'],
  [7, 'TSS2_BASE_RC_BAD_SEQUENCE'],
  [8, 'TSS2_BASE_RC_NO_CONNECTION'],
  [9, 'TSS2_BASE_RC_TRY_AGAIN'],
  [10, 'TSS2_BASE_RC_IO_ERROR'],
  [11, 'TSS2_BASE_RC_BAD_VALUE'],
  [12, 'TSS2_BASE_RC_NOT_PERMITTED'],
  [13, 'TSS2_BASE_RC_INVALID_SESSIONS'],
  [14, 'TSS2_BASE_RC_NO_DECRYPT_PARAM'],
  [15, 'TSS2_BASE_RC_NO_ENCRYPT_PARAM'],
  [16, 'TSS2_BASE_RC_BAD_SIZE'],
  [17, 'TSS2_BASE_RC_MALFORMED_RESPONSE'],
  [18, 'TSS2_BASE_RC_INSUFFICIENT_CONTEXT'],
  [19, 'TSS2_BASE_RC_INSUFFICIENT_RESPONSE'],
  [20, 'TSS2_BASE_RC_INCOMPATIBLE_TCTI'],
  [21, 'TSS2_BASE_RC_NOT_SUPPORTED'],
  [22, 'TSS2_BASE_RC_BAD_TCTI_STRUCTURE'],
  [23, 'TSS2_BASE_RC_MEMORY'],
  [24, 'TSS2_BASE_RC_BAD_TR'],
  [25, 'TSS2_BASE_RC_MULTIPLE_DECRYPT_SESSIONS'],
  [26, 'TSS2_BASE_RC_MULTIPLE_ENCRYPT_SESSIONS'],
  [27, 'TSS2_BASE_RC_RSP_AUTH_FAILED'],
]);

const hex = (n: number) => `0x${n.toString(16)}`;

function describeTpmRc(rc: number): string {
  if (rc === 0) return 'TPM_RC_SUCCESS';
  if (rc & RC_FMT1) {
    const n = rc & 0x3f;
    const entry = RC_FMT1_CODES.get(n);
    const name = entry ? `${entry[0]}: ${entry[1]}` : `unknown format-one error ${hex(RC_FMT1 + n)}`;
    let where = '';
    if (rc & 0x40) {
      const p = (rc >> 8) & 0xf;
      if (p !== 0) where = `parameter ${p}`;
    } else {
      const h = (rc >> 8) & 0x7;
      if (h !== 0) where = rc & 0x800 ? `session ${h}` : `handle ${h}`;
    }
    return where === '' ? name : `${name} (${where})`;
  }
  if ((rc & RC_VER1) === 0) return `tpm 1.2 response code ${hex(rc)}`;
  if (rc & 0x400) return `vendor-defined response code ${hex(rc)}`;
  const n = rc & 0x7f;
  const table = rc & 0x800 ? RC_WARN_CODES : RC_VER1_CODES;
  const entry = table.get(n);
  if (entry) return `${entry[0]}: ${entry[1]}`;
  return `unknown ${rc & 0x800 ? 'warning' : 'error'} ${hex(rc)}`;
}

/**
 * A readable description of a TPM or tpm2-tss response code, e.g.
 * `TPM_RC_INTEGRITY: integrity check failed (parameter 1) [0x1df]`.
 */
export function describeRc(rc: number): string {
  const v = rc >>> 0;
  const layer = (v >>> 16) & 0xff;
  const base = v & 0xffff;
  let text: string;
  if (layer === 0 || layer === 12) {
    text = describeTpmRc(base);
    if (layer === 12) text = `resource manager (tpm): ${text}`;
  } else {
    const layerName = TSS_LAYERS.get(layer) ?? `layer ${layer}`;
    text = `${layerName}: ${TSS_BASE_CODES.get(base) ?? `code ${hex(base)}`}`;
  }
  return `${text} [${hex(v)}]`;
}

/** True for response codes the caller may simply retry (TPM_RC_YIELDED, TPM_RC_TESTING, TPM_RC_RETRY). */
export function isRetryable(rc: number): boolean {
  return rc === RC_WARN + 0x008 || rc === RC_WARN + 0x00a || rc === RC_WARN + 0x022;
}

/** A TPM command answered with a non-zero response code. */
export class TpmError extends SigilError {
  readonly rc: number;
  readonly command: string;

  constructor(command: string, rc: number, options?: { cause?: unknown }) {
    super('TPM_ERROR', `${command} failed: ${describeRc(rc)}`, options);
    this.name = 'TpmError';
    this.rc = rc >>> 0;
    this.command = command;
  }

  /** The format-one error number or format-zero code without the handle/parameter/session bits. */
  get baseCode(): number {
    return baseRc(this.rc);
  }
}

/** A response code without the handle/parameter/session number (TPM_RC_INTEGRITY for 0x1df). */
export function baseRc(rc: number): number {
  return rc & RC_FMT1 ? rc & 0xbf : rc;
}

/** Selected response-code values for comparisons: base codes as `baseRc` returns them. */
export const TPM_RC = {
  SUCCESS: 0x000,
  INITIALIZE: RC_VER1 + 0x000,
  NV_SPACE: RC_VER1 + 0x04b,
  FAILURE: RC_VER1 + 0x001,
  AUTH_MISSING: RC_VER1 + 0x025,
  NV_RANGE: RC_VER1 + 0x046,
  NV_LOCKED: RC_VER1 + 0x048,
  NV_AUTHORIZATION: RC_VER1 + 0x049,
  NV_DEFINED: RC_VER1 + 0x04c,
  COMMAND_CODE: RC_VER1 + 0x043,
  ATTRIBUTES: RC_FMT1 + 0x002,
  VALUE: RC_FMT1 + 0x004,
  HANDLE: RC_FMT1 + 0x00b,
  AUTH_FAIL: RC_FMT1 + 0x00e,
  SCHEME: RC_FMT1 + 0x012,
  SIZE: RC_FMT1 + 0x015,
  SIGNATURE: RC_FMT1 + 0x01b,
  KEY: RC_FMT1 + 0x01c,
  POLICY_FAIL: RC_FMT1 + 0x01d,
  INTEGRITY: RC_FMT1 + 0x01f,
  BAD_AUTH: RC_FMT1 + 0x022,
  OBJECT_MEMORY: RC_WARN + 0x002,
  SESSION_MEMORY: RC_WARN + 0x003,
  REFERENCE_H0: RC_WARN + 0x010,
  LOCKOUT: RC_WARN + 0x021,
  RETRY: RC_WARN + 0x022,
} as const;
