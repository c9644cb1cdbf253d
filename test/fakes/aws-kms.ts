import {
  constants,
  createHash,
  createHmac,
  createPublicKey,
  generateKeyPair,
  privateDecrypt,
  privateEncrypt,
  randomBytes,
  randomUUID,
  timingSafeEqual,
  type KeyObject,
} from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { promisify } from 'node:util';
import { p256, p384, p521 } from '@noble/curves/nist.js';

/*
 * A loopback AWS KMS speaking the real wire protocol (AWS JSON 1.1 over HTTP, SigV4-signed) so the real
 * @aws-sdk/client-kms can be tested offline. Protocol references:
 * - SigV4: https://docs.aws.amazon.com/IAM/latest/UserGuide/create-signed-request.html
 * - KMS API: https://docs.aws.amazon.com/kms/latest/APIReference/ (operation inputs, outputs, errors)
 */

const generateKeyPairAsync = promisify(generateKeyPair);

/** Options of the fake: the one access key it knows, and its region. */
export interface AwsKmsFakeOptions {
  accessKeyId: string;
  secretAccessKey: string;
  /** When set, requests must carry it as X-Amz-Security-Token; when not, a request carrying one is refused. */
  sessionToken?: string;
  region: string;
  /** 0 (default) picks a free port. */
  port?: number;
  accountId?: string;
}

/** Key states the fake models. */
export type FakeKeyState = 'Enabled' | 'Disabled' | 'PendingDeletion';

/** A key held by the fake, open for inspection by tests. */
export interface FakeKey {
  keyId: string;
  arn: string;
  keySpec: string;
  keyUsage: 'SIGN_VERIFY' | 'ENCRYPT_DECRYPT';
  state: FakeKeyState;
  description: string;
  creationDate: number;
  deletionDate: number | null;
  pendingWindowInDays: number | null;
  tags: Map<string, string>;
  /** Null for SYMMETRIC_DEFAULT keys, which the fake holds but cannot use. */
  privateKey: KeyObject | null;
  spki: Buffer | null;
  signatures: number;
}

/** An alias held by the fake. */
export interface FakeAlias {
  name: string;
  targetKeyId: string;
  creationDate: number;
  lastUpdatedDate: number;
}

/** One handled request, in order: the operation (or null before it was known), status and error name. */
export interface FakeRequest {
  op: string | null;
  status: number;
  error: string | null;
  input: Record<string, unknown> | null;
}

/** A running fake and its knobs. */
export interface AwsKmsFake {
  /** `http://127.0.0.1:<port>`, for the SDK's `endpoint`. */
  readonly endpoint: string;
  readonly port: number;
  readonly region: string;
  readonly accountId: string;
  /** Keys by key id (state survives stop and restart). */
  readonly keys: ReadonlyMap<string, FakeKey>;
  readonly aliases: ReadonlyMap<string, FakeAlias>;
  /** Every request handled, oldest first. */
  readonly requests: FakeRequest[];
  /** Answers the next `times` requests for `op` (e.g. `Sign`) with the named AWS exception. */
  failNext(op: string, exceptionName: string, times?: number): void;
  /** Delays every answer by `ms` (0 to stop); a delay beyond a client's timeout looks like a hung service. */
  setLatency(ms: number): void;
  /**
   * Caps the items of every List* page at `n` (null: only the request's Limit counts). AWS documents that a
   * list call may return fewer items than Limit while `Truncated` is true; this exercises a client's paging.
   */
  setMaxPageSize(n: number | null): void;
  /**
   * While set, every Sign answers for the key asked for (its ARN in KeyId) with a signature by the key
   * `ref` names, as a service whose key id reaches another key would; null answers honestly again.
   */
  signWithKeyOf(ref: string | null): void;
  /** The key a reference (id, ARN, alias name or alias ARN) names, or undefined. */
  resolve(ref: string): FakeKey | undefined;
  /** Stops listening and drops every open connection. */
  stop(): Promise<void>;
  /** Listens again on the same port (stopping first if running), with the same keys and aliases. */
  restart(): Promise<void>;
}

/** An AWS error as the fake answers it: exception name, message, HTTP status. */
class KmsError extends Error {
  readonly type: string;
  readonly status: number;
  constructor(type: string, message: string, status = 400) {
    super(message);
    this.type = type;
    this.status = status;
  }
}

// HTTP statuses of exceptions that AWS answers with something other than 400.
const STATUS: Readonly<Record<string, number>> = {
  KMSInternalException: 500,
  DependencyTimeoutException: 503,
  KeyUnavailableException: 500,
  ServiceUnavailableException: 503,
};

