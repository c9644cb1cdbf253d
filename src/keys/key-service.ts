import { createHash } from 'node:crypto';
import { SigilError, type ErrorReason } from '../errors.ts';
import type { Logger } from '../log.ts';
import type { Clock } from '../clock.ts';
import type { Store, KeyRecord, KeyVersionRecord } from '../store/store.ts';
import type { BackendRegistry } from '../signers/registry.ts';
import { ALGORITHM_INFO, ALGORITHMS, canCreateKeys, type Algorithm, type AlgorithmInfo, type KeySigner, type KeyType } from '../signers/signer.ts';
import { backendLabel, checkKeyName, keyVersionRef, parseKeyRef } from './names.ts';

/** What to sign: exactly one of a digest or a whole message. */
export interface SignInput {
  digest?: Buffer | undefined;
  message?: Buffer | undefined;
}

/** A signature and the key version that made it. */
export interface Signature {
  signature: Buffer;
  /** `name@N`. */
  keyVersion: string;
  algorithm: Algorithm;
  /** The configured backend that signed, for metrics. */
  backend: string;
}

/** A public key of one key version. */
export interface PublicKey {
  keyVersion: string;
  algorithm: Algorithm;
  spki: Buffer;
}

interface Resolved {
  keyVersion: string;
  algorithm: Algorithm;
  info: AlgorithmInfo;
  backend: string;
  signer: KeySigner;
}

const ALGORITHM_OF_KEY_TYPE: Partial<Record<KeyType, Algorithm>> = {
  EC_P256: 'ECDSA_P256_SHA256',
  EC_P384: 'ECDSA_P384_SHA384',
  ED25519: 'ED25519',
};

/**
 * The key registry: names with numbered versions mapped to backend URIs, and the signing hot path.
 * Resolved key versions (backend signer with cached handles) are kept in memory; requests after the
 * first touch neither the store nor the backend's lookup.
 */
export class KeyService {
  readonly #store: Store;
  readonly #backends: BackendRegistry;
  readonly #defaultBackend: string;
  readonly #maxMessageBytes: number;
  readonly #log: Logger;
  readonly #clock: Clock;
  readonly #resolved = new Map<string, Promise<Resolved>>();
  readonly #creating = new Set<string>();

  constructor(opts: { store: Store; backends: BackendRegistry; defaultBackend: string; maxMessageBytes: number; log: Logger; clock: Clock }) {
    this.#store = opts.store;
    this.#backends = opts.backends;
    this.#defaultBackend = opts.defaultBackend;
    this.#maxMessageBytes = opts.maxMessageBytes;
    this.#log = opts.log;
    this.#clock = opts.clock;
  }

