import { createPublicKey } from 'node:crypto';
import { isSigilError, SigilError } from '../errors.ts';
import type { KeyService } from '../keys/key-service.ts';
import type { Logger } from '../log.ts';
import { auditKeyVersions } from '../audit/audit-key.ts';
import type { Clock } from '../clock.ts';
import type { Store } from '../store/store.ts';
import { keyVersionRef } from '../keys/names.ts';
import { serializeRootKeyChain, TRUST_ROOT_KEY, transitionStatement, type RootKeyChain } from './root-key-chain.ts';
import { buildTrustedRoot, keyVersionsOf, serializeTrustedRoot, sigstoreTrustedRoot, type IdentityCaGeneration, type TrustedRootInput } from './trusted-root.ts';

/** The trusted root as served: the exact JSON bytes, a detached signature over them and the root public key. */
export interface SignedTrustedRoot {
  json: Buffer;
  /** DER ECDSA P-256 / SHA-256 signature over `json`: `openssl dgst -sha256 -verify root.pub -signature sig json`. */
  signature: Buffer;
  /** The root key's public key, PEM (SubjectPublicKeyInfo). */
  publicKeyPem: string;
  /** The root key version that signed, `name@N`. */
  keyVersion: string;
  /** The same document without sigil's key versions (Sigstore's schema only), signed by the same version. */
  sigstore: { json: Buffer; signature: Buffer };
}

/** What the publisher needs. */
export interface TrustedRootPublisherOptions {
  keys: KeyService;
  /** Where the root key's transition statements are kept. */
  store: Store;
  clock: Clock;
  log: Logger;
  /** The identity CA's generations (certificate DER and window end), when the daemon has an identity CA. */
  identityCa: (() => Buffer | readonly IdentityCaGeneration[]) | null;
  /** The audit log's checkpoint key name and the URL verifiers reach the log at; left out when the key does not exist. */
  auditLog: { key: string; baseUrl: string | (() => string) } | null;
  /** sigil's own keys (identity CA, audit, trust root): never listed as signing keys. */
  reservedKeys: readonly string[];
  /** The root key's name; default `sigil/trust-root`. */
  rootKey?: string;
  /** The backend of a newly created root key; the key service's default when absent. */
  backend?: string;
  /** From a document's issue time to its expiry; default 7 days. A fresh document is signed when half of it is gone. */
  validityMs?: number;
}

/** How long a signed trusted root stays valid unless configured (`trustedRoot.validity`). */
export const DEFAULT_TRUSTED_ROOT_VALIDITY_MS = 7 * 24 * 3_600_000;

export { TRUST_ROOT_KEY };

/**
 * Publishes the signed trusted root, in two forms: with sigil's key versions and Sigstore's schema only.
 * The root key (ECDSA P-256, created on first start) signs each distinct document once with its primary
 * version: the document is rebuilt from the key registry on every read and signed again only when its
 * content or the primary version changed, or half of its validity (`sigilIssuedAt` to `sigilExpiresAt`) is
 * gone, so an open endpoint cannot make the backend sign at will; a timer (`start`) keeps it fresh without
 * reads. It also keeps the chain of root keys: one transition statement per version >= 2,
 * made when the key is rotated (or at the next start, if a crash came between).
 */
export class TrustedRootPublisher {
  readonly #o: TrustedRootPublisherOptions;
  readonly #rootKey: string;
  readonly #validity: number;
  /** The document signed last (or being signed): its bytes, times, root key version and signature. */
  #last: { json: Buffer; issuedAt: Date; expiresAt: Date; version: number; p: Promise<SignedTrustedRoot> } | null = null;
  #making: Promise<unknown> = Promise.resolve();
  #timer: NodeJS.Timeout | null = null;
  #refreshing: Promise<void> = Promise.resolve();