const SIGN_ALGS: Readonly<Record<string, readonly string[]>> = {
  ECC_NIST_P256: ['ECDSA_SHA_256'],
  ECC_NIST_P384: ['ECDSA_SHA_384'],
  ECC_NIST_P521: ['ECDSA_SHA_512'],
  RSA_2048: rsaAlgs(),
  RSA_3072: rsaAlgs(),
  RSA_4096: rsaAlgs(),
};
const HASH_OF: Readonly<Record<string, 'sha256' | 'sha384' | 'sha512'>> = {
  ECDSA_SHA_256: 'sha256',
  ECDSA_SHA_384: 'sha384',
  ECDSA_SHA_512: 'sha512',
  RSASSA_PSS_SHA_256: 'sha256',
  RSASSA_PSS_SHA_384: 'sha384',
  RSASSA_PSS_SHA_512: 'sha512',
  RSASSA_PKCS1_V1_5_SHA_256: 'sha256',
  RSASSA_PKCS1_V1_5_SHA_384: 'sha384',
  RSASSA_PKCS1_V1_5_SHA_512: 'sha512',
};
// DER DigestInfo prefixes (RFC 8017 section 9.2, note 1).
const DIGEST_INFO: Readonly<Record<string, Buffer>> = {
  sha256: Buffer.from('3031300d060960864801650304020105000420', 'hex'),
  sha384: Buffer.from('3041300d060960864801650304020205000430', 'hex'),
  sha512: Buffer.from('3051300d060960864801650304020305000440', 'hex'),
};
const HASH_LEN = { sha256: 32, sha384: 48, sha512: 64 } as const;
const KEY_UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const ALIAS_NAME = /^alias\/[A-Za-z0-9/_-]+$/;
const MAX_BODY = 1 << 20;
const MAX_SKEW_MS = 5 * 60 * 1000;

function rsaAlgs(): string[] {
  return ['RSASSA_PSS_SHA_256', 'RSASSA_PSS_SHA_384', 'RSASSA_PSS_SHA_512', 'RSASSA_PKCS1_V1_5_SHA_256', 'RSASSA_PKCS1_V1_5_SHA_384', 'RSASSA_PKCS1_V1_5_SHA_512'];
}

