import { createPublicKey } from 'node:crypto';
import { credentials as grpcCredentials } from '@grpc/grpc-js';
import { KeyManagementServiceClient, type protos } from '@google-cloud/kms';
import { SigilError } from '../../errors.ts';
import type { Logger } from '../../log.ts';
import {
  ALGORITHM_INFO,
  isDerEcdsaSignature,
  keyTypeOfSpki,
  type Algorithm,
  type Backend,
  type BackendContext,
  type BackendKey,
  type KeyCreator,
  type KeyDestroyer,
  type KeyEnabler,
  type KeySigner,
  type KeySpec,
  type KeyType,
  type RecordedKey,
} from '../signer.ts';
import { checkedSigner } from '../signature-check.ts';
import type { GcpKmsConfig } from './config.ts';
import { crc32c } from './crc32c.ts';
import {
  cryptoKeyName,
  formatGcpKeyUri,
  keyRingName,
  labelTarget,
  parseGcpKeyUri,
  parseVersionName,
  sigilVersionOfLabelKey,
  versionName,
  type GcpKeyName,
} from './resource-name.ts';
import { KeyedSerial } from '../../serial.ts';

type ICryptoKey = protos.google.cloud.kms.v1.ICryptoKey;
type ICryptoKeyVersion = protos.google.cloud.kms.v1.ICryptoKeyVersion;

// sigil algorithm <-> Cloud KMS CryptoKeyVersionAlgorithm. Ed25519 is left out: Cloud KMS signs it over the
// whole message only, and sigil keeps that algorithm to backends that run on premises.
const GCP_ALGORITHM = {
  ECDSA_P256_SHA256: 'EC_SIGN_P256_SHA256',
  ECDSA_P384_SHA384: 'EC_SIGN_P384_SHA384',
  RSA_PKCS1_SHA256: 'RSA_SIGN_PKCS1_2048_SHA256',
  RSA_PSS_SHA256: 'RSA_SIGN_PSS_2048_SHA256',
} as const satisfies Partial<Record<Algorithm, string>>;
type OfferedAlgorithm = keyof typeof GCP_ALGORITHM;
const OFFERED = Object.keys(GCP_ALGORITHM) as OfferedAlgorithm[];
const SIGIL_ALGORITHM = new Map<string, OfferedAlgorithm>(OFFERED.map((a) => [GCP_ALGORITHM[a], a]));

// CryptoKey labels: this one marks the CryptoKeys sigil made, so it never adopts one it did not.
const MANAGED_LABEL = 'managed-by';
const MANAGED_VALUE = 'sigil';
// Cloud KMS allows at most 64 labels on a resource.
const MAX_LABELS = 64;
const GONE_STATES = new Set(['DESTROYED', 'DESTROY_SCHEDULED']);

// gRPC status codes (google/rpc/code.proto).
const NOT_FOUND = 5;
const ALREADY_EXISTS = 6;
const FAILED_PRECONDITION = 9;
// CANCELLED counts as transient: sigil never cancels a call, so grpc-js reports it only for a connection the
// server dropped under the call (seen when the service shut down).
const TRANSIENT = new Set([1 /* CANCELLED */, 4 /* DEADLINE_EXCEEDED */, 8 /* RESOURCE_EXHAUSTED */, 13 /* INTERNAL */, 14 /* UNAVAILABLE */]);
const STATUS_NAMES: Record<number, string> = {
  1: 'cancelled', 2: 'unknown', 3: 'invalid argument', 4: 'deadline exceeded', 5: 'not found', 6: 'already exists',
  7: 'permission denied', 8: 'resource exhausted', 9: 'failed precondition', 10: 'aborted', 11: 'out of range',
  12: 'unimplemented', 13: 'internal', 14: 'unavailable', 15: 'data loss', 16: 'unauthenticated',
};
const NET_ERRORS = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EAI_AGAIN', 'ENOTFOUND', 'EPIPE', 'ENETUNREACH', 'EHOSTUNREACH']);

