import type { Algorithm } from '../signers/signer.ts';

/** Lifecycle state of a key version (more states join with rotation and retirement). */
export type KeyVersionState = 'ENABLED';

/** One stored key version. */
export interface KeyVersionRecord {
  name: string;
  version: number;
  uri: string;
  state: KeyVersionState;
  /** True when sigil generated the key, false when it was imported. */
  generated: boolean;
  /** DER SubjectPublicKeyInfo, kept so public keys need no backend call. */
  spki: Buffer;
  createdAt: Date;
}

/** One stored key with its versions, oldest first. */
export interface KeyRecord {
  name: string;
  algorithm: Algorithm;
  backend: string;
  primaryVersion: number;
  createdAt: Date;
  versions: KeyVersionRecord[];
}

/** A CA certificate that sigil made for one of its own key versions (the identity CA's, for now). */
export interface CaCertificateRecord {
  /** The key version that signs with the certificate's key, `name@N`. */
  keyVersion: string;
  der: Buffer;
  notAfter: Date;
  createdAt: Date;
}

/** An enrolled TPM: the AK it proved and the counters of its last quote (for monotonicity). */
export interface EnrollmentRecord {
  /** SHA-256 of the EK's SubjectPublicKeyInfo, lower-case hex. */
  ekHash: string;
  /** The AK's TPM name, lower-case hex. */
  akName: string;
  /** The AK's TPMT_PUBLIC bytes. */
  akPublic: Buffer;
  policy: string;
  resetCount: number;
  restartCount: number;
  clock: bigint;
  updatedAt: Date;
}

/** A builder certificate the identity CA issued: what revoking it by serial needs to know. */
export interface IssuedCertificateRecord {
  /** Canonical serial: lower-case hex without leading zeros. */
  serial: string;
  /** SHA-256 of the builder's EK public key, lower-case hex. */
  ekHash: string;
  /** The certificate's SPIFFE id. */
  san: string;
  notAfter: Date;
  issuedAt: Date;
}

/** A revoked builder certificate (an entry of the identity CA's CRL until the certificate expires). */
export interface RevokedIdentityRecord {
  /** Canonical serial: lower-case hex without leading zeros. */
  serial: string;
  /** RFC 5280 CRLReason name, e.g. `keyCompromise`. */
  reason: string;
  revokedAt: Date;
  /** Who revoked it: a certificate subject. */
  revokedBy: string;
  /** The certificate's notAfter when known: the entry stays on the CRL at least until then. */
  notAfter: Date | null;
  ekHash: string | null;
}

/** A revoked builder TPM (by EK hash), or one AK of it when `akName` is set. */
export interface RevokedBuilderRecord {
  ekHash: string;
  /** The AK's TPM name (lower-case hex), or null when the whole TPM is revoked. */
  akName: string | null;
  reason: string;
  revokedAt: Date;
  revokedBy: string;
}

/**
 * Where sigil keeps its state. Writes are atomic: a key and its first version appear together or not
 * at all.
 */
export interface Store {
  /** Inserts a key with its version 1; KEY_EXISTS when the name is taken. */
  insertKey(key: Omit<KeyRecord, 'versions' | 'primaryVersion'>, first: Omit<KeyVersionRecord, 'name' | 'version'>): KeyRecord;
  /** The key with its versions, or null. */
  getKey(name: string): KeyRecord | null;
  /** Keys whose names start with `prefix`, sorted by name. */
  listKeys(prefix: string): KeyRecord[];
  /** True when some key version already uses this backend URI. */
  uriInUse(backend: string, uri: string): boolean;
  /** Records a CA certificate; several may exist for one key version (a renewal adds one). */
  insertCaCertificate(rec: CaCertificateRecord): void;
  /** The most recently recorded CA certificate of a key version, or null. */
  latestCaCertificate(keyVersion: string): CaCertificateRecord | null;
  /** What this EK last proved at enrollment or renewal, or null when it never enrolled. */
  getEnrollment(ekHash: string): EnrollmentRecord | null;
  /** Records (or replaces) an EK's enrollment state; durable when it returns. */
  putEnrollment(rec: EnrollmentRecord): void;
  /** Spends a one-time join token (by its hash): true the first time, false ever after. Durable when it returns. */
  useJoinToken(tokenHash: string, policy: string, at: Date): boolean;
  /** Records a builder certificate the identity CA issued; durable when it returns. */
  insertIssuedCertificate(rec: IssuedCertificateRecord): void;
  /** An issued builder certificate by canonical serial, or null. */
  getIssuedCertificate(serial: string): IssuedCertificateRecord | null;
  /** Records a revoked certificate; false (and no change) when that serial is already revoked. */
  insertRevokedIdentity(rec: RevokedIdentityRecord): boolean;
  /** Every revoked certificate, oldest revocation first. */
  listRevokedIdentities(): RevokedIdentityRecord[];
  /** Records a revoked builder; false (and no change) when that EK (and AK) is already revoked. */
  insertRevokedBuilder(rec: RevokedBuilderRecord): boolean;
  /** Every revoked builder, oldest revocation first. */
  listRevokedBuilders(): RevokedBuilderRecord[];
  /** The next CRL number (RFC 5280, 5.2.3): 1, 2, 3 ... never reused, durable when it returns. */
  nextCrlNumber(): number;
  close(): void;
}