/** Starts the fake on 127.0.0.1 (a free port unless `port` is given). */
export async function startAwsKmsFake(opts: AwsKmsFakeOptions): Promise<AwsKmsFake> {
  const accountId = opts.accountId ?? '111122223333';
  const keys = new Map<string, FakeKey>();
  const aliases = new Map<string, FakeAlias>();
  const requests: FakeRequest[] = [];
  const faults = new Map<string, { name: string; times: number }>();
  let signWith: string | null = null;
  let latencyMs = 0;
  let maxPageSize: number | null = null;
  let server: Server | null = null;
  let port = opts.port ?? 0;
  const arnPrefix = `arn:aws:kms:${opts.region}:${accountId}:`;

  const now = (): number => Date.now() / 1000;

  function resolve(ref: string, allowAlias = true): FakeKey | undefined {
    if (KEY_UUID.test(ref)) return keys.get(ref);
    if (ref.startsWith(`${arnPrefix}key/`)) return keys.get(ref.slice(arnPrefix.length + 4));
    if (!allowAlias) return undefined;
    const name = ref.startsWith(`${arnPrefix}alias/`) ? ref.slice(arnPrefix.length) : ref;
    const a = aliases.get(name);
    return a === undefined ? undefined : keys.get(a.targetKeyId);
  }

  /** The key a request names; NotFoundException as AWS words it when there is none. */
  function keyOf(input: Record<string, unknown>, field = 'KeyId', allowAlias = true): FakeKey {
    const ref = str(input, field, { required: true, max: 2048 })!;
    const k = resolve(ref, allowAlias);
    if (k === undefined) {
      if (KEY_UUID.test(ref) || ref.startsWith(`${arnPrefix}key/`)) throw new KmsError('NotFoundException', `Key '${arnOf(ref)}' does not exist`);
      if (ref.startsWith('alias/') || ref.includes(':alias/')) throw new KmsError('NotFoundException', `Alias '${ref}' is not found.`);
      throw new KmsError('NotFoundException', `Invalid keyId '${ref}'`);
    }
    return k;
  }

  function arnOf(ref: string): string {
    return ref.startsWith('arn:') ? ref : `${arnPrefix}key/${ref}`;
  }

  function usable(k: FakeKey): void {
    if (k.state === 'Disabled') throw new KmsError('DisabledException', `${k.arn} is disabled.`);
    if (k.state === 'PendingDeletion') throw new KmsError('KMSInvalidStateException', `${k.arn} is pending deletion.`);
  }

  function metadata(k: FakeKey): Record<string, unknown> {
    return {
      AWSAccountId: accountId,
      KeyId: k.keyId,
      Arn: k.arn,
      CreationDate: k.creationDate,
      Enabled: k.state === 'Enabled',
      Description: k.description,
      KeyUsage: k.keyUsage,
      KeyState: k.state,
      ...(k.deletionDate !== null ? { DeletionDate: k.deletionDate, PendingDeletionWindowInDays: k.pendingWindowInDays } : {}),
      Origin: 'AWS_KMS',
      KeyManager: 'CUSTOMER',
      CustomerMasterKeySpec: k.keySpec,
      KeySpec: k.keySpec,
      ...(k.keyUsage === 'SIGN_VERIFY' ? { SigningAlgorithms: SIGN_ALGS[k.keySpec] } : { EncryptionAlgorithms: k.keySpec === 'SYMMETRIC_DEFAULT' ? ['SYMMETRIC_DEFAULT'] : ['RSAES_OAEP_SHA_1', 'RSAES_OAEP_SHA_256'] }),
      MultiRegion: false,
    };
  }

  function aliasName(input: Record<string, unknown>, field = 'AliasName'): string {
    const name = str(input, field, { required: true, min: 1, max: 256 })!;
    if (!ALIAS_NAME.test(name)) {
      throw new KmsError('ValidationException', `1 validation error detected: Value '${name}' at '${lowerFirst(field)}' failed to satisfy constraint: Member must satisfy regular expression pattern: ^[a-zA-Z0-9:/_-]+$`);
    }
    if (name.startsWith('alias/aws/')) throw new KmsError('NotAuthorizedException', 'Cannot perform this operation on an AWS managed alias');
    return name;
  }

  const ops: Record<string, (input: Record<string, unknown>) => Promise<Record<string, unknown>> | Record<string, unknown>> = {
    async CreateKey(input) {
      const keyUsage = str(input, 'KeyUsage') ?? 'ENCRYPT_DECRYPT';
      const keySpec = str(input, 'KeySpec') ?? str(input, 'CustomerMasterKeySpec') ?? 'SYMMETRIC_DEFAULT';
      const origin = str(input, 'Origin') ?? 'AWS_KMS';
      const description = str(input, 'Description', { max: 8192 }) ?? '';
      const tags = tagList(input);
      if (!['SIGN_VERIFY', 'ENCRYPT_DECRYPT', 'GENERATE_VERIFY_MAC', 'KEY_AGREEMENT'].includes(keyUsage)) throw enumError('keyUsage', keyUsage);
      if (origin !== 'AWS_KMS') throw new KmsError('UnsupportedOperationException', `the fake only creates keys with Origin AWS_KMS, not ${origin}`);
      const signing = SIGN_ALGS[keySpec] !== undefined;
      if (keyUsage === 'SIGN_VERIFY' && !signing) throw new KmsError('ValidationException', `KeySpec ${keySpec} is not valid for KeyUsage SIGN_VERIFY`);
      if (keyUsage === 'ENCRYPT_DECRYPT' && !(keySpec === 'SYMMETRIC_DEFAULT' || keySpec.startsWith('RSA_'))) {
        throw new KmsError('ValidationException', `KeySpec ${keySpec} is not valid for KeyUsage ENCRYPT_DECRYPT`);
      }
      if (keyUsage !== 'SIGN_VERIFY' && keyUsage !== 'ENCRYPT_DECRYPT') throw new KmsError('UnsupportedOperationException', `the fake does not create ${keyUsage} keys`);
      const pair = keySpec === 'SYMMETRIC_DEFAULT' ? null : await generate(keySpec);
      const keyId = randomUUID();
      const k: FakeKey = {
        keyId,
        arn: `${arnPrefix}key/${keyId}`,
        keySpec,
        keyUsage,
        state: 'Enabled',
        description,
        creationDate: now(),
        deletionDate: null,
        pendingWindowInDays: null,
        tags,
        privateKey: pair?.privateKey ?? null,
        spki: pair === null ? null : createPublicKey(pair.privateKey).export({ format: 'der', type: 'spki' }),
        signatures: 0,
      };
      keys.set(keyId, k);
      return { KeyMetadata: metadata(k) };
    },
    DescribeKey(input) {
      return { KeyMetadata: metadata(keyOf(input)) };
    },
    ListKeys(input) {
      const all = [...keys.values()].map((k) => ({ KeyId: k.keyId, KeyArn: k.arn }));
      return page(input, all, 'Keys', { byDefault: 100, max: 1000, cap: maxPageSize });
    },
    GetPublicKey(input) {
      const k = keyOf(input);
      usable(k);
      if (k.spki === null) throw new KmsError('UnsupportedOperationException', `${k.arn} key usage is ${k.keyUsage} which is not valid for GetPublicKey.`);
      return {
        KeyId: k.arn,
        PublicKey: k.spki.toString('base64'),
        CustomerMasterKeySpec: k.keySpec,
        KeySpec: k.keySpec,
        KeyUsage: k.keyUsage,
        ...(k.keyUsage === 'SIGN_VERIFY' ? { SigningAlgorithms: SIGN_ALGS[k.keySpec] } : { EncryptionAlgorithms: ['RSAES_OAEP_SHA_1', 'RSAES_OAEP_SHA_256'] }),
      };
    },
    Sign(input) {
      const k = keyOf(input);
      const message = blob(input, 'Message', { required: true })!;
      const messageType = str(input, 'MessageType') ?? 'RAW';
      const alg = str(input, 'SigningAlgorithm', { required: true })!;
      if (messageType !== 'RAW' && messageType !== 'DIGEST') throw enumError('messageType', messageType);
      if (HASH_OF[alg] === undefined) throw enumError('signingAlgorithm', alg);
      if (message.length < 1 || message.length > 4096) {
        throw new KmsError('ValidationException', "1 validation error detected: Value at 'message' failed to satisfy constraint: Member must have length less than or equal to 4096");
      }
      usable(k);
      if (k.keyUsage !== 'SIGN_VERIFY') throw new KmsError('InvalidKeyUsageException', `${k.arn} key usage is ${k.keyUsage} which is not valid for Sign.`);
      if (!SIGN_ALGS[k.keySpec]!.includes(alg)) throw new KmsError('InvalidKeyUsageException', `Algorithm ${alg} is incompatible with key spec ${k.keySpec}.`);
      const hash = HASH_OF[alg]!;
      let digest: Buffer;
      if (messageType === 'DIGEST') {
        if (message.length !== HASH_LEN[hash]) throw new KmsError('ValidationException', `Digest is invalid length for algorithm ${alg}.`);
        digest = message;
      } else {
        digest = createHash(hash).update(message).digest();
      }
      const sig = signDigest(signWith === null ? k : (resolve(signWith) ?? k), alg, hash, digest);
      k.signatures++;
      return { KeyId: k.arn, Signature: sig.toString('base64'), SigningAlgorithm: alg };
    },
    CreateAlias(input) {
      const name = aliasName(input);
      const k = keyOf(input, 'TargetKeyId', false);
      if (aliases.has(name)) throw new KmsError('AlreadyExistsException', `An alias with the name ${arnPrefix}${name} already exists`);
      if (k.state === 'PendingDeletion') throw new KmsError('KMSInvalidStateException', `${k.arn} is pending deletion.`);
      const t = now();
      aliases.set(name, { name, targetKeyId: k.keyId, creationDate: t, lastUpdatedDate: t });
      return {};
    },
    UpdateAlias(input) {
      const name = aliasName(input);
      const a = aliases.get(name);
      if (a === undefined) throw new KmsError('NotFoundException', `Alias ${arnPrefix}${name} is not found.`);
      const k = keyOf(input, 'TargetKeyId', false);
      if (k.state === 'PendingDeletion') throw new KmsError('KMSInvalidStateException', `${k.arn} is pending deletion.`);
      a.targetKeyId = k.keyId;
      a.lastUpdatedDate = now();
      return {};
    },
    DeleteAlias(input) {
      const name = aliasName(input);
      if (!aliases.delete(name)) throw new KmsError('NotFoundException', `Alias ${arnPrefix}${name} is not found.`);
      return {};
    },
    ListAliases(input) {
      const keyRef = str(input, 'KeyId');
      const target = keyRef === undefined ? undefined : keyOf(input, 'KeyId', false);
      const list = [...aliases.values()]
        .filter((a) => target === undefined || a.targetKeyId === target.keyId)
        .sort((a, b) => a.name.localeCompare(b.name))
        .map((a) => ({ AliasName: a.name, AliasArn: `${arnPrefix}${a.name}`, TargetKeyId: a.targetKeyId, CreationDate: a.creationDate, LastUpdatedDate: a.lastUpdatedDate }));
      return page(input, list, 'Aliases', { byDefault: 50, max: 100, cap: maxPageSize });
    },
    DisableKey(input) {
      const k = keyOf(input, 'KeyId', false);
      if (k.state === 'PendingDeletion') throw new KmsError('KMSInvalidStateException', `${k.arn} is pending deletion.`);
      k.state = 'Disabled';
      return {};
    },
    EnableKey(input) {
      const k = keyOf(input, 'KeyId', false);
      if (k.state === 'PendingDeletion') throw new KmsError('KMSInvalidStateException', `${k.arn} is pending deletion.`);
      k.state = 'Enabled';
      return {};
    },
    ScheduleKeyDeletion(input) {
      const k = keyOf(input, 'KeyId', false);
      const days = int(input, 'PendingWindowInDays') ?? 30;
      if (days < 7 || days > 30) {
        throw new KmsError('ValidationException', `1 validation error detected: Value '${days}' at 'pendingWindowInDays' failed to satisfy constraint: Member must have value between 7 and 30`);
      }
      if (k.state === 'PendingDeletion') throw new KmsError('KMSInvalidStateException', `${k.arn} is pending deletion.`);
      k.state = 'PendingDeletion';
      k.pendingWindowInDays = days;
      k.deletionDate = Math.floor(now() + days * 86400);
      return { KeyId: k.arn, DeletionDate: k.deletionDate, KeyState: k.state, PendingWindowInDays: days };
    },
    CancelKeyDeletion(input) {
      const k = keyOf(input, 'KeyId', false);
      if (k.state !== 'PendingDeletion') throw new KmsError('KMSInvalidStateException', `${k.arn} is not pending deletion.`);
      // AWS leaves a key whose deletion was cancelled Disabled.
      k.state = 'Disabled';
      k.deletionDate = null;
      k.pendingWindowInDays = null;
      return { KeyId: k.arn };
    },
    TagResource(input) {
      const k = keyOf(input, 'KeyId', false);
      if (k.state === 'PendingDeletion') throw new KmsError('KMSInvalidStateException', `${k.arn} is pending deletion.`);
      for (const [key, value] of tagList(input)) k.tags.set(key, value);
      return {};
    },
    ListResourceTags(input) {
      const k = keyOf(input, 'KeyId', false);
      return page(input, [...k.tags].map(([TagKey, TagValue]) => ({ TagKey, TagValue })), 'Tags', { byDefault: 50, max: 50, cap: maxPageSize });
    },
  };

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const record: FakeRequest = { op: null, status: 200, error: null, input: null };
    let answer: { status: number; body: Record<string, unknown>; type?: string };
    try {
      const body = await readBody(req);
      if (req.method !== 'POST' || (req.url ?? '/').split('?')[0] !== '/') throw new KmsError('UnknownOperationException', 'Only POST / is served', 404);
      verifySigV4(req, body, opts);
      const target = header(req, 'x-amz-target');
      const op = target?.startsWith('TrentService.') ? target.slice('TrentService.'.length) : undefined;
      if (op === undefined || !Object.hasOwn(ops, op)) throw new KmsError('UnknownOperationException', 'Unknown operation');
      record.op = op;
      if (!/^application\/x-amz-json-1\.1\b/.test(header(req, 'content-type') ?? '')) {
        throw new KmsError('SerializationException', 'Content-Type must be application/x-amz-json-1.1');
      }
      const input = parseJson(body);
      record.input = input;
      const fault = faults.get(op);
      if (fault !== undefined) {
        if (--fault.times <= 0) faults.delete(op);
        throw new KmsError(fault.name, `injected ${fault.name}`, STATUS[fault.name] ?? 400);
      }
      answer = { status: 200, body: await ops[op]!(input) };
    } catch (err) {
      const e = err instanceof KmsError ? err : new KmsError('KMSInternalException', 'internal error of the fake', 500);
      if (!(err instanceof KmsError)) console.error('aws kms fake: unexpected error', err);
      answer = { status: e.status, body: { __type: e.type, message: e.message }, type: e.type };
      record.error = e.type;
    }
    record.status = answer.status;
    requests.push(record);
    if (latencyMs > 0) await new Promise((r) => setTimeout(r, latencyMs));
    if (res.destroyed) return;
    const text = JSON.stringify(answer.body);
    res.writeHead(answer.status, {
      'content-type': 'application/x-amz-json-1.1',
      'content-length': Buffer.byteLength(text),
      'x-amzn-requestid': randomUUID(),
      ...(answer.type !== undefined ? { 'x-amzn-errortype': `${answer.type}:http://internal.amazon.com/coral/com.amazonaws.kms/` } : {}),
    });
    res.end(text);
  }

  async function listen(): Promise<void> {
    const s = createServer((req, res) => {
      handle(req, res).catch((err) => {
        console.error('aws kms fake: request failed', err);
        if (!res.headersSent) res.writeHead(500).end();
      });
    });
    await new Promise<void>((resolve, reject) => {
      s.once('error', reject);
      s.listen(port, '127.0.0.1', () => {
        s.off('error', reject);
        resolve();
      });
    });
    port = (s.address() as AddressInfo).port;
    server = s;
  }

  async function stop(): Promise<void> {
    const s = server;
    if (s === null) return;
    server = null;
    const closed = new Promise<void>((resolve) => s.close(() => resolve()));
    s.closeAllConnections();
    await closed;
  }

  await listen();
  return {
    get endpoint() {
      return `http://127.0.0.1:${port}`;
    },
    get port() {
      return port;
    },
    region: opts.region,
    accountId,
    keys,
    aliases,
    requests,
    failNext(op, exceptionName, times = 1) {
      faults.set(op, { name: exceptionName, times });
    },
    setLatency(ms) {
      latencyMs = ms;
    },
    setMaxPageSize(n) {
      maxPageSize = n;
    },
    signWithKeyOf(ref) {
      signWith = ref;
    },
    resolve: (ref) => resolve(ref),
    stop,
    async restart() {
      await stop();
      await listen();
    },
  };
}