  private constructor(o: TrustedRootPublisherOptions) {
    this.#o = o;
    this.#rootKey = o.rootKey ?? TRUST_ROOT_KEY;
    this.#validity = o.validityMs ?? DEFAULT_TRUSTED_ROOT_VALIDITY_MS;
    if (!(this.#validity >= 60_000)) throw new SigilError('CONFIG_INVALID', 'the trusted root validity must be at least a minute');
  }

  /** Opens the publisher, creating the root key on the first start. */
  static async open(o: TrustedRootPublisherOptions): Promise<TrustedRootPublisher> {
    const name = o.rootKey ?? TRUST_ROOT_KEY;
    try {
      o.keys.getKey(name);
    } catch (err) {
      if (!isSigilError(err, 'KEY_NOT_FOUND')) throw err;
      await o.keys.createKey(name, 'ECDSA_P256_SHA256', o.backend);
      o.log.info({ key: `${name}@1` }, 'trusted root key created');
    }
    const p = new TrustedRootPublisher(o);
    // A rotation that a crash (or a failing backend) interrupted before its statement was made: make it now.
    await p.#makeStatements().catch((err: unknown) => o.log.error({ err, key: name }, 'a root key transition statement could not be made; the chain has a gap until it is'));
    return p;
  }

  /**
   * Called by the lifecycle right after the root key was rotated: makes the transition statement of every
   * version that lacks one (signed by the version before it and by itself), then signs the trusted root
   * with the new primary version.
   */
  async rotated(): Promise<{ keyVersion: string; statements: string[] }> {
    const statements = await this.#makeStatements();
    const r = await this.current();
    return { keyVersion: r.keyVersion, statements };
  }

  /**
   * The current document and its signature, always by the root key's primary version. The last one signed is
   * served while its content and signer are unchanged and less than half of its validity is gone; otherwise a
   * new one is issued now. Building the document and recording it as the last one is one synchronous step, so
   * a refresh and a read after a change cannot leave an older document in place of a newer one.
   */
  async current(): Promise<SignedTrustedRoot> {
    const input = this.#input();
    const now = this.#o.clock.now();
    const primary = this.#o.keys.getKey(this.#rootKey).primaryVersion;
    const last = this.#last;
    // A clock stepped back behind the last issue time also gets a new document (its issue time would be in the future).
    if (last !== null && last.version === primary && now.getTime() >= last.issuedAt.getTime() && now.getTime() < last.issuedAt.getTime() + this.#validity / 2) {
      if (serializeTrustedRoot(buildTrustedRoot({ ...input, issuedAt: last.issuedAt, expiresAt: last.expiresAt })).equals(last.json)) {
        const r = await last.p.catch(() => null);
        if (r !== null) return r;
        // Failed: sign again, unless another call already did meanwhile.
        if (this.#last !== last) return this.current();
      }
    }
    // Whole seconds: the times read as proto JSON Timestamps do.
    const issuedAt = new Date(Math.floor(now.getTime() / 1000) * 1000);
    const expiresAt = new Date(issuedAt.getTime() + this.#validity);
    const doc = buildTrustedRoot({ ...input, issuedAt, expiresAt });
    const json = serializeTrustedRoot(doc);
    const p = this.#sign(json, serializeTrustedRoot(sigstoreTrustedRoot(doc)), primary);
    this.#last = { json, issuedAt, expiresAt, version: primary, p };
    return p;
  }

  /** Keeps the document fresh without reads: checks every quarter of its validity (at most hourly) and signs anew when `current` would. */
  start(): void {
    if (this.#timer !== null) return;
    const tick = (): void => {
      this.#refreshing = this.current().then(
        () => undefined,
        (err: unknown) => this.#o.log.error({ err }, 'trusted root refresh failed'),
      );
      this.#timer = setTimeout(tick, Math.min(this.#validity / 4, 3_600_000));
      this.#timer.unref();
    };
    tick();
  }

  /** Stops the refresh timer and waits for a refresh under way (it signs with a backend about to close). */
  async stop(): Promise<void> {
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#timer = null;
    await this.#refreshing;
  }

  /**
   * The chain as served. A version disabled as compromised may have signed a false statement, so every
   * statement up to the one introducing the version after the newest compromised one is left out: the
   * chain served starts there, and verifiers pinned at or before a compromised version must re-pin.
   */
  chain(): RootKeyChain {
    const key = this.#o.keys.getKey(this.#rootKey);
    const compromised = key.versions
      .filter((v) => v.revokedAt !== null && v.state !== 'PENDING')
      .sort((a, b) => a.version - b.version)
      .map((v) => ({ version: v.version, spki: v.spki }));
    const cut = compromised.length ? compromised.at(-1)!.version + 1 : 0;
    const transitions = this.#o.store
      .listRootKeyTransitions(this.#rootKey)
      .filter((t) => t.version > cut)
      .map((t) => ({ version: t.version, statement: t.statement, previousSignature: t.previousSignature, signature: t.signature }));
    return { key: this.#rootKey, transitions, compromised };
  }

  /** Versions >= 2 of the root key (holding a key) that have no transition statement yet and will get one (their previous version is not compromised). */
  missingStatements(): number[] {
    const have = new Set(this.#o.store.listRootKeyTransitions(this.#rootKey).map((t) => t.version));
    const versions = this.#o.keys.getKey(this.#rootKey).versions;
    const compromised = new Set(versions.filter((v) => v.revokedAt !== null).map((v) => v.version));
    return versions.filter((v) => v.version >= 2 && v.state !== 'PENDING' && !have.has(v.version) && !compromised.has(v.version - 1)).map((v) => v.version);
  }

  /** The chain as JSON for `/trusted-root-keys.json` (bytes as base64). */
  chainJson(): Buffer {
    return serializeRootKeyChain(this.chain());
  }

  /** Makes the missing statement of every version >= 2 that holds a key, one pass at a time; returns the versions it made. */
  #makeStatements(): Promise<string[]> {
    const next = this.#making.then(() => this.#makeMissing());
    this.#making = next.catch(() => undefined);
    return next;
  }

  async #makeMissing(): Promise<string[]> {
    const o = this.#o;
    const key = o.keys.getKey(this.#rootKey);
    const have = new Set(o.store.listRootKeyTransitions(this.#rootKey).map((t) => t.version));
    const made = key.versions.filter((v) => v.state !== 'PENDING').sort((a, b) => a.version - b.version);
    const out: string[] = [];
    let failed: unknown = null;
    for (const v of made) {
      if (v.version < 2 || have.has(v.version)) continue;
      const ref = keyVersionRef(this.#rootKey, v.version);
      const prev = made.find((p) => p.version === v.version - 1);
      // A compromised previous version signs nothing again; its statement would not be served anyway (see chain()).
      if (prev?.revokedAt) {
        o.log.warn({ key: ref, previous: keyVersionRef(this.#rootKey, prev.version) }, 'no transition statement for a root key version whose previous version is compromised');
        continue;
      }
      try {
        if (!prev) throw new SigilError('FAILED_PRECONDITION', `${ref} has no previous version to sign its transition statement`);
        const statement = transitionStatement(this.#rootKey, v.version, v.spki, prev.spki, o.clock.now());
        // The previous version first: it is the key verifiers already trust that vouches for the new one.
        const previousSignature = (await o.keys.sign(keyVersionRef(this.#rootKey, prev.version), { message: statement })).signature;
        const signature = (await o.keys.sign(ref, { message: statement })).signature;
        o.store.insertRootKeyTransition({ key: this.#rootKey, version: v.version, statement, previousSignature, signature, createdAt: o.clock.now() });
        o.log.info({ key: ref, previous: keyVersionRef(this.#rootKey, prev.version) }, 'root key transition statement made');
        out.push(ref);
      } catch (err) {
        // One version that cannot be done does not hold up the others; the caller hears of it.
        o.log.error({ err, key: ref }, 'root key transition statement could not be made');
        failed ??= err;
      }
    }
    if (failed !== null) throw failed;
    return out;
  }

  #input(): Omit<TrustedRootInput, 'issuedAt' | 'expiresAt'> {
    const o = this.#o;
    let auditLog = null;
    if (o.auditLog) {
      try {
        const k = o.keys.getKey(o.auditLog.key);
        // Every version: a rotation of the audit key changes the document, so the next read signs it anew.
        const versions = auditKeyVersions(k);
        auditLog = { baseUrl: typeof o.auditLog.baseUrl === 'string' ? o.auditLog.baseUrl : o.auditLog.baseUrl(), algorithm: k.algorithm, versions };
      } catch (err) {
        if (!isSigilError(err, 'KEY_NOT_FOUND')) throw err;
      }
    }
    const keys = o.keys.listKeys('');
    return { identityCa: o.identityCa ? o.identityCa() : null, auditLog, keyVersions: keyVersionsOf(keys, [...o.reservedKeys, this.#rootKey]) };
  }

  async #sign(json: Buffer, sigstoreJson: Buffer, version: number): Promise<SignedTrustedRoot> {
    const pub = this.#o.keys.publicKey(keyVersionRef(this.#rootKey, version));
    const sig = await this.#o.keys.sign(pub.keyVersion, { message: json });
    const sigstoreSig = await this.#o.keys.sign(pub.keyVersion, { message: sigstoreJson });
    const publicKeyPem = createPublicKey({ key: pub.spki, format: 'der', type: 'spki' }).export({ format: 'pem', type: 'spki' }).toString();
    return { json, signature: sig.signature, publicKeyPem, keyVersion: sig.keyVersion, sigstore: { json: sigstoreJson, signature: sigstoreSig.signature } };
  }
}
