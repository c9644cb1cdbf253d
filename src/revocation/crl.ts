import { AsnConvert, OctetString } from '@peculiar/asn1-schema';
import {
  AlgorithmIdentifier,
  AuthorityKeyIdentifier,
  CRLNumber,
  CRLReason,
  Extension,
  KeyIdentifier,
  Name,
  RevokedCertificate,
  TBSCertList,
  Time,
  Version,
  id_ce_authorityKeyIdentifier,
  id_ce_cRLNumber,
  id_ce_cRLReasons,
} from '@peculiar/asn1-x509';
import { TAG, tlv } from '../identity/der.ts';
import { REVOCATION_REASONS, type RevocationReason } from './inputs.ts';
import type { RevokedIdentityRecord } from '../store/store.ts';

/** One revoked certificate as the CRL lists it. */
export interface CrlEntry {
  /** Canonical serial: lower-case hex without leading zeros. */
  serial: string;
  revokedAt: Date;
  reason: RevocationReason;
}

/** What a CRL says, apart from its signature. */
export interface CrlInput {
  /** The CA certificate's subject (DER Name): the CRL's issuer. */
  issuerDer: Buffer;
  /** The CA key's identifier, as in the certificates it issued. */
  authorityKeyId: Buffer;
  /** The CRL number: strictly increasing across the CRLs of this CA. */
  number: number;
  thisUpdate: Date;
  nextUpdate: Date;
  entries: readonly CrlEntry[];
}

/** Signs with the CA key; IdentityCa is one. */
export interface CrlSigner {
  /** The DER AlgorithmIdentifier of the signatures `signTbs` makes. */
  signatureAlgorithmDer(): Buffer;
  /** The signature value over the DER to-be-signed bytes. */
  signTbs(tbsDer: Buffer): Promise<Buffer>;
}

/**
 * Builds and signs an RFC 5280 (5.1) version 2 CRL: issuer, thisUpdate, nextUpdate, the CRL number and
 * authority key identifier extensions, and each revoked serial with its date and (unless unspecified)
 * reason code. Returns DER.
 */
export async function buildCrl(input: CrlInput, signer: CrlSigner): Promise<Buffer> {
  const algorithmDer = signer.signatureAlgorithmDer();
  const revoked = [...input.entries]
    .sort((a, b) => a.revokedAt.getTime() - b.revokedAt.getTime() || (a.serial < b.serial ? -1 : 1))
    .map((e) => {
      const code = REVOCATION_REASONS[e.reason];
      return new RevokedCertificate({
        userCertificate: serialContent(e.serial),
        revocationDate: new Time(e.revokedAt),
        // RFC 5280, 5.3.1: the reason code unspecified SHOULD be absent rather than 0.
        ...(code === 0 ? {} : { crlEntryExtensions: [ext(id_ce_cRLReasons, AsnConvert.serialize(new CRLReason(code)))] }),
      });
    });
  const tbs = new TBSCertList({
    version: Version.v2,
    signature: AsnConvert.parse(algorithmDer, AlgorithmIdentifier),
    issuer: AsnConvert.parse(input.issuerDer, Name),
    thisUpdate: new Time(input.thisUpdate),
    nextUpdate: new Time(input.nextUpdate),
    // RFC 5280, 5.1.2.6: with nothing revoked the list is absent, not empty.
    ...(revoked.length ? { revokedCertificates: revoked } : {}),
    crlExtensions: [
      ext(id_ce_authorityKeyIdentifier, AsnConvert.serialize(new AuthorityKeyIdentifier({ keyIdentifier: new KeyIdentifier(toArrayBuffer(input.authorityKeyId)) }))),
      ext(id_ce_cRLNumber, AsnConvert.serialize(new CRLNumber(input.number))),
    ],
  });
  const tbsDer = Buffer.from(AsnConvert.serialize(tbs));
  const signature = await signer.signTbs(tbsDer);
  // CertificateList ::= SEQUENCE { tbsCertList, signatureAlgorithm, signatureValue BIT STRING }; the signed bytes go in as they are.
  return tlv(TAG.SEQUENCE, Buffer.concat([tbsDer, algorithmDer, tlv(0x03, Buffer.concat([Buffer.from([0]), signature]))]));
}

/** The CRL as PEM, labelled `X509 CRL` as openssl expects (RFC 7468, 5). */
export function crlPem(der: Buffer): string {
  return `-----BEGIN X509 CRL-----\n${der.toString('base64').replace(/(.{64})/g, '$1\n').replace(/\n$/, '')}\n-----END X509 CRL-----\n`;
}

/**
 * The CRL entries of the revoked identities at `now`: an entry stays until its certificate's notAfter has
 * passed (RFC 5280, 3.3: a CRL need not list expired certificates), and for ever when notAfter is unknown.
 */
export function crlEntries(revoked: readonly RevokedIdentityRecord[], now: Date): CrlEntry[] {
  return revoked
    .filter((r) => r.notAfter === null || r.notAfter.getTime() >= now.getTime())
    .map((r) => ({ serial: r.serial, revokedAt: r.revokedAt, reason: (Object.hasOwn(REVOCATION_REASONS, r.reason) ? r.reason : 'unspecified') as RevocationReason }));
}

/** A canonical hex serial as DER INTEGER content: minimal, and positive (a leading 0 when the top bit is set). */
function serialContent(hex: string): ArrayBuffer {
  let b = Buffer.from(hex.length % 2 ? `0${hex}` : hex, 'hex');
  if (b[0]! & 0x80) b = Buffer.concat([Buffer.from([0]), b]);
  return toArrayBuffer(b);
}

function ext(oid: string, value: ArrayBuffer): Extension {
  return new Extension({ extnID: oid, critical: false, extnValue: new OctetString(value) });
}

function toArrayBuffer(b: Buffer): ArrayBuffer {
  return b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength) as ArrayBuffer;
}