  /** Generates a new key (version 1) in a backend and records it. */
  async createKey(name: string, algorithm: Algorithm | null, backendName?: string): Promise<KeyRecord> {
    checkKeyName(name);
    const alg = requireAlgorithm(algorithm);
    const bname = this.#backendName(backendName);
    return this.#exclusive(name, async () => {
      const backend = await this.#backends.get(bname);
      if (!canCreateKeys(backend)) throw new SigilError('NOT_IMPLEMENTED', `backend ${bname} cannot create keys; import one by uri`);
      if (!backend.algorithms.includes(alg)) {
        throw new SigilError('UNSUPPORTED_ALGORITHM', `backend ${bname} does not support ${alg} (it supports ${backend.algorithms.join(', ')})`);
      }
      const made = await backend.createKey({ label: backendLabel(name, 1), algorithm: alg });
      const now = this.#clock.now();
      try {
        return this.#store.insertKey(
          { name, algorithm: alg, backend: bname, createdAt: now },
          { uri: made.uri, state: 'ENABLED', generated: true, spki: made.spki, createdAt: now, label: backendLabel(name, 1) },
        );
      } catch (err) {
        // The backend object exists but is not recorded; say where it is so an operator can remove it.
        this.#log.error({ err, key: name, uri: made.uri }, 'key created in backend but not recorded');
        throw err;
      }
    });
  }

  /** Registers a key made outside sigil, found by its backend URI, as version 1 of a new name. */
  async importKey(name: string, uri: string, algorithm: Algorithm | null, backendName?: string): Promise<KeyRecord> {
    checkKeyName(name);
    const bname = this.#backendName(backendName);
    return this.#exclusive(name, async () => {
      const backend = await this.#backends.get(bname);
      const found = await backend.getKey(uri);
      const alg = algorithm ?? ALGORITHM_OF_KEY_TYPE[found.keyType];
      if (!alg) throw new SigilError('INVALID_ARGUMENT', `${found.keyType} keys need an explicit algorithm (RSA_PKCS1_SHA256 or RSA_PSS_SHA256)`);
      if (ALGORITHM_INFO[alg].keyType !== found.keyType) {
        throw new SigilError('INVALID_ARGUMENT', `the key at that uri is ${found.keyType}, which cannot sign ${alg}`);
      }
      if (!backend.algorithms.includes(alg)) throw new SigilError('UNSUPPORTED_ALGORITHM', `backend ${bname} does not support ${alg}`);
      if (this.#store.uriInUse(bname, found.uri)) {
        // A rare refusal: the whole list is read only to name the key that has it.
        const owner = this.#store.listKeys('').flatMap((k) => k.versions).find((v) => v.uri === found.uri && this.#store.getKey(v.name)?.backend === bname);
        throw new SigilError('KEY_EXISTS', `the key at ${found.uri} is already registered${owner ? ` as ${keyVersionRef(owner.name, owner.version)}` : ''}`);
      }
      // Prove the key can sign with that algorithm before recording it.
      await backend.signer(found.uri, alg);
      const now = this.#clock.now();
      return this.#store.insertKey(
        { name, algorithm: alg, backend: bname, createdAt: now },
        { uri: found.uri, state: 'ENABLED', generated: false, spki: found.spki, createdAt: now },
      );
    });
  }

  /** The key with its versions; KEY_NOT_FOUND when there is none. */
  getKey(name: string): KeyRecord {
    checkKeyName(name);
    const key = this.#store.getKey(name);
    if (!key) throw new SigilError('KEY_NOT_FOUND', `no key named ${name}`);
    return key;
  }

  /** Keys whose names start with `prefix`, sorted by name. */
  listKeys(prefix: string): KeyRecord[] {
    if (prefix.length > 128) throw new SigilError('INVALID_ARGUMENT', 'prefix is longer than 128 characters');
    return this.#store.listKeys(prefix);
  }

  /**
   * The public key of `name` (primary version) or `name@N`. Disabled and destroyed versions keep
   * serving theirs (old signatures stay verifiable); versions below the key's min_verify_version do not.
   */
  publicKey(ref: string): PublicKey {
    const { key, version } = this.#lookup(ref);
    if (version.version < key.policy.minVerifyVersion) {
      const ref = keyVersionRef(key.name, version.version);
      throw new SigilError('FAILED_PRECONDITION', `key ${ref} is below min_verify_version ${key.policy.minVerifyVersion}: its public key is no longer trusted`, {
        reason: 'BELOW_MIN_VERIFY_VERSION',
        metadata: { key_version: ref, min_verify_version: String(key.policy.minVerifyVersion) },
      });
    }
    return { keyVersion: keyVersionRef(key.name, version.version), algorithm: key.algorithm, spki: version.spki };
  }

  /**
   * Drops every cached signer of key `name` (`name` and each `name@N`): the next request reads the
   * store again. Lifecycle changes call it right after their store commit, in the same synchronous
   * step, so a disabled version cannot sign on the very next request while in-flight ones finish.
   */
  invalidate(name: string): void {
    for (const ref of [...this.#resolved.keys()]) {
      if (ref === name || (ref.startsWith(name) && ref.charCodeAt(name.length) === 0x40 /* @ */)) this.#resolved.delete(ref);
    }
  }

  /** Signs with `name` (primary version) or `name@N`: the hot path. */
  async sign(ref: string, input: SignInput): Promise<Signature> {
    let p = this.#resolved.get(ref);
    if (p === undefined) {
      p = this.#resolve(ref);
      this.#resolved.set(ref, p);
      p.catch(() => this.#resolved.delete(ref));
    }
    const r = await p;
    const toSign = this.#inputFor(r, input);
    const signature = await r.signer.sign(toSign);
    return { signature, keyVersion: r.keyVersion, algorithm: r.algorithm, backend: r.backend };
  }

  #inputFor(r: Resolved, input: SignInput): Buffer {
    const { digest, message } = input;
    if (digest !== undefined && message !== undefined) throw new SigilError('INVALID_ARGUMENT', 'send either digest or message, not both');
    if (digest === undefined && message === undefined) throw new SigilError('INVALID_ARGUMENT', 'digest or message is required');
    if (r.info.hash === null) {
      if (message === undefined) throw new SigilError('INVALID_ARGUMENT', `${r.algorithm} signs whole messages: send message, not digest`);
      this.#checkMessage(message);
      return message;
    }
    if (digest !== undefined) {
      if (digest.length !== r.info.digestLength) {
        throw new SigilError('INVALID_ARGUMENT', `digest must be ${r.info.digestLength} bytes for ${r.algorithm}, got ${digest.length}`);
      }
      return digest;
    }
    this.#checkMessage(message!);
    return createHash(r.info.hash).update(message!).digest();
  }

  #checkMessage(message: Buffer): void {
    if (message.length > this.#maxMessageBytes) {
      throw new SigilError('MESSAGE_TOO_LARGE', `message is ${message.length} bytes; the limit is ${this.#maxMessageBytes} (limits.maxMessageBytes)`);
    }
  }

  async #resolve(ref: string): Promise<Resolved> {
    const { key, version } = this.#lookup(ref);
    checkSignable(key, version, !ref.includes('@'));
    const backend = await this.#backends.get(key.backend);
    // The recorded public key goes along: a backend that checks its signatures checks them against it.
    const signer = await backend.signer(version.uri, key.algorithm, { spki: version.spki });
    return {
      keyVersion: keyVersionRef(key.name, version.version),
      algorithm: key.algorithm,
      info: ALGORITHM_INFO[key.algorithm],
      backend: key.backend,
      signer,
    };
  }

  #lookup(ref: string): { key: KeyRecord; version: KeyVersionRecord } {
    const { name, version } = parseKeyRef(ref);
    const key = this.#store.getKey(name);
    if (!key) throw new SigilError('KEY_NOT_FOUND', `no key named ${name}`);
    const want = version ?? key.primaryVersion;
    const v = key.versions.find((x) => x.version === want);
    // A PENDING version is a rotation in progress (or one a crash interrupted): not visible yet.
    if (!v || v.state === 'PENDING') throw new SigilError('KEY_NOT_FOUND', `key ${name} has no version ${want}`);
    return { key, version: v };
  }

  #backendName(name: string | undefined): string {
    const b = name || this.#defaultBackend;
    if (!this.#backends.has(b)) throw new SigilError('INVALID_ARGUMENT', `no backend named ${JSON.stringify(b)} (configured: ${this.#backends.names().join(', ')})`);
    return b;
  }

  async #exclusive<T>(name: string, fn: () => Promise<T>): Promise<T> {
    if (this.#store.getKey(name)) throw new SigilError('KEY_EXISTS', `key ${name} already exists`);
    if (this.#creating.has(name)) throw new SigilError('KEY_EXISTS', `key ${name} is being created`);
    this.#creating.add(name);
    try {
      return await fn();
    } finally {
      this.#creating.delete(name);
    }
  }
}

