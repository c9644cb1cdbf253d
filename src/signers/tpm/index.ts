import { randomBytes } from 'node:crypto';
import { SigilError } from '../../errors.ts';
import type { Logger } from '../../log.ts';
import { TPM_ALG, TPM_ECC, TPM_PT, TPMA_OBJECT } from '../../tpm/constants.ts';
import { TpmError } from '../../tpm/rc.ts';
import { objectName, spkiOf, type TpmPublic, type TpmSignature } from '../../tpm/structures.ts';
import { templateBytes } from '../../tpm/templates.ts';
import { hex8, Tpm, type CreatedObject } from '../../tpm/tpm.ts';
import { openTcp, openTransport, type TpmTransport } from '../../tpm/transport.ts';
import {
  ALGORITHM_INFO,
  ALGORITHMS,
  ecdsaRawToDer,
  keyTypeOfSpki,
  type Algorithm,
  type Backend,
  type BackendContext,
  type BackendKey,
  type KeyCreator,
  type KeyDestroyer,
  type KeySigner,
  type KeySpec,
  type KeyType,
  type RecordedKey,
} from '../signer.ts';
import { checkedSigner } from '../signature-check.ts';
import { flushesTransients, type TpmConfig } from './config.ts';
import { isHandleMissing, tpmFailure } from './errors.ts';
import { isAuthRefused, isSessionGone, SessionPool } from './session-pool.ts';
import { KeyTable, type KeyEntry } from './key-table.ts';
import { SrkLease, type LeasedSrk } from './srk-lease.ts';
import { SrkPin } from './srk-pin.ts';
import { lockStateDir, type StateLock } from './state-lock.ts';
import { signingKeyTemplate } from './templates.ts';
import { formatTpmUri, parseTpmKeyUri } from './uri.ts';
import { withDeadline } from '../../deadline.ts';
import { Serial } from '../../serial.ts';

/** A usable signing key at a persistent handle, as read from its public area. */
interface TpmKey {
  handle: number;
  uri: string;
  /** The name sigil recorded for the key: every TPM2_Sign is authorized with it in cpHash. */
  name: Buffer;
  /** The key's authValue: random for keys sigil made (kept in the key table), empty for imported ones. */
  authValue: Buffer;
  keyType: KeyType;
  spki: Buffer;
  public: TpmPublic;
  /** Bytes of one ECDSA coordinate (r or s), or of the RSA modulus. */
  size: number;
}

// TPMT_SIG_SCHEME per algorithm (TPM 2.0 Part 2, 11.2.1.5): the scheme and the hash of the digest.
const SCHEMES: Readonly<Record<Exclude<Algorithm, 'ED25519'>, { scheme: number; hash: number }>> = {
  ECDSA_P256_SHA256: { scheme: TPM_ALG.ECDSA, hash: TPM_ALG.SHA256 },
  ECDSA_P384_SHA384: { scheme: TPM_ALG.ECDSA, hash: TPM_ALG.SHA384 },
  RSA_PKCS1_SHA256: { scheme: TPM_ALG.RSASSA, hash: TPM_ALG.SHA256 },
  RSA_PSS_SHA256: { scheme: TPM_ALG.RSAPSS, hash: TPM_ALG.SHA256 },
};

const LABEL = /^[^\u0000-\u001f\u007f]{1,128}$/u;
// HMAC sessions kept open: swtpm has three loaded-session slots (TPM_PT_HR_LOADED_MIN); one stays free
// for other uses such as an EK policy session.
const SESSIONS = 2;
const PERSISTENT_TYPE = 0x81000000;
const EMPTY_AUTH = Buffer.alloc(0);
/** A key creation warns when the TPM reports room for this many more persistent objects or fewer. */
const PERSISTENT_WARN_AT = 2;
/** Bytes of the random authValue of a key sigil creates: the size of its nameAlg's digest (SHA-256), the most a TPM takes. */
const AUTH_BYTES = 32;

/** A key sigil made in the TPM that still has the empty authValue (made before sigil set one). */
export interface EmptyAuthKey {
  label: string;
  uri: string;
  algorithm: Algorithm;
  createdAt: string;
}

/** The steps of an authValue change, in order; `setAuthValue`'s test hook hears each after it is done. */
export type RekeyStep = 'changed' | 'prepared' | 'evicted' | 'recorded' | 'persisted' | 'done';

/** The TPM backend's maintenance of keys sigil made before it gave them an authValue (`sigild tpm rekey`). */
export interface TpmKeyMaintenance {
  /** Keys in the key table still at their handle with the empty authValue. */
  emptyAuthKeys(): Promise<EmptyAuthKey[]>;
  /**
   * Gives the key `label` a fresh random 32-byte authValue, crash-safely (see docs/backends.md). Only keys in the
   * key table (made by sigil); imported keys are never changed. `afterStep` is a test hook: a throw there
   * stands for a crash at that point (nothing is rolled back in this process).
   */
  setAuthValue(label: string, afterStep?: (step: RekeyStep) => void | Promise<void>): Promise<void>;
}

/**
 * Opens a TPM backend: keys persisted in the TPM's owner hierarchy, created under a storage primary
 * key (the standard ECC P-256 SRK template, made on demand and flushed after use), so the private keys
 * never leave the TPM. The SRK is pinned in the state directory at the first open and held to after;
 * every session is salted with it. The TPM must answer at open: the algorithms depend on its curves.
 */
