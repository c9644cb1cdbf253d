import {
  CreateAliasCommand,
  CreateKeyCommand,
  DeleteAliasCommand,
  DescribeKeyCommand,
  DisableKeyCommand,
  EnableKeyCommand,
  GetPublicKeyCommand,
  ListAliasesCommand,
  ListKeysCommand,
  ListResourceTagsCommand,
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
  type RecordedKey,
} from '../signer.ts';
import { checkedSigner } from '../signature-check.ts';
import { createKmsClient, readCredentialsFile } from './client.ts';
import type { AwsKmsConfig } from './config.ts';
import { awsErrorName, mapAwsError } from './errors.ts';
import { formatAwsKmsUri, keyIdKind, parseAwsKmsUri, type AwsKmsKeyRef } from './key-uri.ts';

/** The tag every key sigil creates carries, naming its sigil label (finds keys left without an alias). */
export const LABEL_TAG = 'sigil:label';

/**
 * The tag naming the full alias a key was made for, so that deployments with different alias prefixes in
 * one account never adopt each other's keys (keys made before this tag existed match on the label alone).
 */
export const ALIAS_TAG = 'sigil:alias';

// A search reads the tags of each key once per this period: a retry after a deadline, and the recovery
// pass asking for several labels, then cost one ListKeys page per 1000 keys instead of a call per key.
const TAG_CACHE_TTL_MS = 5 * 60_000;
// ListResourceTags calls in flight during a search: a few, to stay well under AWS's request quotas.
const TAG_READS_IN_FLIGHT = 4;

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

