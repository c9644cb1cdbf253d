import {
  CreateAliasCommand,
  CreateKeyCommand,
  DeleteAliasCommand,
  DescribeKeyCommand,
  DisableKeyCommand,
  EnableKeyCommand,
  GetPublicKeyCommand,
  ListAliasesCommand,
  ScheduleKeyDeletionCommand,
  SignCommand,
  type KeySpec as AwsKeySpec,
  type KMSClient,
  type SigningAlgorithmSpec,
} from '@aws-sdk/client-kms';
import { createPublicKey } from 'node:crypto';
import { SigilError, isSigilError } from '../../errors.ts';
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
} from '../signer.ts';
import { createKmsClient, readCredentialsFile } from './client.ts';
import type { AwsKmsConfig } from './config.ts';
import { awsErrorName, mapAwsError } from './errors.ts';
import { formatAwsKmsUri, keyIdKind, parseAwsKmsUri, type AwsKmsKeyRef } from './key-uri.ts';

/** The tag every key sigil creates carries, naming its sigil label (finds keys left without an alias). */
export const LABEL_TAG = 'sigil:label';

// Labels become alias names, so they follow AWS's alias grammar.
const LABEL = /^[A-Za-z0-9/_-]{1,200}$/;

const SIGNING: Readonly<Record<Exclude<Algorithm, 'ED25519'>, { awsAlg: SigningAlgorithmSpec; createSpec: AwsKeySpec }>> = {
  ECDSA_P256_SHA256: { awsAlg: 'ECDSA_SHA_256', createSpec: 'ECC_NIST_P256' },
  ECDSA_P384_SHA384: { awsAlg: 'ECDSA_SHA_384', createSpec: 'ECC_NIST_P384' },
  RSA_PKCS1_SHA256: { awsAlg: 'RSASSA_PKCS1_V1_5_SHA_256', createSpec: 'RSA_2048' },
  RSA_PSS_SHA256: { awsAlg: 'RSASSA_PSS_SHA_256', createSpec: 'RSA_2048' },
};

// AWS key specs sigil signs with and the key type each must have.
const KEY_SPECS: ReadonlyMap<string, KeyType> = new Map<string, KeyType>([
  ['ECC_NIST_P256', 'EC_P256'],
  ['ECC_NIST_P384', 'EC_P384'],
  ['RSA_2048', 'RSA'],
  ['RSA_3072', 'RSA'],
  ['RSA_4096', 'RSA'],
]);

interface AwsKey {
  /** The key ARN, which names the key in every call after the lookup. */
  arn: string;
  uri: string;
  spki: Buffer;
  keyType: KeyType;
  signingAlgorithms: readonly string[];
  /** Bytes of an RSA signature (modulus length), or of the curve order for ECDSA. */
  size: number;
}

/**
 * Opens an AWS KMS backend: keys are asymmetric KMS keys (SIGN_VERIFY) made non-extractable by
 * construction (Origin AWS_KMS); each sigil key version is one KMS key behind the alias
 * `<aliasPrefix><label>`.
 */
export async function open(config: AwsKmsConfig, ctx: BackendContext): Promise<AwsKmsBackend> {
  const credentials = config.credentialsFile !== undefined ? await readCredentialsFile(config.credentialsFile, ctx.log) : null;
  const client = createKmsClient(config, credentials, ctx.log);
  return new AwsKmsBackend(config, client, ctx.log);
}

/** The AWS KMS backend: signs digests with KMS keys, creates, finds, disables and destroys them. */
export class AwsKmsBackend implements Backend, KeyCreator, KeyDestroyer, KeyEnabler {
  readonly kind = 'awskms';
  // Sigil's AWS backend offers no Ed25519 (see the brief of issue 5); the conformance suite skips it.
  readonly algorithms: readonly Algorithm[] = ['ECDSA_P256_SHA256', 'ECDSA_P384_SHA384', 'RSA_PKCS1_SHA256', 'RSA_PSS_SHA256'];
  readonly #client: KMSClient;
  readonly #config: AwsKmsConfig;
  readonly #log: Logger;
  /** Public keys by key ARN and by key id as given: the SPKI of a KMS key never changes. */
  readonly #keys = new Map<string, AwsKey>();
  readonly #loading = new Map<string, Promise<AwsKey>>();

  /** Use `open`; the constructor takes a client already configured. */
  constructor(config: AwsKmsConfig, client: KMSClient, log: Logger) {
    this.#config = config;
    this.#client = client;
    this.#log = log;
  }

  async getKey(uri: string): Promise<BackendKey> {
    const k = await this.#lookup(this.#ref(uri));
    return { uri: k.uri, spki: k.spki, keyType: k.keyType };
  }

