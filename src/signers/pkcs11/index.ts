import { createHmac, createPublicKey, randomBytes, timingSafeEqual } from 'node:crypto';
import { readSecretFile } from '../../config/secret-file.ts';
import pkcs11js from 'pkcs11js';
import { SigilError } from '../../errors.ts';
import type { Logger } from '../../log.ts';
import { attrText, formatKeyUri, parseKeyUri } from '../key-uri.ts';
import {
  ALGORITHM_INFO,
  ALGORITHMS,
  type Algorithm,
  type Backend,
  type BackendContext,
  type BackendKey,
  type KeyCreator,
  type KeyDestroyer,
  type KeySigner,
  type KeySpec,
  type KeyType,
} from '../signer.ts';
import {
  bool,
  CKK_EC_EDWARDS,
  CKM_EC_EDWARDS_KEY_PAIR_GEN,
  CKM_EDDSA,
  EC_PARAMS,
  keyTypeOfEcParams,
  spkiFromEcPoint,
  spkiFromRsa,
  ulong,
} from './attrs.ts';
import type { Pkcs11Config } from './config.ts';
import { ckrCode, faultOf, pkcs11Error, type Fault } from './errors.ts';
import { acquireLibrary, type Library } from './library.ts';
import { SignThread } from './sign-thread.ts';
import { SessionPool } from './pool.ts';
import { EcdsaSigner, Ed25519Signer, RsaSigner, type KeyHandle, type SignerHost } from './signers.ts';

/** A private key found on the token, with what signing and getKey need. */
interface KeyEntry {
  uri: string;
  handle: Buffer;
  keyType: KeyType;
  spki: Buffer;
  /** RSA only: bytes of the modulus, the signature length. */
  modulusBytes: number;
  /** The backend's recovery epoch when the handle was read. */
  epoch: number;
}

// RFC 7512 section 2.3 attributes: sigil interprets token, object, id and type; the others are accepted and ignored.
const URI_ATTRS = new Set([
  'token', 'object', 'id', 'type', 'manufacturer', 'model', 'serial',
  'library-manufacturer', 'library-description', 'library-version', 'slot-description', 'slot-manufacturer', 'slot-id',
]);

const RSA_BITS = 2048;
// PKCS#11 v2.40 section 5.6 (session states): the two in which the normal user is logged in.
const CKS_RO_USER_FUNCTIONS = 1;
const CKS_RW_USER_FUNCTIONS = 3;
const CKR_USER_NOT_LOGGED_IN = 0x101;
const CKR_TOKEN_NOT_PRESENT = 0xe0;
const CKR_PIN_INCORRECT = 0xa0;
const RSA_EXPONENT = Buffer.from([0x01, 0x00, 0x01]);

/**
 * Opens a PKCS#11 backend: loads and initializes the module, finds the token by label, opens a control
 * session and the session pool, and logs in once as CKU_USER with the PIN read from `pinFile`. A session
 * or login lost later, a re-initialised token or a token found again under another slot is recovered
 * on the next call that meets it, with the PIN read from `pinFile` again.
 */
export async function open(config: Pkcs11Config, ctx: BackendContext): Promise<Backend & KeyCreator & KeyDestroyer> {
  const pin = await readPin(config.pinFile, ctx.log);
  const lib = acquireLibrary(config.module, config.softhsmConf);
  const sessions: Buffer[] = [];
  let slot: Buffer | undefined;
  let control: Buffer | undefined;
  let loggedIn = false;
  try {
    slot = findSlot(lib.pk, config.token);
    // The control session logs in and stays open for the backend's life, so the login survives
    // whatever happens to the pool's sessions (closing an application's last session logs it out).
    control = openSession(lib.pk, slot);
    for (let i = 0; i < config.sessions; i++) sessions.push(openSession(lib.pk, slot));
    lib.login(slot, control, pin);
    loggedIn = true;
    const algorithms = supportedAlgorithms(lib.pk, slot);
    return new Pkcs11Backend(config, ctx.log, lib, slot, control, sessions, algorithms);
  } catch (err) {
    if (loggedIn) lib.logout(slot!, control!);
    for (const s of sessions) closeSession(lib.pk, s);
    if (control !== undefined) closeSession(lib.pk, control);
    lib.release();
    throw err;
  }
}

async function readPin(path: string, log: Logger): Promise<string> {
  const text = await readSecretFile(path, 'pkcs11 pin file', log);
  const pin = text.replace(/\r?\n$/, '');
  if (pin.length === 0) throw new SigilError('CONFIG_INVALID', `pkcs11 pin file ${path} is empty`);
  return pin;
}