interface VersionKey {
  /** Resource name of the version. */
  name: string;
  spki: Buffer;
  keyType: KeyType;
  algorithm: OfferedAlgorithm;
}

/**
 * Opens the Cloud KMS backend. The client is built so that nothing reaches for a metadata server when an
 * endpoint is given; `insecure` (plaintext to a loopback fake) is refused in production mode.
 */
export async function open(config: GcpKmsConfig, ctx: BackendContext): Promise<GcpKmsBackend> {
  if (config.insecure && ctx.production) {
    throw new SigilError('CONFIG_INVALID', 'gcpkms insecure is for tests against a loopback fake; production mode refuses it');
  }
  const client = new KeyManagementServiceClient({
    ...(config.apiEndpoint !== undefined ? { apiEndpoint: config.apiEndpoint } : {}),
    ...(config.port !== undefined ? { port: config.port } : {}),
    ...(config.insecure ? { sslCreds: grpcCredentials.createInsecure() } : {}),
    ...(config.credentialsFile !== undefined ? { keyFilename: config.credentialsFile } : {}),
    universeDomain: 'googleapis.com',
    // Reconnect promptly once the service is back instead of grpc's default backoff of up to two minutes.
    'grpc.initial_reconnect_backoff_ms': 100,
    'grpc.max_reconnect_backoff_ms': 1000,
  });
  return new GcpKmsBackend(client, config, ctx.log, ctx.onSignatureMismatch);
}

/**
 * Cloud KMS signer: one sigil key is one CryptoKey, each sigil version one native CryptoKeyVersion, and the
 * CryptoKey's labels (`sigil-vN: "<version id>"`) record which native version holds which sigil version.
 */
export class GcpKmsBackend implements Backend, KeyCreator, KeyDestroyer, KeyEnabler {
  readonly kind = 'gcpkms';
  readonly algorithms: readonly Algorithm[] = OFFERED;
  readonly #client: KeyManagementServiceClient;
  readonly #config: GcpKmsConfig;
  readonly #log: Logger;
  readonly #keys = new Map<string, VersionKey>();
  readonly #locks = new KeyedSerial();
  readonly #onSignatureMismatch: (() => void) | undefined;
  #closed = false;

  constructor(client: KeyManagementServiceClient, config: GcpKmsConfig, log: Logger, onSignatureMismatch?: () => void) {
    this.#client = client;
    this.#config = config;
    this.#log = log;
    this.#onSignatureMismatch = onSignatureMismatch;
  }

  async getKey(uri: string): Promise<BackendKey> {
    const k = await this.#versionKey(uri);
    return { uri: formatGcpKeyUri(k.name), spki: k.spki, keyType: k.keyType };
  }