export async function open(config: TpmConfig, ctx: BackendContext): Promise<Backend & KeyCreator & KeyDestroyer & TpmKeyMaintenance> {
  // The lock comes first: a second sigild on the same directory is refused before it reads the table
  // or takes the TPM's one connection.
  const lock = await lockStateDir(config.stateDir, ctx.log);
  let tpm: Tpm | undefined;
  try {
    const table = await KeyTable.open(config.stateDir);
    const pin = await SrkPin.open(config.stateDir);
    tpm = new Tpm(await openTpmTransport(config.transport, Math.max(config.timeoutMs, config.createTimeoutMs)));
    const flush = flushesTransients(config);
    if (flush) await flushAtOpen(tpm, config.timeoutMs, ctx.log);
    const t = tpm;
    const curves = await tpmDeadline(config.timeoutMs, 'tpm capability query', () => t.getEccCurves()).catch((err: unknown) => {
      throw tpmFailure('tpm capability query', err);
    });
    const algorithms = ALGORITHMS.filter((a) => {
      if (a === 'ED25519') return false;
      if (a === 'ECDSA_P256_SHA256') return curves.includes(TPM_ECC.NIST_P256);
      if (a === 'ECDSA_P384_SHA384') return curves.includes(TPM_ECC.NIST_P384);
      return true;
    });
    const srk = new SrkLease(tpm, pin, ctx.log);
    // A TPM whose SRK is not the pinned one is refused here, with the reason; a busy TPM (its object
    // slots full) is not: every later load of the SRK, before any session or key creation, checks again.
    await tpmDeadline(config.timeoutMs, 'tpm storage key check', () => srk.with(async () => undefined)).catch((err: unknown) => {
      const e = tpmFailure('tpm storage key check', err);
      if (e.code !== 'BACKEND_UNAVAILABLE') throw e;
      ctx.log.warn({ err: e }, 'tpm storage key not checked at open: it is checked before the first session or key creation');
    });
    const backend = new TpmBackend(config, ctx, tpm, table, algorithms, lock, flush, srk);
    await backend.settleAtOpen();
    return backend;
  } catch (err) {
    await tpm?.close().catch(() => undefined);
    await lock.release();
    throw err;
  }
}

/**
 * Flushes the transient objects a TPM without a resource manager still holds (a sigild killed while
 * a key was loaded leaves them; swtpm has three slots), within the deadline.
 */
async function flushAtOpen(tpm: Tpm, ms: number, log: Logger): Promise<void> {
  const kinds = [
    { what: 'tpm transient object flush', left: 'tpm transient objects left by an earlier user flushed', flush: () => tpm.flushTransients() },
    { what: 'tpm session flush', left: 'tpm sessions left by an earlier user flushed', flush: () => tpm.flushSessions() },
  ];
  for (const k of kinds) {
    let flushed: number[];
    try {
      flushed = await tpmDeadline(ms, k.what, k.flush);
    } catch (err) {
      throw tpmFailure(k.what, err);
    }
    if (flushed.length > 0) log.warn({ handles: flushed.map(hex8) }, k.left);
  }
}

/**
 * Opens the transport; for swtpm's TCP port with a per-command timeout, since `openTransport` keeps
 * its 120 s default. A command that times out drops the connection and the next one reconnects.
 */
async function openTpmTransport(spec: string, timeoutMs: number): Promise<TpmTransport> {
  if (!spec.startsWith('swtpm:')) return openTransport(spec);
  const opts = new Map<string, string>();
  for (const part of spec.slice('swtpm:'.length).split(',')) {
    if (part === '') continue;
    const eq = part.indexOf('=');
    const k = eq < 0 ? part : part.slice(0, eq).trim();
    if (eq < 0 || (k !== 'host' && k !== 'port')) throw new SigilError('CONFIG_INVALID', `tpm transport: bad swtpm option ${JSON.stringify(part)}`);
    opts.set(k, part.slice(eq + 1).trim());
  }
  const port = Number(opts.get('port') ?? '2321');
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw new SigilError('CONFIG_INVALID', `tpm transport: bad port ${JSON.stringify(opts.get('port'))}`);
  return openTcp({ host: opts.get('host') ?? '127.0.0.1', port, timeoutMs });
}

/** Runs `f`, or fails with BACKEND_UNAVAILABLE once `ms` have passed (the TPM call itself runs on; `onTimeout` tells it). */
function tpmDeadline<T>(ms: number, what: string, f: () => Promise<T>, onTimeout?: () => void): Promise<T> {
  return withDeadline(f(), ms, () => {
    onTimeout?.();
    return new SigilError('BACKEND_UNAVAILABLE', `${what}: no answer from the tpm in ${ms} ms`);
  });
}

/**
 * Checks that the public area at `handle` is a key sigil can sign with through TPM2_Sign and an HMAC
 * session with its empty authValue, and describes it under `name`, the name sigil recorded for it. A
 * restricted key signs only digests the TPM hashed itself.
 */
function describeKey(handle: number, pub: TpmPublic, name: Buffer, uri: string, authValue: Buffer = EMPTY_AUTH): TpmKey {
  const at = hex8(handle);
  if (pub.type !== TPM_ALG.RSA && pub.type !== TPM_ALG.ECC) throw new SigilError('FAILED_PRECONDITION', `tpm object at ${at} is not an rsa or ecc key`);
  const a = pub.objectAttributes;
  if ((a & TPMA_OBJECT.sign) === 0) throw new SigilError('FAILED_PRECONDITION', `tpm object at ${at} is not a signing key (sign attribute clear)`);
  if (a & TPMA_OBJECT.restricted) {
    throw new SigilError('FAILED_PRECONDITION', `tpm key at ${at} is restricted: it signs only digests the tpm computed itself, not outside digests`);
  }
  if ((a & TPMA_OBJECT.userWithAuth) === 0) {
    throw new SigilError('FAILED_PRECONDITION', `tpm key at ${at} needs a policy session to sign (userWithAuth clear); sigil uses its authValue`);
  }
  let spki: Buffer;
  try {
    spki = spkiOf(pub);
  } catch (err) {
    throw new SigilError('BACKEND_ERROR', `tpm key at ${at} has an unreadable public key`, { cause: err });
  }
  const keyType = keyTypeOfSpki(spki);
  if (keyType === null) throw new SigilError('UNSUPPORTED_ALGORITHM', `tpm key at ${at} is of a kind sigil does not sign with`);
  const size = pub.rsa !== undefined ? pub.rsa.modulus.length : keyType === 'EC_P256' ? 32 : 48;
  return { handle, uri, name, authValue, keyType, spki, public: pub, size };
}

