import { createHash, createPublicKey, randomBytes, X509Certificate, type KeyObject } from 'node:crypto';
import { AsnConvert, OctetString } from '@peculiar/asn1-schema';
import {
  AlgorithmIdentifier,
  AttributeTypeAndValue,
  AttributeValue,
  AuthorityKeyIdentifier,
  BasicConstraints,
  Certificate,
  ExtendedKeyUsage,
  Extension,
  Extensions,
  GeneralName,
  KeyIdentifier,
  KeyUsage,
  KeyUsageFlags,
  Name,
  RelativeDistinguishedName,
  SubjectAlternativeName,
  SubjectKeyIdentifier,
  SubjectPublicKeyInfo,
  TBSCertificate,
  Validity,
  Version,
  id_ce_authorityKeyIdentifier,
  id_ce_basicConstraints,
  id_ce_extKeyUsage,
  id_ce_keyUsage,
  id_ce_subjectAltName,
  id_ce_subjectKeyIdentifier,
  id_kp_clientAuth,
} from '@peculiar/asn1-x509';
import { SigilError, isSigilError } from '../errors.ts';
import type { Clock } from '../clock.ts';
import type { Logger } from '../log.ts';
import type { KeyService } from '../keys/key-service.ts';
import type { KeyRecord, Store } from '../store/store.ts';
import { ALGORITHM_INFO, type Algorithm } from '../signers/signer.ts';
import { TAG, tlv } from './der.ts';
import { checkAttestation, encodeBuilderExtensions, type BuilderAttestation } from './builder-extensions.ts';
import type { AuditSink } from '../audit/audit-sink.ts';
import { keyVersionRef } from '../keys/names.ts';
import { Serial } from '../serial.ts';
import { generationWindows, isLive, refusal, type GenerationInput, type GenerationWindow } from './ca-generations.ts';

/** The algorithms the identity CA can sign certificates with. */
export type CaAlgorithm = 'ECDSA_P256_SHA256' | 'ECDSA_P384_SHA384' | 'RSA_PKCS1_SHA256' | 'ED25519';

// RFC 5758 3.2 (ECDSA), RFC 4055 5 (RSA PKCS#1 v1.5, NULL parameters), RFC 8410 3 (Ed25519).
const SIGNATURE_ALGORITHM: Readonly<Record<CaAlgorithm, { oid: string; nullParams: boolean }>> = {
  ECDSA_P256_SHA256: { oid: '1.2.840.10045.4.3.2', nullParams: false },
  ECDSA_P384_SHA384: { oid: '1.2.840.10045.4.3.3', nullParams: false },
  RSA_PKCS1_SHA256: { oid: '1.2.840.113549.1.1.11', nullParams: true },
  ED25519: { oid: '1.3.101.112', nullParams: false },
};

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
/** The hard cap of a builder certificate's lifetime, whatever the config says. */
export const MAX_BUILDER_LIFETIME_MS = 24 * HOUR;
const DEFAULT_LIFETIME_MS = 15 * MINUTE;
const CA_VALIDITY_MS = 3650 * 24 * HOUR;
/** Clock skew allowance: certificates start this long before they are issued. */
const SKEW_MS = MINUTE;
const CA_SUBJECT = 'sigil identity CA';
const OID_CN = '2.5.4.3';

/** What the identity CA needs: the key service it signs through, the store for its certificates, and settings. */
export interface IdentityCaOptions {
  keys: KeyService;
  store: Pick<Store, 'insertCaCertificate' | 'latestCaCertificate' | 'listCaCertificates' | 'insertIssuedCertificate'>;
  clock: Clock;
  log: Logger;
  /** Where issuances are recorded; `log` when absent. */
  audit?: Logger;
  /** The audit log: every issued certificate (`identity.issue`), the CA key's creation and every CA certificate (`identity.ca.create`). */
  sink?: AuditSink;
  /** The SPIFFE trust domain of builder ids, e.g. `sigil.example`. */
  trustDomain: string;
  /** The CA key's name; default `sigil/identity-ca`. */
  caKey?: string;
  /** The algorithm of a newly created CA key; default ECDSA_P256_SHA256. */
  algorithm?: CaAlgorithm;
  /** The backend for a newly created CA key; the key service's default when absent. */
  backend?: string;
  /** Default builder certificate lifetime; default 15 minutes. */
  lifetimeMs?: number;
  /** Longest builder certificate lifetime; default and hard cap 24 hours. */
  maxLifetimeMs?: number;
}