  async signer(uri: string, algorithm: Algorithm, recorded?: RecordedKey): Promise<KeySigner> {
    if (ALGORITHM_INFO[algorithm] === undefined) throw new SigilError('UNSUPPORTED_ALGORITHM', `unknown algorithm ${JSON.stringify(String(algorithm))}`);
    if (!(algorithm in GCP_ALGORITHM)) throw new SigilError('UNSUPPORTED_ALGORITHM', `gcpkms does not offer ${algorithm}`);
    const k = await this.#versionKey(uri);
    if (k.algorithm !== algorithm) {
      throw new SigilError('INVALID_ARGUMENT', `key ${formatGcpKeyUri(k.name)} is a ${GCP_ALGORITHM[k.algorithm]} key and cannot sign ${algorithm}`);
    }
    // A signature that does not verify under the version's recorded public key (the service answering for
    // another key, a fault) never leaves the backend. Without a recorded one, GetPublicKey's for this version serves.
    const signer: KeySigner = { algorithm, sign: (input) => this.#sign(k, input) };
    return checkedSigner(signer, recorded?.spki ?? k.spki, { uri: formatGcpKeyUri(k.name), kind: 'gcp kms', log: this.#log, onMismatch: this.#onSignatureMismatch });
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#keys.clear();
    await this.#client.close();
  }

  async createKey(spec: KeySpec): Promise<BackendKey> {
    const { label, algorithm } = spec;
    if (ALGORITHM_INFO[algorithm] === undefined) throw new SigilError('UNSUPPORTED_ALGORITHM', `unknown algorithm ${JSON.stringify(String(algorithm))}`);
    if (!(algorithm in GCP_ALGORITHM)) throw new SigilError('UNSUPPORTED_ALGORITHM', `gcpkms does not offer ${algorithm}`);
    const gcpAlgorithm = GCP_ALGORITHM[algorithm as OfferedAlgorithm];
    const target = labelTarget(label);
    const ring = { project: this.#config.project, location: this.#config.location, keyRing: this.#config.keyRing };
    const ckName = cryptoKeyName({ ...ring, cryptoKey: target.cryptoKeyId });
    // One creation at a time per CryptoKey in this process: the labels map is read, changed and written whole.
    const made = await this.#locks.run(ckName, async () => {
      let ck = await this.#getCryptoKey(ckName);
      if (ck === null) {
        ck = await this.#createCryptoKey(ckName, target.cryptoKeyId, target.labelKey, gcpAlgorithm);
        // The first version and its label come into being atomically with the CryptoKey.
        if (ck !== null) return `${ckName}/cryptoKeyVersions/1`;
        ck = await this.#getCryptoKey(ckName);
        if (ck === null) throw new SigilError('BACKEND_ERROR', `gcpkms crypto key ${ckName} vanished while being created`);
      }
      return this.#addVersion(ck, ckName, target.labelKey, gcpAlgorithm, label);
    });
    await this.#awaitEnabled(made);
    const k = await this.#versionKey(formatGcpKeyUri(made));
    this.#log.info({ uri: formatGcpKeyUri(made), algorithm, label }, 'gcpkms key version created');
    return { uri: formatGcpKeyUri(k.name), spki: k.spki, keyType: k.keyType };
  }

  async findKeyByLabel(label: string): Promise<string | null> {
    const target = labelTarget(label);
    const ckName = cryptoKeyName({ project: this.#config.project, location: this.#config.location, keyRing: this.#config.keyRing, cryptoKey: target.cryptoKeyId });
    const ck = await this.#getCryptoKey(ckName);
    if (ck === null || ck.labels?.[MANAGED_LABEL] !== MANAGED_VALUE) return null;
    const claimed = claimedVersions(ck);
    const id = claimed.get(target.sigilVersion);
    if (id !== undefined) {
      const v = await this.#getVersion(`${ckName}/cryptoKeyVersions/${id}`);
      return v === null || GONE_STATES.has(String(v.state)) ? null : formatGcpKeyUri(`${ckName}/cryptoKeyVersions/${id}`);
    }
    // No label: a crash may have struck between CreateCryptoKeyVersion and the label update. Such a version is
    // newer than every labelled one and claimed by none; a later sigil version having a label means the
    // crashed one was resolved already, so nothing is handed out then.
    for (const n of claimed.keys()) if (n > target.sigilVersion) return null;
    const newestClaimed = Math.max(0, ...[...claimed.values()].map(Number));
    const claimedIds = new Set(claimed.values());
    let best: { id: number; name: string } | null = null;
    for (const v of await this.#listVersions(ckName)) {
      const vid = Number(parseVersionName(String(v.name)).version);
      if (vid <= newestClaimed || claimedIds.has(String(vid)) || GONE_STATES.has(String(v.state))) continue;
      if (best === null || vid > best.id) best = { id: vid, name: String(v.name) };
    }
    return best === null ? null : formatGcpKeyUri(best.name);
  }

  async destroyKey(uri: string): Promise<void> {
    const name = versionName(this.#versioned(uri, 'destroy'));
    this.#keys.delete(name);
    const destroy = () => this.#rpc('destroy', name, () => this.#client.destroyCryptoKeyVersion({ name }, this.#opts()));
    try {
      await destroy();
    } catch (err) {
      if (err instanceof SigilError && err.code === 'KEY_NOT_FOUND') return;
      if (!(err instanceof SigilError && err.code === 'FAILED_PRECONDITION')) throw err;
      const v = await this.#getVersion(name);
      if (v === null || GONE_STATES.has(String(v.state))) return;
      // A version still being generated (one a crash left behind, found again by label) cannot be destroyed yet.
      if (String(v.state) !== 'PENDING_GENERATION') throw err;
      await this.#awaitEnabled(name);
      await destroy();
    }
    this.#log.info({ uri }, 'gcpkms key version scheduled for destruction');
  }

  async setKeyEnabled(uri: string, enabled: boolean): Promise<void> {
    const name = versionName(this.#versioned(uri, enabled ? 'enable' : 'disable'));
    const state = enabled ? 'ENABLED' : 'DISABLED';
    try {
      await this.#rpc(enabled ? 'enable' : 'disable', name, () =>
        this.#client.updateCryptoKeyVersion({ cryptoKeyVersion: { name, state }, updateMask: { paths: ['state'] } }, this.#opts()),
      );
    } catch (err) {
      if (err instanceof SigilError && err.code === 'FAILED_PRECONDITION') {
        const v = await this.#getVersion(name);
        if (v !== null && String(v.state) === state) return;
      }
      throw err;
    }
    this.#log.info({ uri, state }, 'gcpkms key version state set');
  }

  async #sign(k: VersionKey, input: Buffer): Promise<Buffer> {
    const info = ALGORITHM_INFO[k.algorithm];
    if (!Buffer.isBuffer(input) || input.length !== info.digestLength) {
      throw new SigilError('INVALID_ARGUMENT', `${k.algorithm} signs a ${info.digestLength}-byte digest, got ${Buffer.isBuffer(input) ? input.length : 0} bytes`);
    }
    const digest = info.hash === 'sha384' ? { sha384: input } : { sha256: input };
    const [res] = await this.#rpc('sign', k.name, () =>
      this.#client.asymmetricSign({ name: k.name, digest, digestCrc32c: { value: crc32c(input) } }, this.#opts()),
    );
    // End-to-end integrity (Cloud KMS "verifying data integrity"): the service saw our digest, answered for the
    // version asked for, and the signature arrived as it left.
    if (res.verifiedDigestCrc32c !== true) throw new SigilError('BACKEND_ERROR', `gcpkms sign ${k.name}: the service did not verify the digest checksum`);
    if (res.name !== k.name) throw new SigilError('BACKEND_ERROR', `gcpkms sign ${k.name}: the response names another key version`);
    const sig = Buffer.from(res.signature ?? new Uint8Array(0));
    const crc = res.signatureCrc32c?.value;
    if (crc === null || crc === undefined || Number(crc) !== crc32c(sig)) {
      throw new SigilError('BACKEND_ERROR', `gcpkms sign ${k.name}: signature checksum mismatch`);
    }
    if (k.keyType === 'RSA') {
      if (sig.length !== 256) throw new SigilError('BACKEND_ERROR', `gcpkms sign ${k.name}: rsa signature of ${sig.length} bytes`);
    } else if (!isDerEcdsaSignature(sig, k.keyType === 'EC_P256' ? 32 : 48)) {
      throw new SigilError('BACKEND_ERROR', `gcpkms sign ${k.name}: malformed der ecdsa signature`);
    }
    return sig;
  }

  /** The version `uri` names (the newest ENABLED one for a CryptoKey URI) with its public key, cached per version. */
  async #versionKey(uri: string): Promise<VersionKey> {
    const parsed = parseGcpKeyUri(uri);
    const name = parsed.version === null ? await this.#newestEnabled(cryptoKeyName(parsed)) : versionName(parsed as GcpKeyName & { version: string });
    const cached = this.#keys.get(name);
    if (cached !== undefined) return cached;
    const [pk] = await this.#rpc('get public key', name, () => this.#client.getPublicKey({ name }, this.#opts()));
    if (pk.name !== name) throw new SigilError('BACKEND_ERROR', `gcpkms public key of ${name}: the response names another key version`);
    const pem = pk.pem ?? '';
    const crc = pk.pemCrc32c?.value;
    if (crc === null || crc === undefined || Number(crc) !== crc32c(Buffer.from(pem, 'utf8'))) {
      throw new SigilError('BACKEND_ERROR', `gcpkms public key of ${name}: checksum mismatch`);
    }
    const algorithm = SIGIL_ALGORITHM.get(String(pk.algorithm));
    if (algorithm === undefined) throw new SigilError('UNSUPPORTED_ALGORITHM', `gcpkms key ${name} has algorithm ${String(pk.algorithm)}, which sigil does not sign with`);
    let spki: Buffer;
    try {
      spki = createPublicKey({ key: pem, format: 'pem' }).export({ format: 'der', type: 'spki' });
    } catch (err) {
      throw new SigilError('BACKEND_ERROR', `gcpkms public key of ${name} is unreadable`, { cause: err });
    }
    const keyType = keyTypeOfSpki(spki);
    if (keyType !== ALGORITHM_INFO[algorithm].keyType) {
      throw new SigilError('BACKEND_ERROR', `gcpkms public key of ${name} does not match its algorithm ${String(pk.algorithm)}`);
    }
    const k: VersionKey = { name, spki, keyType, algorithm };
    this.#keys.set(name, k);
    return k;
  }

  async #newestEnabled(ckName: string): Promise<string> {
    let best: { id: number; name: string } | null = null;
    for (const v of await this.#listVersions(ckName, 'state=ENABLED')) {
      if (String(v.state) !== 'ENABLED') continue;
      const id = Number(parseVersionName(String(v.name)).version);
      if (best === null || id > best.id) best = { id, name: String(v.name) };
    }
    if (best === null) throw new SigilError('KEY_NOT_FOUND', `gcpkms key ${ckName} has no enabled version`);
    return best.name;
  }

  async #listVersions(ckName: string, filter?: string): Promise<ICryptoKeyVersion[]> {
    const [versions] = await this.#rpc('list versions', ckName, () =>
      this.#client.listCryptoKeyVersions({ parent: ckName, ...(filter !== undefined ? { filter } : {}) }, this.#opts()),
    );
    return versions;
  }

  #getCryptoKey(name: string): Promise<ICryptoKey | null> {
    return orNull(this.#rpc('get crypto key', name, () => this.#client.getCryptoKey({ name }, this.#opts())));
  }

  #getVersion(name: string): Promise<ICryptoKeyVersion | null> {
    return orNull(this.#rpc('get version', name, () => this.#client.getCryptoKeyVersion({ name }, this.#opts())));
  }

  /** Creates the CryptoKey with its first version labelled; null when another writer created it first. */
  async #createCryptoKey(ckName: string, id: string, labelKey: string, algorithm: string): Promise<ICryptoKey | null> {
    const parent = keyRingName(this.#config);
    const request = {
      parent,
      cryptoKeyId: id,
      cryptoKey: {
        purpose: 'ASYMMETRIC_SIGN' as const,
        versionTemplate: { algorithm: algorithm as 'EC_SIGN_P256_SHA256', protectionLevel: this.#config.protectionLevel },
        labels: { [MANAGED_LABEL]: MANAGED_VALUE, [labelKey]: '1' },
      },
    };
    const create = () => this.#rpc('create crypto key', ckName, () => this.#client.createCryptoKey(request, this.#opts()));
    try {
      return (await create())[0];
    } catch (err) {
      if (isGrpcCode(err, ALREADY_EXISTS)) return null;
      if (!(err instanceof SigilError && err.code === 'KEY_NOT_FOUND')) throw err;
    }
    // The key ring is missing: create it (key rings cannot be deleted, so this happens once per ring).
    try {
      await this.#rpc('create key ring', parent, () => this.#client.createKeyRing({ parent: `projects/${this.#config.project}/locations/${this.#config.location}`, keyRingId: this.#config.keyRing, keyRing: {} }, this.#opts()));
      this.#log.info({ keyRing: parent }, 'gcpkms key ring created');
    } catch (err) {
      if (!isGrpcCode(err, ALREADY_EXISTS)) throw err;
    }
    try {
      return (await create())[0];
    } catch (err) {
      if (isGrpcCode(err, ALREADY_EXISTS)) return null;
      throw err;
    }
  }

  /** Adds a native version to an existing CryptoKey and records it under `labelKey`; returns its name. */
  async #addVersion(ck: ICryptoKey, ckName: string, labelKey: string, algorithm: string, label: string): Promise<string> {
    const labels: Record<string, string> = { ...(ck.labels ?? {}) };
    if (labels[MANAGED_LABEL] !== MANAGED_VALUE || String(ck.purpose) !== 'ASYMMETRIC_SIGN' || String(ck.versionTemplate?.algorithm) !== algorithm) {
      throw new SigilError('KEY_EXISTS', `gcpkms crypto key ${ckName} exists and is not a sigil ${algorithm} key: label ${JSON.stringify(label)} cannot use it`);
    }
    const held = labels[labelKey];
    if (held !== undefined) {
      const v = await this.#getVersion(`${ckName}/cryptoKeyVersions/${held}`);
      if (v !== null && !GONE_STATES.has(String(v.state))) {
        throw new SigilError('KEY_EXISTS', `a gcpkms key version labelled ${JSON.stringify(label)} already exists in ${ckName}`);
      }
    }
    if (Object.keys(labels).length >= MAX_LABELS && held === undefined) {
      // Make room: labels of destroyed versions name nothing sigil can use any more.
      const gone = new Set((await this.#listVersions(ckName)).filter((v) => GONE_STATES.has(String(v.state))).map((v) => parseVersionName(String(v.name)).version));
      for (const [key, value] of Object.entries(labels)) if (sigilVersionOfLabelKey(key) !== null && gone.has(value)) delete labels[key];
      // Then the oldest sigil versions' labels. A label is only read back for the newest version (a rotation a
      // crash interrupted, found by findKeyByLabel); sigil's store names every other version by its URI. The
      // newest labels stay, so the newest claimed native version still tells a crash's unlabelled version apart.
      const own = Object.keys(labels)
        .map((key) => ({ key, n: sigilVersionOfLabelKey(key) }))
        .filter((x): x is { key: string; n: number } => x.n !== null)
        .sort((a, b) => a.n - b.n);
      for (const x of own) {
        if (Object.keys(labels).length < MAX_LABELS) break;
        delete labels[x.key];
      }
      if (Object.keys(labels).length >= MAX_LABELS) {
        throw new SigilError('BACKEND_ERROR', `gcpkms crypto key ${ckName} has ${MAX_LABELS} labels that are not sigil's: remove some before rotating again`);
      }
    }
    const [v] = await this.#rpc('create version', ckName, () => this.#client.createCryptoKeyVersion({ parent: ckName, cryptoKeyVersion: {} }, this.#opts()));
    const made = String(v.name);
    labels[labelKey] = parseVersionName(made).version;
    await this.#rpc('label version', ckName, () =>
      this.#client.updateCryptoKey({ cryptoKey: { name: ckName, labels }, updateMask: { paths: ['labels'] } }, this.#opts()),
    );
    return made;
  }

  /** Polls a new version until it leaves PENDING_GENERATION, for at most timeoutMs. */
  async #awaitEnabled(name: string): Promise<void> {
    const deadline = Date.now() + this.#config.timeoutMs;
    let delay = 20;
    for (;;) {
      const v = await this.#getVersion(name);
      if (v === null) throw new SigilError('BACKEND_ERROR', `gcpkms key version ${name} vanished after creation`);
      const state = String(v.state);
      if (state === 'ENABLED') return;
      if (state !== 'PENDING_GENERATION') throw new SigilError('BACKEND_ERROR', `gcpkms key version ${name} is ${state.toLowerCase()} after creation`);
      if (Date.now() + delay > deadline) {
        throw new SigilError('BACKEND_UNAVAILABLE', `gcpkms key version ${name} still pending generation after ${this.#config.timeoutMs} ms`);
      }
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 250);
    }
  }

  #versioned(uri: string, act: string): GcpKeyName & { version: string } {
    const k = parseGcpKeyUri(uri);
    if (k.version === null) throw new SigilError('INVALID_ARGUMENT', `gcpkms ${act} needs a uri naming one crypto key version`);
    return k as GcpKeyName & { version: string };
  }

  #opts(): { timeout: number; retry: null } {
    // retry: null turns the SDK's own retries off; the lead's layer decides about retrying.
    return { timeout: this.#config.timeoutMs, retry: null };
  }

  async #rpc<T>(op: string, subject: string, call: () => Promise<T>): Promise<T> {
    if (this.#closed) throw new SigilError('BACKEND_ERROR', 'gcpkms backend is closed');
    try {
      return await call();
    } catch (err) {
      throw gcpError(op, subject, err);
    }
  }

}

