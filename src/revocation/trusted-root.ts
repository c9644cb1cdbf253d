import { createHash, createPublicKey, X509Certificate } from 'node:crypto';
import { SigilError } from '../errors.ts';
import type { Algorithm } from '../signers/signer.ts';
import type { KeyRecord } from '../store/store.ts';

/** The Sigstore TrustedRoot media type (sigstore/protobuf-specs, sigstore_trustroot.proto). */
export const TRUSTED_ROOT_MEDIA_TYPE = 'application/vnd.dev.sigstore.trustedroot+json;version=0.1';

/** One key version as the trusted root describes it (the lifecycle fields are null where unknown). */
export interface TrustedKeyVersion {
  keyName: string;
  version: number;
  algorithm: Algorithm;
  /** DER SubjectPublicKeyInfo. */
  spki: Buffer;
  createdAt: Date;
  /** Set when the version was disabled as compromised: its window closes here. */
  revokedAt: Date | null;
  /** Set when the version was destroyed: its window closes here (earlier signatures stay valid). */
  destroyedAt: Date | null;
  /** Versions below the key's minVerifyVersion are left out. */
  minVerifyVersion: number;
  /** False for versions that hold no key yet (PENDING): left out. */
  hasKey: boolean;
}

/** One version of the audit log's checkpoint key: listed as its own tlog, valid from its creation until the next version's. */
export interface AuditLogKeyVersion {
  version: number;
  /** DER SubjectPublicKeyInfo. */
  spki: Buffer;
  createdAt: Date;
  /** When the next version took over; null for the current version (its window stays open). */
  supersededAt: Date | null;
}

/** One identity CA generation: its self-signed certificate and the end of its window. */
export interface IdentityCaGeneration {
  /** The CA certificate, DER. */
  der: Buffer;
  /** When it stopped being trusted (its window ended, or it was disabled); null while it is current. */
  end: Date | null;
}

/** What the trusted root is made of. */
export interface TrustedRootInput {
  /** The identity CA's generations, each with its self-signed certificate (a lone Buffer: one generation, open). */
  identityCa: Buffer | readonly IdentityCaGeneration[] | null;
  /** The audit log and every version of its checkpoint key, when the daemon has one. */
  auditLog: { baseUrl: string; algorithm: Algorithm; versions: readonly AuditLogKeyVersion[] } | null;
  keyVersions: readonly TrustedKeyVersion[];
  /** When the document is signed: it becomes `sigilIssuedAt`. */
  issuedAt: Date;
  /** When verifiers stop trusting it (`sigilExpiresAt`): the daemon signs a fresh one long before. */
  expiresAt: Date;
}

/** sigstore_common.proto TimeRange in proto JSON: RFC 3339 strings. */
export interface TimeRangeJson {
  start: string;
  end?: string;
}

/** sigstore_common.proto PublicKey in proto JSON. */
export interface PublicKeyJson {
  rawBytes: string;
  keyDetails: string;
  validFor: TimeRangeJson;
}

/** One key version in the `sigilKeyVersions` extension: a Sigstore PublicKey plus the name verifiers look it up by. */
export interface SigilKeyVersionJson {
  /** `name@N`, the value sigil reports with every signature and the hint of a bundle's PublicKeyIdentifier. */
  hint: string;
  keyName: string;
  version: number;
  algorithm: Algorithm;
  /** True when the version was disabled as compromised. */
  revoked: boolean;
  publicKey: PublicKeyJson;
}

/** Sigstore's TrustedRoot in proto JSON, with no field the schema lacks (what strict parsers accept). */
export interface SigstoreTrustedRoot {
  mediaType: string;
  tlogs: Array<{ baseUrl: string; hashAlgorithm: 'SHA2_256'; publicKey: PublicKeyJson; logId: { keyId: string } }>;
  certificateAuthorities: Array<{
    subject: { organization?: string; commonName: string };
    uri: string;
    certChain: { certificates: Array<{ rawBytes: string }> };
    validFor: TimeRangeJson;
  }>;
  ctlogs: never[];
  timestampAuthorities: never[];
}

/** The trusted-root document: Sigstore's TrustedRoot in proto JSON, plus sigil's issue and expiry times and key versions. */
export interface TrustedRootDocument extends SigstoreTrustedRoot {
  /** When the daemon signed this document (RFC 3339); a sigil extension like `sigilKeyVersions`. */
  sigilIssuedAt: string;
  /**
   * After this time (RFC 3339) verifiers refuse the document, TUF style: an older genuine root, from before a
   * key version was disabled as compromised, cannot be replayed for longer than its validity.
   */
  sigilExpiresAt: string;
  /**
   * Artifact-signing key versions. Not a TrustedRoot field: sigstore verifiers that ignore unknown fields
   * skip it, and no signing key ever appears under tlogs, ctlogs or an authority.
   */
  sigilKeyVersions: SigilKeyVersionJson[];
}