/** The sigil tags of a key as read by an orphan search, or `unreadable` when AWS refused to show them. */
type SigilTags = { label: string | undefined; alias: string | undefined; at: number } | 'unreadable';

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
  return new AwsKmsBackend(config, client, ctx.log, ctx.onSignatureMismatch);
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
  /** Sigil tags of keys seen by orphan searches, by key ARN. */
  readonly #tags = new Map<string, Exclude<SigilTags, 'unreadable'>>();
  /** Orphan searches under way, by alias: a retry joins the search in flight instead of starting another. */
  readonly #searches = new Map<string, Promise<string | null>>();
  readonly #onSignatureMismatch: (() => void) | undefined;

  /** Use `open`; the constructor takes a client already configured. */
  constructor(config: AwsKmsConfig, client: KMSClient, log: Logger, onSignatureMismatch?: () => void) {
    this.#config = config;
    this.#client = client;
    this.#log = log;
    this.#onSignatureMismatch = onSignatureMismatch;
  }

  async getKey(uri: string): Promise<BackendKey> {
    const k = await this.#lookup(this.#ref(uri));
    return { uri: k.uri, spki: k.spki, keyType: k.keyType };
  }

  async signer(uri: string, algorithm: Algorithm, recorded?: RecordedKey): Promise<KeySigner> {
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
    // KMS signs by key id: a signature that does not verify under the key version's recorded public key (a key
    // id that reaches another key, a service fault) never leaves the backend. Without a recorded one, the public
    // key GetPublicKey gave for this ARN serves.
    const signer: KeySigner = {
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
    return checkedSigner(signer, recorded?.spki ?? k.spki, { uri: k.uri, kind: 'aws kms', log: this.#log, onMismatch: this.#onSignatureMismatch });
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
          Tags: [
            { TagKey: LABEL_TAG, TagValue: spec.label },
            { TagKey: ALIAS_TAG, TagValue: alias },
          ],
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

  /**
   * The key behind the label's alias; without one, a key an interrupted `createKey` left tagged with the
   * label but unaliased is adopted (its alias created; older duplicates scheduled for deletion). Null only
   * when the search completed (up to `orphanSearchLimit` keys) and found none; a failed search throws.
   */
  async findKeyByLabel(label: string): Promise<string | null> {
    const alias = this.#alias(label);
    const arn = await this.#resolveArn({ keyId: alias, region: this.#config.region, endpoint: null });
    if (arn !== null) return this.#uriOf(arn);
    let search = this.#searches.get(alias);
    if (search === undefined) {
      search = this.#adoptOrphan(label, alias).finally(() => this.#searches.delete(alias));
      this.#searches.set(alias, search);
    }
    return search;
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
    } catch (err) {
      if (isSigilError(err, 'KEY_NOT_FOUND')) return;
      throw err;
    }
    await this.#scheduleDeletion(arn);
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

  /** The aliases of a key that sigil made (those under the alias prefix), or all its aliases. */
  async #aliasesOf(arn: string, all = false): Promise<string[]> {
    const found: string[] = [];
    let marker: string | undefined;
    for (let page = 0; page < 100; page++) {
      const out = await this.#call(`aws kms list aliases of ${arn}`, (o) =>
        this.#client.send(new ListAliasesCommand({ KeyId: arn, ...(marker !== undefined ? { Marker: marker } : {}) }), o),
      );
      for (const a of out.Aliases ?? []) {
        if (a.AliasName !== undefined && (all || a.AliasName.startsWith(this.#config.aliasPrefix))) found.push(a.AliasName);
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
        // A key that never signed anything and no version names: the shortest window AWS allows, not pendingWindowDays.
        await this.#call(`aws kms schedule deletion of ${arn}`, (o) =>
          this.#client.send(new ScheduleKeyDeletionCommand({ KeyId: arn, PendingWindowInDays: 7 }), o),
        ).then(
          () => this.#log.warn({ arn, label, alias }, 'aws kms alias not created; the new key was scheduled for deletion'),
          (e: unknown) => this.#log.warn({ arn, label, alias, err: e }, 'aws kms alias not created; the new key is left without an alias (tagged sigil:label, findKeyByLabel adopts it)'),
        );
      } else {
        this.#log.warn({ arn, label, alias }, 'aws kms alias not created and its state unknown; the new key may be left without an alias (tagged sigil:label, findKeyByLabel adopts it)');
      }
      if (awsErrorName((err as SigilError).cause) === 'AlreadyExistsException') {
        throw new SigilError('KEY_EXISTS', `aws kms label ${label} is taken: alias ${alias} already names another key`, { cause: err });
      }
      throw err;
    }
  }

  /**
   * Completes a create that a crash cut between CreateKey and CreateAlias: finds the unaliased keys tagged
   * with the label, keeps the newest, schedules the others for deletion, then creates the alias.
   */
  async #adoptOrphan(label: string, alias: string): Promise<string | null> {
    const found = await this.#orphansOf(label, alias);
    if (found.length === 0) {
      // A search that started just after another one made the alias sees no unaliased key: ask the alias again.
      const arn = await this.#resolveArn({ keyId: alias, region: this.#config.region, endpoint: null });
      return arn === null ? null : this.#uriOf(arn);
    }
    // Newest first; the key ARN breaks ties so that every search (and a retry) keeps the same key.
    found.sort((a, b) => b.created - a.created || (a.arn < b.arn ? -1 : a.arn > b.arn ? 1 : 0));
    const [keep, ...extra] = found as [{ arn: string; created: number }, ...Array<{ arn: string; created: number }>];
    // The duplicates go before the alias is made: if this fails or sigild dies here, the next search still
    // sees no alias, finds the same newest key and carries on.
    for (const k of extra) {
      await this.#scheduleDeletion(k.arn);
      this.#log.warn(
        { label, arn: k.arn, kept: keep.arn, pendingWindowDays: this.#config.pendingWindowDays },
        'aws kms duplicate key of an interrupted create scheduled for deletion',
      );
    }
    try {
      await this.#call(`aws kms create alias ${alias}`, (o) => this.#client.send(new CreateAliasCommand({ AliasName: alias, TargetKeyId: keep.arn }), o));
    } catch (err) {
      if (!isSigilError(err, 'KEY_EXISTS')) throw err;
      // Someone made the alias meanwhile (a concurrent create or search): the alias is the answer.
      const target = await this.#resolveArn({ keyId: alias, region: this.#config.region, endpoint: null });
      if (target === null) throw new SigilError('BACKEND_UNAVAILABLE', `aws kms alias ${alias} changed while sigil adopted a key for it`, { cause: err });
      return this.#uriOf(target);
    }
    this.#log.warn({ label, alias, arn: keep.arn, duplicates: extra.length }, 'aws kms key of an interrupted create adopted: alias created');
    return this.#uriOf(keep.arn);
  }

  /**
   * Keys tagged `sigil:label=<label>` (and, when they carry it, `sigil:alias=<alias>`) that are not pending
   * deletion and have no alias at all, with their creation time. Lists at most `orphanSearchLimit` keys.
   */
  async #orphansOf(label: string, alias: string): Promise<Array<{ arn: string; created: number }>> {
    const limit = this.#config.orphanSearchLimit;
    const matches: string[] = [];
    let listed = 0;
    let unreadable = 0;
    let cut = false;
    let marker: string | undefined;
    for (let pages = 1; ; pages++) {
      const out = await this.#call('aws kms list keys', (o) =>
        this.#client.send(new ListKeysCommand({ Limit: Math.min(1000, limit - listed), ...(marker !== undefined ? { Marker: marker } : {}) }), o),
      );
      const page = (out.Keys ?? []).slice(0, limit - listed);
      listed += page.length;
      await eachLimited(page, TAG_READS_IN_FLIGHT, async (entry) => {
        const arn = entry.KeyArn;
        if (arn === undefined || keyIdKind(arn) !== 'arn') return;
        const tags = await this.#sigilTags(arn);
        if (tags === 'unreadable') unreadable++;
        else if (tags.label === label && (tags.alias === undefined || tags.alias === alias)) matches.push(arn);
      });
      if (out.Truncated !== true || out.NextMarker === undefined) break;
      // A service that keeps answering empty pages must not keep the search going either.
      if (listed >= limit || pages >= limit) {
        cut = true;
        break;
      }
      marker = out.NextMarker;
    }
    if (cut) {
      this.#log.warn({ label, orphanSearchLimit: limit }, 'aws kms orphan search stopped at orphanSearchLimit keys; a key left unaliased beyond them is not found');
    }
    if (unreadable > 0) this.#log.warn({ label, keys: unreadable }, 'aws kms orphan search skipped keys whose tags it may not read (access denied)');
    const found: Array<{ arn: string; created: number }> = [];
    for (const arn of matches) {
      let state: string | undefined;
      let created: number;
      try {
        const out = await this.#call(`aws kms describe ${arn}`, (o) => this.#client.send(new DescribeKeyCommand({ KeyId: arn }), o));
        state = out.KeyMetadata?.KeyState;
        created = out.KeyMetadata?.CreationDate?.getTime() ?? Number.NaN;
      } catch (err) {
        if (isSigilError(err, 'KEY_NOT_FOUND')) continue;
        throw err;
      }
      if (state === 'PendingDeletion' || state === 'PendingReplicaDeletion') continue;
      if (!Number.isFinite(created)) throw new SigilError('BACKEND_ERROR', `aws kms describe ${arn}: answer lacks the creation date`);
      // A key with any alias is in use (re-aliased by hand, or another deployment's): never adopt or delete it.
      if ((await this.#aliasesOf(arn, true)).length > 0) continue;
      found.push({ arn, created });
    }
    return found;
  }

  /** The sigil tags of a key (cached for a while), or `unreadable` when access to them is denied. */
  async #sigilTags(arn: string): Promise<SigilTags> {
    const hit = this.#tags.get(arn);
    if (hit !== undefined && Date.now() - hit.at < TAG_CACHE_TTL_MS) return hit;
    let label: string | undefined;
    let alias: string | undefined;
    let marker: string | undefined;
    try {
      // AWS allows 50 tags per key, so one page in practice; the bound only guards against a looping marker.
      for (let page = 0; page < 10; page++) {
        const out = await this.#call(`aws kms list tags of ${arn}`, (o) =>
          this.#client.send(new ListResourceTagsCommand({ KeyId: arn, Limit: 50, ...(marker !== undefined ? { Marker: marker } : {}) }), o),
        );
        for (const t of out.Tags ?? []) {
          if (t.TagKey === LABEL_TAG) label = t.TagValue;
          else if (t.TagKey === ALIAS_TAG) alias = t.TagValue;
        }
        if (out.Truncated !== true || out.NextMarker === undefined) break;
        marker = out.NextMarker;
      }
    } catch (err) {
      // Gone since ListKeys: nothing to adopt. Tags hidden by the iam policy: not a key sigil made with these credentials.
      if (isSigilError(err, 'KEY_NOT_FOUND')) return { label: undefined, alias: undefined, at: Date.now() };
      if (awsErrorName((err as SigilError).cause) === 'AccessDeniedException') return 'unreadable';
      throw err;
    }
    if (this.#tags.size >= 4 * this.#config.orphanSearchLimit) this.#tags.clear();
    const tags = { label, alias, at: Date.now() };
    this.#tags.set(arn, tags);
    return tags;
  }

  /** ScheduleKeyDeletion with the configured window; a key already pending deletion or gone counts as done. */
  async #scheduleDeletion(arn: string): Promise<void> {
    try {
      await this.#call(`aws kms schedule deletion of ${arn}`, (o) =>
        this.#client.send(new ScheduleKeyDeletionCommand({ KeyId: arn, PendingWindowInDays: this.#config.pendingWindowDays }), o),
      );
    } catch (err) {
      if (isSigilError(err, 'KEY_NOT_FOUND')) return;
      if (isSigilError(err, 'FAILED_PRECONDITION') && (await this.#keyState(arn)) === 'PendingDeletion') return;
      throw err;
    }
  }
}

/** Runs `fn` on every item with at most `n` in flight; after a failure no further item starts. */
async function eachLimited<T>(items: readonly T[], n: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  let failed = false;
  const worker = async (): Promise<void> => {
    while (!failed && next < items.length) {
      const item = items[next++]!;
      try {
        await fn(item);
      } catch (err) {
        failed = true;
        throw err;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(n, items.length) }, worker));
}