/** The sigil version -> native version id map recorded in a CryptoKey's labels. */
function claimedVersions(ck: ICryptoKey): Map<number, string> {
  const out = new Map<number, string>();
  for (const [key, value] of Object.entries(ck.labels ?? {})) {
    const n = sigilVersionOfLabelKey(key);
    if (n !== null && /^[1-9][0-9]{0,18}$/.test(value)) out.set(n, value);
  }
  return out;
}

function isGrpcCode(err: unknown, code: number): boolean {
  const c = err instanceof SigilError ? (err.cause as { code?: unknown } | undefined)?.code : (err as { code?: unknown } | undefined)?.code;
  return c === code;
}

/** Classifies an SDK error per the backend error contract; the service's message stays in the cause. */
function gcpError(op: string, subject: string, err: unknown): SigilError {
  if (err instanceof SigilError) return err;
  const code = (err as { code?: unknown } | null)?.code;
  if (typeof code === 'number') {
    const what = `gcpkms ${op} ${subject}: ${STATUS_NAMES[code] ?? `status ${code}`}`;
    if (code === NOT_FOUND) return new SigilError('KEY_NOT_FOUND', what, { cause: err });
    if (code === FAILED_PRECONDITION) return new SigilError('FAILED_PRECONDITION', what, { cause: err });
    if (TRANSIENT.has(code)) return new SigilError('BACKEND_UNAVAILABLE', what, { cause: err });
    return new SigilError('BACKEND_ERROR', what, { cause: err });
  }
  if (typeof code === 'string' && NET_ERRORS.has(code)) return new SigilError('BACKEND_UNAVAILABLE', `gcpkms ${op} ${subject}: ${code.toLowerCase()}`, { cause: err });
  return new SigilError('BACKEND_ERROR', `gcpkms ${op} ${subject} failed`, { cause: err });
}

/** The resource of a get call, or null when Cloud KMS has none by that name. */
async function orNull<T>(call: Promise<[T, ...unknown[]]>): Promise<T | null> {
  try {
    return (await call)[0];
  } catch (err) {
    if (err instanceof SigilError && err.code === 'KEY_NOT_FOUND') return null;
    throw err;
  }
}