/**
 * Builds the trusted-root document (a pure function of its input): its issue and expiry times, each identity CA generation under
 * certificateAuthorities with its window, the audit log under tlogs (one per audit key version, each with its window), every verifiable key version with its validity
 * window under `sigilKeyVersions`, all sorted so the same input gives the same bytes.
 */
export function buildTrustedRoot(input: TrustedRootInput): TrustedRootDocument {
  const doc: TrustedRootDocument = {
    mediaType: TRUSTED_ROOT_MEDIA_TYPE,
    sigilIssuedAt: rfc3339(input.issuedAt),
    sigilExpiresAt: rfc3339(input.expiresAt),
    tlogs: [],
    certificateAuthorities: [],
    ctlogs: [],
    timestampAuthorities: [],
    sigilKeyVersions: [],
  };
  if (input.auditLog) {
    const a = input.auditLog;
    // One tlog per key version (as a log that rotated its key appears in Sigstore's own trusted root), in version order.
    for (const v of [...a.versions].sort((x, y) => x.version - y.version)) {
      doc.tlogs.push({
        baseUrl: a.baseUrl,
        hashAlgorithm: 'SHA2_256',
        publicKey: {
          rawBytes: v.spki.toString('base64'),
          keyDetails: keyDetails(a.algorithm, v.spki),
          validFor: timeRange(v.createdAt, v.supersededAt),
        },
        // RFC 6962, 3.2: the log id is the SHA-256 of the log's DER public key.
        logId: { keyId: createHash('sha256').update(v.spki).digest('base64') },
      });
    }
  }
  const cas = input.identityCa === null ? [] : Buffer.isBuffer(input.identityCa) ? [{ der: input.identityCa, end: null }] : input.identityCa;
  // One authority per generation, in the order given (oldest first): each generation has its own subject, so
  // chain building and CRL lookup by issuer name stay unambiguous.
  for (const g of cas) {
    const x = new X509Certificate(g.der);
    const o = /(?:^|\n)O=([^\n]*)/.exec(x.subject)?.[1];
    doc.certificateAuthorities.push({
      subject: { ...(o ? { organization: o } : {}), commonName: /(?:^|\n)CN=([^\n]*)/.exec(x.subject)?.[1] ?? '' },
      uri: '',
      certChain: { certificates: [{ rawBytes: g.der.toString('base64') }] },
      // The current CA has no end (sigstore_trustroot.proto: current instances leave it unset).
      validFor: timeRange(new Date(x.validFrom), g.end),
    });
  }
  const versions = input.keyVersions
    .filter((v) => v.hasKey && v.version >= v.minVerifyVersion)
    .sort((a, b) => (a.keyName < b.keyName ? -1 : a.keyName > b.keyName ? 1 : a.version - b.version));
  for (const v of versions) {
    const ends = [v.revokedAt, v.destroyedAt].filter((d): d is Date => d !== null).map((d) => d.getTime());
    const end = ends.length ? new Date(Math.min(...ends)) : null;
    doc.sigilKeyVersions.push({
      hint: `${v.keyName}@${v.version}`,
      keyName: v.keyName,
      version: v.version,
      algorithm: v.algorithm,
      revoked: v.revokedAt !== null,
      publicKey: { rawBytes: v.spki.toString('base64'), keyDetails: keyDetails(v.algorithm, v.spki), validFor: timeRange(v.createdAt, end) },
    });
  }
  return doc;
}

/** The exact bytes that are signed and served: two-space indented JSON with a final newline. */
export function serializeTrustedRoot(doc: SigstoreTrustedRoot): Buffer {
  return Buffer.from(`${JSON.stringify(doc, null, 2)}\n`);
}

/** The issue and expiry times of a verified trusted-root document. */
export interface TrustedRootFreshness {
  issuedAt: Date;
  expiresAt: Date;
}

/** The longest validity a trusted root may have (the config's maximum `trustedRoot.validity`). */
export const MAX_TRUSTED_ROOT_VALIDITY_MS = 90 * 24 * 3_600_000;

/**
 * Checks that a verified trusted-root document is fresh at `now`: it carries `sigilIssuedAt` and
 * `sigilExpiresAt` and has not expired. FAILED_PRECONDITION with the expiry when it has (or when it carries
 * no expiry: a document that never expires could be replayed forever); returns both times.
 */