/** Whether the key's own scheme (fixed at creation, or TPM_ALG_NULL for any) lets it sign `alg`. */
function schemeAllows(pub: TpmPublic, alg: Exclude<Algorithm, 'ED25519'>): boolean {
  const d = pub.rsa ?? pub.ecc;
  if (d === undefined) return false;
  if (d.scheme === TPM_ALG.NULL) return true;
  return d.scheme === SCHEMES[alg].scheme && d.schemeHash === SCHEMES[alg].hash;
}

/**
 * The refusal when the TPM rejects the HMAC of a salted session on an object whose name sigil holds:
 * the TPM did not derive the session key from the salt sigil encrypted to the pinned SRK (or, for a key,
 * the key wants another authValue).
 */
function srkRefused(what: string, cause: unknown, orAuthValue = false): SigilError {
  const or = orAuthValue ? "the key's authValue is not the one sigil holds, or " : '';
  return new SigilError('FAILED_PRECONDITION', `${what}: the tpm refused the session hmac: ${or}the tpm does not hold the private key of the pinned storage key (srk) the session was salted with; nothing was signed or created`, { cause });
}

/** The refusal when the object at a handle is not the one sigil recorded there. */
function notRecorded(handle: number): SigilError {
  return new SigilError('FAILED_PRECONDITION', `tpm object at ${hex8(handle)} is not the recorded key (its name differs from the one recorded when the key was created or imported); not signing with it`);
}

function leftPad(b: Buffer, size: number, what: string): Buffer {
  if (b.length > size) throw new SigilError('BACKEND_ERROR', `tpm returned a ${b.length}-byte ${what} for a ${size}-byte key`);
  return b.length === size ? b : Buffer.concat([Buffer.alloc(size - b.length), b]);
}

/** A fresh authValue: no trailing zero byte, since the TPM drops those (Part 1, 19.6.4.3) and the table must hold exactly what the TPM does. */
function newAuthValue(): Buffer {
  let a = randomBytes(AUTH_BYTES);
  while (a[AUTH_BYTES - 1] === 0) a = randomBytes(AUTH_BYTES);
  return a;
}

/** An entry without its pending change. */
function settled(e: KeyEntry, auth?: string): KeyEntry {
  const { rekey: _, ...rest } = e;
  return auth === undefined ? rest : { ...rest, auth };
}

/** Thrown through by `setAuthValue` when its test hook threw: a simulated crash, after which nothing is tidied up. */
class HookAbort extends Error {}

class TpmBackend implements Backend, KeyCreator, KeyDestroyer, TpmKeyMaintenance {
  readonly kind = 'tpm';
  readonly algorithms: readonly Algorithm[];
  readonly #tpm: Tpm;
  readonly #table: KeyTable;
  readonly #log: Logger;
  readonly #range: { first: number; last: number };
  readonly #timeoutMs: number;
  readonly #createTimeoutMs: number;
  // One multi-command act at a time: key creation holds two transient slots, and handle allocation and
  // the table must not interleave. Signatures are single commands and bypass it.
  readonly #admin = new Serial();
  readonly #keys = new Map<number, TpmKey>();
  readonly #lock: StateLock;
  readonly #flushTransients: boolean;
  readonly #sessions: SessionPool;
  readonly #srk: SrkLease;
  readonly #onSignatureMismatch: (() => void) | undefined;
  // The transport's connection count when transients were last flushed; a new connection means
  // whatever used the TPM in between may have left objects.
  #flushedAt: number | undefined;
  #closed = false;