function findSlot(pk: pkcs11js.PKCS11, token: string): Buffer {
  let slots: Buffer[];
  try {
    slots = pk.C_GetSlotList(true);
  } catch (err) {
    throw pkcs11Error('pkcs11 slot list', err, 'BACKEND_UNAVAILABLE');
  }
  const found = slots.filter((s) => {
    try {
      return pk.C_GetTokenInfo(s).label.trim() === token;
    } catch {
      // A slot whose token vanished between the two calls is simply not ours.
      return false;
    }
  });
  if (found.length === 0) throw new SigilError('BACKEND_UNAVAILABLE', `pkcs11 token ${JSON.stringify(token)} not found`);
  if (found.length > 1) throw new SigilError('BACKEND_UNAVAILABLE', `pkcs11 token label ${JSON.stringify(token)} is not unique`);
  return found[0]!;
}

function openSession(pk: pkcs11js.PKCS11, slot: Buffer): Buffer {
  try {
    return pk.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
  } catch (err) {
    throw pkcs11Error('pkcs11 open session', err, 'BACKEND_UNAVAILABLE');
  }
}

function closeSession(pk: pkcs11js.PKCS11, s: Buffer): void {
  try {
    pk.C_CloseSession(s);
  } catch {
    // A session that is already invalid needs no closing.
  }
}

/** The algorithms whose mechanisms the token offers (p11-kit, for one, refuses CKM_EDDSA). */
function supportedAlgorithms(pk: pkcs11js.PKCS11, slot: Buffer): Algorithm[] {
  let mechs: Set<number>;
  try {
    mechs = new Set(pk.C_GetMechanismList(slot));
  } catch {
    return [...ALGORITHMS];
  }
  const ecdsaMaxBits = (): number => {
    try {
      return pk.C_GetMechanismInfo(slot, pkcs11js.CKM_ECDSA).maxKeySize;
    } catch {
      return 0;
    }
  };
  const out: Algorithm[] = [];
  if (mechs.has(pkcs11js.CKM_ECDSA)) {
    out.push('ECDSA_P256_SHA256');
    // Some modules report 0 for "no limit"; SoftHSM reports 521.
    const max = ecdsaMaxBits();
    if (max === 0 || max >= 384) out.push('ECDSA_P384_SHA384');
  }
  if (mechs.has(pkcs11js.CKM_RSA_PKCS)) out.push('RSA_PKCS1_SHA256');
  if (mechs.has(pkcs11js.CKM_RSA_PKCS_PSS)) out.push('RSA_PSS_SHA256');
  if (mechs.has(CKM_EDDSA)) out.push('ED25519');
  return out;
}

class Pkcs11Backend implements Backend, KeyCreator, KeyDestroyer, SignerHost {
  readonly kind = 'pkcs11';
  readonly algorithms: readonly Algorithm[];
  readonly pk: pkcs11js.PKCS11;
  readonly pool: SessionPool;
  readonly signThread: SignThread | null;
  /** Bumped by every completed recovery: object handles looked up in an older epoch are stale. */
  epoch = 0;
  readonly #token: string;
  readonly #pinFile: string;
  readonly #log: Logger;
  readonly #lib: Library;
  #slot: Buffer;
  #control: Buffer;
  readonly #keys = new Map<string, KeyEntry>();
  readonly #lookups = new Map<string, Promise<KeyEntry>>();
  /** Counts the times the key cache was emptied: a lookup that began before one does not fill it. */
  #cleared = 0;
  readonly #signers = new Map<string, KeySigner>();
  #recovering: Promise<void> | null = null;
  // A keyed hash of a PIN the token refused at recovery (never the PIN): not tried again until the pin
  // file changes, so recoveries cannot use up the token's PIN retry counter.
  readonly #macKey = randomBytes(32);
  #refusedPin: Buffer | null = null;
  #closing: Promise<void> | null = null;

  constructor(config: Pkcs11Config, log: Logger, lib: Library, slot: Buffer, control: Buffer, sessions: Buffer[], algorithms: Algorithm[]) {
    this.#token = config.token;
    this.#pinFile = config.pinFile;
    this.#log = log;
    this.#lib = lib;
    this.pk = lib.pk;
    this.#slot = slot;
    this.#control = control;
    this.pool = new SessionPool(sessions);
    this.algorithms = algorithms;
    this.signThread = config.signThread ? new SignThread(config.module) : null;
  }

