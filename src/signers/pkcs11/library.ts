import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import pkcs11js from 'pkcs11js';
import { SigilError } from '../../errors.ts';
import { ckrCode, pkcs11Error } from './errors.ts';

const CKR_CRYPTOKI_ALREADY_INITIALIZED = 0x191;
const CKR_USER_ALREADY_LOGGED_IN = 0x100;

/**
 * A loaded and initialized PKCS#11 module, shared by every backend of the process that names the same
 * path: a module is initialized once per process (PKCS#11 v2.40 section 5.4), so C_Finalize waits for
 * the last user, and so does C_Logout for the last user of a token (login state is per application).
 */
export interface Library {
  readonly pk: pkcs11js.PKCS11;
  /** Logs in as CKU_USER on the token of `slot` unless another user of the library already did. */
  login(slot: Buffer, session: Buffer, pin: string): void;
  /**
   * Logs in again after the token dropped this application's login (sessions closed, token
   * re-initialised), on `slot` where the token is now; `prevSlot` is where it was logged in before.
   * The PIN that worked replaces the one remembered.
   */
  relogin(prevSlot: Buffer, slot: Buffer, session: Buffer, pin: string): void;
  /** Moves the login bookkeeping of a token found again under another slot id. */
  moveLogin(prevSlot: Buffer, slot: Buffer): void;
  /** Undoes one `login`; the last one logs out. */
  logout(slot: Buffer, session: Buffer): void;
  /** Undoes one `acquireLibrary`; the last one finalizes and unloads the module. */
  release(): void;
}

const libraries = new Map<string, { lib: Library; refs: number; softhsmConf: string | undefined }>();

/**
 * Loads and initializes (with CKF_OS_LOCKING_OK) the module at `path`, or shares the one already loaded.
 * `softhsmConf` becomes SOFTHSM2_CONF just before C_Initialize, the one moment SoftHSM reads it.
 */
export function acquireLibrary(path: string, softhsmConf?: string): Library {
  const known = libraries.get(path);
  if (known) {
    if (softhsmConf !== undefined && softhsmConf !== known.softhsmConf) {
      throw new SigilError('CONFIG_INVALID', `pkcs11 module ${path} is already initialized with another softhsm config`);
    }
    known.refs++;
    return known.lib;
  }
  if (softhsmConf !== undefined) process.env.SOFTHSM2_CONF = softhsmConf;
  const pk = new pkcs11js.PKCS11();
  try {
    pk.load(path);
  } catch (err) {
    throw new SigilError('BACKEND_UNAVAILABLE', `cannot load pkcs11 module ${path}`, { cause: err });
  }
  try {
    // Without CKF_OS_LOCKING_OK SoftHSM turns its locking off, unsafe once C_SignAsync runs on worker threads.
    pk.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
  } catch (err) {
    if (ckrCode(err) !== CKR_CRYPTOKI_ALREADY_INITIALIZED) {
      closeQuietly(pk);
      throw pkcs11Error('pkcs11 initialize', err, 'BACKEND_UNAVAILABLE');
    }
  }
  // Login state is per application: a second backend on a logged-in token would get in without its PIN
  // being checked, so each login keeps a keyed hash of its PIN (never the PIN) to compare later ones with.
  const logins = new Map<string, { n: number; mac: Buffer }>();
  const macKey = randomBytes(32);
  const pinMac = (pin: string): Buffer => createHmac('sha256', macKey).update(pin, 'utf8').digest();
  const entry = { refs: 1, softhsmConf, lib: undefined as unknown as Library };
  entry.lib = {
    pk,
    login(slot, session, pin) {
      const key = slot.toString('hex');
      const mac = pinMac(pin);
      const known = logins.get(key);
      if (known !== undefined) {
        if (!timingSafeEqual(known.mac, mac)) {
          throw new SigilError('BACKEND_UNAVAILABLE', 'pkcs11 login failed: CKR_PIN_INCORRECT (the token is logged in with another pin)');
        }
        known.n++;
        return;
      }
      try {
        pk.C_Login(session, pkcs11js.CKU_USER, pin);
      } catch (err) {
        if (ckrCode(err) !== CKR_USER_ALREADY_LOGGED_IN) throw pkcs11Error('pkcs11 login', err, 'BACKEND_UNAVAILABLE');
      }
      logins.set(key, { n: 1, mac });
    },
    relogin(prevSlot, slot, session, pin) {
      try {
        pk.C_Login(session, pkcs11js.CKU_USER, pin);
      } catch (err) {
        if (ckrCode(err) !== CKR_USER_ALREADY_LOGGED_IN) throw pkcs11Error('pkcs11 login', err, 'BACKEND_UNAVAILABLE');
      }
      const prev = prevSlot.toString('hex');
      const n = logins.get(prev)?.n ?? logins.get(slot.toString('hex'))?.n ?? 1;
      logins.delete(prev);
      logins.set(slot.toString('hex'), { n, mac: pinMac(pin) });
    },
    moveLogin(prevSlot, slot) {
      const prev = prevSlot.toString('hex');
      const known = logins.get(prev);
      if (known === undefined || prevSlot.equals(slot)) return;
      logins.delete(prev);
      logins.set(slot.toString('hex'), known);
    },
    logout(slot, session) {
      const key = slot.toString('hex');
      const known = logins.get(key);
      if (known === undefined) return;
      if (known.n <= 1) {
        logins.delete(key);
        try {
          pk.C_Logout(session);
        } catch {
          // Already logged out (all sessions closed, token removed): nothing left to undo.
        }
      } else {
        known.n--;
      }
    },
    release() {
      if (--entry.refs > 0) return;
      libraries.delete(path);
      try {
        pk.C_Finalize();
      } catch {
        // Finalizing a module that failed is best effort.
      }
      closeQuietly(pk);
    },
  };
  libraries.set(path, entry);
  return entry.lib;
}

function closeQuietly(pk: pkcs11js.PKCS11): void {
  try {
    pk.close();
  } catch {
    // The library handle is gone either way.
  }
}
