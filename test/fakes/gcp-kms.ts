import { constants, createHash, generateKeyPair, privateEncrypt, privateDecrypt, type KeyObject } from 'node:crypto';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { promisify } from 'node:util';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { p256, p384 } from '@noble/curves/nist.js';
import { crc32c } from '../../src/signers/gcpkms/crc32c.ts';
import { emsaPssEncode } from '../../src/signers/soft/index.ts';

const generateKeyPairAsync = promisify(generateKeyPair);
const require = createRequire(import.meta.url);
const KMS_PROTOS = join(packageRoot('@google-cloud/kms'), 'build', 'protos');
const GAX_PROTOS = join(packageRoot('google-gax'), 'build', 'protos');

/** The directory of an installed package (google-gax does not export its package.json). */
function packageRoot(pkg: string): string {
  const main = require.resolve(pkg);
  const at = main.lastIndexOf(`/node_modules/${pkg}/`);
  if (at < 0) throw new Error(`cannot locate package ${pkg}`);
  return main.slice(0, at + `/node_modules/${pkg}`.length);
}

/** A key ring the fake holds. */
export interface FakeKeyRing {
  name: string;
  createTime: Date;
}

/** A CryptoKey the fake holds. */
export interface FakeCryptoKey {
  name: string;
  purpose: string;
  algorithm: string;
  protectionLevel: string;
  labels: Record<string, string>;
  createTime: Date;
  nextVersion: number;
}

/** A CryptoKeyVersion the fake holds, with its real node:crypto key pair (dropped once DESTROYED). */
export interface FakeVersion {
  name: string;
  state: string;
  algorithm: string;
  protectionLevel: string;
  privateKey: KeyObject | null;
  pem: string;
  createTime: Date;
  /** While now < this, the version reads PENDING_GENERATION. */
  pendingUntil: number;
  destroyTime: Date | null;
}

/** Fault hooks a test flips to see that the client notices what the real service could get wrong. */
export interface GcpKmsFaults {
  /** Return a signature_crc32c that does not match the signature. */
  corruptSignatureCrc: boolean;
  /** Answer AsymmetricSign with verified_digest_crc32c false, as if the checksum never arrived. */
  dropDigestVerification: boolean;
  /** Name another version in the AsymmetricSign response. */
  wrongResponseName: boolean;
  /**
   * Sign with the key of this version (full resource name) whatever version is asked for, answering under the
   * asked one's name with good checksums, as a service that reached another key would; null signs honestly.
   */
  signWithVersion: string | null;
  /** How long a new version stays PENDING_GENERATION. */
  pendingGenerationMs: number;
  /** Fail the next `times` calls of `method` (or of every method when null) with gRPC `code`. */
  fail: { method: string | null; code: grpc.status; times: number } | null;
}

/** Everything the fake knows; it outlives `restart()`. */
export interface GcpKmsFakeState {
  keyRings: Map<string, FakeKeyRing>;
  cryptoKeys: Map<string, FakeCryptoKey>;
  versions: Map<string, FakeVersion>;
  faults: GcpKmsFaults;
  /** Calls per method name, for tests that check what reached the service. */
  calls: Map<string, number>;
}

/** A running fake Cloud KMS. */
export interface GcpKmsFake {
  port: number;
  state: GcpKmsFakeState;
  /** Stops serving (open connections are dropped); the state stays. */
  stop(): Promise<void>;
  /** Serves again on the same port with the same state. */
  restart(): Promise<void>;
  /** Ends every scheduled destruction now: DESTROY_SCHEDULED versions become DESTROYED and lose their keys. */
  completeDestruction(): void;
}

const SIGN_ALGORITHMS: Record<string, { kind: 'ec' | 'rsa-pkcs1' | 'rsa-pss'; hash: 'sha256' | 'sha384'; curve?: 'P-256' | 'P-384' }> = {
  EC_SIGN_P256_SHA256: { kind: 'ec', hash: 'sha256', curve: 'P-256' },
  EC_SIGN_P384_SHA384: { kind: 'ec', hash: 'sha384', curve: 'P-384' },
  RSA_SIGN_PKCS1_2048_SHA256: { kind: 'rsa-pkcs1', hash: 'sha256' },
  RSA_SIGN_PSS_2048_SHA256: { kind: 'rsa-pss', hash: 'sha256' },
};
const SHA256_DIGEST_INFO = Buffer.from('3031300d060960864801650304020105000420', 'hex');
const ID = /^[a-zA-Z0-9_-]{1,63}$/;
const LABEL_KEY = /^[a-z][a-z0-9_-]{0,62}$/;
const LABEL_VALUE = /^[a-z0-9_-]{0,63}$/;