/** What an attestation hands the CA to certify: the builder's ephemeral public key and what the TPM proved. */
export interface IssueRequest extends BuilderAttestation {
  /** DER SubjectPublicKeyInfo of the builder's ephemeral key. */
  spki: Buffer;
  /** Wanted lifetime; capped at the configured maximum. */
  lifetimeMs?: number;
}

/** An issued builder certificate. */
export interface IssuedCertificate {
  certificateDer: Buffer;
  certificatePem: string;
  notBefore: Date;
  notAfter: Date;
  /** The serial number, lower-case hex of the 128-bit value (32 digits, leading zeros kept). */
  serial: string;
  /** The builder's SPIFFE id (the certificate's URI SAN). */
  san: string;
  /** The generation (CA key version) that issued it. */
  caVersion: number;
  /** The certificate of the generation that issued it, PEM. */
  caCertificatePem: string;
}

/** One generation of the identity CA: a version of its key with the self-signed CA certificate made for it. */
export interface CaGeneration {
  version: number;
  /** `name@N`. */
  keyVersion: string;
  /** The generation's latest CA certificate, DER. */
  der: Buffer;
  certificate: X509Certificate;
  /** The CA certificate's subject, DER: the issuer name of what this generation signs. */
  subjectDer: Buffer;
  /** RFC 7093 method 1 key identifier of its key. */
  keyId: Buffer;
  publicKey: KeyObject;
  notAfter: Date;
}

/** A generation as the CRL needs it: its version, name, key identifier and signature. */
export interface GenerationCrlIssuer {
  version: number;
  subjectDer(): Buffer;
  keyIdentifier(): Buffer;
  signatureAlgorithmDer(): Buffer;
  signTbs(tbsDer: Buffer): Promise<Buffer>;
}

/** A generation's CA certificate with the end of its window, for the trusted root. */
export interface CaTrustEntry {
  der: Buffer;
  /** Null while the generation is current and enabled. */
  end: Date | null;
}

/** The subject common name of generation `version`: version 1 keeps the name deployments already trust. */
export function caSubject(version: number): string {
  return version === 1 ? CA_SUBJECT : `${CA_SUBJECT} ${version}`;
}

/**
 * The identity CA: issues short-lived X.509 builder certificates. Its key is an ordinary sigil key
 * (created through the key service on first start) and every certificate is signed through
 * `KeyService.sign`, so the CA key never exists in this process. Each version of the key is a generation
 * with its own self-signed CA certificate (subject `sigil identity CA`, then `sigil identity CA N`): the
 * primary version's generation issues; an older one stays trusted (TLS, builder role, its CRL) until no
 * certificate it issued can still be valid, unless its key version is disabled.
 */
export class IdentityCa {
  readonly #keys: KeyService;
  readonly #store: IdentityCaOptions['store'];
  readonly #clock: Clock;
  readonly #log: Logger;
  readonly #audit: Logger;
  readonly #sink: AuditSink | null;
  readonly #trustDomain: string;
  readonly #name: string;
  readonly #algorithm: CaAlgorithm;
  readonly #lifetime: number;
  readonly #maxLifetime: number;
  readonly #serial = new Serial();
  readonly #listeners = new Set<() => void>();
  #generations = new Map<number, CaGeneration>();
  #windows: GenerationWindow[] = [];
  #current!: CaGeneration;
  #timer: NodeJS.Timeout | null = null;
  /** Set when making the new generation's certificate after a rotation failed: the next issuance tries again. */
  #behind = false;

