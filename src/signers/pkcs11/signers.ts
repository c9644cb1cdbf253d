import pkcs11js from 'pkcs11js';
import { SigilError } from '../../errors.ts';
import { ecdsaRawToDer, type Algorithm, type KeySigner } from '../signer.ts';
import { CKM_EDDSA } from './attrs.ts';
import { faultOf, type Fault } from './errors.ts';
import type { SessionPool } from './pool.ts';
import type { SignThread } from './sign-thread.ts';

/** A key's object handle and the backend's recovery epoch in which it was read. */
export interface KeyHandle {
  readonly handle: Buffer;
  readonly epoch: number;
}

/** What a signer needs from its backend: the module, the pool and the ways to recover after an error. */
export interface SignerHost {
  readonly pk: pkcs11js.PKCS11;
  readonly pool: SessionPool;
  /** Replaces a session an error may have left with an active operation, releases it, and wraps the error. */
  failed(session: Buffer, err: unknown): SigilError;
  /** The signing thread ECDSA batches go to, or null to sign on the event loop. */
  readonly signThread: SignThread | null;
  /** Bumped by every completed recovery: a handle read in an older epoch must be looked up again. */
  readonly epoch: number;
  /**
   * After `fault` on `session` in an operation begun in `startEpoch`: recovers (once for all callers
   * failing meanwhile) and returns a live session for the retry. On failure the session goes back to
   * the pool and the error (BACKEND_UNAVAILABLE when the token is gone) is thrown.
   */
  repair(session: Buffer, fault: Fault, startEpoch: number): Promise<Buffer>;
  /** The handle of the key at `uri`, looked up again when `stale` is the one cached; KEY_NOT_FOUND when gone. */
  keyHandle(uri: string, stale: Buffer | null): Promise<KeyHandle>;
}

// Mechanisms are built once: the hot path hands the same objects to pkcs11js every time.
const MECH_ECDSA: pkcs11js.Mechanism = { mechanism: pkcs11js.CKM_ECDSA };
const MECH_RSA_PKCS: pkcs11js.Mechanism = { mechanism: pkcs11js.CKM_RSA_PKCS };
const MECH_RSA_PSS: pkcs11js.Mechanism = {
  mechanism: pkcs11js.CKM_RSA_PKCS_PSS,
  parameter: { type: pkcs11js.CK_PARAMS_RSA_PSS, hashAlg: pkcs11js.CKM_SHA256, mgf: pkcs11js.CKG_MGF1_SHA256, saltLen: 32 } as pkcs11js.RsaPSS,
};
const MECH_EDDSA: pkcs11js.Mechanism = { mechanism: CKM_EDDSA };

// DER DigestInfo prefix for SHA-256 (RFC 8017 section 9.2, note 1): CKM_RSA_PKCS signs DigestInfo || digest.
const SHA256_DIGEST_INFO = Buffer.from('3031300d060960864801650304020105000420', 'hex');
// pkcs11js passes a NULL pointer for Buffer.alloc(0), which SoftHSM answers with CKR_ARGUMENTS_BAD while
// leaving the operation active; a zero-length view of real memory signs the empty message.
const EMPTY = Buffer.alloc(8).subarray(0, 0);

/**
 * The key handle a signer signs with, read again after a recovery (every handle may be stale, and a
 * module may hand a stale number to another object) or after the handle itself failed.
 */
abstract class TokenKeySigner {
  protected readonly host: SignerHost;
  protected readonly uri: string;
  protected key: Buffer;
  protected keyEpoch: number;
  #refreshing: Promise<void> | null = null;

  constructor(host: SignerHost, uri: string, k: KeyHandle) {
    this.host = host;
    this.uri = uri;
    this.key = k.handle;
    this.keyEpoch = k.epoch;
  }