async function generate(keySpec: string): Promise<{ privateKey: KeyObject }> {
  switch (keySpec) {
    case 'ECC_NIST_P256':
      return generateKeyPairAsync('ec', { namedCurve: 'P-256' });
    case 'ECC_NIST_P384':
      return generateKeyPairAsync('ec', { namedCurve: 'P-384' });
    case 'ECC_NIST_P521':
      return generateKeyPairAsync('ec', { namedCurve: 'P-521' });
    case 'RSA_2048':
    case 'RSA_3072':
    case 'RSA_4096':
      return generateKeyPairAsync('rsa', { modulusLength: Number(keySpec.slice(4)), publicExponent: 65537 });
    default:
      throw new KmsError('UnsupportedOperationException', `the fake does not create ${keySpec} keys`);
  }
}

function signDigest(k: FakeKey, alg: string, hash: 'sha256' | 'sha384' | 'sha512', digest: Buffer): Buffer {
  const key = k.privateKey!;
  if (alg.startsWith('ECDSA_')) {
    const curve = k.keySpec === 'ECC_NIST_P256' ? p256 : k.keySpec === 'ECC_NIST_P384' ? p384 : p521;
    const d = Buffer.from(key.export({ format: 'jwk' }).d!, 'base64url');
    // AWS returns ECDSA signatures DER-encoded (RFC 3279 ECDSA-Sig-Value).
    return Buffer.from(curve.sign(digest, d, { prehash: false, format: 'der' }));
  }
  if (alg.startsWith('RSASSA_PKCS1_V1_5_')) {
    return privateEncrypt({ key, padding: constants.RSA_PKCS1_PADDING }, Buffer.concat([DIGEST_INFO[hash]!, digest]));
  }
  const bits = key.asymmetricKeyDetails!.modulusLength!;
  // RSASP1 over EMSA-PSS-ENCODE (RFC 8017 sections 8.1.1, 9.1.1); AWS uses a salt as long as the hash.
  return privateDecrypt({ key, padding: constants.RSA_NO_PADDING }, emsaPss(digest, hash, bits - 1, Math.ceil(bits / 8)));
}

