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

/** What the identity CA needs: the key service it signs through, the store for its certificate, and settings. */
export interface IdentityCaOptions {
  keys: KeyService;
  store: Pick<Store, 'insertCaCertificate' | 'latestCaCertificate' | 'insertIssuedCertificate'>;
  clock: Clock;
  log: Logger;
  /** Where issuances are recorded; `log` when absent. */
  audit?: Logger;
  /** The audit log: every issued certificate (`identity.issue`) and the CA key's creation are recorded. */
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
}

/**
 * The identity CA: issues short-lived X.509 builder certificates. Its key is an ordinary sigil key
 * version (created through the key service on first start) and every certificate is signed through
 * `KeyService.sign`, so the CA key never exists in this process. The TBSCertificate is built with
 * @peculiar/asn1-x509, hashed here and signed as a digest (Ed25519: as a message) by the backend.
 */
export class IdentityCa {
  readonly #keys: KeyService;
  readonly #store: IdentityCaOptions['store'];
  readonly #clock: Clock;
  readonly #audit: Logger;
  readonly #sink: AuditSink | null;
  readonly #trustDomain: string;
  readonly #keyVersion: string;
  readonly #algorithm: CaAlgorithm;
  readonly #caDer: Buffer;
  readonly #caName: Name;
  readonly #caKeyId: Buffer;
  readonly #caPublicKey: KeyObject;
  readonly #caNotAfter: Date;
  readonly #lifetime: number;
  readonly #maxLifetime: number;

  private constructor(o: IdentityCaOptions, key: KeyRecord, caDer: Buffer, lifetime: number, maxLifetime: number) {
    this.#keys = o.keys;
    this.#store = o.store;
    this.#clock = o.clock;
    this.#audit = o.audit ?? o.log;
    this.#sink = o.sink ?? null;
    this.#trustDomain = o.trustDomain;
    this.#keyVersion = `${key.name}@${key.primaryVersion}`;
    this.#algorithm = key.algorithm as CaAlgorithm;
    this.#caDer = caDer;
    const ca = AsnConvert.parse(caDer, Certificate);
    this.#caName = ca.tbsCertificate.subject;
    const spki = key.versions.find((v) => v.version === key.primaryVersion)!.spki;
    this.#caKeyId = keyIdentifier(spki);
    this.#caPublicKey = createPublicKey({ key: spki, format: 'der', type: 'spki' });
    this.#caNotAfter = ca.tbsCertificate.validity.notAfter.getTime();
    this.#lifetime = lifetime;
    this.#maxLifetime = maxLifetime;
  }

  /**
   * Opens the identity CA: creates its key and a self-signed CA certificate on first start and
   * stores the certificate; later starts reuse both (a new self-signed certificate for the same key is
   * made once the stored one would expire within the longest builder lifetime).
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
    const keyVersion = `${name}@${key.primaryVersion}`;
    const spki = key.versions.find((v) => v.version === key.primaryVersion)!.spki;
    const now = o.clock.now();
    const stored = o.store.latestCaCertificate(keyVersion);
    if (stored) {
      const x = new X509Certificate(stored.der);
      if (!x.publicKey.export({ format: 'der', type: 'spki' }).equals(spki)) {
        throw new SigilError('FAILED_PRECONDITION', `the stored identity ca certificate does not match the key ${keyVersion}`);
      }
      if (stored.notAfter.getTime() > now.getTime() + maxLifetime) return new IdentityCa(o, key, stored.der, lifetime, maxLifetime);
      o.log.warn({ key: keyVersion, notAfter: stored.notAfter }, 'identity ca certificate near its end: making a new one for the same key');
    }
    const der = await selfSign(o.keys, keyVersion, key.algorithm as CaAlgorithm, spki, now);
    const notAfter = new Date(now.getTime() + CA_VALIDITY_MS);
    o.store.insertCaCertificate({ keyVersion, der, notAfter: truncateMs(notAfter), createdAt: now });
    (o.audit ?? o.log).info({ key: keyVersion, notAfter: truncateMs(notAfter) }, 'identity ca certificate created');
    return new IdentityCa(o, key, der, lifetime, maxLifetime);
  }

  /** The key version that signs builder certificates, `name@N`. */
  get keyVersion(): string {
    return this.#keyVersion;
  }

  /** The CA key's name, which no RPC may sign with. */
  get keyName(): string {
    return this.#keyVersion.slice(0, this.#keyVersion.lastIndexOf('@'));
  }

  /** The SPIFFE trust domain of the builder ids this CA issues. */
  get trustDomain(): string {
    return this.#trustDomain;
  }