  /** Looks the key up again if a recovery ran since its handle was read, or `stale` is still in use; one lookup for all callers. */
  protected refreshKey(stale: Buffer | null): Promise<void> {
    if (this.keyEpoch === this.host.epoch && (stale === null || this.key !== stale)) return Promise.resolve();
    this.#refreshing ??= this.host
      .keyHandle(this.uri, stale)
      .then((k) => {
        this.key = k.handle;
        this.keyEpoch = k.epoch;
      })
      .finally(() => {
        this.#refreshing = null;
      });
    return this.#refreshing;
  }
}

/** An ECDSA request waiting for a drain; `retried` once it went through a recovery (it is not retried twice). */
interface Job {
  input: Buffer;
  resolve(b: Buffer): void;
  reject(e: unknown): void;
  retried: boolean;
}

function badLength(algorithm: Algorithm, want: number, got: number): SigilError {
  return new SigilError('INVALID_ARGUMENT', `${algorithm} signs a ${want}-byte digest, got ${got} bytes`);
}

/**
 * ECDSA over a digest (SignInit + Sign), returned DER-encoded. Requests that arrive in the same turn of the
 * event loop are signed together, back to back on one session: on the backend's signing thread when it
 * has one, else synchronously on the event loop.
 */
export class EcdsaSigner extends TokenKeySigner implements KeySigner {
  readonly algorithm: Algorithm;
  readonly #pk: pkcs11js.PKCS11;
  readonly #pool: SessionPool;
  readonly #digestLength: number;
  // Scratch for r||s, reused: signing is synchronous and ecdsaRawToDer copies out of it.
  readonly #raw: Buffer;

  constructor(host: SignerHost, uri: string, key: KeyHandle, algorithm: 'ECDSA_P256_SHA256' | 'ECDSA_P384_SHA384') {
    super(host, uri, key);
    this.algorithm = algorithm;
    this.#pk = host.pk;
    this.#pool = host.pool;
    this.#digestLength = algorithm === 'ECDSA_P256_SHA256' ? 32 : 48;
    this.#raw = Buffer.alloc(2 * this.#digestLength);
  }