function emsaPss(mHash: Buffer, hash: 'sha256' | 'sha384' | 'sha512', emBits: number, k: number): Buffer {
  const hLen = HASH_LEN[hash];
  const emLen = Math.ceil(emBits / 8);
  const salt = randomBytes(hLen);
  const h = createHash(hash).update(Buffer.alloc(8)).update(mHash).update(salt).digest();
  const dbLen = emLen - hLen - 1;
  const db = Buffer.alloc(dbLen);
  db[dbLen - hLen - 1] = 0x01;
  salt.copy(db, dbLen - hLen);
  const mask = Buffer.alloc(dbLen);
  const counter = Buffer.alloc(4);
  for (let i = 0, off = 0; off < dbLen; i++, off += hLen) {
    counter.writeUInt32BE(i);
    createHash(hash).update(h).update(counter).digest().copy(mask, off);
  }
  for (let i = 0; i < dbLen; i++) db[i]! ^= mask[i]!;
  db[0]! &= 0xff >> (8 * emLen - emBits);
  const out = Buffer.alloc(k);
  db.copy(out, k - emLen);
  h.copy(out, k - emLen + dbLen);
  out[k - 1] = 0xbc;
  return out;
}

// ---- SigV4 (AWS4-HMAC-SHA256) ----

/** The SigV4 signing key: HMAC chain over date, region, service and `aws4_request`. */
export function sigV4Key(secretAccessKey: string, date: string, region: string, service: string): Buffer {
  const kDate = createHmac('sha256', `AWS4${secretAccessKey}`).update(date).digest();
  const kRegion = createHmac('sha256', kDate).update(region).digest();
  const kService = createHmac('sha256', kRegion).update(service).digest();
  return createHmac('sha256', kService).update('aws4_request').digest();
}