/** Refuses a version that may not sign: below min_sign_version, or in any state but ENABLED. */
function checkSignable(key: KeyRecord, v: KeyVersionRecord, primary: boolean): void {
  const ref = keyVersionRef(key.name, v.version);
  if (v.version < key.policy.minSignVersion) {
    throw new SigilError('FAILED_PRECONDITION', `key ${ref} is below min_sign_version ${key.policy.minSignVersion}: sign with ${key.name} or a newer version`, {
      reason: 'BELOW_MIN_SIGN_VERSION',
      metadata: { key_version: ref, min_sign_version: String(key.policy.minSignVersion) },
    });
  }
  if (v.state === 'ENABLED') return;
  const why = v.revokedAt ? ' (compromised)' : v.state === 'DESTROY_SCHEDULED' && v.destroyAt ? ` (destruction at ${v.destroyAt.toISOString()})` : '';
  const reason = notSignable(v);
  const o = { metadata: { key_version: ref, state: v.state }, ...(reason !== undefined ? { reason } : {}) };
  if (primary) throw new SigilError('FAILED_PRECONDITION', `the primary version ${ref} of key ${key.name} is ${v.state}${why}: rotate the key to sign with ${key.name}`, o);
  throw new SigilError('FAILED_PRECONDITION', `key ${ref} is ${v.state}${why} and cannot sign`, o);
}

/** The reason a version in a state other than ENABLED refuses to sign; none for PENDING (a rotation not finished). */
function notSignable(v: KeyVersionRecord): ErrorReason | undefined {
  if (v.state === 'DESTROYING' || v.state === 'DESTROYED') return 'KEY_VERSION_DESTROYED';
  if (v.revokedAt) return 'KEY_VERSION_COMPROMISED';
  if (v.state === 'DISABLED' || v.state === 'DESTROY_SCHEDULED') return 'KEY_VERSION_DISABLED';
  return undefined;
}

function requireAlgorithm(a: Algorithm | null): Algorithm {
  if (a === null || !ALGORITHMS.includes(a)) throw new SigilError('INVALID_ARGUMENT', `algorithm is required: one of ${ALGORITHMS.join(', ')}`);
  return a;
}