  sign(input: Buffer): Promise<Buffer> {
    if (input.length !== this.#digestLength) return Promise.reject(badLength(this.algorithm, this.#digestLength, input.length));
    return new Promise((resolve, reject) => {
      this.#queue.push({ input, resolve, reject, retried: false });
      if (this.#queue.length === 1) setImmediate(this.#drain);
    });
  }

  /** Requests waiting for the next drain, which runs once per turn of the event loop. */
  readonly #queue: Job[] = [];

  // Signs everything queued in this turn of the event loop back to back, on one session. Measured in
  // sigild: a signature interleaved with request handling took ~105 us against 47 us in a tight loop
  // (the module's code and tables fall out of cache); coalescing brought unary calls from ~175 to
  // ~130 us of daemon CPU and SignStream from 12k to 14k/s (docs/benchmarks.md).
  readonly #drain = (): void => {
    if (this.keyEpoch !== this.host.epoch) {
      this.refreshKey(null).then(this.#drain, (err: unknown) => {
        for (const j of this.#queue.splice(0)) j.reject(err);
      });
      return;
    }
    const q = this.#queue.splice(0);
    if (q.length === 0) return;
    if (this.host.signThread) {
      const s = this.#pool.tryAcquire();
      if (s !== undefined) this.#onThread(s, q);
      else this.#pool.acquire().then((x) => this.#onThread(x, q), (err: unknown) => q.forEach((j) => j.reject(err)));
      return;
    }
    const epoch = this.host.epoch;
    const key = this.key;
    let session = this.#pool.tryAcquire();
    for (let i = 0; i < q.length; i++) {
      const j = q[i]!;
      if (session === undefined) {
        this.#pool.acquire().then((x) => this.#signOn(x, j), j.reject);
        continue;
      }
      try {
        this.#pk.C_SignInit(session, MECH_ECDSA, key);
        j.resolve(ecdsaRawToDer(this.#pk.C_Sign(session, j.input, this.#raw)));
      } catch (err) {
        const fault = j.retried ? null : faultOf(err);
        if (fault !== null) {
          this.#recover(session, fault, epoch, key, q.slice(i));
          return;
        }
        j.reject(this.host.failed(session, err));
        session = this.#pool.tryAcquire();
      }
    }
    if (session !== undefined) this.#pool.release(session);
  };

  /** Hands a batch to the signing thread; digests after a failed one go back to the queue. */
  #onThread(session: Buffer, q: Job[]): void {
    // A recovery while this batch waited for its session: its handle is stale.
    if (this.keyEpoch !== this.host.epoch) return this.#requeue(session, q);
    const epoch = this.host.epoch;
    const key = this.key;
    const dl = this.#digestLength;
    const digests = new Uint8Array(q.length * dl);
    for (let i = 0; i < q.length; i++) digests.set(q[i]!.input, i * dl);
    this.host.signThread!.sign(session, key, digests, dl, 2 * dl).then(
      (r) => {
        const n = r.sigs.length;
        for (let i = 0; i < n; i++) q[i]!.resolve(ecdsaRawToDer(r.sigs[i]!));
        if (!r.error) {
          this.#pool.release(session);
          return;
        }
        const fault = q[n]!.retried ? null : faultOf(r.error);
        if (fault !== null) return this.#recover(session, fault, epoch, key, q.slice(n));
        q[n]!.reject(this.host.failed(session, r.error));
        const rest = q.slice(n + 1);
        if (rest.length === 0) return;
        if (this.#queue.length === 0) setImmediate(this.#drain);
        this.#queue.push(...rest);
      },
      (err: unknown) => {
        // The thread died holding the session: it may have an operation active.
        const e = this.host.failed(session, err);
        for (const j of q) j.reject(e);
      },
    );
  }

  #signOn(s: Buffer, j: Job): void {
    if (this.keyEpoch !== this.host.epoch) return this.#requeue(s, [j]);
    const epoch = this.host.epoch;
    const key = this.key;
    try {
      this.#pk.C_SignInit(s, MECH_ECDSA, key);
      j.resolve(ecdsaRawToDer(this.#pk.C_Sign(s, j.input, this.#raw)));
    } catch (err) {
      const fault = j.retried ? null : faultOf(err);
      if (fault !== null) this.#recover(s, fault, epoch, key, [j]);
      else j.reject(this.host.failed(s, err));
      return;
    }
    this.#pool.release(s);
  }

  /**
   * After `fault` on `session`: the failed request and those not yet tried wait for one recovery and the
   * key's fresh handle, then go back to the queue; each goes through a recovery at most once.
   */
  #recover(session: Buffer, fault: Fault, epoch: number, key: Buffer, jobs: Job[]): void {
    for (const j of jobs) j.retried = true;
    this.host
      .repair(session, fault, epoch)
      .then((s) => {
        this.#pool.release(s);
        return this.refreshKey(fault === 'handle' ? key : null);
      })
      .then(
        () => this.#requeue(null, jobs),
        (err: unknown) => {
          for (const j of jobs) j.reject(err);
        },
      );
  }

  /** Releases `session` (when given) and puts `jobs` at the head of the queue. */
  #requeue(session: Buffer | null, jobs: Job[]): void {
    if (session !== null) this.#pool.release(session);
    if (this.#queue.length === 0) setImmediate(this.#drain);
    this.#queue.unshift(...jobs);
  }
}

/** Ed25519 (CKM_EDDSA) over the whole message, signed synchronously. */
export class Ed25519Signer extends TokenKeySigner implements KeySigner {
  readonly algorithm: Algorithm = 'ED25519';
  readonly #pk: pkcs11js.PKCS11;
  readonly #pool: SessionPool;

  constructor(host: SignerHost, uri: string, key: KeyHandle) {
    super(host, uri, key);
    this.#pk = host.pk;
    this.#pool = host.pool;
  }

  sign(input: Buffer): Promise<Buffer> {
    if (this.keyEpoch !== this.host.epoch) return this.refreshKey(null).then(() => this.sign(input));
    const s = this.#pool.tryAcquire();
    if (s !== undefined) return this.#signOn(s, input, false);
    return this.#pool.acquire().then((q) => {
      if (this.keyEpoch === this.host.epoch) return this.#signOn(q, input, false);
      // A recovery ran while this waited for a session: its handle is stale.
      this.#pool.release(q);
      return this.sign(input);
    });
  }

  #signOn(s: Buffer, input: Buffer, retried: boolean): Promise<Buffer> {
    const epoch = this.host.epoch;
    const key = this.key;
    let sig: Buffer;
    try {
      this.#pk.C_SignInit(s, MECH_EDDSA, key);
      sig = this.#pk.C_Sign(s, input.length === 0 ? EMPTY : input, Buffer.allocUnsafe(64));
    } catch (err) {
      const fault = retried ? null : faultOf(err);
      if (fault === null) return Promise.reject(this.host.failed(s, err));
      // Once: recover, read the key's handle again, and sign on the session the recovery handed back.
      return this.host.repair(s, fault, epoch).then(async (r) => {
        try {
          await this.refreshKey(fault === 'handle' ? key : null);
        } catch (e) {
          this.#pool.release(r);
          throw e;
        }
        return this.#signOn(r, input, true);
      });
    }
    this.#pool.release(s);
    return Promise.resolve(sig);
  }
}

