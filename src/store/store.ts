import type { Algorithm } from '../signers/signer.ts';

/**
 * Lifecycle state of a key version. PENDING (backend object being made) and DESTROYING (backend object
 * being removed) are the crash-safe in-between states that the recovery pass resolves on start.
 */
export type KeyVersionState = 'PENDING' | 'ENABLED' | 'DISABLED' | 'DESTROY_SCHEDULED' | 'DESTROYING' | 'DESTROYED';

/** Every key version state, in lifecycle order. */
export const KEY_VERSION_STATES: readonly KeyVersionState[] = ['PENDING', 'ENABLED', 'DISABLED', 'DESTROY_SCHEDULED', 'DESTROYING', 'DESTROYED'];

/** Per-key rules for signing, verification, automatic rotation and destruction. */
export interface KeyPolicy {
  /** Versions below this may not sign, even when named explicitly. */
  minSignVersion: number;
  /** Versions below this are no longer trusted for verification (their public keys are refused). */
  minVerifyVersion: number;
  /** Rotate automatically this long after the last rotation; null for never. */
  autoRotatePeriodMs: number | null;
  /** Scheduling a version's destruction needs an approver's approval. */
  destroyNeedsApproval: boolean;
}

/** The policy of a new key. */
export const DEFAULT_KEY_POLICY: Readonly<KeyPolicy> = { minSignVersion: 1, minVerifyVersion: 1, autoRotatePeriodMs: null, destroyNeedsApproval: false };

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
  /** The backend object label (`backendLabel(name, version)`), by which a PENDING version's object is found after a crash. */
  label: string | null;
  /** When the version was last disabled; null while it never was or after it was enabled again. */
  disabledAt: Date | null;
  /** Set when disabled as compromised: the version never signs again and its trust window closes here. */
  revokedAt: Date | null;
  /** The end of the destruction window while DESTROY_SCHEDULED (or DESTROYING). */
  destroyAt: Date | null;
  /** When the backend object was destroyed; the public key stays. */
  destroyedAt: Date | null;
}

/** One stored key with its versions, oldest first. */
export interface KeyRecord {
  name: string;
  algorithm: Algorithm;
  backend: string;
  primaryVersion: number;
  createdAt: Date;
  versions: KeyVersionRecord[];
  policy: KeyPolicy;
  /** When the scheduler rotates the key next; null without auto-rotation. */
  nextRotationAt: Date | null;
}

/** What `insertKey` takes of a key: the policy starts as DEFAULT_KEY_POLICY. */
export type NewKey = Pick<KeyRecord, 'name' | 'algorithm' | 'backend' | 'createdAt'>;

/** What `insertKey` takes of a first version; the lifecycle fields start empty. */
export type NewVersion = Pick<KeyVersionRecord, 'uri' | 'state' | 'generated' | 'spki' | 'createdAt'> & { label?: string | null };

/** The changeable lifecycle fields of a key version. */
export type VersionPatch = Partial<Pick<KeyVersionRecord, 'state' | 'disabledAt' | 'revokedAt' | 'destroyAt' | 'destroyedAt'>>;

/** What an approval asks for: destroying a key version, or a policy change that weakens protection. */
export type ApprovalKind = 'destroy' | 'policy';

/** Where an approval stands; only PENDING ones can be decided. */
export type ApprovalState = 'PENDING' | 'APPROVED' | 'REJECTED' | 'EXPIRED' | 'CANCELLED';

/** Every approval state. */
export const APPROVAL_STATES: readonly ApprovalState[] = ['PENDING', 'APPROVED', 'REJECTED', 'EXPIRED', 'CANCELLED'];

/** A certificate holder that asked for or decided something: subject and SHA-256 fingerprint. */
export interface ActorRef {
  subject: string;
  fingerprint: string;
}

/** A request one person makes and another (an approver) must approve before it takes effect. */
export interface ApprovalRecord {
  id: string;
  kind: ApprovalKind;
  /** The key name. */
  key: string;
  /** The key version concerned (destroy), or null (policy). */
  version: number | null;
  requestedBy: ActorRef;
  requestedAt: Date;
  expiresAt: Date;
  state: ApprovalState;
  decidedBy: ActorRef | null;
  decidedAt: Date | null;
  /** The reason given with a rejection or cancellation. */
  reason: string | null;
  /** What takes effect on approval: `{ windowMs }` for destroy, the policy fields for policy. */
  payload: Record<string, unknown>;
}

/**
 * A key transition statement of the trusted-root key: version `version` follows `version - 1`; the exact
 * statement bytes and the detached signatures by both versions. Never changes once recorded.
 */
