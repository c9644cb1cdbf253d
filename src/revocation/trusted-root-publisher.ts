import { createPublicKey } from 'node:crypto';
import { isSigilError } from '../errors.ts';
import type { KeyService } from '../keys/key-service.ts';
import type { Logger } from '../log.ts';
import { auditKeyVersions } from '../audit/audit-key.ts';
import { buildTrustedRoot, keyVersionsOf, serializeTrustedRoot, type IdentityCaGeneration } from './trusted-root.ts';

/** The trusted root as served: the exact JSON bytes, a detached signature over them and the root public key. */
export interface SignedTrustedRoot {
  json: Buffer;
  /** DER ECDSA P-256 / SHA-256 signature over `json`: `openssl dgst -sha256 -verify root.pub -signature sig json`. */
  signature: Buffer;
  /** The root key's public key, PEM (SubjectPublicKeyInfo). */
  publicKeyPem: string;
  /** The root key version that signed, `name@N`. */
  keyVersion: string;
}

/** What the publisher needs. */
export interface TrustedRootPublisherOptions {
  keys: KeyService;
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
}

/** The root key's default name. */
export const TRUST_ROOT_KEY = 'sigil/trust-root';

/**
 * Publishes the signed trusted root. The root key (ECDSA P-256, created on first start) signs each
 * distinct document once: the document is rebuilt from the key registry on every read and signed again
 * only when its bytes changed, so an open endpoint cannot make the backend sign at will.
 */
export class TrustedRootPublisher {
  readonly #o: TrustedRootPublisherOptions;
  readonly #rootKey: string;
  #last: Promise<SignedTrustedRoot> | null = null;
  #lastJson: Buffer | null = null;

  private constructor(o: TrustedRootPublisherOptions) {
    this.#o = o;
    this.#rootKey = o.rootKey ?? TRUST_ROOT_KEY;
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
    return new TrustedRootPublisher(o);
  }

  /** The current document and its signature. */
  async current(): Promise<SignedTrustedRoot> {
    const json = this.#document();
    if (this.#last !== null && this.#lastJson !== null && this.#lastJson.equals(json)) {
      const last = this.#last;
      const r = await last.catch(() => null);
      if (r !== null) return r;
    }
    const p = this.#sign(json);
    this.#last = p;
    this.#lastJson = json;
    return p;
  }

  #document(): Buffer {
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
    return serializeTrustedRoot(
      buildTrustedRoot({ identityCa: o.identityCa ? o.identityCa() : null, auditLog, keyVersions: keyVersionsOf(keys, [...o.reservedKeys, this.#rootKey]) }),
    );
  }

  async #sign(json: Buffer): Promise<SignedTrustedRoot> {
    const pub = this.#o.keys.publicKey(this.#rootKey);
    const sig = await this.#o.keys.sign(pub.keyVersion, { message: json });
    const publicKeyPem = createPublicKey({ key: pub.spki, format: 'der', type: 'spki' }).export({ format: 'pem', type: 'spki' }).toString();
    return { json, signature: sig.signature, publicKeyPem, keyVersion: sig.keyVersion };
  }
}