/**
 * RSA PKCS#1 v1.5 (over DigestInfo || digest) or PSS (over the digest), signed with C_SignAsync so the
 * modular exponentiation runs on the libuv threadpool and several signatures proceed at once.
 */
export class RsaSigner extends TokenKeySigner implements KeySigner {
  readonly algorithm: Algorithm;
  readonly #pk: pkcs11js.PKCS11;
  readonly #pool: SessionPool;
  readonly #mech: pkcs11js.Mechanism;
  readonly #pkcs1: boolean;
  readonly #modulusBytes: number;

  constructor(host: SignerHost, uri: string, key: KeyHandle, algorithm: 'RSA_PKCS1_SHA256' | 'RSA_PSS_SHA256', modulusBytes: number) {
    super(host, uri, key);
    this.algorithm = algorithm;
    this.#pk = host.pk;
    this.#pool = host.pool;
    this.#pkcs1 = algorithm === 'RSA_PKCS1_SHA256';
    this.#mech = this.#pkcs1 ? MECH_RSA_PKCS : MECH_RSA_PSS;
    this.#modulusBytes = modulusBytes;
  }

  async sign(input: Buffer): Promise<Buffer> {
    if (input.length !== 32) throw badLength(this.algorithm, 32, input.length);
    let data = input;
    if (this.#pkcs1) {
      data = Buffer.allocUnsafe(SHA256_DIGEST_INFO.length + 32);
      SHA256_DIGEST_INFO.copy(data, 0);
      input.copy(data, SHA256_DIGEST_INFO.length);
    }
    // A fault the backend recovers from is retried once (a signature has no side effect).
    let retried = false;
    for (;;) {
      if (this.keyEpoch !== this.host.epoch) await this.refreshKey(null);
      let s = this.#pool.tryAcquire() ?? (await this.#pool.acquire());
      if (this.keyEpoch !== this.host.epoch) {
        // A recovery ran while this waited for a session: its handle is stale.
        this.#pool.release(s);
        continue;
      }
      const epoch = this.host.epoch;
      const key = this.key;
      let sig: Buffer;
      try {
        this.#pk.C_SignInit(s, this.#mech, key);
        sig = await this.#pk.C_SignAsync(s, data, Buffer.allocUnsafe(this.#modulusBytes));
      } catch (err) {
        const fault = retried ? null : faultOf(err);
        if (fault === null) throw this.host.failed(s, err);
        retried = true;
        s = await this.host.repair(s, fault, epoch);
        this.#pool.release(s);
        await this.refreshKey(fault === 'handle' ? key : null);
        continue;
      }
      this.#pool.release(s);
      return sig;
    }
  }
}