  async signer(uri: string, algorithm: Algorithm): Promise<KeySigner> {
    const ref = this.#ref(uri);
    const signing = SIGNING[algorithm as Exclude<Algorithm, 'ED25519'>];
    if (signing === undefined) throw new SigilError('UNSUPPORTED_ALGORITHM', `the awskms backend does not sign ${String(algorithm)}`);
    const k = await this.#lookup(ref);
    const info = ALGORITHM_INFO[algorithm];
    if (k.keyType !== info.keyType) throw new SigilError('INVALID_ARGUMENT', `key ${k.uri} is a ${k.keyType} key and cannot sign ${algorithm}`);
    if (!k.signingAlgorithms.includes(signing.awsAlg)) {
      throw new SigilError('UNSUPPORTED_ALGORITHM', `key ${k.uri} does not offer ${signing.awsAlg}`);
    }
    const what = `aws kms sign with ${k.arn}`;
    return {
      algorithm,
      sign: async (input: Buffer): Promise<Buffer> => {
        if (input.length !== info.digestLength) {
          throw new SigilError('INVALID_ARGUMENT', `${algorithm} signs a ${info.digestLength}-byte digest, got ${input.length} bytes`);
        }
        const out = await this.#call(what, (o) =>
          this.#client.send(new SignCommand({ KeyId: k.arn, Message: input, MessageType: 'DIGEST', SigningAlgorithm: signing.awsAlg }), o),
        );
        const sig = out.Signature;
        if (sig === undefined || out.SigningAlgorithm !== signing.awsAlg) throw new SigilError('BACKEND_ERROR', `${what}: answer lacks the signature or names another algorithm`);
        if (info.keyType === 'RSA' ? sig.length !== k.size : !isDerEcdsaSignature(sig, k.size)) {
          throw new SigilError('BACKEND_ERROR', `${what}: answer is not a well-formed ${info.keyType === 'RSA' ? `${k.size}-byte rsa` : 'der ecdsa'} signature`);
        }
        return Buffer.from(sig.buffer, sig.byteOffset, sig.byteLength);
      },
    };
  }

  async createKey(spec: KeySpec): Promise<BackendKey> {
    const signing = SIGNING[spec.algorithm as Exclude<Algorithm, 'ED25519'>];
    if (signing === undefined) throw new SigilError('UNSUPPORTED_ALGORITHM', `the awskms backend does not create ${String(spec.algorithm)} keys`);
    const alias = this.#alias(spec.label);
    const created = await this.#call('aws kms create key', (o) =>
      this.#client.send(
        new CreateKeyCommand({
          KeyUsage: 'SIGN_VERIFY',
          KeySpec: signing.createSpec,
          Origin: 'AWS_KMS',
          Description: `sigil key version ${spec.label}`,
          Tags: [{ TagKey: LABEL_TAG, TagValue: spec.label }],
        }),
        o,
      ),
    );
    const arn = created.KeyMetadata?.Arn;
    if (arn === undefined || keyIdKind(arn) !== 'arn') throw new SigilError('BACKEND_ERROR', 'aws kms create key: answer lacks a key arn');
    await this.#aliasNewKey(alias, arn, spec.label);
    const k = await this.#lookup({ keyId: arn, region: this.#config.region, endpoint: this.#config.endpoint ?? null });
    this.#log.info({ uri: k.uri, algorithm: spec.algorithm, label: spec.label, alias }, 'aws kms key created');
    return { uri: k.uri, spki: k.spki, keyType: k.keyType };
  }

  async findKeyByLabel(label: string): Promise<string | null> {
    const alias = this.#alias(label);
    try {
      const out = await this.#call(`aws kms describe ${alias}`, (o) => this.#client.send(new DescribeKeyCommand({ KeyId: alias }), o));
      const arn = out.KeyMetadata?.Arn;
      if (arn === undefined || keyIdKind(arn) !== 'arn') throw new SigilError('BACKEND_ERROR', `aws kms describe ${alias}: answer lacks a key arn`);
      return this.#uriOf(arn);
    } catch (err) {
      if (isSigilError(err, 'KEY_NOT_FOUND')) return null;
      throw err;
    }
  }

  async destroyKey(uri: string): Promise<void> {
    const ref = this.#ref(uri);
    const arn = await this.#resolveArn(ref);
    if (arn === null) return;
    this.#forget(arn, ref.keyId);
    // Aliases first: once they are gone the label is free, and the key ARN in `uri` still reaches the key on a retry.
    try {
      for (const alias of await this.#aliasesOf(arn)) {
        try {
          await this.#call(`aws kms delete alias ${alias}`, (o) => this.#client.send(new DeleteAliasCommand({ AliasName: alias }), o));
        } catch (err) {
          if (!isSigilError(err, 'KEY_NOT_FOUND')) throw err;
        }
      }
      await this.#call(`aws kms schedule deletion of ${arn}`, (o) =>
        this.#client.send(new ScheduleKeyDeletionCommand({ KeyId: arn, PendingWindowInDays: this.#config.pendingWindowDays }), o),
      );
    } catch (err) {
      if (isSigilError(err, 'KEY_NOT_FOUND')) return;
      if (isSigilError(err, 'FAILED_PRECONDITION') && (await this.#keyState(arn)) === 'PendingDeletion') return;
      throw err;
    }
    this.#log.info({ uri, arn, pendingWindowDays: this.#config.pendingWindowDays }, 'aws kms key scheduled for deletion');
  }

  async setKeyEnabled(uri: string, enabled: boolean): Promise<void> {
    const ref = this.#ref(uri);
    const arn = await this.#resolveArn(ref);
    if (arn === null) throw new SigilError('KEY_NOT_FOUND', `aws kms key ${ref.keyId} not found`);
    // EnableKey and DisableKey are idempotent in AWS KMS; a key pending deletion answers KMSInvalidStateException.
    await this.#call(`aws kms ${enabled ? 'enable' : 'disable'} ${arn}`, (o) =>
      this.#client.send(enabled ? new EnableKeyCommand({ KeyId: arn }) : new DisableKeyCommand({ KeyId: arn }), o),
    );
    this.#log.info({ uri, arn, enabled }, enabled ? 'aws kms key enabled' : 'aws kms key disabled');
  }

  async close(): Promise<void> {
    this.#keys.clear();
    this.#client.destroy();
  }

  /** Runs one SDK call under the backend's deadline and classifies its failure. */
  async #call<T>(what: string, fn: (opts: { abortSignal: AbortSignal }) => Promise<T>): Promise<T> {
    try {
      return await fn({ abortSignal: AbortSignal.timeout(this.#config.timeoutMs) });
    } catch (err) {
      throw mapAwsError(err, what, this.#config.timeoutMs);
    }
  }

  #ref(uri: string): AwsKmsKeyRef {
    const ref = parseAwsKmsUri(uri);
    if (ref.region !== this.#config.region) {
      throw new SigilError('INVALID_ARGUMENT', `key uri names region ${ref.region} but this backend serves ${this.#config.region}`);
    }
    if (ref.endpoint !== null && ref.endpoint !== (this.#config.endpoint ?? null)) {
      throw new SigilError('INVALID_ARGUMENT', `key uri names endpoint ${ref.endpoint} but this backend uses ${this.#config.endpoint ?? 'the region default'}`);
    }
    return ref;
  }

  #uriOf(arn: string): string {
    return formatAwsKmsUri({ keyId: arn, region: this.#config.region, endpoint: this.#config.endpoint ?? null });
  }

  #alias(label: string): string {
    if (typeof label !== 'string' || !LABEL.test(label)) {
      throw new SigilError('INVALID_ARGUMENT', 'an awskms key label must be 1 to 200 letters, digits, /, _ or -');
    }
    const alias = `${this.#config.aliasPrefix}${label}`;
    if (alias.length > 256) throw new SigilError('INVALID_ARGUMENT', 'an awskms alias (prefix and label) must be at most 256 characters');
    return alias;
  }

  /** Public key, key type and signing algorithms of a key, cached by ARN (aliases are looked up every time: they can move). */
  async #lookup(ref: AwsKmsKeyRef): Promise<AwsKey> {
    const kind = keyIdKind(ref.keyId);
    const cacheable = kind === 'id' || kind === 'arn';
    if (cacheable) {
      const hit = this.#keys.get(ref.keyId);
      if (hit !== undefined) return hit;
      const pending = this.#loading.get(ref.keyId);
      if (pending !== undefined) return pending;
    }
    const p = this.#fetch(ref.keyId);
    if (!cacheable) return p;
    this.#loading.set(ref.keyId, p);
    try {
      return await p;
    } finally {
      this.#loading.delete(ref.keyId);
    }
  }

  async #fetch(keyId: string): Promise<AwsKey> {
    const what = `aws kms get public key of ${keyId}`;
    const out = await this.#call(what, (o) => this.#client.send(new GetPublicKeyCommand({ KeyId: keyId }), o));
    const arn = out.KeyId;
    if (arn === undefined || keyIdKind(arn) !== 'arn' || out.PublicKey === undefined) throw new SigilError('BACKEND_ERROR', `${what}: answer lacks the key arn or public key`);
    if (out.KeyUsage !== 'SIGN_VERIFY') throw new SigilError('INVALID_ARGUMENT', `key ${arn} is not a signing key (key usage ${String(out.KeyUsage)})`);
    const keyType = KEY_SPECS.get(String(out.KeySpec));
    if (keyType === undefined) throw new SigilError('UNSUPPORTED_ALGORITHM', `key ${arn} has key spec ${String(out.KeySpec)}, which sigil does not sign with`);
    const spki = Buffer.from(out.PublicKey);
    let actual: KeyType | null;
    let size: number;
    try {
      actual = keyTypeOfSpki(spki);
      const pub = createPublicKey({ key: spki, format: 'der', type: 'spki' });
      size = keyType === 'RSA' ? Math.ceil((pub.asymmetricKeyDetails?.modulusLength ?? 0) / 8) : keyType === 'EC_P256' ? 32 : 48;
    } catch (err) {
      throw new SigilError('BACKEND_ERROR', `${what}: public key does not decode`, { cause: err });
    }
    if (actual !== keyType) throw new SigilError('BACKEND_ERROR', `${what}: public key is not of key spec ${String(out.KeySpec)}`);
    const k: AwsKey = { arn, uri: this.#uriOf(arn), spki, keyType, signingAlgorithms: out.SigningAlgorithms ?? [], size };
    this.#keys.set(arn, k);
    if (keyIdKind(keyId) === 'id') this.#keys.set(keyId, k);
    return k;
  }

  #forget(arn: string, keyId: string): void {
    this.#keys.delete(arn);
    this.#keys.delete(keyId);
    this.#keys.delete(arn.slice(arn.lastIndexOf('/') + 1));
  }

  /** The ARN of a key reference (aliases resolved), or null when no key answers to it. */
  async #resolveArn(ref: AwsKmsKeyRef): Promise<string | null> {
    const kind = keyIdKind(ref.keyId);
    if (kind === 'arn') return ref.keyId;
    try {
      const out = await this.#call(`aws kms describe ${ref.keyId}`, (o) => this.#client.send(new DescribeKeyCommand({ KeyId: ref.keyId }), o));
      const arn = out.KeyMetadata?.Arn;
      if (arn === undefined || keyIdKind(arn) !== 'arn') throw new SigilError('BACKEND_ERROR', `aws kms describe ${ref.keyId}: answer lacks a key arn`);
      return arn;
    } catch (err) {
      if (isSigilError(err, 'KEY_NOT_FOUND')) return null;
      throw err;
    }
  }

  async #keyState(arn: string): Promise<string | null> {
    const out = await this.#call(`aws kms describe ${arn}`, (o) => this.#client.send(new DescribeKeyCommand({ KeyId: arn }), o));
    return out.KeyMetadata?.KeyState ?? null;
  }

  /** The aliases of a key that sigil made (those under the alias prefix). */
  async #aliasesOf(arn: string): Promise<string[]> {
    const found: string[] = [];
    let marker: string | undefined;
    for (let page = 0; page < 100; page++) {
      const out = await this.#call(`aws kms list aliases of ${arn}`, (o) =>
        this.#client.send(new ListAliasesCommand({ KeyId: arn, ...(marker !== undefined ? { Marker: marker } : {}) }), o),
      );
      for (const a of out.Aliases ?? []) {
        if (a.AliasName?.startsWith(this.#config.aliasPrefix)) found.push(a.AliasName);
      }
      if (out.Truncated !== true || out.NextMarker === undefined) break;
      marker = out.NextMarker;
    }
    return found;
  }

  /**
   * CreateAlias for a key just made. When it fails, the new key has no alias and sigil would never find
   * it: if the alias demonstrably does not point at it, the key is scheduled for deletion (best effort;
   * when that fails too, an unaliased key carrying the `sigil:label` tag remains, named in a warning).
   */
  async #aliasNewKey(alias: string, arn: string, label: string): Promise<void> {
    try {
      await this.#call(`aws kms create alias ${alias}`, (o) => this.#client.send(new CreateAliasCommand({ AliasName: alias, TargetKeyId: arn }), o));
      return;
    } catch (err) {
      const target = await this.#resolveArn({ keyId: alias, region: this.#config.region, endpoint: null }).catch(() => undefined);
      // A lost answer to a CreateAlias that did happen: the alias is ours, nothing to undo.
      if (target === arn) return;
      if (target !== undefined) {
        await this.#call(`aws kms schedule deletion of ${arn}`, (o) =>
          this.#client.send(new ScheduleKeyDeletionCommand({ KeyId: arn, PendingWindowInDays: 7 }), o),
        ).then(
          () => this.#log.warn({ arn, label, alias }, 'aws kms alias not created; the new key was scheduled for deletion'),
          (e: unknown) => this.#log.warn({ arn, label, alias, err: e }, 'aws kms alias not created; the new key is left without an alias (tagged sigil:label)'),
        );
      } else {
        this.#log.warn({ arn, label, alias }, 'aws kms alias not created and its state unknown; the new key may be left without an alias (tagged sigil:label)');
      }
      if (awsErrorName((err as SigilError).cause) === 'AlreadyExistsException') {
        throw new SigilError('KEY_EXISTS', `aws kms label ${label} is taken: alias ${alias} already names another key`, { cause: err });
      }
      throw err;
    }
  }
}
