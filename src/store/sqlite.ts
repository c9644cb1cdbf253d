import { DatabaseSync, type StatementSync } from 'node:sqlite';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { SigilError } from '../errors.ts';
import type { Algorithm } from '../signers/signer.ts';
import {
  DEFAULT_KEY_POLICY,
  type ActorRef,
  type ApprovalRecord,
  type ApprovalState,
  type CaCertificateRecord,
  type EnrollmentRecord,
  type KeyPolicy,
  type KeyRecord,
  type KeyVersionRecord,
  type KeyVersionState,
  type NewKey,
  type NewVersion,
  type IssuedCertificateRecord,
  type RevokedBuilderRecord,
  type RevokedIdentityRecord,
  type RootKeyTransitionRecord,
  type Store,
  type VersionPatch,
} from './store.ts';

// Numbered migrations; the store applies those above `PRAGMA user_version` in one transaction each.
const MIGRATIONS: readonly string[] = [
  `CREATE TABLE keys (
     name TEXT PRIMARY KEY,
     algorithm TEXT NOT NULL,
     backend TEXT NOT NULL,
     primary_version INTEGER NOT NULL,
     created_at INTEGER NOT NULL
   ) STRICT;
   CREATE TABLE key_versions (
     name TEXT NOT NULL REFERENCES keys(name),
     version INTEGER NOT NULL,
     uri TEXT NOT NULL,
     state TEXT NOT NULL,
     generated INTEGER NOT NULL,
     spki BLOB NOT NULL,
     created_at INTEGER NOT NULL,
     PRIMARY KEY (name, version)
   ) STRICT;
   CREATE INDEX key_versions_uri ON key_versions(uri);`,
  `CREATE TABLE ca_certificates (
     id INTEGER PRIMARY KEY AUTOINCREMENT,
     key_version TEXT NOT NULL,
     der BLOB NOT NULL,
     not_after INTEGER NOT NULL,
     created_at INTEGER NOT NULL
   ) STRICT;
   CREATE INDEX ca_certificates_key_version ON ca_certificates(key_version, id);`,
  `CREATE TABLE enrollments (
     ek_hash TEXT PRIMARY KEY,
     ak_name TEXT NOT NULL,
     ak_public BLOB NOT NULL,
     policy TEXT NOT NULL,
     reset_count INTEGER NOT NULL,
     restart_count INTEGER NOT NULL,
     clock TEXT NOT NULL,
     updated_at INTEGER NOT NULL
   ) STRICT;`,
  `CREATE TABLE join_tokens_used (
     token_hash TEXT PRIMARY KEY,
     policy TEXT NOT NULL,
     used_at INTEGER NOT NULL
   ) STRICT;`,
  // 5: key lifecycle (issue 4): version states and times, key policy, approvals.
  `ALTER TABLE key_versions ADD COLUMN label TEXT;
   ALTER TABLE key_versions ADD COLUMN disabled_at INTEGER;
   ALTER TABLE key_versions ADD COLUMN revoked_at INTEGER;
   ALTER TABLE key_versions ADD COLUMN destroy_at INTEGER;
   ALTER TABLE key_versions ADD COLUMN destroyed_at INTEGER;
   CREATE INDEX key_versions_state ON key_versions(state, destroy_at);
   ALTER TABLE keys ADD COLUMN min_sign_version INTEGER NOT NULL DEFAULT 1;
   ALTER TABLE keys ADD COLUMN min_verify_version INTEGER NOT NULL DEFAULT 1;
   ALTER TABLE keys ADD COLUMN auto_rotate_period_ms INTEGER;
   ALTER TABLE keys ADD COLUMN destroy_needs_approval INTEGER NOT NULL DEFAULT 0;
   ALTER TABLE keys ADD COLUMN next_rotation_at INTEGER;
   CREATE INDEX keys_next_rotation ON keys(next_rotation_at) WHERE next_rotation_at IS NOT NULL;
   CREATE TABLE approvals (
     id TEXT PRIMARY KEY,
     kind TEXT NOT NULL,
     key_name TEXT NOT NULL REFERENCES keys(name),
     version INTEGER,
     requested_by_subject TEXT NOT NULL,
     requested_by_fingerprint TEXT NOT NULL,
     requested_at INTEGER NOT NULL,
     expires_at INTEGER NOT NULL,
     state TEXT NOT NULL,
     decided_by_subject TEXT,
     decided_by_fingerprint TEXT,
     decided_at INTEGER,
     reason TEXT,
     payload TEXT NOT NULL
   ) STRICT;
   CREATE INDEX approvals_state ON approvals(state, expires_at);
   CREATE INDEX approvals_key ON approvals(key_name, requested_at);`,
  // Migration 6: revocation. not_after and ek_hash of a revoked identity are null when not known.
  `CREATE TABLE issued_certificates (
     serial TEXT PRIMARY KEY,
     ek_hash TEXT NOT NULL,
     san TEXT NOT NULL,
     not_after INTEGER NOT NULL,
     issued_at INTEGER NOT NULL
   ) STRICT;
   CREATE TABLE revoked_identities (
     serial TEXT PRIMARY KEY,
     reason TEXT NOT NULL,
     revoked_at INTEGER NOT NULL,
     revoked_by TEXT NOT NULL,
     not_after INTEGER,
     ek_hash TEXT
   ) STRICT;
   CREATE TABLE revoked_builders (
     ek_hash TEXT NOT NULL,
     ak_name TEXT NOT NULL, -- '' when the whole TPM is revoked
     reason TEXT NOT NULL,
     revoked_at INTEGER NOT NULL,
     revoked_by TEXT NOT NULL,
     PRIMARY KEY (ek_hash, ak_name)
   ) STRICT;
   CREATE TABLE crl_numbers (
     id INTEGER PRIMARY KEY CHECK (id = 1),
     last INTEGER NOT NULL
   ) STRICT;`,
  // Migration 7: whether a disable reached the backend (null: not known, so start-up sends it once more).
  `ALTER TABLE key_versions ADD COLUMN backend_disabled INTEGER;`,
  // Migration 8: identity CA generations. Which version of the identity CA key issued a certificate (every
  // certificate issued before this migration came from version 1: the key could not be rotated then).
  `ALTER TABLE issued_certificates ADD COLUMN ca_version INTEGER NOT NULL DEFAULT 1;
   ALTER TABLE revoked_identities ADD COLUMN ca_version INTEGER NOT NULL DEFAULT 1;`,
  // Migration 9: the trusted-root key's transition statements (a TUF-style chain of root keys). Verifiers
  // follow them from a pinned key, so once made they never change and are never removed.
  `CREATE TABLE root_key_transitions (
     key_name TEXT NOT NULL,
     version INTEGER NOT NULL,
     statement BLOB NOT NULL,
     previous_signature BLOB NOT NULL,
     signature BLOB NOT NULL,
     created_at INTEGER NOT NULL,
     PRIMARY KEY (key_name, version)
   ) STRICT;
   CREATE TRIGGER root_key_transitions_never_change BEFORE UPDATE ON root_key_transitions
   BEGIN SELECT RAISE(ABORT, 'root key transition statements never change'); END;
   CREATE TRIGGER root_key_transitions_never_removed BEFORE DELETE ON root_key_transitions
   BEGIN SELECT RAISE(ABORT, 'root key transition statements are never removed'); END;`,
  // Migration 10: what renewals re-check the EK's trust with: the EK certificate the runner presented (null when
  // it sent none) and the EK public area credential activation used. Rows from before hold null in both; the
  // verifier then re-checks them by the allowlist alone (docs/attestation.md, "Renewal").
  `ALTER TABLE enrollments ADD COLUMN ek_certificate BLOB;
   ALTER TABLE enrollments ADD COLUMN ek_public BLOB;`,
];