/** The SigV4 canonical request of a request whose headers are given lower-cased. */
export function canonicalRequest(method: string, url: string, headers: Record<string, string>, signedHeaders: readonly string[], payloadHash: string): string {
  const [path = '/', query = ''] = url.split('?', 2) as [string?, string?];
  const canonicalQuery = query === ''
    ? ''
    : query
        .split('&')
        .map((p) => {
          const eq = p.indexOf('=');
          const [k, v] = eq < 0 ? [p, ''] : [p.slice(0, eq), p.slice(eq + 1)];
          return [uriEncode(safeDecode(k)), uriEncode(safeDecode(v))] as const;
        })
        .sort((a, b) => (a[0] === b[0] ? (a[1] < b[1] ? -1 : 1) : a[0] < b[0] ? -1 : 1))
        .map(([k, v]) => `${k}=${v}`)
        .join('&');
  const canonicalHeaders = signedHeaders.map((h) => `${h}:${(headers[h] ?? '').trim().replace(/\s+/g, ' ')}\n`).join('');
  return [method, path, canonicalQuery, canonicalHeaders, signedHeaders.join(';'), payloadHash].join('\n');
}

/**
 * Signs a request for the fake (or for AWS) the SigV4 way; returns the headers to add. Tests use it to
 * send hand-made bodies; the SDK signs its own requests with its own implementation.
 */
export function sigV4Sign(input: {
  method: string;
  url: string;
  host: string;
  headers: Record<string, string>;
  body: Buffer;
  accessKeyId: string;
  secretAccessKey: string;
  region: string;
  date?: Date;
}): Record<string, string> {
  const amzDate = (input.date ?? new Date()).toISOString().replace(/[-:]/g, '').replace(/\.\d{3}/, '');
  const day = amzDate.slice(0, 8);
  const headers: Record<string, string> = { ...lowerKeys(input.headers), host: input.host, 'x-amz-date': amzDate };
  const signed = Object.keys(headers).sort();
  const payloadHash = createHash('sha256').update(input.body).digest('hex');
  const creq = canonicalRequest(input.method, input.url, headers, signed, payloadHash);
  const scope = `${day}/${input.region}/kms/aws4_request`;
  const sts = ['AWS4-HMAC-SHA256', amzDate, scope, createHash('sha256').update(creq).digest('hex')].join('\n');
  const sig = createHmac('sha256', sigV4Key(input.secretAccessKey, day, input.region, 'kms')).update(sts).digest('hex');
  return {
    ...headers,
    authorization: `AWS4-HMAC-SHA256 Credential=${input.accessKeyId}/${scope}, SignedHeaders=${signed.join(';')}, Signature=${sig}`,
  };
}