  private constructor(o: IdentityCaOptions, name: string, algorithm: CaAlgorithm, lifetime: number, maxLifetime: number) {
    this.#keys = o.keys;
    this.#store = o.store;
    this.#clock = o.clock;
    this.#log = o.log;
    this.#audit = o.audit ?? o.log;
    this.#sink = o.sink ?? null;
    this.#trustDomain = o.trustDomain;
    this.#name = name;
    this.#algorithm = algorithm;
    this.#lifetime = lifetime;
    this.#maxLifetime = maxLifetime;
  }

  /**
   * Opens the identity CA: creates its key and a self-signed CA certificate on first start and stores
   * the certificate; later starts load every generation. The primary version gets its certificate here
   * when it has none (a crash came between a rotation and its certificate), and a new one for the same
   * key once the stored one would expire within the longest builder lifetime.
   */
  static async open(o: IdentityCaOptions): Promise<IdentityCa> {
    const maxLifetime = o.maxLifetimeMs ?? MAX_BUILDER_LIFETIME_MS;
    const lifetime = o.lifetimeMs ?? DEFAULT_LIFETIME_MS;
    if (!(maxLifetime >= 1000 && maxLifetime <= MAX_BUILDER_LIFETIME_MS)) throw new SigilError('CONFIG_INVALID', 'identity.maxLifetime must be between 1s and 24h');
    if (!(lifetime >= 1000 && lifetime <= maxLifetime)) throw new SigilError('CONFIG_INVALID', 'identity.lifetime must be between 1s and identity.maxLifetime');
    const name = o.caKey ?? 'sigil/identity-ca';
    let key: KeyRecord;
    try {
      key = o.keys.getKey(name);
    } catch (err) {
      if (!isSigilError(err, 'KEY_NOT_FOUND')) throw err;
      key = await o.keys.createKey(name, o.algorithm ?? 'ECDSA_P256_SHA256', o.backend);
      (o.audit ?? o.log).info({ key: `${name}@1`, algorithm: key.algorithm, backend: key.backend }, 'identity ca key created');
      await o.sink?.record({ who: 'sigild', act: 'key.create', key: `${name}@1`, result: 'ok', detail: { algorithm: key.algorithm, backend: key.backend, purpose: 'identity ca' } });
    }
    if (!(key.algorithm in SIGNATURE_ALGORITHM)) {
      throw new SigilError('FAILED_PRECONDITION', `the identity ca key ${name} is ${key.algorithm}, which the identity ca cannot sign certificates with`);
    }
    const ca = new IdentityCa(o, name, key.algorithm as CaAlgorithm, lifetime, maxLifetime);
    await ca.#ensurePrimary(key);
    ca.#rebuild(key);
    return ca;
  }