type Handler = (call: grpc.ServerUnaryCall<any, any>) => Promise<unknown> | unknown;

class RpcError extends Error {
  readonly code: grpc.status;
  constructor(code: grpc.status, message: string) {
    super(message);
    this.code = code;
  }
}

function loadService(): grpc.ServiceDefinition {
  const def = protoLoader.loadSync('google/cloud/kms/v1/service.proto', {
    includeDirs: [KMS_PROTOS, GAX_PROTOS],
    keepCase: false,
    longs: String,
    enums: String,
    defaults: false,
    oneofs: true,
  });
  const pkg = grpc.loadPackageDefinition(def) as any;
  return pkg.google.cloud.kms.v1.KeyManagementService.service as grpc.ServiceDefinition;
}

/**
 * Starts a fake Cloud KMS on 127.0.0.1 speaking the real gRPC protocol from the protos the SDK ships:
 * key rings, CryptoKeys, versions with real states, public keys and AsymmetricSign with CRC32C checked.
 */
export async function startGcpKmsFake(opts: { port?: number } = {}): Promise<GcpKmsFake> {
  const service = loadService();
  const state: GcpKmsFakeState = {
    keyRings: new Map(),
    cryptoKeys: new Map(),
    versions: new Map(),
    faults: { corruptSignatureCrc: false, dropDigestVerification: false, wrongResponseName: false, signWithVersion: null, pendingGenerationMs: 30, fail: null },
    calls: new Map(),
  };
  const handlers = makeHandlers(state);
  const impl: grpc.UntypedServiceImplementation = {};
  for (const [method, handler] of Object.entries(handlers)) {
    impl[method] = (call: grpc.ServerUnaryCall<any, any>, callback: grpc.sendUnaryData<any>) => {
      state.calls.set(method, (state.calls.get(method) ?? 0) + 1);
      const f = state.faults.fail;
      if (f !== null && f.times > 0 && (f.method === null || f.method === method)) {
        f.times--;
        callback({ code: f.code, details: `injected fault on ${method}` });
        return;
      }
      Promise.resolve()
        .then(() => handler(call))
        .then(
          (res) => callback(null, res),
          (err: unknown) => {
            if (err instanceof RpcError) callback({ code: err.code, details: err.message });
            else callback({ code: grpc.status.INTERNAL, details: String(err) });
          },
        );
    };
  }

  let server: grpc.Server | null = null;
  let port = opts.port ?? 0;
  const start = async (): Promise<void> => {
    const s = new grpc.Server();
    s.addService(service, impl);
    port = await new Promise<number>((resolve, reject) =>
      s.bindAsync(`127.0.0.1:${port}`, grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
    );
    server = s;
  };
  const stop = async (): Promise<void> => {
    const s = server;
    server = null;
    if (s !== null) s.forceShutdown();
  };
  await start();
  return {
    get port() {
      return port;
    },
    state,
    stop,
    async restart() {
      await stop();
      await start();
    },
    completeDestruction() {
      for (const v of state.versions.values()) {
        if (v.state === 'DESTROY_SCHEDULED') {
          v.state = 'DESTROYED';
          v.privateKey = null;
        }
      }
    },
  };
}

function makeHandlers(state: GcpKmsFakeState): Record<string, Handler> {
  const keyRing = (name: string): FakeKeyRing => {
    const r = state.keyRings.get(name);
    if (!r) throw new RpcError(grpc.status.NOT_FOUND, `KeyRing ${name} not found.`);
    return r;
  };
  const cryptoKey = (name: string): FakeCryptoKey => {
    const k = state.cryptoKeys.get(name);
    if (!k) throw new RpcError(grpc.status.NOT_FOUND, `CryptoKey ${name} not found.`);
    return k;
  };
  const version = (name: string): FakeVersion => {
    const v = state.versions.get(name);
    if (!v) throw new RpcError(grpc.status.NOT_FOUND, `CryptoKeyVersion ${name} not found.`);
    settle(v);
    return v;
  };
  const usable = (v: FakeVersion): FakeVersion & { privateKey: KeyObject } => {
    if (v.state !== 'ENABLED' || v.privateKey === null) {
      throw new RpcError(grpc.status.FAILED_PRECONDITION, `${v.name} is not enabled, current state is: ${v.state}.`);
    }
    return v as FakeVersion & { privateKey: KeyObject };
  };
  const newVersion = async (ck: FakeCryptoKey): Promise<FakeVersion> => {
    const alg = SIGN_ALGORITHMS[ck.algorithm]!;
    const { privateKey, publicKey } =
      alg.kind === 'ec'
        ? await generateKeyPairAsync('ec', { namedCurve: alg.curve! })
        : await generateKeyPairAsync('rsa', { modulusLength: 2048, publicExponent: 65537 });
    const v: FakeVersion = {
      name: `${ck.name}/cryptoKeyVersions/${ck.nextVersion++}`,
      state: 'PENDING_GENERATION',
      algorithm: ck.algorithm,
      protectionLevel: ck.protectionLevel,
      privateKey,
      pem: publicKey.export({ format: 'pem', type: 'spki' }) as string,
      createTime: new Date(),
      pendingUntil: Date.now() + state.faults.pendingGenerationMs,
      destroyTime: null,
    };
    state.versions.set(v.name, v);
    return v;
  };
  const checkCrc = (data: Buffer, crc: { value?: string } | undefined | null, field: string): boolean => {
    if (crc === undefined || crc === null) return false;
    if (Number(crc.value ?? 0) !== crc32c(data)) {
      throw new RpcError(grpc.status.INVALID_ARGUMENT, `The checksum in field ${field}_crc32c did not match the data in field ${field}.`);
    }
    return true;
  };

  return {
    CreateKeyRing: ({ request: r }) => {
      if (!/^projects\/[^/]+\/locations\/[^/]+$/.test(r.parent ?? '')) throw new RpcError(grpc.status.INVALID_ARGUMENT, 'parent must be a location');
      if (!ID.test(r.keyRingId ?? '')) throw new RpcError(grpc.status.INVALID_ARGUMENT, 'key_ring_id is invalid');
      const name = `${r.parent}/keyRings/${r.keyRingId}`;
      if (state.keyRings.has(name)) throw new RpcError(grpc.status.ALREADY_EXISTS, `KeyRing ${name} already exists.`);
      const ring = { name, createTime: new Date() };
      state.keyRings.set(name, ring);
      return keyRingOut(ring);
    },
    GetKeyRing: ({ request: r }) => keyRingOut(keyRing(r.name)),
    CreateCryptoKey: async ({ request: r }) => {
      keyRing(r.parent ?? '');
      if (!ID.test(r.cryptoKeyId ?? '')) throw new RpcError(grpc.status.INVALID_ARGUMENT, 'crypto_key_id is invalid');
      const name = `${r.parent}/cryptoKeys/${r.cryptoKeyId}`;
      if (state.cryptoKeys.has(name)) throw new RpcError(grpc.status.ALREADY_EXISTS, `CryptoKey ${name} already exists.`);
      const spec = r.cryptoKey ?? {};
      if (spec.purpose !== 'ASYMMETRIC_SIGN') throw new RpcError(grpc.status.INVALID_ARGUMENT, 'the fake serves ASYMMETRIC_SIGN keys only');
      const algorithm = spec.versionTemplate?.algorithm;
      if (!(algorithm in SIGN_ALGORITHMS)) throw new RpcError(grpc.status.INVALID_ARGUMENT, `unsupported algorithm ${algorithm}`);
      const labels = checkLabels(spec.labels ?? {});
      const ck: FakeCryptoKey = {
        name,
        purpose: 'ASYMMETRIC_SIGN',
        algorithm,
        protectionLevel: spec.versionTemplate?.protectionLevel ?? 'SOFTWARE',
        labels,
        createTime: new Date(),
        nextVersion: 1,
      };
      state.cryptoKeys.set(name, ck);
      if (!r.skipInitialVersionCreation) await newVersion(ck);
      return cryptoKeyOut(ck);
    },
    GetCryptoKey: ({ request: r }) => cryptoKeyOut(cryptoKey(r.name)),
    UpdateCryptoKey: ({ request: r }) => {
      const ck = cryptoKey(r.cryptoKey?.name ?? '');
      const paths: string[] = r.updateMask?.paths ?? [];
      if (paths.length === 0) throw new RpcError(grpc.status.INVALID_ARGUMENT, 'update_mask is required');
      for (const p of paths) {
        if (p !== 'labels') throw new RpcError(grpc.status.INVALID_ARGUMENT, `the fake cannot update ${p}`);
      }
      ck.labels = checkLabels(r.cryptoKey?.labels ?? {});
      return cryptoKeyOut(ck);
    },
    ListCryptoKeys: ({ request: r }) => {
      keyRing(r.parent ?? '');
      const all = [...state.cryptoKeys.values()].filter((k) => k.name.startsWith(`${r.parent}/cryptoKeys/`)).sort((a, b) => a.name.localeCompare(b.name));
      const { items, next } = page(all, r.pageSize, r.pageToken);
      return { cryptoKeys: items.map(cryptoKeyOut), nextPageToken: next, totalSize: all.length };
    },
    CreateCryptoKeyVersion: async ({ request: r }) => versionOut(await newVersion(cryptoKey(r.parent ?? ''))),
    GetCryptoKeyVersion: ({ request: r }) => versionOut(version(r.name)),
    ListCryptoKeyVersions: ({ request: r }) => {
      cryptoKey(r.parent ?? '');
      const m = /^\s*state\s*=\s*([A-Z_]+)\s*$/.exec(r.filter ?? '');
      if ((r.filter ?? '') !== '' && m === null) throw new RpcError(grpc.status.INVALID_ARGUMENT, `the fake cannot filter by ${r.filter}`);
      const all = [...state.versions.values()]
        .filter((v) => v.name.startsWith(`${r.parent}/cryptoKeyVersions/`))
        .map((v) => (settle(v), v))
        .filter((v) => m === null || v.state === m[1])
        .sort((a, b) => versionNumber(a) - versionNumber(b));
      const { items, next } = page(all, r.pageSize, r.pageToken);
      return { cryptoKeyVersions: items.map(versionOut), nextPageToken: next, totalSize: all.length };
    },
    UpdateCryptoKeyVersion: ({ request: r }) => {
      const v = version(r.cryptoKeyVersion?.name ?? '');
      const paths: string[] = r.updateMask?.paths ?? [];
      if (paths.length !== 1 || paths[0] !== 'state') throw new RpcError(grpc.status.INVALID_ARGUMENT, 'the fake updates state only');
      const to = r.cryptoKeyVersion?.state;
      if (to !== 'ENABLED' && to !== 'DISABLED') throw new RpcError(grpc.status.INVALID_ARGUMENT, `state may be set to ENABLED or DISABLED, not ${to}`);
      if (v.state !== 'ENABLED' && v.state !== 'DISABLED') {
        throw new RpcError(grpc.status.FAILED_PRECONDITION, `${v.name} is in state ${v.state} and cannot be ${to.toLowerCase()}.`);
      }
      v.state = to;
      return versionOut(v);
    },
    DestroyCryptoKeyVersion: ({ request: r }) => {
      const v = version(r.name ?? '');
      if (v.state !== 'ENABLED' && v.state !== 'DISABLED') {
        throw new RpcError(grpc.status.FAILED_PRECONDITION, `${v.name} is in state ${v.state} and cannot be destroyed.`);
      }
      v.state = 'DESTROY_SCHEDULED';
      v.destroyTime = new Date(Date.now() + 24 * 3600 * 1000);
      return versionOut(v);
    },
    RestoreCryptoKeyVersion: ({ request: r }) => {
      const v = version(r.name ?? '');
      if (v.state !== 'DESTROY_SCHEDULED') throw new RpcError(grpc.status.FAILED_PRECONDITION, `${v.name} is not scheduled for destruction.`);
      v.state = 'DISABLED';
      v.destroyTime = null;
      return versionOut(v);
    },
    GetPublicKey: ({ request: r }) => {
      const v = version(r.name ?? '');
      if (v.state !== 'ENABLED' && v.state !== 'DISABLED') {
        throw new RpcError(grpc.status.FAILED_PRECONDITION, `${v.name} is in state ${v.state}.`);
      }
      return {
        pem: v.pem,
        pemCrc32c: { value: String(crc32c(Buffer.from(v.pem, 'utf8'))) },
        algorithm: v.algorithm,
        name: v.name,
        protectionLevel: v.protectionLevel,
      };
    },
    AsymmetricSign: ({ request: r }) => {
      const v = usable(version(r.name ?? ''));
      const alg = SIGN_ALGORITHMS[v.algorithm]!;
      let digest: Buffer;
      let verifiedDigest = false;
      let verifiedData = false;
      const data: Buffer | undefined = r.data;
      if (data !== undefined && data.length > 0) {
        verifiedData = checkCrc(data, r.dataCrc32c, 'data');
        digest = createHash(alg.hash).update(data).digest();
      } else {
        const kind: string | undefined = r.digest?.digest;
        const given: Buffer | undefined = kind === undefined ? undefined : r.digest[kind];
        if (given === undefined) throw new RpcError(grpc.status.INVALID_ARGUMENT, 'digest or data is required');
        if (kind !== alg.hash) throw new RpcError(grpc.status.INVALID_ARGUMENT, `${v.algorithm} requires a ${alg.hash} digest, got ${kind}`);
        if (given.length !== (alg.hash === 'sha256' ? 32 : 48)) throw new RpcError(grpc.status.INVALID_ARGUMENT, `digest has ${given.length} bytes`);
        verifiedDigest = checkCrc(given, r.digestCrc32c, 'digest');
        digest = given;
      }
      const signature = signDigest(state.faults.signWithVersion === null ? v.privateKey : (state.versions.get(state.faults.signWithVersion)?.privateKey ?? v.privateKey), alg, digest);
      const crc = crc32c(signature);
      return {
        signature,
        signatureCrc32c: { value: String(state.faults.corruptSignatureCrc ? (crc ^ 1) >>> 0 : crc) },
        verifiedDigestCrc32c: verifiedDigest && !state.faults.dropDigestVerification,
        verifiedDataCrc32c: verifiedData,
        name: state.faults.wrongResponseName ? `${v.name}0` : v.name,
        protectionLevel: v.protectionLevel,
      };
    },
  };
}

function settle(v: FakeVersion): void {
  if (v.state === 'PENDING_GENERATION' && Date.now() >= v.pendingUntil) v.state = 'ENABLED';
}

function signDigest(key: KeyObject, alg: (typeof SIGN_ALGORITHMS)[string], digest: Buffer): Buffer {
  switch (alg.kind) {
    case 'ec': {
      const d = Buffer.from(key.export({ format: 'jwk' }).d!, 'base64url');
      const curve = alg.curve === 'P-256' ? p256 : p384;
      return Buffer.from(curve.sign(digest, d, { prehash: false, format: 'der' }));
    }
    case 'rsa-pkcs1':
      return privateEncrypt({ key, padding: constants.RSA_PKCS1_PADDING }, Buffer.concat([SHA256_DIGEST_INFO, digest]));
    case 'rsa-pss':
      // Cloud KMS uses a salt as long as the digest (RFC 8017 EMSA-PSS, MGF1 with the same hash).
      return privateDecrypt({ key, padding: constants.RSA_NO_PADDING }, emsaPssEncode(digest, (key.asymmetricKeyDetails?.modulusLength ?? 2048) - 1));
  }
}

function checkLabels(labels: Record<string, string>): Record<string, string> {
  const entries = Object.entries(labels);
  if (entries.length > 64) throw new RpcError(grpc.status.INVALID_ARGUMENT, 'a resource can have at most 64 labels');
  for (const [k, v] of entries) {
    if (!LABEL_KEY.test(k) || !LABEL_VALUE.test(v)) throw new RpcError(grpc.status.INVALID_ARGUMENT, `invalid label ${k}`);
  }
  return { ...labels };
}

function page<T>(all: T[], size: number | undefined, token: string | undefined): { items: T[]; next: string } {
  const start = token ? Number(token) : 0;
  const n = size && size > 0 ? Math.min(size, 1000) : 1000;
  const end = start + n;
  return { items: all.slice(start, end), next: end < all.length ? String(end) : '' };
}

function versionNumber(v: FakeVersion): number {
  return Number(v.name.slice(v.name.lastIndexOf('/') + 1));
}

function timestamp(d: Date): { seconds: string; nanos: number } {
  return { seconds: String(Math.floor(d.getTime() / 1000)), nanos: (d.getTime() % 1000) * 1e6 };
}

function keyRingOut(r: FakeKeyRing): object {
  return { name: r.name, createTime: timestamp(r.createTime) };
}

function cryptoKeyOut(k: FakeCryptoKey): object {
  return {
    name: k.name,
    purpose: k.purpose,
    createTime: timestamp(k.createTime),
    versionTemplate: { algorithm: k.algorithm, protectionLevel: k.protectionLevel },
    labels: { ...k.labels },
  };
}

function versionOut(v: FakeVersion): object {
  return {
    name: v.name,
    state: v.state,
    protectionLevel: v.protectionLevel,
    algorithm: v.algorithm,
    createTime: timestamp(v.createTime),
    ...(v.state !== 'PENDING_GENERATION' ? { generateTime: timestamp(v.createTime) } : {}),
    ...(v.destroyTime !== null ? { destroyTime: timestamp(v.destroyTime) } : {}),
  };
}