function verifySigV4(req: IncomingMessage, body: Buffer, opts: AwsKmsFakeOptions): void {
  const auth = header(req, 'authorization');
  if (auth === undefined) throw new KmsError('IncompleteSignatureException', 'Request is missing Authentication Token');
  const incomplete = (what: string) => new KmsError('IncompleteSignatureException', `Authorization header requires '${what}' parameter. Authorization=${auth.slice(0, 40)}`);
  if (!auth.startsWith('AWS4-HMAC-SHA256 ')) throw new KmsError('IncompleteSignatureException', 'Authorization header must use AWS4-HMAC-SHA256');
  const params = new Map<string, string>();
  for (const part of auth.slice('AWS4-HMAC-SHA256 '.length).split(',')) {
    const eq = part.indexOf('=');
    if (eq > 0) params.set(part.slice(0, eq).trim(), part.slice(eq + 1).trim());
  }
  const credential = params.get('Credential');
  const signedHeaderText = params.get('SignedHeaders');
  const signature = params.get('Signature');
  if (credential === undefined) throw incomplete('Credential');
  if (signedHeaderText === undefined) throw incomplete('SignedHeaders');
  if (signature === undefined) throw incomplete('Signature');
  const scope = credential.split('/');
  if (scope.length !== 5) throw new KmsError('IncompleteSignatureException', 'Credential must have exactly 5 slash-delimited elements');
  const [accessKeyId, day, region, service, terminator] = scope as [string, string, string, string, string];
  if (accessKeyId !== opts.accessKeyId) throw new KmsError('UnrecognizedClientException', 'The security token included in the request is invalid.');
  const token = header(req, 'x-amz-security-token');
  if ((opts.sessionToken ?? null) !== (token ?? null)) throw new KmsError('UnrecognizedClientException', 'The security token included in the request is invalid.');
  const amzDate = header(req, 'x-amz-date');
  if (amzDate === undefined || !/^\d{8}T\d{6}Z$/.test(amzDate)) throw new KmsError('IncompleteSignatureException', 'Authorization requires a valid X-Amz-Date header');
  const at = Date.UTC(+amzDate.slice(0, 4), +amzDate.slice(4, 6) - 1, +amzDate.slice(6, 8), +amzDate.slice(9, 11), +amzDate.slice(11, 13), +amzDate.slice(13, 15));
  if (!Number.isFinite(at) || Math.abs(Date.now() - at) > MAX_SKEW_MS) throw new KmsError('InvalidSignatureException', `Signature expired: ${amzDate} is outside the allowed clock skew`);
  if (day !== amzDate.slice(0, 8)) throw new KmsError('InvalidSignatureException', `Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '${day}' != '${amzDate.slice(0, 8)}'`);
  if (region !== opts.region) throw new KmsError('InvalidSignatureException', `Credential should be scoped to a valid region, not '${region}'.`);
  if (service !== 'kms') throw new KmsError('InvalidSignatureException', `Credential should be scoped to correct service: 'kms'.`);
  if (terminator !== 'aws4_request') throw new KmsError('InvalidSignatureException', `Credential should be scoped with a valid terminator: 'aws4_request', not '${terminator}'.`);
  const signed = signedHeaderText.split(';');
  const sorted = [...signed].sort();
  if (signed.some((h, i) => h !== sorted[i] || h === '' || h !== h.toLowerCase()) || new Set(signed).size !== signed.length) {
    throw new KmsError('InvalidSignatureException', 'SignedHeaders must be lower-case, sorted and unique');
  }
  if (!signed.includes('host')) throw new KmsError('InvalidSignatureException', "'Host' must be a 'SignedHeader' in the AWS Authorization.");
  if (!signed.includes('x-amz-date')) throw new KmsError('InvalidSignatureException', "'X-Amz-Date' must be a 'SignedHeader' in the AWS Authorization.");
  const headers: Record<string, string> = {};
  for (const h of signed) {
    const v = req.headersDistinct[h];
    if (v === undefined) throw new KmsError('InvalidSignatureException', `signed header ${h} is missing from the request`);
    headers[h] = v.map((x) => x.trim().replace(/\s+/g, ' ')).join(',');
  }
  const payloadHash = createHash('sha256').update(body).digest('hex');
  const claimed = header(req, 'x-amz-content-sha256');
  if (claimed !== undefined && claimed !== payloadHash) throw new KmsError('InvalidSignatureException', 'The provided x-amz-content-sha256 header does not match the payload');
  const creq = canonicalRequest(req.method ?? '', req.url ?? '/', headers, signed, payloadHash);
  const sts = ['AWS4-HMAC-SHA256', amzDate, scope.slice(1).join('/'), createHash('sha256').update(creq).digest('hex')].join('\n');
  const expected = createHmac('sha256', sigV4Key(opts.secretAccessKey, day, region, service)).update(sts).digest();
  const given = /^[0-9a-f]{64}$/.test(signature) ? Buffer.from(signature, 'hex') : Buffer.alloc(0);
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) {
    throw new KmsError(
      'InvalidSignatureException',
      'The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.',
    );
  }
}

