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
  close(): void;
}