interface EnrollmentRow {
  ek_hash: string;
  ak_name: string;
  ak_public: Uint8Array;
  policy: string;
  reset_count: number;
  restart_count: number;
  clock: string;
  updated_at: number;
  ek_certificate: Uint8Array | null;
  ek_public: Uint8Array | null;
}

/** A row of the enrollments table as the store hands it out. */
function enrollmentOf(r: EnrollmentRow): EnrollmentRecord {
  return {
    ekHash: r.ek_hash,
    akName: r.ak_name,
    akPublic: Buffer.from(r.ak_public),
    policy: r.policy,
    resetCount: r.reset_count,
    restartCount: r.restart_count,
    clock: BigInt(r.clock),
    updatedAt: new Date(r.updated_at),
    ekCertificate: r.ek_certificate === null ? null : Buffer.from(r.ek_certificate),
    ekPublic: r.ek_public === null ? null : Buffer.from(r.ek_public),
  };
}

interface KeyRow {
  name: string;
  algorithm: string;
  backend: string;
  primary_version: number;
  created_at: number;
  min_sign_version: number;
  min_verify_version: number;
  auto_rotate_period_ms: number | null;
  destroy_needs_approval: number;
  next_rotation_at: number | null;
}
interface ApprovalRow {
  id: string;
  kind: string;
  key_name: string;
  version: number | null;
  requested_by_subject: string;
  requested_by_fingerprint: string;
  requested_at: number;
  expires_at: number;
  state: string;
  decided_by_subject: string | null;
  decided_by_fingerprint: string | null;
  decided_at: number | null;
  reason: string | null;
  payload: string;
}
interface VersionRow {
  name: string;
  version: number;
  uri: string;
  state: string;
  generated: number;
  spki: Uint8Array;
  created_at: number;
  label: string | null;
  disabled_at: number | null;
  revoked_at: number | null;
  destroy_at: number | null;
  destroyed_at: number | null;
}
interface IssuedRow {
  serial: string;
  ek_hash: string;
  san: string;
  not_after: number;
  issued_at: number;
  ca_version: number;
}
interface RevokedIdentityRow {
  serial: string;
  reason: string;
  revoked_at: number;
  revoked_by: string;
  not_after: number | null;
  ek_hash: string | null;
  ca_version: number;
}
interface RevokedBuilderRow {
  ek_hash: string;
  ak_name: string;
  reason: string;
  revoked_at: number;
  revoked_by: string;
}
interface TransitionRow {
  key_name: string;
  version: number;
  statement: Uint8Array;
  previous_signature: Uint8Array;
  signature: Uint8Array;
  created_at: number;
}
interface CaRow {
  key_version: string;
  der: Uint8Array;
  not_after: number;
  created_at: number;
}

