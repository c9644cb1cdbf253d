import pkcs11js from 'pkcs11js';
import { SigilError } from '../../errors.ts';
import { ecdsaRawToDer, type Algorithm, type KeySigner } from '../signer.ts';
import { CKM_EDDSA } from './attrs.ts';
import type { SessionPool } from './pool.ts';
import type { SignThread } from './sign-thread.ts';

/** What a signer needs from its backend: the module, the pool and a way to recover a session after an error. */
export interface SignerHost {
  readonly pk: pkcs11js.PKCS11;
  readonly pool: SessionPool;
  /** Replaces a session an error may have left with an active operation, releases it, and wraps the error. */
  failed(session: Buffer, err: unknown): SigilError;
  /** The signing thread ECDSA batches go to, or null to sign on the event loop. */
  readonly signThread: SignThread | null;
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

function badLength(algorithm: Algorithm, want: number, got: number): SigilError {
  return new SigilError('INVALID_ARGUMENT', `${algorithm} signs a ${want}-byte digest, got ${got} bytes`);
}

/**
 * ECDSA over a digest (SignInit + Sign), returned DER-encoded. Requests that arrive in the same turn of the
 * event loop are signed together, back to back on one session: on the backend's signing thread when it
 * has one, else synchronously on the event loop.
 */
export class EcdsaSigner implements KeySigner {
  readonly algorithm: Algorithm;
  readonly #host: SignerHost;
  readonly #pk: pkcs11js.PKCS11;
  readonly #pool: SessionPool;
  readonly #key: Buffer;
  readonly #digestLength: number;
  // Scratch for r||s, reused: signing is synchronous and ecdsaRawToDer copies out of it.
  readonly #raw: Buffer;

  constructor(host: SignerHost, key: Buffer, algorithm: 'ECDSA_P256_SHA256' | 'ECDSA_P384_SHA384') {
    this.algorithm = algorithm;
    this.#host = host;
    this.#pk = host.pk;
    this.#pool = host.pool;
    this.#key = key;
    this.#digestLength = algorithm === 'ECDSA_P256_SHA256' ? 32 : 48;
    this.#raw = Buffer.alloc(2 * this.#digestLength);
  }