  constructor(config: TpmConfig, ctx: BackendContext, tpm: Tpm, table: KeyTable, algorithms: Algorithm[], lock: StateLock, flush: boolean, srk: SrkLease) {
    const log = ctx.log;
    this.#onSignatureMismatch = ctx.onSignatureMismatch;
    this.algorithms = algorithms;
    this.#lock = lock;
    this.#flushTransients = flush;
    this.#flushedAt = tpm.transport.connections;
    this.#tpm = tpm;
    this.#srk = srk;
    // Every session is salted with the pinned SRK (Part 1, 19.6.13): its session key is secret from anyone
    // without the SRK's private key, so a response HMAC that verifies came from the TPM holding it, and
    // the session can encrypt a key's authValue in TPM2_Create (AES-128-CFB).
    this.#sessions = new SessionPool(tpm, SESSIONS, log, () =>
      srk.with((k) => tpm.startHmacSession({ salt: { handle: k.handle, public: k.pinned.public }, aesCfb: true })),
    );
    this.#table = table;
    this.#log = log;
    this.#range = config.handleRange;
    this.#timeoutMs = config.timeoutMs;
    this.#createTimeoutMs = config.createTimeoutMs;
  }

  /**
   * Runs one act against the TPM under the backend's deadline and classifies what it throws. `f`'s signal
   * is aborted when that deadline passes or `outer` is aborted: a call past its deadline runs on (a TPM
   * command cannot be taken back), so whatever it has not started yet must check the signal and give up.
   */
  async #call<T>(what: string, ms: number, f: (signal: AbortSignal) => Promise<T>, outer?: AbortSignal): Promise<T> {
    if (this.#closed) throw new SigilError('BACKEND_UNAVAILABLE', 'tpm backend is closed');
    const mine = new AbortController();
    const signal = outer ? AbortSignal.any([outer, mine.signal]) : mine.signal;
    try {
      return await tpmDeadline(ms, what, async () => {
        // On swtpm, even a persistent key needs a free object slot to sign: leftovers block everything.
        if (this.#needsFlush()) await this.#admin.run(() => this.#flushLeftovers());
        return f(signal);
      }, () => mine.abort());
    } catch (err) {
      throw tpmFailure(what, err);
    }
  }

  #checkAlgorithm(algorithm: Algorithm): Exclude<Algorithm, 'ED25519'> {
    if (ALGORITHM_INFO[algorithm] === undefined) throw new SigilError('UNSUPPORTED_ALGORITHM', `unknown algorithm ${JSON.stringify(String(algorithm))}`);
    if (!this.algorithms.includes(algorithm) || algorithm === 'ED25519') throw new SigilError('UNSUPPORTED_ALGORITHM', `this tpm does not offer ${algorithm}`);
    return algorithm;
  }

  async createKey(spec: KeySpec): Promise<BackendKey> {
    const algorithm = this.#checkAlgorithm(spec.algorithm);
    const label = spec.label;
    if (typeof label !== 'string' || !LABEL.test(label)) throw new SigilError('INVALID_ARGUMENT', 'tpm key label must be 1 to 128 characters without control characters');
    const template = signingKeyTemplate(ALGORITHM_INFO[algorithm].keyType)!;
    return this.#call(`tpm key creation for ${label}`, this.#createTimeoutMs, () =>
      this.#admin.run(async () => {
        const existing = this.#table.get(label);
        if (existing !== undefined) {
          if (await this.#holds(existing)) throw new SigilError('KEY_EXISTS', `a tpm key labelled ${JSON.stringify(label)} already exists at ${hex8(existing.handle)}`);
          await this.#table.delete(label);
        }
        const handle = await this.#freeHandle();
        // Again after that command: a connection that died unnoticed is remade by it.
        await this.#flushLeftovers();
        const tpm = this.#tpm;
        const key = await this.#srk.with(async (srk): Promise<TpmKey> => {
          // Only whoever holds the key table (sigild's state directory, mode 0700) can sign with the key; with
          // an empty authValue any process that may open the TPM could. No trailing zero byte: the TPM drops
          // those (Part 1, 19.6.4.3), so what the table records is exactly what the TPM holds.
          const authValue = newAuthValue();
          const made = await this.#createUnder(srk, templateBytes(template), authValue);
          const name = objectName(made.public);
          const key = describeKey(handle, made.public, name, formatTpmUri(handle), authValue);
          // The table entry goes first: after a crash, findKeyByLabel checks the handle for this name.
          await this.#table.put({ label, handle, name: name.toString('hex'), algorithm, createdAt: new Date().toISOString(), auth: authValue.toString('hex') });
          let evictSent = false;
          try {
            const loaded = await tpm.load(srk.handle, made.private, made.public);
            try {
              if (!loaded.name.equals(name)) throw new SigilError('BACKEND_ERROR', 'tpm loaded a key whose name differs from the one it created');
              evictSent = true;
              await tpm.evictControl(loaded.handle, handle);
            } finally {
              await this.#flush(loaded.handle);
            }
          } catch (err) {
            // Nothing persisted when EvictControl was not sent or the TPM refused it; a lost answer may
            // hide a persisted key, so that trail stays for findKeyByLabel.
            if (!evictSent || err instanceof TpmError) await this.#table.delete(label).catch(() => undefined);
            throw err;
          }
          return key;
        });
        this.#keys.set(handle, key);
        this.#log.info({ uri: key.uri, algorithm, label }, 'tpm key created');
        await this.#warnIfNearlyFull();
        return { uri: key.uri, spki: key.spki, keyType: key.keyType };
      }),
    );
  }

  /**
   * TPM2_Create under the leased SRK, authorized by a pooled session salted with the pinned SRK, so the
   * first parameter (TPM2B_SENSITIVE_CREATE, holding `authValue`) crosses the wire AES-128-CFB encrypted
   * (Part 1, 21.3) and the response HMAC proves the answer came from the TPM holding the SRK.
   */
  async #createUnder(srk: LeasedSrk, template: Buffer, authValue: Buffer): Promise<CreatedObject> {
    const session = await this.#sessions.acquire();
    let keep = false;
    try {
      const made = await this.#tpm.create(srk.handle, template, { userAuth: authValue, session: { session, parentName: srk.pinned.name } });
      keep = true;
      return made;
    } catch (err) {
      keep = err instanceof TpmError && !isAuthRefused(err) && !isSessionGone(err);
      if (isSessionGone(err)) throw new SigilError('BACKEND_UNAVAILABLE', 'tpm key creation: the tpm no longer holds the authorization session (restarted or flushed)', { cause: err });
      // The SRK's name is in cpHash and its authValue is empty: a refusal means the TPM derived another
      // session key, so it could not decrypt the salt with the pinned SRK's private key.
      if (isAuthRefused(err)) throw srkRefused('tpm key creation', err);
      throw err;
    } finally {
      this.#sessions.release(session, keep);
    }
  }

  /**
   * Looks a key up. A key sigil created keeps its plain `tpm:handle=` URI (its name is in the table);
   * any other object at a plain handle is answered with `;name=` added, so the URI an import records
   * carries the name every signature is then bound to.
   */
  async getKey(uri: string): Promise<BackendKey> {
    const { handle, name } = parseTpmKeyUri(uri);
    const k = await this.#call(`tpm key lookup for ${uri}`, this.#timeoutMs, async () => {
      const { public: pub, name: actual } = await this.#readPublic(handle);
      const recorded = name ?? this.#recordedName(handle);
      if (recorded !== null && !recorded.equals(actual)) throw notRecorded(handle);
      return describeKey(handle, pub, actual, recorded === null ? formatTpmUri(handle, actual) : uri);
    });
    return { uri: k.uri, spki: k.spki, keyType: k.keyType };
  }

  async signer(uri: string, algorithm: Algorithm, version?: RecordedKey): Promise<KeySigner> {
    const alg = this.#checkAlgorithm(algorithm);
    const { handle, name } = parseTpmKeyUri(uri);
    const recorded = name ?? this.#recordedName(handle);
    const cached = this.#keys.get(handle);
    const k =
      cached !== undefined && recorded !== null && cached.name.equals(recorded) && cached.uri === uri
        ? cached
        : await this.#call(`tpm key lookup for ${uri}`, this.#timeoutMs, () => this.#load(uri, handle, name));
    const info = ALGORITHM_INFO[alg];
    if (k.keyType !== info.keyType) throw new SigilError('INVALID_ARGUMENT', `key ${k.uri} is a ${k.keyType} key and cannot sign ${alg}`);
    if (!schemeAllows(k.public, alg)) throw new SigilError('INVALID_ARGUMENT', `key ${k.uri} has a fixed signing scheme other than ${alg}`);
    // Second line behind the session HMAC (which proves the answer came from the TPM holding the SRK): a
    // signature that does not verify under the recorded public key (a TPM fault, the wrong object) stays here.
    // Without a recorded one, the public area read at the handle, whose name is the recorded one, serves.
    const signer: KeySigner = { algorithm: alg, dropsAbandoned: true, sign: (input, signal) => this.#sign(k, alg, input, signal) };
    return checkedSigner(signer, version?.spki ?? k.spki, { uri: k.uri, kind: 'tpm', log: this.#log, onMismatch: this.#onSignatureMismatch });
  }

  async #sign(k: TpmKey, alg: Exclude<Algorithm, 'ED25519'>, input: Buffer, outer?: AbortSignal): Promise<Buffer> {
    const want = ALGORITHM_INFO[alg].digestLength;
    if (!Buffer.isBuffer(input) || input.length !== want) throw new SigilError('INVALID_ARGUMENT', `${alg} signs a ${want}-byte digest, got ${input?.length ?? 0} bytes`);
    const { scheme, hash } = SCHEMES[alg];
    const what = `tpm signature with ${k.uri}`;
    // A request whose caller gave up while it waited for a session is dropped: a signature made for
    // nobody would still be a signature, made after the daemon had answered (and audited) a failure.
    const abandoned = (): SigilError => new SigilError('BACKEND_UNAVAILABLE', `${what}: dropped unsigned, its caller stopped waiting`);
    const sig = await this.#call(what, this.#timeoutMs, async (signal) => {
      if (signal.aborted) throw abandoned();
      const session = await this.#sessions.acquire();
      if (signal.aborted) {
        this.#sessions.release(session, true);
        throw abandoned();
      }
      let keep = false;
      try {
        const out = await this.#tpm.sign(k.handle, input, scheme, hash, { session, name: k.name, authValue: k.authValue });
        keep = true;
        return out;
      } catch (err) {
        // A TPM error leaves the session's nonces as they were; a refusal of its HMAC, a lost session or
        // a failed exchange (nonce state unknown) gets a fresh session next time.
        keep = err instanceof TpmError && !isAuthRefused(err) && !isSessionGone(err);
        if (isHandleMissing(err)) {
          this.#forget(k);
          throw new SigilError('KEY_NOT_FOUND', `no tpm key at ${hex8(k.handle)}`, { cause: err });
        }
        if (isSessionGone(err)) throw new SigilError('BACKEND_UNAVAILABLE', `${what}: the tpm no longer holds the authorization session (restarted or flushed)`, { cause: err });
        if (isAuthRefused(err)) throw await this.#refusal(k, err);
        throw err;
      } finally {
        this.#sessions.release(session, keep);
      }
    });
    return wireSignature(k, scheme, hash, sig);
  }

  /**
   * Explains a TPM refusal of the session HMAC: the TPM computed cpHash with the name of the object
   * at the handle, so a different name there means another object (the decision was the TPM's; this
   * read only picks the message). The same name means the key wants an authValue sigil lacks.
   */
  async #refusal(k: TpmKey, err: unknown): Promise<unknown> {
    this.#forget(k);
    let actual: Buffer;
    try {
      actual = (await this.#tpm.readPublic(k.handle)).name;
    } catch (readErr) {
      if (isHandleMissing(readErr)) return new SigilError('KEY_NOT_FOUND', `no tpm key at ${hex8(k.handle)}`, { cause: readErr });
      return err;
    }
    if (!actual.equals(k.name)) {
      this.#log.error({ uri: k.uri, recorded: k.name.toString('hex'), found: actual.toString('hex') }, 'tpm handle holds another object than the recorded key; signature refused');
      return new SigilError('FAILED_PRECONDITION', notRecorded(k.handle).message, { cause: err });
    }
    // The same object: either its authValue is not the one sigil holds, or the TPM derived another
    // session key (the salt was encrypted to the pinned SRK, and this TPM does not hold its private key).
    this.#log.error({ uri: k.uri }, 'tpm refused the session hmac on the recorded key; signature refused');
    return srkRefused(`tpm signature with ${k.uri}`, err, true);
  }

  /**
   * At open: settles every authValue change a crash cut (best effort: a key whose change cannot be settled
   * now is settled before its next signature), and names the keys still without an authValue.
   */
  async settleAtOpen(): Promise<void> {
    for (const e of this.#table.entries()) {
      if (e.rekey === undefined) continue;
      try {
        await this.#call(`tpm authValue change of ${e.label}`, this.#createTimeoutMs, () => this.#admin.run(() => this.#settleRekey(e)));
      } catch (err) {
        this.#log.error({ err, label: e.label, handle: hex8(e.handle) }, 'tpm key authValue change left unsettled at open: it is settled before the key next signs');
      }
    }
    const empty = this.#table.entries().filter((e) => e.auth === undefined && e.rekey === undefined);
    if (empty.length > 0) {
      this.#log.warn(
        { labels: empty.map((e) => e.label) },
        'tpm keys sigil made before it set an authValue have an empty one: any process that may open the tpm can sign with them; give them one with sigild tpm rekey (daemon stopped, docs/operations.md)',
      );
    }
  }

  async emptyAuthKeys(): Promise<EmptyAuthKey[]> {
    return this.#call('tpm key listing', this.#timeoutMs, () =>
      this.#admin.run(async () => {
        const out: EmptyAuthKey[] = [];
        for (const e of this.#table.entries()) {
          if (e.auth !== undefined || e.rekey !== undefined || !(await this.#holds(e))) continue;
          out.push({ label: e.label, uri: formatTpmUri(e.handle), algorithm: e.algorithm, createdAt: e.createdAt });
        }
        return out;
      }),
    );
  }

  async setAuthValue(label: string, afterStep: (step: RekeyStep) => void | Promise<void> = () => undefined): Promise<void> {
    if (typeof label !== 'string' || !LABEL.test(label)) throw new SigilError('INVALID_ARGUMENT', 'tpm key label must be 1 to 128 characters without control characters');
    const step = async (s: RekeyStep): Promise<void> => {
      try {
        await afterStep(s);
      } catch (err) {
        throw new HookAbort(`stopped after ${s}`, { cause: err });
      }
    };
    // A change is up to three table writes and six TPM commands (two of them NV writes).
    await this.#call(`tpm authValue change of ${label}`, this.#createTimeoutMs * 2, () =>
      this.#admin.run(async () => {
        let entry = this.#table.get(label);
        if (entry === undefined) throw new SigilError('KEY_NOT_FOUND', `no tpm key labelled ${JSON.stringify(label)} in the key table: only keys sigil made get a new authValue`);
        if (entry.rekey !== undefined) {
          await this.#settleRekey(entry);
          entry = this.#table.get(label)!;
        }
        if (entry.auth !== undefined) throw new SigilError('FAILED_PRECONDITION', `tpm key ${label} has an authValue already`);
        const name = Buffer.from(entry.name, 'hex');
        let pub: TpmPublic;
        try {
          const read = await this.#tpm.readPublic(entry.handle);
          if (!read.name.equals(name)) throw notRecorded(entry.handle);
          pub = read.public;
        } catch (err) {
          if (isHandleMissing(err)) throw new SigilError('KEY_NOT_FOUND', `no tpm key at ${hex8(entry.handle)} for ${label}`, { cause: err });
          throw err;
        }
        describeKey(entry.handle, pub, name, formatTpmUri(entry.handle));
        await this.#flushLeftovers();
        this.#keys.delete(entry.handle);
        const begun = entry;
        await this.#srk.with(async (srk) => {
          const auth = newAuthValue();
          const priv = await this.#changeAuth(begun.handle, name, srk, auth);
          await step('changed');
          // Order (crash-safe): the new private area is durable before the old object goes, and the eviction is
          // recorded before the new object takes the handle, so the table always tells which object is there.
          const rekey = { auth: auth.toString('hex'), private: priv.toString('hex'), public: pub.raw.toString('hex'), step: 'prepared' as const, startedAt: new Date().toISOString() };
          await this.#table.put({ ...begun, rekey });
          await step('prepared');
          try {
            // A persistent objectHandle with persistentHandle equal to it evicts (Part 3, 28.5).
            await this.#tpm.evictControl(begun.handle, begun.handle);
            await step('evicted');
            await this.#table.put({ ...begun, rekey: { ...rekey, step: 'evicted' } });
            await step('recorded');
            await this.#persistPrivate(srk, begun.handle, name, priv, pub.raw);
            await step('persisted');
            await this.#table.put(settled(begun, rekey.auth));
          } catch (err) {
            if (err instanceof HookAbort) throw err;
            // Whatever state the TPM was left in, the table names it: settle now, else at the next use or open.
            await this.#settleRekey(this.#table.get(label)!).catch((e: unknown) => this.#log.error({ err: e, label }, 'tpm key authValue change not settled; it is settled before the key next signs'));
            throw err;
          }
        });
        this.#log.info({ label, uri: formatTpmUri(begun.handle) }, 'tpm key given a new authValue; the empty one no longer signs');
        await step('done');
      }),
    );
  }

  /**
   * Finishes or rolls back the recorded authValue change of `e` (inside the admin mutex): with the handle
   * empty, the old object is gone, and the new private area is loaded and persisted there; with the recorded
   * name there after the eviction was recorded, that is the new object; before, the old one (rolled back).
   */
  async #settleRekey(e: KeyEntry): Promise<void> {
    const r = e.rekey;
    if (r === undefined) return;
    const name = Buffer.from(e.name, 'hex');
    let at: Buffer | null;
    try {
      at = (await this.#tpm.readPublic(e.handle)).name;
    } catch (err) {
      if (!isHandleMissing(err)) throw err;
      at = null;
    }
    this.#keys.delete(e.handle);
    if (at === null) {
      // Recorded before the new object takes the handle (the same order as setAuthValue): a crash or a failed
      // write after the persist must never leave `prepared` beside the new object, which would roll back.
      if (r.step !== 'evicted') await this.#table.put({ ...e, rekey: { ...r, step: 'evicted' } });
      await this.#srk.with((srk) => this.#persistPrivate(srk, e.handle, name, Buffer.from(r.private, 'hex'), Buffer.from(r.public, 'hex')));
      await this.#table.put(settled(e, r.auth));
      this.#log.warn({ label: e.label, handle: hex8(e.handle) }, 'interrupted tpm key authValue change completed: the new object persisted');
      return;
    }
    if (!at.equals(name)) {
      throw new SigilError('FAILED_PRECONDITION', `tpm key authValue change of ${e.label} cannot complete: ${hex8(e.handle)} holds another object than the recorded key`);
    }
    if (r.step === 'evicted') {
      await this.#table.put(settled(e, r.auth));
      this.#log.warn({ label: e.label, handle: hex8(e.handle) }, 'interrupted tpm key authValue change completed: the new object was persistent already');
      return;
    }
    // `prepared`: the old object should still be there. The new one has the same name, so ask the TPM which
    // authValue the object takes before the new one (in this record only) is dropped.
    if (await this.#takesAuth(e, name, Buffer.from(r.auth, 'hex'))) {
      await this.#table.put(settled(e, r.auth));
      this.#log.warn({ label: e.label, handle: hex8(e.handle) }, 'interrupted tpm key authValue change completed: the object at the handle takes the new authValue');
      return;
    }
    if (!(await this.#takesAuth(e, name, EMPTY_AUTH))) {
      throw new SigilError('FAILED_PRECONDITION', `tpm key authValue change of ${e.label} cannot be settled: the object at ${hex8(e.handle)} takes neither the new nor the empty authValue`);
    }
    await this.#table.put(settled(e));
    this.#log.warn({ label: e.label, handle: hex8(e.handle) }, 'interrupted tpm key authValue change rolled back (the old object was still persistent): the key keeps its empty authValue; run sigild tpm rekey again');
  }

  /**
   * Whether the key at `e.handle` takes `auth`: TPM2_ObjectChangeAuth to the same value, whose new private area
   * is dropped (the object itself never changes, Part 3, 19.2). sigil's keys are noDA, so a refusal costs no
   * lockout. Other TPM failures are thrown.
   */
  async #takesAuth(e: KeyEntry, name: Buffer, auth: Buffer): Promise<boolean> {
    return this.#srk.with(async (srk) => {
      const session = await this.#sessions.acquire();
      let keep = false;
      try {
        await this.#tpm.objectChangeAuth(e.handle, srk.handle, auth, { session, authValue: auth, objectName: name, parentName: srk.pinned.name });
        keep = true;
        return true;
      } catch (err) {
        if (err instanceof TpmError && isAuthRefused(err)) return false;
        throw err;
      } finally {
        this.#sessions.release(session, keep);
      }
    });
  }

  /** Loads a private area of the key `name` under the SRK and persists it at `handle`, flushing the transient copy. */
  async #persistPrivate(srk: LeasedSrk, handle: number, name: Buffer, priv: Buffer, pub: Buffer): Promise<void> {
    const loaded = await this.#tpm.load(srk.handle, priv, pub);
    try {
      if (!loaded.name.equals(name)) throw new SigilError('BACKEND_ERROR', 'tpm loaded a key whose name differs from the recorded one');
      await this.#tpm.evictControl(loaded.handle, handle);
    } finally {
      await this.#flush(loaded.handle);
    }
  }

  /**
   * TPM2_ObjectChangeAuth of the key at `handle` (its empty authValue) under the leased SRK, through a
   * pooled session salted with the pinned SRK: the new authValue crosses the wire encrypted and the
   * response HMAC proves the new private area came from the TPM holding the SRK.
   */
  async #changeAuth(handle: number, name: Buffer, srk: LeasedSrk, newAuth: Buffer): Promise<Buffer> {
    const session = await this.#sessions.acquire();
    let keep = false;
    try {
      const priv = await this.#tpm.objectChangeAuth(handle, srk.handle, newAuth, { session, authValue: EMPTY_AUTH, objectName: name, parentName: srk.pinned.name });
      keep = true;
      return priv;
    } catch (err) {
      keep = err instanceof TpmError && !isAuthRefused(err) && !isSessionGone(err);
      if (isSessionGone(err)) throw new SigilError('BACKEND_UNAVAILABLE', 'tpm authValue change: the tpm no longer holds the authorization session (restarted or flushed)', { cause: err });
      if (isAuthRefused(err)) throw srkRefused('tpm authValue change', err, true);
      throw err;
    } finally {
      this.#sessions.release(session, keep);
    }
  }

  /**
   * Every key version sigil makes stays persistent until it is destroyed, and a hardware TPM holds only a
   * handful of persistent objects (the PC Client minimum is 7): warn while there is still room to act.
   */
  async #warnIfNearlyFull(): Promise<void> {
    try {
      const left = await this.#tpm.getProperty(TPM_PT.HR_PERSISTENT_AVAIL);
      if (left <= PERSISTENT_WARN_AT) {
        this.#log.warn({ persistentSlotsLeft: left }, 'the tpm has room for few more persistent keys: destroy key versions you no longer need (sigilctl key schedule-destroy) before the next rotations fail');
      }
    } catch (err) {
      this.#log.debug({ err }, 'tpm persistent object room not readable');
    }
  }

  #forget(k: TpmKey): void {
    if (this.#keys.get(k.handle) === k) this.#keys.delete(k.handle);
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#keys.clear();
    try {
      await tpmDeadline(this.#timeoutMs, 'tpm session flush', async () => {
        await this.#srk.settled();
        await this.#sessions.close();
      }).catch((err: unknown) => {
        this.#log.warn({ err }, 'tpm sessions not flushed at close');
      });
      await this.#tpm.close();
    } finally {
      await this.#lock.release();
    }
  }

  /** True when the connection to a TPM without a resource manager dropped (or was remade) since the last flush. */
  #needsFlush(): boolean {
    if (!this.#flushTransients) return false;
    const t = this.#tpm.transport;
    return t.connected === false || (t.connections !== undefined && t.connections !== this.#flushedAt);
  }

  /**
   * Flushes what other users left while the backend was disconnected. Runs inside the admin mutex,
   * so no key creation of ours holds a transient slot meanwhile.
   */
  async #flushLeftovers(): Promise<void> {
    if (!this.#needsFlush()) return;
    const srk = this.#srk.heldHandle();
    const flushed = await this.#tpm.flushTransients(new Set(srk === undefined ? [] : [srk]));
    // Sessions too: ours from before the drop and any a killed sigild left. Those commands in flight
    // hold are spared; idle ones are dropped and started afresh.
    this.#sessions.discardIdle();
    const sessions = await this.#tpm.flushSessions(this.#sessions.busyHandles());
    this.#sessions.forgetStale();
    this.#flushedAt = this.#tpm.transport.connections;
    if (flushed.length > 0) this.#log.warn({ handles: flushed.map(hex8) }, 'tpm transient objects left while disconnected flushed');
    if (sessions.length > 0) this.#log.info({ handles: sessions.map(hex8) }, 'tpm sessions from before the reconnect flushed');
  }

  async destroyKey(uri: string): Promise<void> {
    const { handle, name } = parseTpmKeyUri(uri);
    await this.#call(`tpm key destruction for ${uri}`, this.#timeoutMs, () =>
      this.#admin.run(async () => {
        this.#keys.delete(handle);
        const entry = this.#table.byHandle(handle);
        const recorded = name ?? this.#recordedName(handle);
        const forget = async () => {
          if (entry !== undefined) await this.#table.delete(entry.label);
          await this.#table.unpin(handle);
        };
        let pub: { public: TpmPublic; name: Buffer };
        try {
          pub = await this.#tpm.readPublic(handle);
        } catch (err) {
          if (!isHandleMissing(err)) throw err;
          await forget();
          return;
        }
        if (recorded !== null && !pub.name.equals(recorded)) {
          // The key sigil knew there is already gone and another object took the handle: not ours to evict.
          this.#log.warn({ uri, label: entry?.label }, 'tpm handle holds another object than the recorded key; record dropped, object left alone');
          await forget();
          return;
        }
        describeKey(handle, pub.public, pub.name, uri);
        try {
          // A persistent objectHandle with persistentHandle equal to it evicts (Part 3, 28.5).
          await this.#tpm.evictControl(handle, handle);
        } catch (err) {
          if (!isHandleMissing(err)) throw err;
        }
        await forget();
        this.#log.info({ uri, label: entry?.label }, 'tpm key destroyed');
      }),
    );
  }

  async findKeyByLabel(label: string): Promise<string | null> {
    if (typeof label !== 'string' || !LABEL.test(label)) throw new SigilError('INVALID_ARGUMENT', 'tpm key label must be 1 to 128 characters without control characters');
    return this.#call(`tpm key search for ${label}`, this.#timeoutMs, () =>
      this.#admin.run(async () => {
        const entry = this.#table.get(label);
        if (entry === undefined) return null;
        if (await this.#holds(entry)) return formatTpmUri(entry.handle);
        this.#log.info({ label, handle: hex8(entry.handle) }, 'stale tpm key table entry dropped');
        await this.#table.delete(label);
        return null;
      }),
    );
  }

  /** True when the entry's handle still holds the object of the recorded name; TPM trouble propagates. */
  async #holds(entry: KeyEntry): Promise<boolean> {
    try {
      const { name } = await this.#tpm.readPublic(entry.handle);
      return name.toString('hex') === entry.name;
    } catch (err) {
      if (isHandleMissing(err)) return false;
      throw err;
    }
  }

  /** The name recorded for a plain `tpm:handle=` URI: the table's for a key sigil created, else a pinned one, else null. */
  #recordedName(handle: number): Buffer | null {
    const hex = this.#table.byHandle(handle)?.name ?? this.#table.pinnedName(handle);
    return hex === undefined ? null : Buffer.from(hex, 'hex');
  }

  async #readPublic(handle: number): Promise<{ public: TpmPublic; name: Buffer }> {
    try {
      return await this.#tpm.readPublic(handle);
    } catch (err) {
      if (isHandleMissing(err)) throw new SigilError('KEY_NOT_FOUND', `no tpm key at ${hex8(handle)}`, { cause: err });
      throw err;
    }
  }

  /**
   * Reads the key at `handle` for signing under the name recorded for `uri`. A plain URI of a key
   * sigil did not create and has no name for (imported before names were recorded) gets the name
   * the TPM reports now pinned in the table: held to from this first use on, and logged once.
   */
  async #load(uri: string, handle: number, uriName: Buffer | null): Promise<TpmKey> {
    // An authValue change a failure cut (the open's attempt too): finish or roll it back before signing.
    if (this.#table.byHandle(handle)?.rekey !== undefined) {
      await this.#admin.run(async () => {
        const e = this.#table.byHandle(handle);
        if (e?.rekey !== undefined) await this.#settleRekey(e);
      });
    }
    const { public: pub, name: actual } = await this.#readPublic(handle);
    let recorded = uriName ?? this.#recordedName(handle);
    if (recorded === null) {
      recorded = await this.#admin.run(async () => {
        const again = this.#recordedName(handle);
        if (again !== null) return again;
        describeKey(handle, pub, actual, uri);
        await this.#table.pin(handle, actual.toString('hex'));
        this.#log.warn({ uri, name: actual.toString('hex') }, 'tpm key imported without a recorded name: the name it has now is recorded and every signature is bound to it from here on');
        return actual;
      });
    }
    if (!recorded.equals(actual)) throw notRecorded(handle);
    const entry = this.#table.byHandle(handle);
    const authValue = entry?.auth !== undefined && entry.name === recorded.toString('hex') ? Buffer.from(entry.auth, 'hex') : EMPTY_AUTH;
    const k = describeKey(handle, pub, recorded, uri, authValue);
    this.#keys.set(handle, k);
    return k;
  }

  async #freeHandle(): Promise<number> {
    const taken = new Set(await this.#tpm.getHandles(PERSISTENT_TYPE));
    const reserved = this.#table.handles();
    for (let h = this.#range.first; h <= this.#range.last; h++) {
      if (!taken.has(h) && !reserved.has(h)) return h;
    }
    throw new SigilError('FAILED_PRECONDITION', `no free persistent handle in ${hex8(this.#range.first)}-${hex8(this.#range.last)}`);
  }

  async #flush(handle: number): Promise<void> {
    try {
      await this.#tpm.flushContext(handle);
    } catch (err) {
      // A slot left taken costs a later command TPM_RC_OBJECT_MEMORY; a restart of the TPM clears it.
      this.#log.warn({ err, handle: hex8(handle) }, 'tpm transient object could not be flushed');
    }
  }
}

/** The TPM's TPMT_SIGNATURE in sigil's wire form: DER for ECDSA, the raw block for RSA. */
function wireSignature(k: TpmKey, scheme: number, hash: number, sig: TpmSignature): Buffer {
  if (sig.sigAlg !== scheme || sig.hash !== hash) throw new SigilError('BACKEND_ERROR', `tpm answered with signature scheme ${hex8(sig.sigAlg)}/${hex8(sig.hash)}`);
  if (scheme === TPM_ALG.ECDSA) {
    const ecc = sig.ecc;
    if (ecc === undefined) throw new SigilError('BACKEND_ERROR', 'tpm ecdsa signature without r and s');
    // The TPM drops leading zero bytes of r and s: pad back to the curve size.
    return ecdsaRawToDer(Buffer.concat([leftPad(ecc.r, k.size, 'ecdsa r'), leftPad(ecc.s, k.size, 'ecdsa s')]));
  }
  if (sig.rsa === undefined || sig.rsa.length !== k.size) throw new SigilError('BACKEND_ERROR', 'tpm rsa signature of the wrong length');
  return sig.rsa;
}