/** The embedded default store: one SQLite file in WAL mode, synchronous=FULL so a commit is durable. */
export class SqliteStore implements Store {
  readonly #db: DatabaseSync;
  readonly #q: Record<'insertKey' | 'insertVersion' | 'getKey' | 'getVersions' | 'listKeys' | 'listVersions' | 'uriInUse' | 'insertCa' | 'latestCa' | 'listCa' | 'getEnrollment' | 'putEnrollment' | 'updateEnrollment' | 'listEnrollments' | 'deleteEnrollment' | 'useJoinToken'
    | 'insertIssued' | 'getIssued' | 'insertRevokedIdentity' | 'listRevokedIdentities' | 'insertRevokedBuilder' | 'listRevokedBuilders' | 'nextCrlNumber'
    | 'getVersion' | 'maxVersion' | 'completeVersion' | 'setPrimary' | 'deleteVersion' | 'updateVersion' | 'updateKey' | 'dueRotations'
    | 'insertApproval' | 'getApproval' | 'updateApproval' | 'insertTransition' | 'listTransitions', StatementSync>;
  #depth = 0;

  constructor(path: string) {
    if (path !== ':memory:') mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
    this.#db = new DatabaseSync(path);
    this.#db.exec('PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;');
    this.#migrate();
    this.#q = {
      insertKey: this.#db.prepare('INSERT INTO keys (name, algorithm, backend, primary_version, created_at) VALUES (?, ?, ?, ?, ?)'),
      insertVersion: this.#db.prepare('INSERT INTO key_versions (name, version, uri, state, generated, spki, created_at, label) VALUES (?, ?, ?, ?, ?, ?, ?, ?)'),
      getVersion: this.#db.prepare('SELECT * FROM key_versions WHERE name = ? AND version = ?'),
      maxVersion: this.#db.prepare('SELECT max(version) AS v FROM key_versions WHERE name = ?'),
      completeVersion: this.#db.prepare("UPDATE key_versions SET state = 'ENABLED', uri = ?, spki = ? WHERE name = ? AND version = ? AND state = 'PENDING'"),
      setPrimary: this.#db.prepare('UPDATE keys SET primary_version = ?, next_rotation_at = ? WHERE name = ?'),
      deleteVersion: this.#db.prepare("DELETE FROM key_versions WHERE name = ? AND version = ? AND state = 'PENDING'"),
      updateVersion: this.#db.prepare(
        'UPDATE key_versions SET state = ?, disabled_at = ?, revoked_at = ?, destroy_at = ?, destroyed_at = ? WHERE name = ? AND version = ?',
      ),
      updateKey: this.#db.prepare(
        'UPDATE keys SET min_sign_version = ?, min_verify_version = ?, auto_rotate_period_ms = ?, destroy_needs_approval = ?, next_rotation_at = ? WHERE name = ?',
      ),
      dueRotations: this.#db.prepare('SELECT name FROM keys WHERE next_rotation_at IS NOT NULL AND next_rotation_at <= ? ORDER BY next_rotation_at, name'),
      insertApproval: this.#db.prepare(
        `INSERT INTO approvals (id, kind, key_name, version, requested_by_subject, requested_by_fingerprint, requested_at, expires_at, state,
           decided_by_subject, decided_by_fingerprint, decided_at, reason, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      ),
      getApproval: this.#db.prepare('SELECT * FROM approvals WHERE id = ?'),
      updateApproval: this.#db.prepare(
        'UPDATE approvals SET state = ?, decided_by_subject = ?, decided_by_fingerprint = ?, decided_at = ?, reason = ? WHERE id = ? AND state = ?',
      ),
      getKey: this.#db.prepare('SELECT * FROM keys WHERE name = ?'),
      getVersions: this.#db.prepare('SELECT * FROM key_versions WHERE name = ? ORDER BY version'),
      listKeys: this.#db.prepare("SELECT * FROM keys WHERE substr(name, 1, length(?)) = ? ORDER BY name"),
      listVersions: this.#db.prepare("SELECT * FROM key_versions WHERE substr(name, 1, length(?)) = ? ORDER BY name, version"),
      uriInUse: this.#db.prepare('SELECT 1 FROM key_versions kv JOIN keys k ON k.name = kv.name WHERE k.backend = ? AND kv.uri = ? LIMIT 1'),
      insertTransition: this.#db.prepare(
        'INSERT INTO root_key_transitions (key_name, version, statement, previous_signature, signature, created_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING',
      ),
      listTransitions: this.#db.prepare('SELECT * FROM root_key_transitions WHERE key_name = ? ORDER BY version'),
      insertCa: this.#db.prepare('INSERT INTO ca_certificates (key_version, der, not_after, created_at) VALUES (?, ?, ?, ?)'),
      latestCa: this.#db.prepare('SELECT * FROM ca_certificates WHERE key_version = ? ORDER BY id DESC LIMIT 1'),
      listCa: this.#db.prepare("SELECT * FROM ca_certificates WHERE substr(key_version, 1, length(?) + 1) = ? || '@' ORDER BY id"),
      getEnrollment: this.#db.prepare('SELECT * FROM enrollments WHERE ek_hash = ?'),
      listEnrollments: this.#db.prepare('SELECT * FROM enrollments WHERE substr(ek_hash, 1, length(?)) = ? ORDER BY ek_hash'),
      deleteEnrollment: this.#db.prepare('DELETE FROM enrollments WHERE ek_hash = ?'),
      useJoinToken: this.#db.prepare('INSERT INTO join_tokens_used (token_hash, policy, used_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING'),
      insertIssued: this.#db.prepare('INSERT INTO issued_certificates (serial, ek_hash, san, not_after, issued_at, ca_version) VALUES (?, ?, ?, ?, ?, ?)'),
      getIssued: this.#db.prepare('SELECT * FROM issued_certificates WHERE serial = ?'),
      insertRevokedIdentity: this.#db.prepare(
        'INSERT INTO revoked_identities (serial, reason, revoked_at, revoked_by, not_after, ek_hash, ca_version) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING',
      ),
      listRevokedIdentities: this.#db.prepare('SELECT * FROM revoked_identities ORDER BY revoked_at, serial'),
      insertRevokedBuilder: this.#db.prepare('INSERT INTO revoked_builders (ek_hash, ak_name, reason, revoked_at, revoked_by) VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING'),
      listRevokedBuilders: this.#db.prepare('SELECT * FROM revoked_builders ORDER BY revoked_at, ek_hash, ak_name'),
      nextCrlNumber: this.#db.prepare('INSERT INTO crl_numbers (id, last) VALUES (1, 1) ON CONFLICT (id) DO UPDATE SET last = last + 1 RETURNING last'),
      updateEnrollment: this.#db.prepare(
        `UPDATE enrollments SET ak_public = ?, policy = ?, reset_count = ?, restart_count = ?, clock = ?, updated_at = ?, ek_certificate = ?, ek_public = ?
         WHERE ek_hash = ? AND ak_name = ? AND updated_at = ?`,
      ),
      putEnrollment: this.#db.prepare(
        `INSERT INTO enrollments (ek_hash, ak_name, ak_public, policy, reset_count, restart_count, clock, updated_at, ek_certificate, ek_public)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT (ek_hash) DO UPDATE SET ak_name = excluded.ak_name, ak_public = excluded.ak_public, policy = excluded.policy,
           reset_count = excluded.reset_count, restart_count = excluded.restart_count, clock = excluded.clock, updated_at = excluded.updated_at,
           ek_certificate = excluded.ek_certificate, ek_public = excluded.ek_public`,
      ),
    };
  }

  #migrate(): void {
    const { user_version: current } = this.#db.prepare('PRAGMA user_version').get() as { user_version: number };
    if (current > MIGRATIONS.length) {
      throw new SigilError('FAILED_PRECONDITION', `store schema version ${current} is newer than this sigild understands (${MIGRATIONS.length})`);
    }
    for (let v = current; v < MIGRATIONS.length; v++) {
      this.#tx(() => {
        this.#db.exec(MIGRATIONS[v]!);
        this.#db.exec(`PRAGMA user_version = ${v + 1}`);
      });
    }
  }

  #tx<T>(fn: () => T): T {
    // Nested calls join the outer transaction; only the outermost commits or rolls back.
    if (this.#depth > 0) {
      this.#depth++;
      try {
        return fn();
      } finally {
        this.#depth--;
      }
    }
    this.#db.exec('BEGIN IMMEDIATE');
    this.#depth = 1;
    try {
      const out = fn();
      this.#db.exec('COMMIT');
      return out;
    } catch (err) {
      this.#db.exec('ROLLBACK');
      throw err;
    } finally {
      this.#depth = 0;
    }
  }

  transaction<T>(fn: () => T): T {
    return this.#tx(fn);
  }

  insertKey(key: NewKey, first: NewVersion): KeyRecord {
    return this.#tx(() => {
      if (this.#q.getKey.get(key.name)) throw new SigilError('KEY_EXISTS', `key ${key.name} already exists`);
      this.#q.insertKey.run(key.name, key.algorithm, key.backend, 1, key.createdAt.getTime());
      this.#q.insertVersion.run(key.name, 1, first.uri, first.state, first.generated ? 1 : 0, first.spki, first.createdAt.getTime(), first.label ?? null);
      return this.#getKey(key.name);
    });
  }

  #getKey(name: string): KeyRecord {
    const k = this.getKey(name);
    if (!k) throw new SigilError('KEY_NOT_FOUND', `no key named ${name}`);
    return k;
  }

  #getVersion(name: string, version: number): KeyVersionRecord {
    const row = this.#q.getVersion.get(name, version) as VersionRow | undefined;
    if (!row) throw new SigilError('KEY_NOT_FOUND', `key ${name} has no version ${version}`);
    return toVersion(row);
  }

  insertPendingVersion(name: string, label: (version: number) => string, createdAt: Date): KeyVersionRecord {
    return this.#tx(() => {
      this.#getKey(name);
      const { v } = this.#q.maxVersion.get(name) as { v: number | null };
      const version = (v ?? 0) + 1;
      this.#q.insertVersion.run(name, version, '', 'PENDING', 1, Buffer.alloc(0), createdAt.getTime(), label(version));
      return this.#getVersion(name, version);
    });
  }

  completeVersion(name: string, version: number, made: { uri: string; spki: Buffer }, opts: { primary: boolean; nextRotationAt: Date | null }): KeyRecord {
    return this.#tx(() => {
      const n = Number(this.#q.completeVersion.run(made.uri, made.spki, name, version).changes);
      if (n !== 1) throw new SigilError('FAILED_PRECONDITION', `key ${name}@${version} is not pending`);
      if (opts.primary) this.#q.setPrimary.run(version, opts.nextRotationAt?.getTime() ?? null, name);
      return this.#getKey(name);
    });
  }

  deletePendingVersion(name: string, version: number): void {
    const n = Number(this.#q.deleteVersion.run(name, version).changes);
    if (n !== 1) throw new SigilError('FAILED_PRECONDITION', `key ${name}@${version} is not pending`);
  }

  updateVersion(name: string, version: number, expect: readonly KeyVersionState[], patch: VersionPatch): KeyVersionRecord {
    return this.#tx(() => {
      const cur = this.#getVersion(name, version);
      if (!expect.includes(cur.state)) throw new SigilError('FAILED_PRECONDITION', `key ${name}@${version} is ${cur.state}`);
      const next = { ...cur, ...patch };
      this.#q.updateVersion.run(next.state, ms(next.disabledAt), ms(next.revokedAt), ms(next.destroyAt), ms(next.destroyedAt), name, version);
      return next;
    });
  }

  updateKey(name: string, patch: { policy?: KeyPolicy | undefined; nextRotationAt?: Date | null | undefined }): KeyRecord {
    return this.#tx(() => {
      const cur = this.#getKey(name);
      const p = patch.policy ?? cur.policy;
      const next = patch.nextRotationAt === undefined ? cur.nextRotationAt : patch.nextRotationAt;
      this.#q.updateKey.run(p.minSignVersion, p.minVerifyVersion, p.autoRotatePeriodMs, p.destroyNeedsApproval ? 1 : 0, ms(next), name);
      return this.#getKey(name);
    });
  }

  setBackendDisabled(name: string, version: number, disabled: boolean): void {
    this.#db.prepare('UPDATE key_versions SET backend_disabled = ? WHERE name = ? AND version = ?').run(disabled ? 1 : null, name, version);
  }

  versionsAwaitingBackendDisable(): KeyVersionRecord[] {
    const rows = this.#db
      .prepare("SELECT * FROM key_versions WHERE state IN ('DISABLED', 'DESTROY_SCHEDULED') AND backend_disabled IS NULL ORDER BY name, version")
      .all();
    return (rows as unknown as VersionRow[]).map(toVersion);
  }

  versionsInState(states: readonly KeyVersionState[]): KeyVersionRecord[] {
    if (states.length === 0) return [];
    const rows = this.#db.prepare(`SELECT * FROM key_versions WHERE state IN (${states.map(() => '?').join(', ')}) ORDER BY name, version`).all(...states);
    return (rows as unknown as VersionRow[]).map(toVersion);
  }

  keysDueForRotation(now: Date): string[] {
    return (this.#q.dueRotations.all(now.getTime()) as Array<{ name: string }>).map((r) => r.name);
  }

  insertApproval(a: ApprovalRecord): void {
    this.#q.insertApproval.run(
      a.id, a.kind, a.key, a.version, a.requestedBy.subject, a.requestedBy.fingerprint, a.requestedAt.getTime(), a.expiresAt.getTime(), a.state,
      a.decidedBy?.subject ?? null, a.decidedBy?.fingerprint ?? null, ms(a.decidedAt), a.reason, JSON.stringify(a.payload),
    );
  }

  getApproval(id: string): ApprovalRecord | null {
    const r = this.#q.getApproval.get(id) as ApprovalRow | undefined;
    return r ? toApproval(r) : null;
  }

  listApprovals(filter: { state?: ApprovalState | undefined; key?: string | undefined }): ApprovalRecord[] {
    const where: string[] = [];
    const args: string[] = [];
    if (filter.state !== undefined) (where.push('state = ?'), args.push(filter.state));
    if (filter.key !== undefined) (where.push('key_name = ?'), args.push(filter.key));
    const sql = `SELECT * FROM approvals ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY requested_at DESC, rowid DESC`;
    return (this.#db.prepare(sql).all(...args) as unknown as ApprovalRow[]).map(toApproval);
  }

  updateApproval(id: string, expect: ApprovalState, patch: { state: ApprovalState; decidedBy: ActorRef | null; decidedAt: Date; reason: string | null }): ApprovalRecord {
    return this.#tx(() => {
      const n = Number(
        this.#q.updateApproval.run(patch.state, patch.decidedBy?.subject ?? null, patch.decidedBy?.fingerprint ?? null, patch.decidedAt.getTime(), patch.reason, id, expect).changes,
      );
      const cur = this.getApproval(id);
      if (!cur) throw new SigilError('KEY_NOT_FOUND', `no approval ${id}`);
      if (n !== 1) throw new SigilError('FAILED_PRECONDITION', `approval ${id} is ${cur.state}, not ${expect}`);
      return cur;
    });
  }

  getKey(name: string): KeyRecord | null {
    const row = this.#q.getKey.get(name) as KeyRow | undefined;
    if (!row) return null;
    return toKey(row, (this.#q.getVersions.all(name) as unknown as VersionRow[]).map(toVersion));
  }

  listKeys(prefix: string): KeyRecord[] {
    const rows = this.#q.listKeys.all(prefix, prefix) as unknown as KeyRow[];
    const versions = new Map<string, KeyVersionRecord[]>();
    for (const v of this.#q.listVersions.all(prefix, prefix) as unknown as VersionRow[]) {
      let list = versions.get(v.name);
      if (!list) versions.set(v.name, (list = []));
      list.push(toVersion(v));
    }
    return rows.map((r) => toKey(r, versions.get(r.name) ?? []));
  }

  uriInUse(backend: string, uri: string): boolean {
    return this.#q.uriInUse.get(backend, uri) !== undefined;
  }

  insertCaCertificate(rec: CaCertificateRecord): void {
    this.#q.insertCa.run(rec.keyVersion, rec.der, rec.notAfter.getTime(), rec.createdAt.getTime());
  }

  latestCaCertificate(keyVersion: string): CaCertificateRecord | null {
    const r = this.#q.latestCa.get(keyVersion) as CaRow | undefined;
    if (!r) return null;
    return { keyVersion: r.key_version, der: Buffer.from(r.der), notAfter: new Date(r.not_after), createdAt: new Date(r.created_at) };
  }

  listCaCertificates(keyName: string): CaCertificateRecord[] {
    return (this.#q.listCa.all(keyName, keyName) as unknown as CaRow[]).map((r) => ({ keyVersion: r.key_version, der: Buffer.from(r.der), notAfter: new Date(r.not_after), createdAt: new Date(r.created_at) }));
  }

  insertRootKeyTransition(rec: RootKeyTransitionRecord): void {
    const r = this.#q.insertTransition.run(rec.key, rec.version, rec.statement, rec.previousSignature, rec.signature, rec.createdAt.getTime());
    if (r.changes === 0) throw new SigilError('KEY_EXISTS', `${rec.key}@${rec.version} already has a transition statement`);
  }

  listRootKeyTransitions(key: string): RootKeyTransitionRecord[] {
    return (this.#q.listTransitions.all(key) as unknown as TransitionRow[]).map((r) => ({
      key: r.key_name,
      version: r.version,
      statement: Buffer.from(r.statement),
      previousSignature: Buffer.from(r.previous_signature),
      signature: Buffer.from(r.signature),
      createdAt: new Date(r.created_at),
    }));
  }

  getEnrollment(ekHash: string): EnrollmentRecord | null {
    const r = this.#q.getEnrollment.get(ekHash) as EnrollmentRow | undefined;
    return r ? enrollmentOf(r) : null;
  }

  listEnrollments(ekHashPrefix: string): EnrollmentRecord[] {
    return (this.#q.listEnrollments.all(ekHashPrefix, ekHashPrefix) as unknown as EnrollmentRow[]).map(enrollmentOf);
  }

  deleteEnrollment(ekHash: string): boolean {
    return Number(this.#q.deleteEnrollment.run(ekHash).changes) === 1;
  }

  useJoinToken(tokenHash: string, policy: string, at: Date): boolean {
    return Number(this.#q.useJoinToken.run(tokenHash, policy, at.getTime()).changes) === 1;
  }

  updateEnrollment(rec: EnrollmentRecord, judged: Date): boolean {
    const r = this.#q.updateEnrollment.run(rec.akPublic, rec.policy, rec.resetCount, rec.restartCount, rec.clock.toString(), rec.updatedAt.getTime(), rec.ekCertificate, rec.ekPublic, rec.ekHash, rec.akName, judged.getTime());
    return Number(r.changes) === 1;
  }

  putEnrollment(rec: EnrollmentRecord): void {
    this.#q.putEnrollment.run(rec.ekHash, rec.akName, rec.akPublic, rec.policy, rec.resetCount, rec.restartCount, rec.clock.toString(), rec.updatedAt.getTime(), rec.ekCertificate, rec.ekPublic);
  }

  insertIssuedCertificate(rec: IssuedCertificateRecord): void {
    this.#q.insertIssued.run(rec.serial, rec.ekHash, rec.san, rec.notAfter.getTime(), rec.issuedAt.getTime(), rec.caVersion);
  }

  getIssuedCertificate(serial: string): IssuedCertificateRecord | null {
    const r = this.#q.getIssued.get(serial) as IssuedRow | undefined;
    if (!r) return null;
    return { serial: r.serial, ekHash: r.ek_hash, san: r.san, notAfter: new Date(r.not_after), issuedAt: new Date(r.issued_at), caVersion: r.ca_version };
  }

  insertRevokedIdentity(rec: RevokedIdentityRecord): boolean {
    const res = this.#q.insertRevokedIdentity.run(rec.serial, rec.reason, rec.revokedAt.getTime(), rec.revokedBy, rec.notAfter?.getTime() ?? null, rec.ekHash, rec.caVersion);
    return Number(res.changes) === 1;
  }

  listRevokedIdentities(): RevokedIdentityRecord[] {
    return (this.#q.listRevokedIdentities.all() as unknown as RevokedIdentityRow[]).map((r) => ({
      serial: r.serial,
      reason: r.reason,
      revokedAt: new Date(r.revoked_at),
      revokedBy: r.revoked_by,
      notAfter: r.not_after === null ? null : new Date(r.not_after),
      ekHash: r.ek_hash,
      caVersion: r.ca_version,
    }));
  }

  insertRevokedBuilder(rec: RevokedBuilderRecord): boolean {
    const res = this.#q.insertRevokedBuilder.run(rec.ekHash, rec.akName ?? '', rec.reason, rec.revokedAt.getTime(), rec.revokedBy);
    return Number(res.changes) === 1;
  }

  listRevokedBuilders(): RevokedBuilderRecord[] {
    return (this.#q.listRevokedBuilders.all() as unknown as RevokedBuilderRow[]).map((r) => ({
      ekHash: r.ek_hash,
      akName: r.ak_name === '' ? null : r.ak_name,
      reason: r.reason,
      revokedAt: new Date(r.revoked_at),
      revokedBy: r.revoked_by,
    }));
  }

  nextCrlNumber(): number {
    return (this.#q.nextCrlNumber.get() as { last: number }).last;
  }

  close(): void {
    if (this.#db.isOpen) this.#db.close();
  }
}

function ms(d: Date | null | undefined): number | null {
  return d == null ? null : d.getTime();
}

function date(n: number | null): Date | null {
  return n === null ? null : new Date(n);
}

function toKey(r: KeyRow, versions: KeyVersionRecord[]): KeyRecord {
  return {
    name: r.name,
    algorithm: r.algorithm as Algorithm,
    backend: r.backend,
    primaryVersion: r.primary_version,
    createdAt: new Date(r.created_at),
    versions,
    policy: {
      ...DEFAULT_KEY_POLICY,
      minSignVersion: r.min_sign_version,
      minVerifyVersion: r.min_verify_version,
      autoRotatePeriodMs: r.auto_rotate_period_ms,
      destroyNeedsApproval: r.destroy_needs_approval === 1,
    },
    nextRotationAt: date(r.next_rotation_at),
  };
}

function actor(subject: string | null, fingerprint: string | null): ActorRef | null {
  return subject === null ? null : { subject, fingerprint: fingerprint ?? '' };
}

function toApproval(r: ApprovalRow): ApprovalRecord {
  return {
    id: r.id,
    kind: r.kind as ApprovalRecord['kind'],
    key: r.key_name,
    version: r.version,
    requestedBy: { subject: r.requested_by_subject, fingerprint: r.requested_by_fingerprint },
    requestedAt: new Date(r.requested_at),
    expiresAt: new Date(r.expires_at),
    state: r.state as ApprovalState,
    decidedBy: actor(r.decided_by_subject, r.decided_by_fingerprint),
    decidedAt: date(r.decided_at),
    reason: r.reason,
    payload: JSON.parse(r.payload) as Record<string, unknown>,
  };
}

function toVersion(r: VersionRow): KeyVersionRecord {
  return {
    name: r.name,
    version: r.version,
    uri: r.uri,
    state: r.state as KeyVersionState,
    generated: r.generated === 1,
    spki: Buffer.from(r.spki),
    createdAt: new Date(r.created_at),
    label: r.label,
    disabledAt: date(r.disabled_at),
    revokedAt: date(r.revoked_at),
    destroyAt: date(r.destroy_at),
    destroyedAt: date(r.destroyed_at),
  };
}