  /**
   * The rotation hook: after the lifecycle made a new primary version of the CA key, makes its CA
   * certificate (recorded as `identity.ca.create`) and issues every later certificate with it. Idempotent:
   * a primary version that already has its certificate changes nothing.
   */
  rotated(): Promise<CaGeneration> {
    return this.#serial.run(async () => {
      try {
        const key = this.#keys.getKey(this.#name);
        await this.#ensurePrimary(key);
        this.#rebuild(key);
        this.#behind = false;
      } catch (err) {
        this.#behind = true;
        throw err;
      }
      this.#notify();
      return this.#current;
    });
  }

  /** The lifecycle hook for any other act on the CA key (disable, enable, destruction): reloads the generations' states. */
  refresh(): void {
    this.#rebuild(this.#keys.getKey(this.#name));
    this.#notify();
  }

  /** Calls `fn` whenever the set of live generations may have changed; returns how to stop. */
  onChange(fn: () => void): () => void {
    this.#listeners.add(fn);
    return () => this.#listeners.delete(fn);
  }

  /** Stops the timer that ends generation windows. */
  close(): void {
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#timer = null;
    this.#listeners.clear();
  }

  /** The key version that signs builder certificates now, `name@N`. */
  get keyVersion(): string {
    return this.#current.keyVersion;
  }

  /** The version of the CA key that issues now. */
  get currentVersion(): number {
    return this.#current.version;
  }

  /** The CA key's name, which no RPC may sign with. */
  get keyName(): string {
    return this.#name;
  }

  /** The longest builder certificate lifetime: how long an older generation stays trusted after a rotation. */
  get maxLifetimeMs(): number {
    return this.#maxLifetime;
  }

  /** The SPIFFE trust domain of the builder ids this CA issues. */
  get trustDomain(): string {
    return this.#trustDomain;
  }

  /** Every generation, oldest first, live or not. */
  generations(): CaGeneration[] {
    return [...this.#generations.values()].sort((a, b) => a.version - b.version);
  }

  /** The generation of key version `version`, or undefined. */
  generation(version: number): CaGeneration | undefined {
    return this.#generations.get(version);
  }

  /** Every generation's window, oldest first. */
  windows(): GenerationWindow[] {
    return this.#windows.map((w) => ({ ...w }));
  }

  /** True while certificates of generation `version` are trusted. */
  isLive(version: number): boolean {
    const w = this.#windows.find((x) => x.version === version);
    return w !== undefined && isLive(w, this.#clock.now());
  }

  /** Why certificates of generation `version` are refused now, or null while it is live: checked on every builder call. */
  refusal(version: number): string | null {
    const w = this.#windows.find((x) => x.version === version);
    if (w === undefined) return 'builder certificate issued by an unknown identity ca generation';
    return refusal(w, this.#clock.now());
  }

  /** The versions of the generations live now, oldest first. */
  liveVersions(): number[] {
    const now = this.#clock.now();
    return this.#windows.filter((w) => isLive(w, now)).map((w) => w.version);
  }

  /** The CA certificates of the live generations, PEM, oldest first: what TLS trusts for client certificates. */
  livePem(): string {
    return this.liveVersions()
      .map((v) => toPem(this.#generations.get(v)!.der))
      .join('');
  }

  /** Each generation's CA certificate with the end of its window (the trusted root lists them). */
  trustEntries(): CaTrustEntry[] {
    return this.#windows.map((w) => ({ der: Buffer.from(this.#generations.get(w.version)!.der), end: w.closedAt }));
  }

  /**
   * The generation that signs a CRL: `version` (default the current one). KEY_NOT_FOUND for a version that
   * is no generation; FAILED_PRECONDITION for one no longer live, whose CRL is not served.
   */
  crlIssuer(version?: number): GenerationCrlIssuer {
    const g = version === undefined ? this.#current : this.#generations.get(version);
    if (g === undefined) throw new SigilError('KEY_NOT_FOUND', `the identity ca has no generation ${version}: its generations are ${[...this.#generations.keys()].join(', ')}`);
    if (!this.isLive(g.version)) throw new SigilError('FAILED_PRECONDITION', `identity ca generation ${g.version} is no longer trusted (disabled or past its window): its crl is not served`);
    return {
      version: g.version,
      subjectDer: () => Buffer.from(g.subjectDer),
      keyIdentifier: () => Buffer.from(g.keyId),
      signatureAlgorithmDer: () => this.signatureAlgorithmDer(),
      signTbs: (tbs) => this.#signTbs(g.keyVersion, tbs),
    };
  }

  /** The current CA certificate, DER. */
  caCertificateDer(): Buffer {
    return Buffer.from(this.#current.der);
  }

  /** The current CA certificate's subject, DER: the issuer of every certificate and CRL it signs. */
  subjectDer(): Buffer {
    return Buffer.from(this.#current.subjectDer);
  }

  /** The current CA key's identifier (RFC 7093 method 1), for authority key identifier extensions. */
  keyIdentifier(): Buffer {
    return Buffer.from(this.#current.keyId);
  }

  /** The current CA certificate's notBefore and notAfter. */
  validity(): { notBefore: Date; notAfter: Date } {
    const v = AsnConvert.parse(this.#current.der, Certificate).tbsCertificate.validity;
    return { notBefore: v.notBefore.getTime(), notAfter: v.notAfter.getTime() };
  }

  /** The DER AlgorithmIdentifier of the CA key's signatures (RFC 5758, 4055, 8410); every generation has the key's algorithm. */
  signatureAlgorithmDer(): Buffer {
    const sa = SIGNATURE_ALGORITHM[this.#algorithm];
    return Buffer.from(AsnConvert.serialize(new AlgorithmIdentifier(sa.nullParams ? { algorithm: sa.oid, parameters: null } : { algorithm: sa.oid })));
  }

  /**
   * Signs a DER to-be-signed structure (a TBSCertList, RFC 5280 5.1) with the current CA key version
   * through the key service; returns the signature value as it goes into the BIT STRING.
   */
  signTbs(tbsDer: Buffer): Promise<Buffer> {
    return this.#signTbs(this.#current.keyVersion, tbsDer);
  }

  /** The current CA's public key, to check what `signTbs` produced. */
  publicKey(): KeyObject {
    return this.#current.publicKey;
  }

  /** The current CA certificate, PEM. */
  caCertificatePem(): string {
    return toPem(this.#current.der);
  }

  /**
   * Issues a builder certificate for an attested builder's ephemeral key with the current generation.
   * INVALID_ARGUMENT for a bad key or attestation field; the lifetime is capped at the configured maximum
   * and the CA certificate's own end.
   */
  async issue(req: IssueRequest): Promise<IssuedCertificate> {
    const att = checkAttestation(req);
    const spki = builderSpki(req.spki);
    const wanted = req.lifetimeMs ?? this.#lifetime;
    if (!Number.isSafeInteger(wanted) || wanted < 1000) throw new SigilError('INVALID_ARGUMENT', 'lifetime must be at least 1 second');
    if (this.#behind) {
      // A rotation whose certificate could not be made: try again; the older generation issues meanwhile.
      await this.rotated().catch((err: unknown) => this.#log.warn({ err, key: this.#name }, 'the new identity ca generation still has no certificate'));
    }
    // The generation is fixed here: a rotation during the signature does not mix two generations.
    const g = this.#current;
    const now = this.#clock.now().getTime();
    const notBefore = new Date(now - SKEW_MS);
    const notAfter = new Date(Math.min(now + Math.min(wanted, this.#maxLifetime), g.notAfter.getTime()));
    const san = `spiffe://${this.#trustDomain}/builder/tpm/${att.ekHash}`;
    const extensions = [
      ext(id_ce_basicConstraints, true, AsnConvert.serialize(new BasicConstraints({ cA: false }))),
      ext(id_ce_keyUsage, true, AsnConvert.serialize(new KeyUsage(KeyUsageFlags.digitalSignature))),
      ext(id_ce_extKeyUsage, false, AsnConvert.serialize(new ExtendedKeyUsage([id_kp_clientAuth]))),
      ext(id_ce_subjectKeyIdentifier, false, AsnConvert.serialize(new SubjectKeyIdentifier(keyIdentifier(spki)))),
      ext(id_ce_authorityKeyIdentifier, false, AsnConvert.serialize(new AuthorityKeyIdentifier({ keyIdentifier: new KeyIdentifier(g.keyId) }))),
      ext(id_ce_subjectAltName, false, AsnConvert.serialize(new SubjectAlternativeName([new GeneralName({ uniformResourceIdentifier: san })]))),
      ...encodeBuilderExtensions(att).map((e) => ext(e.oid, false, e.value)),
    ];
    const serial = randomSerial();
    this.#sink?.ready();
    const der = await signCertificate(this.#keys, g.keyVersion, this.#algorithm, {
      serial: serial.content,
      issuer: AsnConvert.parse(g.subjectDer, Name),
      subject: commonName(`builder ${att.ekHash.slice(0, 16)}`),
      notBefore,
      notAfter,
      spki,
      extensions,
    });
    // Check what the backend signed before handing it out: a wrong signature would fail far from here.
    if (!new X509Certificate(der).verify(g.publicKey)) throw new SigilError('BACKEND_ERROR', 'the identity ca key made a signature that does not verify');
    // Recorded before it leaves, so an admin can revoke it by serial and the CRL of its generation knows its notAfter.
    this.#store.insertIssuedCertificate({ serial: BigInt(`0x${serial.hex}`).toString(16), ekHash: att.ekHash, san, notAfter: truncateMs(notAfter), issuedAt: this.#clock.now(), caVersion: g.version });
    this.#audit.info({ serial: serial.hex, san, policy: att.policy, ekHash: att.ekHash, claims: att.claims, notAfter: truncateMs(notAfter), ca: g.keyVersion }, 'builder certificate issued');
    // The certificate leaves only once its issuance is durable in the audit log.
    await this.#sink?.record({
      who: 'sigild',
      act: 'identity.issue',
      key: g.keyVersion,
      result: 'ok',
      detail: { serial: serial.hex, san, policy: att.policy, ekHash: att.ekHash, claims: att.claims, notAfter: truncateMs(notAfter).toISOString() },
    });
    return {
      certificateDer: der,
      certificatePem: toPem(der),
      notBefore: truncateMs(notBefore),
      notAfter: truncateMs(notAfter),
      serial: serial.hex,
      san,
      caVersion: g.version,
      caCertificatePem: toPem(g.der),
    };
  }

  async #signTbs(keyVersion: string, tbsDer: Buffer): Promise<Buffer> {
    const hash = ALGORITHM_INFO[this.#algorithm as Algorithm].hash;
    const input = hash === null ? { message: tbsDer } : { digest: createHash(hash).update(tbsDer).digest() };
    return (await this.#keys.sign(keyVersion, input)).signature;
  }

  /** Makes (and stores, and records) the primary version's CA certificate when it has none or its end is near. */
  async #ensurePrimary(key: KeyRecord): Promise<void> {
    const keyVersion = keyVersionRef(this.#name, key.primaryVersion);
    const spki = key.versions.find((v) => v.version === key.primaryVersion)!.spki;
    const now = this.#clock.now();
    const stored = this.#store.latestCaCertificate(keyVersion);
    if (stored) {
      const x = new X509Certificate(stored.der);
      if (!x.publicKey.export({ format: 'der', type: 'spki' }).equals(spki)) {
        throw new SigilError('FAILED_PRECONDITION', `the stored identity ca certificate does not match the key ${keyVersion}`);
      }
      if (stored.notAfter.getTime() > now.getTime() + this.#maxLifetime) return;
      this.#log.warn({ key: keyVersion, notAfter: stored.notAfter }, 'identity ca certificate near its end: making a new one for the same key');
    }
    const der = await selfSign(this.#keys, keyVersion, this.#algorithm, spki, now, caSubject(key.primaryVersion));
    const notAfter = truncateMs(new Date(now.getTime() + CA_VALIDITY_MS));
    const fingerprint = createHash('sha256').update(der).digest('hex');
    // Durable in the audit log before it is stored, so no certificate of sigil's CA is ever in use without its
    // entry (an entry whose certificate a crash kept out of the store is followed by another at the next start).
    await this.#sink?.record({
      who: 'sigild',
      act: 'identity.ca.create',
      key: keyVersion,
      result: 'ok',
      detail: { fingerprint, notAfter: notAfter.toISOString(), subject: caSubject(key.primaryVersion), version: key.primaryVersion },
    });
    this.#store.insertCaCertificate({ keyVersion, der, notAfter, createdAt: now });
    this.#audit.info({ key: keyVersion, notAfter, fingerprint }, 'identity ca certificate created');
  }

  /** Loads every generation (a key version with a stored CA certificate) and computes the windows; re-arms the window timer. */
  #rebuild(key: KeyRecord): void {
    const certs = this.#store.listCaCertificates(this.#name);
    const gens = new Map<number, CaGeneration>();
    const inputs: GenerationInput[] = [];
    for (const v of key.versions) {
      if (v.state === 'PENDING' || v.version > key.primaryVersion) continue;
      const keyVersion = keyVersionRef(this.#name, v.version);
      const mine = certs.filter((c) => c.keyVersion === keyVersion);
      if (mine.length === 0) continue;
      const latest = mine[mine.length - 1]!;
      const ca = AsnConvert.parse(latest.der, Certificate);
      gens.set(v.version, {
        version: v.version,
        keyVersion,
        der: latest.der,
        certificate: new X509Certificate(latest.der),
        subjectDer: Buffer.from(AsnConvert.serialize(ca.tbsCertificate.subject)),
        keyId: keyIdentifier(v.spki),
        publicKey: createPublicKey({ key: v.spki, format: 'der', type: 'spki' }),
        notAfter: ca.tbsCertificate.validity.notAfter.getTime(),
      });
      inputs.push({ version: v.version, startedAt: mine[0]!.createdAt, state: v.state, disabledAt: v.disabledAt, revokedAt: v.revokedAt, destroyedAt: v.destroyedAt });
    }
    const windows = generationWindows(inputs, this.#maxLifetime);
    const current = windows.at(-1);
    if (current === undefined) throw new SigilError('FAILED_PRECONDITION', `the identity ca key ${this.#name} has no version with a ca certificate`);
    this.#generations = gens;
    this.#windows = windows;
    this.#current = gens.get(current.version)!;
    this.#arm();
  }

  /** A timer at the next end of a live generation's window, so TLS and the CRLs follow without a request. */
  #arm(): void {
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#timer = null;
    const now = this.#clock.now().getTime();
    const ends = this.#windows.filter((w) => isLive(w, new Date(now)) && w.liveUntil !== null).map((w) => w.liveUntil!.getTime());
    if (ends.length === 0) return;
    const delay = Math.min(Math.max(Math.min(...ends) - now + 1000, 1000), 2 ** 31 - 1);
    this.#timer = setTimeout(() => {
      this.#timer = null;
      try {
        this.refresh();
      } catch (err) {
        this.#log.error({ err }, 'identity ca generations could not be reloaded');
      }
    }, delay);
    this.#timer.unref();
  }

  #notify(): void {
    for (const fn of this.#listeners) {
      try {
        fn();
      } catch (err) {
        this.#log.error({ err }, 'identity ca change listener failed');
      }
    }
  }
}

interface CertificateFields {
  serial: Buffer;
  issuer: Name;
  subject: Name;
  notBefore: Date;
  notAfter: Date;
  spki: Buffer;
  extensions: Extension[];
}

/** Builds the TBSCertificate, has the key service sign it, and assembles the certificate (RFC 5280, 4.1). */
async function signCertificate(keys: KeyService, keyVersion: string, algorithm: CaAlgorithm, f: CertificateFields): Promise<Buffer> {
  const sa = SIGNATURE_ALGORITHM[algorithm];
  const sigAlg = new AlgorithmIdentifier(sa.nullParams ? { algorithm: sa.oid, parameters: null } : { algorithm: sa.oid });
  const tbs = new TBSCertificate({
    version: Version.v3,
    serialNumber: toArrayBuffer(f.serial),
    signature: sigAlg,
    issuer: f.issuer,
    validity: new Validity({ notBefore: f.notBefore, notAfter: f.notAfter }),
    subject: f.subject,
    subjectPublicKeyInfo: AsnConvert.parse(f.spki, SubjectPublicKeyInfo),
    extensions: new Extensions(f.extensions),
  });
  const tbsDer = Buffer.from(AsnConvert.serialize(tbs));
  const hash = ALGORITHM_INFO[algorithm as Algorithm].hash;
  const input = hash === null ? { message: tbsDer } : { digest: createHash(hash).update(tbsDer).digest() };
  const sig = await keys.sign(keyVersion, input);
  // The signed bytes go into the certificate as they are, not re-encoded.
  const sigAlgDer = Buffer.from(AsnConvert.serialize(sigAlg));
  const bitString = tlv(0x03, Buffer.concat([Buffer.from([0]), sig.signature]));
  return tlv(TAG.SEQUENCE, Buffer.concat([tbsDer, sigAlgDer, bitString]));
}

async function selfSign(keys: KeyService, keyVersion: string, algorithm: CaAlgorithm, spki: Buffer, now: Date, subject: string): Promise<Buffer> {
  const name = commonName(subject);
  const keyId = keyIdentifier(spki);
  return signCertificate(keys, keyVersion, algorithm, {
    serial: randomSerial().content,
    issuer: name,
    subject: name,
    notBefore: new Date(now.getTime() - SKEW_MS),
    notAfter: new Date(now.getTime() + CA_VALIDITY_MS),
    spki,
    extensions: [
      ext(id_ce_basicConstraints, true, AsnConvert.serialize(new BasicConstraints({ cA: true, pathLenConstraint: 0 }))),
      ext(id_ce_keyUsage, true, AsnConvert.serialize(new KeyUsage(KeyUsageFlags.keyCertSign | KeyUsageFlags.cRLSign))),
      ext(id_ce_subjectKeyIdentifier, false, AsnConvert.serialize(new SubjectKeyIdentifier(keyId))),
    ],
  });
}

function builderSpki(spki: unknown): Buffer {
  if (!Buffer.isBuffer(spki) || spki.length === 0 || spki.length > 4096) throw new SigilError('INVALID_ARGUMENT', 'spki must be a der subject public key info');
  let key: KeyObject;
  try {
    key = createPublicKey({ key: spki, format: 'der', type: 'spki' });
  } catch (err) {
    throw new SigilError('INVALID_ARGUMENT', 'spki is not a der subject public key info', { cause: err });
  }
  const t = key.asymmetricKeyType;
  const d = key.asymmetricKeyDetails ?? {};
  const ok = (t === 'ec' && (d.namedCurve === 'prime256v1' || d.namedCurve === 'secp384r1')) || t === 'ed25519' || (t === 'rsa' && (d.modulusLength ?? 0) >= 2048);
  if (!ok) throw new SigilError('INVALID_ARGUMENT', 'the builder key must be ec p-256 or p-384, ed25519, or rsa of at least 2048 bits');
  return key.export({ format: 'der', type: 'spki' });
}

function ext(oid: string, critical: boolean, value: ArrayBuffer | Buffer): Extension {
  return new Extension({ extnID: oid, critical, extnValue: new OctetString(Buffer.isBuffer(value) ? toArrayBuffer(value) : value) });
}

function commonName(cn: string): Name {
  return new Name([new RelativeDistinguishedName([new AttributeTypeAndValue({ type: OID_CN, value: new AttributeValue({ utf8String: cn }) })])]);
}

/** RFC 7093, 2 method 1: the leftmost 160 bits of the SHA-256 of the subjectPublicKey bits. */
function keyIdentifier(spki: Buffer): Buffer {
  const bits = AsnConvert.parse(spki, SubjectPublicKeyInfo).subjectPublicKey;
  return createHash('sha256').update(Buffer.from(bits)).digest().subarray(0, 20);
}

/** A random positive 128-bit serial (RFC 5280, 4.1.2.2) as minimal DER INTEGER content, and its hex. */
function randomSerial(): { content: Buffer; hex: string } {
  let b = randomBytes(16);
  while (b.every((x) => x === 0)) b = randomBytes(16);
  let i = 0;
  while (b[i] === 0) i++;
  let content = b.subarray(i);
  if (content[0]! & 0x80) content = Buffer.concat([Buffer.from([0]), content]);
  return { content, hex: b.toString('hex') };
}

function toArrayBuffer(b: Buffer): ArrayBuffer {
  return b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength) as ArrayBuffer;
}

function truncateMs(d: Date): Date {
  return new Date(Math.floor(d.getTime() / 1000) * 1000);
}

function toPem(der: Buffer): string {
  return `-----BEGIN CERTIFICATE-----\n${der.toString('base64').replace(/(.{64})/g, '$1\n').replace(/\n$/, '')}\n-----END CERTIFICATE-----\n`;
}
