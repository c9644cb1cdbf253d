import { SigilError } from '../../errors.ts';
import { TpmFormatError } from '../../tpm/marshal.ts';
import { baseRc, isRetryable, TPM_RC, TpmError } from '../../tpm/rc.ts';

// Warnings meaning "not now" rather than "never": TPM 2.0 Part 2, Table 16 (TPM_RC_WARN + n).
const BUSY = new Set<number>([
  0x902, // TPM_RC_OBJECT_MEMORY: transient slots taken (swtpm has three)
  0x903, // TPM_RC_SESSION_MEMORY
  0x904, // TPM_RC_MEMORY
  0x909, // TPM_RC_CANCELED
  0x920, // TPM_RC_NV_RATE
  0x923, // TPM_RC_NV_UNAVAILABLE
]);

/** True when a TPM error says the object at the handle is not there (TPM_RC_HANDLE on a handle). */
export function isHandleMissing(err: unknown): boolean {
  return err instanceof TpmError && baseRc(err.rc) === TPM_RC.HANDLE;
}

/**
 * Classifies anything a TPM call threw into the backend error contract: retryable TPM warnings and
 * transport failures are BACKEND_UNAVAILABLE (the caller's wrapper retries), authorization refusals
 * FAILED_PRECONDITION, everything else from the TPM BACKEND_ERROR. `what` says which act failed.
 */
export function tpmFailure(what: string, err: unknown): SigilError {
  if (err instanceof TpmError) {
    const rc = err.rc;
    const detail = err.message;
    if (isRetryable(rc) || BUSY.has(rc)) return new SigilError('BACKEND_UNAVAILABLE', `${what}: tpm busy (${detail})`, { cause: err });
    const base = baseRc(rc);
    if (base === TPM_RC.AUTH_FAIL || base === TPM_RC.BAD_AUTH) {
      return new SigilError('FAILED_PRECONDITION', `${what}: the key needs authorization sigil does not have (${detail})`, { cause: err });
    }
    if (rc === TPM_RC.LOCKOUT) return new SigilError('FAILED_PRECONDITION', `${what}: the tpm is in dictionary-attack lockout`, { cause: err });
    // EvictControl with the TPM's persistent storage full: hardware TPMs hold only a handful of persistent keys.
    if (rc === TPM_RC.NV_SPACE) {
      return new SigilError('FAILED_PRECONDITION', `${what}: the tpm has no room left for another persistent key (TPM_RC_NV_SPACE): destroy key versions you no longer need, or use a backend that holds more keys`, { cause: err });
    }
    return new SigilError('BACKEND_ERROR', `${what}: ${detail}`, { cause: err });
  }
  // A TPM response that does not parse is the TPM's fault, not the caller's.
  if (err instanceof TpmFormatError) return new SigilError('BACKEND_ERROR', `${what}: ${err.message}`, { cause: err });
  if (err instanceof SigilError) return err;
  return new SigilError('BACKEND_ERROR', `${what} failed`, { cause: err });
}