  sign(input: Buffer): Promise<Buffer> {
    if (input.length !== this.#digestLength) return Promise.reject(badLength(this.algorithm, this.#digestLength, input.length));
    return new Promise((resolve, reject) => {
      this.#queue.push({ input, resolve, reject });
      if (this.#queue.length === 1) setImmediate(this.#drain);
    });
  }

  /** Requests waiting for the next drain, which runs once per turn of the event loop. */
  readonly #queue: Array<{ input: Buffer; resolve(b: Buffer): void; reject(e: unknown): void }> = [];

  // Signs everything queued in this turn of the event loop back to back, on one session. Measured in
  // sigild: a signature interleaved with request handling took ~105 us against 47 us in a tight loop
  // (the module's code and tables fall out of cache); coalescing brought unary calls from ~175 to
  // ~130 us of daemon CPU and SignStream from 12k to 14k/s (docs/benchmarks.md).
  readonly #drain = (): void => {
    const q = this.#queue.splice(0);
    if (this.#host.signThread) {
      const s = this.#pool.tryAcquire();
      if (s !== undefined) this.#onThread(s, q);
      else this.#pool.acquire().then((x) => this.#onThread(x, q), (err: unknown) => q.forEach((j) => j.reject(err)));
      return;
    }
    const s = this.#pool.tryAcquire();
    if (s === undefined) {
      for (const j of q) this.#pool.acquire().then((x) => this.#signOn(x, j.input)).then(j.resolve, j.reject);
      return;
    }
    let session: Buffer | undefined = s;
    for (const j of q) {
      if (session === undefined) {
        this.#pool.acquire().then((x) => this.#signOn(x, j.input)).then(j.resolve, j.reject);
        continue;
      }
      try {
        this.#pk.C_SignInit(session, MECH_ECDSA, this.#key);
        j.resolve(ecdsaRawToDer(this.#pk.C_Sign(session, j.input, this.#raw)));
      } catch (err) {
        j.reject(this.#host.failed(session, err));
        session = this.#pool.tryAcquire();
      }
    }
    if (session !== undefined) this.#pool.release(session);
  };

  /** Hands a batch to the signing thread; digests after a failed one go back to the queue. */
  #onThread(session: Buffer, q: Array<{ input: Buffer; resolve(b: Buffer): void; reject(e: unknown): void }>): void {
    const dl = this.#digestLength;
    const digests = new Uint8Array(q.length * dl);
    for (let i = 0; i < q.length; i++) digests.set(q[i]!.input, i * dl);
    this.#host.signThread!.sign(session, this.#key, digests, dl, 2 * dl).then(
      (r) => {
        const n = r.sigs.length;
        for (let i = 0; i < n; i++) q[i]!.resolve(ecdsaRawToDer(r.sigs[i]!));
        if (!r.error) {
          this.#pool.release(session);
          return;
        }
        q[n]!.reject(this.#host.failed(session, r.error));
        const rest = q.slice(n + 1);
        if (rest.length === 0) return;
        if (this.#queue.length === 0) setImmediate(this.#drain);
        this.#queue.push(...rest);
      },
      (err: unknown) => {
        // The thread died holding the session: it may have an operation active.
        const e = this.#host.failed(session, err);
        for (const j of q) j.reject(e);
      },
    );
  }

  #signOn(s: Buffer, input: Buffer): Promise<Buffer> {
    let raw: Buffer;
    try {
      this.#pk.C_SignInit(s, MECH_ECDSA, this.#key);
      raw = this.#pk.C_Sign(s, input, this.#raw);
    } catch (err) {
      return Promise.reject(this.#host.failed(s, err));
    }
    this.#pool.release(s);
    return Promise.resolve(ecdsaRawToDer(raw));
  }
}

/** Ed25519 (CKM_EDDSA) over the whole message, signed synchronously. */
export class Ed25519Signer implements KeySigner {
  readonly algorithm: Algorithm = 'ED25519';
  readonly #host: SignerHost;
  readonly #pk: pkcs11js.PKCS11;
  readonly #pool: SessionPool;
  readonly #key: Buffer;

  constructor(host: SignerHost, key: Buffer) {
    this.#host = host;
    this.#pk = host.pk;
    this.#pool = host.pool;
    this.#key = key;
  }

  sign(input: Buffer): Promise<Buffer> {
    const s = this.#pool.tryAcquire();
    if (s === undefined) return this.#pool.acquire().then((q) => this.#signOn(q, input));
    return this.#signOn(s, input);
  }

  #signOn(s: Buffer, input: Buffer): Promise<Buffer> {
    let sig: Buffer;
    try {
      this.#pk.C_SignInit(s, MECH_EDDSA, this.#key);
      sig = this.#pk.C_Sign(s, input.length === 0 ? EMPTY : input, Buffer.allocUnsafe(64));
    } catch (err) {
      return Promise.reject(this.#host.failed(s, err));
    }
    this.#pool.release(s);
    return Promise.resolve(sig);
  }
}

/**
 * RSA PKCS#1 v1.5 (over DigestInfo || digest) or PSS (over the digest), signed with C_SignAsync so the
 * modular exponentiation runs on the libuv threadpool and several signatures proceed at once.
 */
export class RsaSigner implements KeySigner {
  readonly algorithm: Algorithm;
  readonly #host: SignerHost;
  readonly #pk: pkcs11js.PKCS11;
  readonly #pool: SessionPool;
  readonly #key: Buffer;
  readonly #mech: pkcs11js.Mechanism;
  readonly #pkcs1: boolean;
  readonly #modulusBytes: number;

  constructor(host: SignerHost, key: Buffer, algorithm: 'RSA_PKCS1_SHA256' | 'RSA_PSS_SHA256', modulusBytes: number) {
    this.algorithm = algorithm;
    this.#host = host;
    this.#pk = host.pk;
    this.#pool = host.pool;
    this.#key = key;
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
    const s = this.#pool.tryAcquire() ?? (await this.#pool.acquire());
    let sig: Buffer;
    try {
      this.#pk.C_SignInit(s, this.#mech, this.#key);
      sig = await this.#pk.C_SignAsync(s, data, Buffer.allocUnsafe(this.#modulusBytes));
    } catch (err) {
      throw this.#host.failed(s, err);
    }
    this.#pool.release(s);
    return sig;
  }
}