  /** The CA certificate, DER. */
  caCertificateDer(): Buffer {
    return Buffer.from(this.#caDer);
  }

  /** The CA certificate's subject, DER: the issuer of every certificate and CRL this CA signs. */
  subjectDer(): Buffer {
    return Buffer.from(AsnConvert.serialize(this.#caName));
  }

  /** The CA key's identifier (RFC 7093 method 1), for authority key identifier extensions. */
  keyIdentifier(): Buffer {
    return Buffer.from(this.#caKeyId);
  }

  /** The CA certificate's notBefore and notAfter. */
  validity(): { notBefore: Date; notAfter: Date } {
    const v = AsnConvert.parse(this.#caDer, Certificate).tbsCertificate.validity;
    return { notBefore: v.notBefore.getTime(), notAfter: v.notAfter.getTime() };
  }

  /** The DER AlgorithmIdentifier of the CA key's signatures (RFC 5758, 4055, 8410). */
  signatureAlgorithmDer(): Buffer {
    const sa = SIGNATURE_ALGORITHM[this.#algorithm];
    return Buffer.from(AsnConvert.serialize(new AlgorithmIdentifier(sa.nullParams ? { algorithm: sa.oid, parameters: null } : { algorithm: sa.oid })));
  }

  /**
   * Signs a DER to-be-signed structure (a TBSCertList, RFC 5280 5.1) with the CA key through the key
   * service; returns the signature value as it goes into the BIT STRING.
   */
  async signTbs(tbsDer: Buffer): Promise<Buffer> {
    const hash = ALGORITHM_INFO[this.#algorithm as Algorithm].hash;
    const input = hash === null ? { message: tbsDer } : { digest: createHash(hash).update(tbsDer).digest() };
    return (await this.#keys.sign(this.#keyVersion, input)).signature;
  }

  /** The CA's public key, to check what `signTbs` produced. */
  publicKey(): KeyObject {
    return this.#caPublicKey;
  }

  /** The CA certificate, PEM: what verifiers and the TLS layer trust. */
  caCertificatePem(): string {
    return toPem(this.#caDer);
  }

  /**
   * Issues a builder certificate for an attested builder's ephemeral key. INVALID_ARGUMENT for a bad
   * key or attestation field; the lifetime is capped at the configured maximum and the CA's own end.
   */
  async issue(req: IssueRequest): Promise<IssuedCertificate> {
    const att = checkAttestation(req);
    const spki = builderSpki(req.spki);
    const wanted = req.lifetimeMs ?? this.#lifetime;
    if (!Number.isSafeInteger(wanted) || wanted < 1000) throw new SigilError('INVALID_ARGUMENT', 'lifetime must be at least 1 second');
    const now = this.#clock.now().getTime();
    const notBefore = new Date(now - SKEW_MS);
    const notAfter = new Date(Math.min(now + Math.min(wanted, this.#maxLifetime), this.#caNotAfter.getTime()));
    const san = `spiffe://${this.#trustDomain}/builder/tpm/${att.ekHash}`;
    const extensions = [
      ext(id_ce_basicConstraints, true, AsnConvert.serialize(new BasicConstraints({ cA: false }))),
      ext(id_ce_keyUsage, true, AsnConvert.serialize(new KeyUsage(KeyUsageFlags.digitalSignature))),
      ext(id_ce_extKeyUsage, false, AsnConvert.serialize(new ExtendedKeyUsage([id_kp_clientAuth]))),
      ext(id_ce_subjectKeyIdentifier, false, AsnConvert.serialize(new SubjectKeyIdentifier(keyIdentifier(spki)))),
      ext(id_ce_authorityKeyIdentifier, false, AsnConvert.serialize(new AuthorityKeyIdentifier({ keyIdentifier: new KeyIdentifier(this.#caKeyId) }))),
      ext(id_ce_subjectAltName, false, AsnConvert.serialize(new SubjectAlternativeName([new GeneralName({ uniformResourceIdentifier: san })]))),
      ...encodeBuilderExtensions(att).map((e) => ext(e.oid, false, e.value)),
    ];
    const serial = randomSerial();
    this.#sink?.ready();
    const der = await signCertificate(this.#keys, this.#keyVersion, this.#algorithm, {
      serial: serial.content,
      issuer: this.#caName,
      subject: commonName(`builder ${att.ekHash.slice(0, 16)}`),
      notBefore,
      notAfter,
      spki,
      extensions,
    });
    // Check what the backend signed before handing it out: a wrong signature would fail far from here.
    if (!new X509Certificate(der).verify(this.#caPublicKey)) throw new SigilError('BACKEND_ERROR', 'the identity ca key made a signature that does not verify');
    // Recorded before it leaves, so an admin can revoke it by serial and the CRL knows its notAfter.
    this.#store.insertIssuedCertificate({ serial: BigInt(`0x${serial.hex}`).toString(16), ekHash: att.ekHash, san, notAfter: truncateMs(notAfter), issuedAt: this.#clock.now() });
    this.#audit.info({ serial: serial.hex, san, policy: att.policy, ekHash: att.ekHash, claims: att.claims, notAfter: truncateMs(notAfter) }, 'builder certificate issued');
    // The certificate leaves only once its issuance is durable in the audit log.
    await this.#sink?.record({
      who: 'sigild',
      act: 'identity.issue',
      key: this.#keyVersion,
      result: 'ok',
      detail: { serial: serial.hex, san, policy: att.policy, ekHash: att.ekHash, claims: att.claims, notAfter: truncateMs(notAfter).toISOString() },
    });
    return { certificateDer: der, certificatePem: toPem(der), notBefore: truncateMs(notBefore), notAfter: truncateMs(notAfter), serial: serial.hex, san };
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

async function selfSign(keys: KeyService, keyVersion: string, algorithm: CaAlgorithm, spki: Buffer, now: Date): Promise<Buffer> {
  const name = commonName(CA_SUBJECT);
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