export interface RootKeyTransitionRecord {
  /** The root key's name. */
  key: string;
  version: number;
  statement: Buffer;
  /** By version `version - 1`. */
  previousSignature: Buffer;
  /** By version `version`. */
  signature: Buffer;
  createdAt: Date;
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
  /** DER of the EK certificate the runner presented at enrollment; null when it sent none (or enrolled before this was kept). */
  ekCertificate: Buffer | null;
  /** TPMT_PUBLIC of the EK credential activation was made for; null for enrollments recorded before it was kept. */
  ekPublic: Buffer | null;
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
  /** The version of the identity CA key that signed it (its generation). */
  caVersion: number;
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
  /** The identity CA generation (key version) that issued it: the CRL of that generation lists it. */
  caVersion: number;
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
  insertKey(key: NewKey, first: NewVersion): KeyRecord;
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
  /** Every CA certificate recorded for the versions of key `keyName`, oldest first. */
  listCaCertificates(keyName: string): CaCertificateRecord[];
  /** Records a root key transition statement; KEY_EXISTS (and no change) when that version already has one. Durable when it returns. */
  insertRootKeyTransition(rec: RootKeyTransitionRecord): void;
  /** The transition statements of root key `key`, by version. */
  listRootKeyTransitions(key: string): RootKeyTransitionRecord[];
  /** What this EK last proved at enrollment or renewal, or null when it never enrolled. */
  getEnrollment(ekHash: string): EnrollmentRecord | null;
  /** Records (or replaces) an EK's enrollment state; durable when it returns. */
  putEnrollment(rec: EnrollmentRecord): void;
  /**
   * A renewal's write: replaces the EK's enrollment state only while its record is still the one the renewal was
   * judged against (same AK, last written at `judged`); false (and no change) when it is gone (forgotten by an
   * admin meanwhile) or was written since (a new enrollment). Durable when it returns.
   */
  updateEnrollment(rec: EnrollmentRecord, judged: Date): boolean;
  /** Enrollments whose EK hash starts with `ekHashPrefix` (lower-case hex; empty for all), sorted by EK hash. */
  listEnrollments(ekHashPrefix: string): EnrollmentRecord[];
  /** Deletes an EK's enrollment record: true when there was one, false (and no change) otherwise. Durable when it returns. */
  deleteEnrollment(ekHash: string): boolean;
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
  /**
   * Runs `fn` in one transaction: every write inside commits together or not at all. Nested calls join
   * the outer transaction.
   */
  transaction<T>(fn: () => T): T;
  /** Adds a PENDING version numbered one above the key's highest, with its backend label; nothing else changes. */
  insertPendingVersion(name: string, label: (version: number) => string, createdAt: Date): KeyVersionRecord;
  /** Turns a PENDING version ENABLED with its backend object, and (when `primary`) makes it the primary, in one transaction. */
  completeVersion(name: string, version: number, made: { uri: string; spki: Buffer }, opts: { primary: boolean; nextRotationAt: Date | null }): KeyRecord;
  /** Drops a PENDING version (its backend object was never made or was removed); FAILED_PRECONDITION for any other state. */
  deletePendingVersion(name: string, version: number): void;
  /** Changes a version's lifecycle fields if its state is one of `expect` (compare and set); FAILED_PRECONDITION otherwise. */
  updateVersion(name: string, version: number, expect: readonly KeyVersionState[], patch: VersionPatch): KeyVersionRecord;
  /** Sets a key's policy and next rotation time. */
  updateKey(name: string, patch: { policy?: KeyPolicy | undefined; nextRotationAt?: Date | null | undefined }): KeyRecord;
  /** Versions in any of the given states, ordered by name and version. */
  versionsInState(states: readonly KeyVersionState[]): KeyVersionRecord[];
  /**
   * Records whether the backend is known to hold a version disabled too (true once a disable reached it or the
   * backend has no key states of its own; false when it is enabled again), so start-up sends a missed disable once.
   */
  setBackendDisabled(name: string, version: number, disabled: boolean): void;
  /** DISABLED and DESTROY_SCHEDULED versions whose disable is not known to have reached their backend, ordered by name and version. */
  versionsAwaitingBackendDisable(): KeyVersionRecord[];
  /** Names of keys whose `nextRotationAt` is at or before `now`. */
  keysDueForRotation(now: Date): string[];
  /** Records a new approval. */
  insertApproval(rec: ApprovalRecord): void;
  /** One approval, or null. */
  getApproval(id: string): ApprovalRecord | null;
  /** Approvals, newest first, optionally of one state and/or one key. */
  listApprovals(filter: { state?: ApprovalState | undefined; key?: string | undefined }): ApprovalRecord[];
  /** Decides an approval if it is still in state `expect`; FAILED_PRECONDITION otherwise. */
  updateApproval(id: string, expect: ApprovalState, patch: { state: ApprovalState; decidedBy: ActorRef | null; decidedAt: Date; reason: string | null }): ApprovalRecord;
  close(): void;
}