export function checkTrustedRootFresh(json: Buffer, now: Date): TrustedRootFreshness {
  let doc: { sigilIssuedAt?: unknown; sigilExpiresAt?: unknown } | null;
  try {
    doc = JSON.parse(json.toString('utf8')) as typeof doc;
  } catch {
    doc = null;
  }
  const time = (v: unknown): Date | null => {
    const d = typeof v === 'string' && /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$/.test(v) ? new Date(v) : null;
    return d === null || Number.isNaN(d.getTime()) ? null : d;
  };
  const issuedAt = time(doc?.sigilIssuedAt);
  const expiresAt = time(doc?.sigilExpiresAt);
  if (issuedAt === null || expiresAt === null || expiresAt.getTime() <= issuedAt.getTime()) {
    throw new SigilError(
      'FAILED_PRECONDITION',
      'the trusted root carries no valid issue and expiry time (sigilIssuedAt, sigilExpiresAt): a sigild from before trusted roots expired made it, and a root that never expires could be an old one replayed; fetch a fresh one',
    );
  }
  // No document sigild signs is valid for longer than the config allows. (An issue time ahead of this machine's
  // is not refused: as in TUF, freshness rests on the expiry, and the signer's clock is the signer's to keep.)
  if (expiresAt.getTime() - issuedAt.getTime() > MAX_TRUSTED_ROOT_VALIDITY_MS) {
    throw new SigilError('FAILED_PRECONDITION', `the trusted root is valid from ${rfc3339(issuedAt)} to ${rfc3339(expiresAt)}, longer than the 90 days sigild ever signs for: refused`);
  }
  if (now.getTime() >= expiresAt.getTime()) {
    throw new SigilError(
      'FAILED_PRECONDITION',
      `the trusted root expired at ${rfc3339(expiresAt)} (issued ${rfc3339(issuedAt)}): an old root may still list a key version that was disabled as compromised since; fetch a fresh one (sigilctl trusted-root get --root-key)`,
    );
  }
  return { issuedAt, expiresAt };
}

/**
 * The document without `sigilKeyVersions`: Sigstore's TrustedRoot and nothing else, for strict proto JSON
 * parsers (sigstore-go, Java's JsonFormat) that refuse a field the schema lacks.
 */
export function sigstoreTrustedRoot(doc: TrustedRootDocument): SigstoreTrustedRoot {
  // Field by field, so that no later extension reaches the strict document by accident.
  return { mediaType: doc.mediaType, tlogs: doc.tlogs, certificateAuthorities: doc.certificateAuthorities, ctlogs: doc.ctlogs, timestampAuthorities: doc.timestampAuthorities };
}

/**
 * The key versions of stored keys as the trusted root needs them: the lifecycle fields `revokedAt`,
 * `destroyedAt`, `state` and the key's `policy.minVerifyVersion`. Keys in `skip` (sigil's reserved keys)
 * are left out.
 */
export function keyVersionsOf(keys: readonly KeyRecord[], skip: readonly string[]): TrustedKeyVersion[] {
  const out: TrustedKeyVersion[] = [];
  for (const k of keys) {
    if (skip.includes(k.name)) continue;
    const minVerifyVersion = k.policy.minVerifyVersion;
    for (const v of k.versions) {
      out.push({
        keyName: k.name,
        version: v.version,
        algorithm: k.algorithm,
        spki: v.spki,
        createdAt: v.createdAt,
        revokedAt: v.revokedAt,
        destroyedAt: v.destroyedAt,
        minVerifyVersion,
        hasKey: v.state !== 'PENDING',
      });
    }
  }
  return out;
}

/** sigstore_common.proto PublicKeyDetails of a sigil algorithm (RSA by its modulus size). */
export function keyDetails(algorithm: Algorithm, spki: Buffer): string {
  switch (algorithm) {
    case 'ECDSA_P256_SHA256':
      return 'PKIX_ECDSA_P256_SHA_256';
    case 'ECDSA_P384_SHA384':
      return 'PKIX_ECDSA_P384_SHA_384';
    case 'ED25519':
      return 'PKIX_ED25519';
    case 'RSA_PKCS1_SHA256':
    case 'RSA_PSS_SHA256': {
      const bits = createPublicKey({ key: spki, format: 'der', type: 'spki' }).asymmetricKeyDetails?.modulusLength ?? 0;
      const size = bits >= 4096 ? 4096 : bits >= 3072 ? 3072 : 2048;
      return `PKIX_RSA_${algorithm === 'RSA_PSS_SHA256' ? 'PSS' : 'PKCS1V15'}_${size}_SHA256`;
    }
  }
}

/** RFC 3339 in UTC, without fractional seconds when they are zero (as proto JSON writes a Timestamp). */
export function rfc3339(d: Date): string {
  return d.toISOString().replace(/\.000Z$/, 'Z');
}

/**
 * A validity window; an end before the start (a compromise time recorded before the version was made, which
 * the lifecycle now refuses, or a CA whose certificate starts after its key's compromise) closes at the start.
 */
function timeRange(start: Date, end: Date | null | undefined): TimeRangeJson {
  if (!end) return { start: rfc3339(start) };
  return { start: rfc3339(start), end: rfc3339(end.getTime() < start.getTime() ? start : end) };
}