// ---- JSON 1.1 input helpers: wrong JSON types are SerializationException, bad values ValidationException ----

function parseJson(body: Buffer): Record<string, unknown> {
  if (body.length === 0) return {};
  let v: unknown;
  try {
    v = JSON.parse(body.toString('utf8'));
  } catch {
    throw new KmsError('SerializationException', 'Start of structure or map found where not expected.');
  }
  if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new KmsError('SerializationException', 'Expected a JSON object as the request body.');
  return v as Record<string, unknown>;
}

function str(input: Record<string, unknown>, field: string, c: { required?: boolean; min?: number; max?: number } = {}): string | undefined {
  const v = input[field];
  if (v === undefined || v === null) {
    if (c.required) throw new KmsError('ValidationException', `1 validation error detected: Value null at '${lowerFirst(field)}' failed to satisfy constraint: Member must not be null`);
    return undefined;
  }
  if (typeof v !== 'string') throw new KmsError('SerializationException', `${field}: expected a string`);
  if (v.length < (c.min ?? 1) || v.length > (c.max ?? 256)) {
    throw new KmsError('ValidationException', `1 validation error detected: Value at '${lowerFirst(field)}' failed to satisfy constraint: Member must have length between ${c.min ?? 1} and ${c.max ?? 256}`);
  }
  return v;
}

function int(input: Record<string, unknown>, field: string): number | undefined {
  const v = input[field];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'number' || !Number.isInteger(v)) throw new KmsError('SerializationException', `${field}: expected an integer`);
  return v;
}

function blob(input: Record<string, unknown>, field: string, c: { required?: boolean } = {}): Buffer | undefined {
  const v = str(input, field, { required: c.required ?? false, min: 0, max: 1 << 20 });
  if (v === undefined) return undefined;
  if (!/^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/.test(v)) throw new KmsError('SerializationException', `${field}: not valid base64`);
  return Buffer.from(v, 'base64');
}

function tagList(input: Record<string, unknown>): Map<string, string> {
  const v = input.Tags;
  const out = new Map<string, string>();
  if (v === undefined || v === null) return out;
  if (!Array.isArray(v)) throw new KmsError('SerializationException', 'Tags: expected a list');
  for (const t of v) {
    if (t === null || typeof t !== 'object' || Array.isArray(t)) throw new KmsError('SerializationException', 'Tags: expected structures');
    const key = str(t as Record<string, unknown>, 'TagKey', { required: true, max: 128 })!;
    const value = str(t as Record<string, unknown>, 'TagValue', { required: true, min: 0, max: 256 })!;
    if (key.startsWith('aws:')) throw new KmsError('TagException', 'Tag keys beginning with aws: are reserved');
    out.set(key, value);
  }
  return out;
}

/**
 * One page of a List* answer. `byDefault` and `max` are the operation's documented Limit default and
 * maximum (ListKeys 100/1000, ListAliases 50/100, ListResourceTags 50/50); `cap` shortens pages further.
 */
function page<T>(input: Record<string, unknown>, all: T[], field: string, o: { byDefault: number; max: number; cap: number | null }): Record<string, unknown> {
  const asked = int(input, 'Limit') ?? o.byDefault;
  if (asked < 1 || asked > o.max) {
    throw new KmsError('ValidationException', `1 validation error detected: Value '${asked}' at 'limit' failed to satisfy constraint: Member must have value between 1 and ${o.max}`);
  }
  const limit = o.cap === null ? asked : Math.min(asked, o.cap);
  const marker = str(input, 'Marker', { max: 1024 });
  const start = marker === undefined ? 0 : Number(marker);
  if (!Number.isInteger(start) || start < 0 || start > all.length) throw new KmsError('InvalidMarkerException', 'Invalid marker');
  const slice = all.slice(start, start + limit);
  const truncated = start + limit < all.length;
  return { [field]: slice, Truncated: truncated, ...(truncated ? { NextMarker: String(start + limit) } : {}) };
}

function enumError(field: string, value: string): KmsError {
  return new KmsError('ValidationException', `1 validation error detected: Value '${value.slice(0, 64)}' at '${field}' failed to satisfy constraint: Member must satisfy enum value set`);
}

function lowerFirst(s: string): string {
  return s.charAt(0).toLowerCase() + s.slice(1);
}

function header(req: IncomingMessage, name: string): string | undefined {
  const v = req.headers[name];
  return Array.isArray(v) ? v.join(',') : v;
}

function lowerKeys(h: Record<string, string>): Record<string, string> {
  return Object.fromEntries(Object.entries(h).map(([k, v]) => [k.toLowerCase(), v]));
}

function uriEncode(s: string): string {
  return encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

function safeDecode(s: string): string {
  try {
    return decodeURIComponent(s.replace(/\+/g, ' '));
  } catch {
    return s;
  }
}

async function readBody(req: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > MAX_BODY) throw new KmsError('ValidationException', 'Request body is too large', 413);
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks);
}