  async repair(session: Buffer, fault: Fault, startEpoch: number): Promise<Buffer> {
    try {
      if (this.#closing !== null) throw new SigilError('BACKEND_UNAVAILABLE', 'pkcs11 backend is closed');
      // A stale handle on a live, logged-in session of a token still in its slot is the key's business (the
      // signer looks it up again); anything else, unless a recovery completed since the operation began,
      // needs one, shared by every caller failing meanwhile.
      if (this.epoch === startEpoch && (fault !== 'handle' || !this.#loggedIn(session) || !this.#tokenPresent())) {
        await (this.#recovering ??= this.#recover().finally(() => {
          this.#recovering = null;
        }));
      }
      return this.#renew(session, this.#slot, true);
    } catch (err) {
      this.pool.release(session);
      throw err instanceof SigilError ? err : pkcs11Error('pkcs11 recovery', err, 'BACKEND_UNAVAILABLE');
    }
  }

  keyHandle(uri: string, stale: Buffer | null): Promise<KeyHandle> {
    if (stale !== null) {
      const cached = this.#keys.get(uri);
      if (cached !== undefined && cached.handle.equals(stale)) this.#forget(uri);
    }
    return this.#lookup(uri);
  }

  /**
   * Finds the token again (by label: slot ids change), swaps closed sessions for fresh ones, logs in
   * again with the PIN read from the pin file now when the login is gone, and forgets every cached
   * object handle. BACKEND_UNAVAILABLE when the token is not there.
   */
  async #recover(): Promise<void> {
    const pin = await readPin(this.#pinFile, this.#log);
    if (this.#closing !== null) throw new SigilError('BACKEND_UNAVAILABLE', 'pkcs11 backend is closed');
    // From here on synchronous: nothing else runs on the event loop while the sessions are swapped.
    // Cached keys are suspect whatever comes of this (a getKey must not answer with a public key from
    // before a re-initialisation): forget them first.
    this.#keys.clear();
    this.#cleared++;
    const prevSlot = this.#slot;
    let slot: Buffer;
    try {
      slot = findSlot(this.pk, this.#token);
    } catch (err) {
      this.#log.warn({ token: this.#token }, 'pkcs11 token not found; recovery will be tried again on a later call');
      throw err;
    }
    const moved = !slot.equals(prevSlot);
    this.#slot = slot;
    let replaced = 0;
    const control = this.#renew(this.#control, slot, true);
    if (control !== this.#control) replaced++;
    this.#control = control;
    let relogin = false;
    if (!this.#loggedIn(control)) {
      const mac = createHmac('sha256', this.#macKey).update(pin, 'utf8').digest();
      if (this.#refusedPin !== null && timingSafeEqual(this.#refusedPin, mac)) {
        throw new SigilError('BACKEND_UNAVAILABLE', 'pkcs11 login failed: CKR_PIN_INCORRECT (the pin file has not changed since)');
      }
      try {
        this.#lib.relogin(prevSlot, slot, control, pin);
      } catch (err) {
        if (ckrCode((err as Error).cause) === CKR_PIN_INCORRECT) this.#refusedPin = mac;
        throw err;
      }
      this.#refusedPin = null;
      relogin = true;
      this.#log.info({ token: this.#token }, 'pkcs11 login restored');
    } else {
      this.#lib.moveLogin(prevSlot, slot);
    }
    this.pool.renewFree((s) => {
      const n = this.#renew(s, slot, false);
      if (n !== s) replaced++;
      return n;
    });
    this.epoch++;
    this.#log.info({ token: this.#token, slotChanged: moved, sessionsReplaced: replaced, relogin, epoch: this.epoch }, 'pkcs11 backend recovered');
  }

  /**
   * `s` when it is open on `slot`, else a fresh session in its place (opened before the old one is
   * closed, so the application never drops to zero sessions and out of its login). When no session can
   * be opened: throws if `strict`, else keeps `s` for a later recovery to swap.
   */
  #renew(s: Buffer, slot: Buffer, strict: boolean): Buffer {
    try {
      if (this.pk.C_GetSessionInfo(s).slotID.equals(slot)) return s;
    } catch {
      // Closed or invalid: replaced below.
    }
    let fresh: Buffer;
    try {
      fresh = openSession(this.pk, slot);
    } catch (err) {
      if (strict) throw err;
      return s;
    }
    closeSession(this.pk, s);
    return fresh;
  }

  /** True when the token is still in the slot it was found in (SoftHSM answers a deleted token with CKR_GENERAL_ERROR). */
  #tokenPresent(): boolean {
    try {
      return this.pk.C_GetTokenInfo(this.#slot).label.trim() === this.#token;
    } catch {
      return false;
    }
  }

  /** True when `s` is open and the normal user is logged in on it. */
  #loggedIn(s: Buffer): boolean {
    try {
      const state = this.pk.C_GetSessionInfo(s).state;
      return state === CKS_RO_USER_FUNCTIONS || state === CKS_RW_USER_FUNCTIONS;
    } catch {
      return false;
    }
  }

  /** Drops the cached entry of `uri` and every alias of the same key. */
  #forget(uri: string): void {
    const e = this.#keys.get(uri);
    for (const [u, x] of this.#keys) if (u === uri || (e !== undefined && x === e)) this.#keys.delete(u);
  }

  /**
   * Runs the synchronous `fn` on a pooled session; when it meets a lost session, login or token, the
   * backend recovers and `fn` runs once more.
   */
  async #withSession<T>(what: string, fn: (s: Buffer) => T): Promise<T> {
    const epoch = this.epoch;
    let s = await this.pool.acquire();
    let first: unknown;
    try {
      const r = fn(s);
      this.pool.release(s);
      return r;
    } catch (err) {
      first = err;
    }
    const fault = faultOf(first);
    if (fault === null || fault === 'handle') {
      this.pool.release(s);
      throw pkcs11Error(what, first);
    }
    s = await this.repair(s, fault, epoch);
    try {
      return fn(s);
    } catch (err) {
      throw pkcs11Error(what, err);
    } finally {
      this.pool.release(s);
    }
  }

  /**
   * Before a search that found nothing counts as "absent": throws CKR_USER_NOT_LOGGED_IN when `s` lost its
   * login (private objects are then hidden) and CKR_TOKEN_NOT_PRESENT when the token left its slot.
   */
  #assertSearchable(s: Buffer, method: string): void {
    if (!this.#loggedIn(s)) throw new pkcs11js.Pkcs11Error('CKR_USER_NOT_LOGGED_IN', CKR_USER_NOT_LOGGED_IN, method);
    if (!this.#tokenPresent()) throw new pkcs11js.Pkcs11Error('CKR_TOKEN_NOT_PRESENT', CKR_TOKEN_NOT_PRESENT, method);
  }

  failed(session: Buffer, err: unknown): SigilError {
    // A failed C_Sign may leave the operation active (SoftHSM does on CKR_ARGUMENTS_BAD). Open the
    // replacement first: closing the application's last session would log it out.
    let next = session;
    try {
      next = this.pk.C_OpenSession(this.#slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
      closeSession(this.pk, session);
    } catch {
      // The token is gone or out of sessions: keep the old session, the next call reports the state.
    }
    this.pool.release(next);
    return pkcs11Error('pkcs11 sign', err);
  }

  async getKey(uri: string): Promise<BackendKey> {
    const k = await this.#lookup(uri);
    return { uri: k.uri, spki: k.spki, keyType: k.keyType };
  }

  async signer(uri: string, algorithm: Algorithm): Promise<KeySigner> {
    const info = ALGORITHM_INFO[algorithm];
    if (info === undefined) throw new SigilError('UNSUPPORTED_ALGORITHM', `unknown algorithm ${JSON.stringify(String(algorithm))}`);
    if (!this.algorithms.includes(algorithm)) {
      throw new SigilError('UNSUPPORTED_ALGORITHM', `pkcs11 token ${JSON.stringify(this.#token)} does not offer ${algorithm}`);
    }
    const cacheKey = `${algorithm} ${uri}`;
    const cached = this.#signers.get(cacheKey);
    if (cached !== undefined) return cached;
    const k = await this.#lookup(uri);
    if (k.keyType !== info.keyType) {
      throw new SigilError('INVALID_ARGUMENT', `key ${k.uri} is a ${k.keyType} key and cannot sign ${algorithm}`);
    }
    let s: KeySigner;
    switch (algorithm) {
      case 'ECDSA_P256_SHA256':
      case 'ECDSA_P384_SHA384':
        s = new EcdsaSigner(this, uri, k, algorithm);
        break;
      case 'RSA_PKCS1_SHA256':
      case 'RSA_PSS_SHA256':
        s = new RsaSigner(this, uri, k, algorithm, k.modulusBytes);
        break;
      case 'ED25519':
        s = new Ed25519Signer(this, uri, k);
        break;
    }
    this.#signers.set(cacheKey, s);
    return s;
  }

  async createKey(spec: KeySpec): Promise<BackendKey> {
    const { label, algorithm } = spec;
    const info = ALGORITHM_INFO[algorithm];
    if (info === undefined) throw new SigilError('UNSUPPORTED_ALGORITHM', `unknown algorithm ${JSON.stringify(String(algorithm))}`);
    if (!this.algorithms.includes(algorithm)) {
      throw new SigilError('UNSUPPORTED_ALGORITHM', `pkcs11 token ${JSON.stringify(this.#token)} does not offer ${algorithm}`);
    }
    const labelBytes = Buffer.from(label, 'utf8');
    if (labelBytes.length === 0 || labelBytes.length > 128 || /[\x00-\x1f\x7f]/.test(label)) {
      throw new SigilError('INVALID_ARGUMENT', 'pkcs11 key label must be 1 to 128 bytes of printable text');
    }
    const id = randomBytes(16);
    const { mechanism, pub, priv } = keyTemplates(info.keyType, labelBytes, id);
    const s = await this.pool.acquire();
    let pair: pkcs11js.KeyPair;
    try {
      const same = this.#find(s, [
        { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY },
        { type: pkcs11js.CKA_LABEL, value: labelBytes },
      ], 1);
      if (same.length > 0) {
        throw new SigilError('KEY_EXISTS', `a pkcs11 key labelled ${JSON.stringify(label)} already exists on token ${JSON.stringify(this.#token)}`);
      }
      pair = await this.pk.C_GenerateKeyPairAsync(s, mechanism, pub, priv);
    } catch (err) {
      this.pool.release(s);
      throw pkcs11Error('pkcs11 key generation', err);
    }
    try {
      const uri = formatKeyUri('pkcs11', [['token', this.#token], ['object', label], ['id', id]]);
      const entry = this.#entry(s, uri, pair.privateKey, info.keyType, [pair.publicKey]);
      this.#keys.set(uri, entry);
      this.#log.info({ uri, algorithm }, 'pkcs11 key created');
      return { uri, spki: entry.spki, keyType: entry.keyType };
    } catch (err) {
      throw pkcs11Error('pkcs11 key generation', err);
    } finally {
      this.pool.release(s);
    }
  }

  async destroyKey(uri: string): Promise<void> {
    const template = this.#templateOf(uri);
    const id = template.find((a) => a.type === pkcs11js.CKA_ID)?.value as Buffer | undefined;
    const label = template.find((a) => a.type === pkcs11js.CKA_LABEL)?.value as Buffer | undefined;
    // Forget cached handles first: no new signature may start on an object about to vanish.
    const forget = new Set<string>([uri]);
    for (const [u, e] of this.#keys) {
      if (u === uri || forget.has(e.uri)) (forget.add(u), forget.add(e.uri));
    }
    for (const u of forget) this.#keys.delete(u);
    for (const k of [...this.#signers.keys()]) if (forget.has(k.slice(k.indexOf(' ') + 1))) this.#signers.delete(k);
    await this.#withSession('pkcs11 key destruction', (s) => {
      const privs = this.#find(s, template, 2);
      if (privs.length > 1) throw new SigilError('INVALID_ARGUMENT', `key uri ${uri} is ambiguous: several private keys match`);
      // The public half: same CKA_ID (and label, when the uri has one), as createKey made it.
      const pubTemplate: pkcs11js.Template = [{ type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PUBLIC_KEY }];
      if (id !== undefined) pubTemplate.push({ type: pkcs11js.CKA_ID, value: id });
      if (label !== undefined) pubTemplate.push({ type: pkcs11js.CKA_LABEL, value: label });
      const pubs = this.#find(s, pubTemplate, 4);
      // PKCS#11 v2.40 section 5.7 C_DestroyObject; an object already gone (a retry after a crash) is not an error.
      for (const h of [...privs, ...pubs]) {
        try {
          this.pk.C_DestroyObject(s, h);
        } catch (err) {
          if (ckrCode(err) !== pkcs11js.CKR_OBJECT_HANDLE_INVALID) throw err;
        }
      }
      this.#log.info({ uri, objects: privs.length + pubs.length }, 'pkcs11 key destroyed');
    });
  }

  async findKeyByLabel(label: string): Promise<string | null> {
    const labelBytes = Buffer.from(label, 'utf8');
    return this.#withSession('pkcs11 key lookup', (s) => {
      for (const cls of [pkcs11js.CKO_PRIVATE_KEY, pkcs11js.CKO_PUBLIC_KEY]) {
        const found = this.#find(s, [{ type: pkcs11js.CKA_CLASS, value: cls }, { type: pkcs11js.CKA_LABEL, value: labelBytes }], 2);
        if (found.length === 0) continue;
        const id = this.#attrs(s, found[0]!, [pkcs11js.CKA_ID]).get(pkcs11js.CKA_ID) ?? Buffer.alloc(0);
        const parts: Array<[string, string | Uint8Array]> = [['token', this.#token], ['object', label]];
        if (id.length > 0) parts.push(['id', id]);
        return formatKeyUri('pkcs11', parts);
      }
      this.#assertSearchable(s, 'C_FindObjects');
      return null;
    });
  }

  async close(): Promise<void> {
    this.#closing ??= (async () => {
      // ECDSA requests queued for their signer's next drain (a setImmediate) were accepted: let those drains
      // take their sessions before the pool stops lending.
      await new Promise((resolve) => setImmediate(resolve));
      // Every session back in the pool: no batch is on the signing thread any more.
      const sessions = await this.pool.drain();
      await this.signThread?.close();
      this.#keys.clear();
      this.#signers.clear();
      this.#lib.logout(this.#slot, this.#control);
      for (const s of sessions) closeSession(this.pk, s);
      closeSession(this.pk, this.#control);
      this.#lib.release();
    })();
    return this.#closing;
  }

  /** The cached entry of `uri`, else one lookup on the token shared by every caller asking meanwhile. */
  #lookup(uri: string): Promise<KeyEntry> {
    const cached = this.#keys.get(uri);
    if (cached !== undefined) return Promise.resolve(cached);
    let pending = this.#lookups.get(uri);
    if (pending === undefined) {
      pending = this.#lookupNow(uri).finally(() => this.#lookups.delete(uri));
      this.#lookups.set(uri, pending);
    }
    return pending;
  }

  async #lookupNow(uri: string): Promise<KeyEntry> {
    const template = this.#templateOf(uri);
    const cleared = this.#cleared;
    const entry = await this.#withSession('pkcs11 key lookup', (s) => {
      const found = this.#find(s, template, 2);
      if (found.length === 0) {
        this.#assertSearchable(s, 'C_FindObjects');
        throw new SigilError('KEY_NOT_FOUND', `no private key on token ${JSON.stringify(this.#token)} matches ${uri}`);
      }
      if (found.length > 1) throw new SigilError('INVALID_ARGUMENT', `key uri ${uri} is ambiguous: several private keys match`);
      return this.#entry(s, null, found[0]!, null, null);
    });
    // A recovery while this lookup ran may have made its handle stale: hand it out (the signer checks
    // the epoch) but do not cache it.
    if (this.epoch === entry.epoch && this.#cleared === cleared) {
      this.#keys.set(uri, entry);
      this.#keys.set(entry.uri, entry);
    }
    return entry;
  }

  /** The private-key search template of a pkcs11 key URI (RFC 7512), after checking the URI. */
  #templateOf(uri: string): pkcs11js.Template {
    const parsed = parseKeyUri(uri);
    if (parsed.scheme !== 'pkcs11') throw new SigilError('INVALID_ARGUMENT', `not a pkcs11 key uri: scheme ${parsed.scheme}`);
    if (parsed.path !== null) throw new SigilError('INVALID_ARGUMENT', 'a pkcs11 key uri needs attributes such as object= or id=');
    for (const name of parsed.attrs.keys()) {
      if (!URI_ATTRS.has(name)) throw new SigilError('INVALID_ARGUMENT', `pkcs11 key uri attribute ${name} is not supported`);
    }
    const token = attrText(parsed, 'token');
    if (token !== undefined && token !== this.#token) {
      throw new SigilError('INVALID_ARGUMENT', `key uri names token ${JSON.stringify(token)} but this backend serves ${JSON.stringify(this.#token)}`);
    }
    const type = attrText(parsed, 'type');
    if (type !== undefined && type !== 'private') throw new SigilError('INVALID_ARGUMENT', `pkcs11 key uri type must be private, not ${JSON.stringify(type)}`);
    const id = parsed.attrs.get('id');
    const label = parsed.attrs.get('object');
    if (id === undefined && label === undefined) throw new SigilError('INVALID_ARGUMENT', 'a pkcs11 key uri needs an id or object attribute');

    const template: pkcs11js.Template = [{ type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY }];
    if (id !== undefined) template.push({ type: pkcs11js.CKA_ID, value: id });
    if (label !== undefined) template.push({ type: pkcs11js.CKA_LABEL, value: label });
    return template;
  }

  /**
   * Reads a private key's attributes and its public key. `publics` are the public key candidates when
   * known (a key just generated); otherwise they are searched by CKA_ID, then by label.
   */
  #entry(s: Buffer, knownUri: string | null, handle: Buffer, knownType: KeyType | null, publics: Buffer[] | null): KeyEntry {
    const a = this.#attrs(s, handle, [
      pkcs11js.CKA_KEY_TYPE, pkcs11js.CKA_ID, pkcs11js.CKA_LABEL, pkcs11js.CKA_SIGN, pkcs11js.CKA_SENSITIVE, pkcs11js.CKA_EXTRACTABLE,
    ]);
    const id = a.get(pkcs11js.CKA_ID) ?? Buffer.alloc(0);
    const label = a.get(pkcs11js.CKA_LABEL) ?? Buffer.alloc(0);
    const uriParts: Array<[string, string | Uint8Array]> = [['token', this.#token]];
    // Labels are text (RFC 7512 `object` is UTF-8); a label that is not valid UTF-8 keeps its bytes.
    const labelText = label.toString('utf8');
    if (label.length > 0) uriParts.push(['object', Buffer.from(labelText, 'utf8').equals(label) ? labelText : label]);
    if (id.length > 0) uriParts.push(['id', id]);
    const uri = knownUri ?? formatKeyUri('pkcs11', uriParts);

    const ckk = a.get(pkcs11js.CKA_KEY_TYPE);
    let keyType = knownType;
    if (keyType === null && ckk !== undefined) {
      const kt = ulong(ckk);
      if (kt === pkcs11js.CKK_RSA) keyType = 'RSA';
      else if (kt === pkcs11js.CKK_EC || kt === CKK_EC_EDWARDS) {
        const params = this.#attrs(s, handle, [pkcs11js.CKA_EC_PARAMS]).get(pkcs11js.CKA_EC_PARAMS);
        const t = params === undefined ? null : keyTypeOfEcParams(params);
        // A Weierstrass curve under CKK_EC_EDWARDS (or the reverse) is not a key sigil can use.
        if (t !== null && (t === 'ED25519') === (kt === CKK_EC_EDWARDS)) keyType = t;
      }
    }
    if (keyType === null) throw new SigilError('UNSUPPORTED_ALGORITHM', `key ${uri} has a key type or curve sigil does not sign with`);
    if (!bool(a.get(pkcs11js.CKA_SIGN))) throw new SigilError('INVALID_ARGUMENT', `key ${uri} does not allow signing (CKA_SIGN is false)`);
    if (!bool(a.get(pkcs11js.CKA_SENSITIVE)) || bool(a.get(pkcs11js.CKA_EXTRACTABLE))) {
      this.#log.warn({ uri }, 'pkcs11 key is extractable or not sensitive: its private key can leave the token');
    }

    let candidates = publics;
    if (candidates === null) {
      const pubTemplate = (attr: number, v: Buffer): pkcs11js.Template => [
        { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PUBLIC_KEY },
        { type: attr, value: v },
      ];
      candidates = id.length > 0 ? this.#find(s, pubTemplate(pkcs11js.CKA_ID, id), 16) : [];
      if (candidates.length === 0 && label.length > 0) candidates = this.#find(s, pubTemplate(pkcs11js.CKA_LABEL, label), 16);
    }
    let spki: Buffer | null = null;
    let modulusBytes = 0;
    for (const p of candidates) {
      if (keyType === 'RSA') {
        const pa = this.#attrs(s, p, [pkcs11js.CKA_MODULUS, pkcs11js.CKA_PUBLIC_EXPONENT]);
        const n = pa.get(pkcs11js.CKA_MODULUS);
        const e = pa.get(pkcs11js.CKA_PUBLIC_EXPONENT);
        if (n !== undefined && e !== undefined) spki = spkiFromRsa(n, e);
      } else {
        const pa = this.#attrs(s, p, [pkcs11js.CKA_EC_PARAMS, pkcs11js.CKA_EC_POINT]);
        const params = pa.get(pkcs11js.CKA_EC_PARAMS);
        const point = pa.get(pkcs11js.CKA_EC_POINT);
        if (params !== undefined && point !== undefined && keyTypeOfEcParams(params) === keyType) spki = spkiFromEcPoint(keyType, point);
      }
      if (spki !== null) break;
    }
    if (spki === null && keyType === 'RSA') {
      // RSA private key objects usually carry the public half too (PKCS#11 v2.40 section 2.1.3).
      const pa = this.#attrs(s, handle, [pkcs11js.CKA_MODULUS, pkcs11js.CKA_PUBLIC_EXPONENT]);
      const n = pa.get(pkcs11js.CKA_MODULUS);
      const e = pa.get(pkcs11js.CKA_PUBLIC_EXPONENT);
      if (n !== undefined && e !== undefined) spki = spkiFromRsa(n, e);
    }
    if (spki === null) {
      throw new SigilError('KEY_NOT_FOUND', `key ${uri} has no public key object (same id or label) to read its public key from`);
    }
    if (keyType === 'RSA') modulusBytes = rsaModulusBytes(spki);
    return { uri, handle, keyType, spki, modulusBytes, epoch: this.epoch };
  }

  /** Attribute values; attributes the object lacks (or hides) are absent from the map. */
  #attrs(s: Buffer, handle: Buffer, types: number[]): Map<number, Buffer> {
    const out = new Map<number, Buffer>();
    try {
      for (const r of this.pk.C_GetAttributeValue(s, handle, types.map((type) => ({ type })))) out.set(r.type, r.value);
      return out;
    } catch {
      // One missing attribute fails the whole call (CKR_ATTRIBUTE_TYPE_INVALID): read them one by one.
    }
    for (const type of types) {
      try {
        const [r] = this.pk.C_GetAttributeValue(s, handle, [{ type }]);
        if (r !== undefined) out.set(type, r.value);
      } catch {
        // Absent or sensitive.
      }
    }
    return out;
  }

  #find(s: Buffer, template: pkcs11js.Template, max: number): Buffer[] {
    this.pk.C_FindObjectsInit(s, template);
    try {
      return this.pk.C_FindObjects(s, max);
    } finally {
      this.pk.C_FindObjectsFinal(s);
    }
  }
}

function rsaModulusBytes(spki: Buffer): number {
  // The modulus length sizes the signature buffer; read it back from the key Node parsed.
  const bits = createPublicKey({ key: spki, format: 'der', type: 'spki' }).asymmetricKeyDetails?.modulusLength ?? RSA_BITS;
  return Math.ceil(bits / 8);
}

function keyTemplates(keyType: KeyType, label: Buffer, id: Buffer): { mechanism: pkcs11js.Mechanism; pub: pkcs11js.Template; priv: pkcs11js.Template } {
  const pub: pkcs11js.Template = [
    { type: pkcs11js.CKA_TOKEN, value: true },
    { type: pkcs11js.CKA_VERIFY, value: true },
    { type: pkcs11js.CKA_LABEL, value: label },
    { type: pkcs11js.CKA_ID, value: id },
  ];
  const priv: pkcs11js.Template = [
    { type: pkcs11js.CKA_TOKEN, value: true },
    { type: pkcs11js.CKA_PRIVATE, value: true },
    { type: pkcs11js.CKA_SENSITIVE, value: true },
    { type: pkcs11js.CKA_EXTRACTABLE, value: false },
    { type: pkcs11js.CKA_SIGN, value: true },
    { type: pkcs11js.CKA_LABEL, value: label },
    { type: pkcs11js.CKA_ID, value: id },
  ];
  switch (keyType) {
    case 'RSA':
      pub.push({ type: pkcs11js.CKA_MODULUS_BITS, value: RSA_BITS }, { type: pkcs11js.CKA_PUBLIC_EXPONENT, value: RSA_EXPONENT });
      return { mechanism: { mechanism: pkcs11js.CKM_RSA_PKCS_KEY_PAIR_GEN }, pub, priv };
    case 'ED25519':
      pub.push({ type: pkcs11js.CKA_EC_PARAMS, value: EC_PARAMS.ED25519 });
      return { mechanism: { mechanism: CKM_EC_EDWARDS_KEY_PAIR_GEN }, pub, priv };
    case 'EC_P256':
    case 'EC_P384':
      pub.push({ type: pkcs11js.CKA_EC_PARAMS, value: EC_PARAMS[keyType] });
      return { mechanism: { mechanism: pkcs11js.CKM_EC_KEY_PAIR_GEN }, pub, priv };
  }
}
