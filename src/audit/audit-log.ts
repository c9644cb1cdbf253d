import { DatabaseSync, type StatementSync } from 'node:sqlite';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { SigilError } from '../errors.ts';
import type { Clock } from '../clock.ts';
import type { Logger } from '../log.ts';
import type { AuditEvent, AuditSink } from './audit-sink.ts';
import { encodeEntry } from './entry.ts';
import { CompactRange, consistencyProof, inclusionProof, leafHash, nodeHash, rangeRoot, type CompletedSubtree, type PerfectReader } from './merkle.ts';
import { checkOrigin, noteKeyId, noteKeyOfSpki, noteVerifier, openCheckpoint, signCheckpoint } from './note.ts';

/** The key that signs checkpoints: the reserved key `sigil/audit`, reached through the key service. */
export interface AuditKey {
  /** The public key (DER SPKI) of `keyVersion`, or of the current version. */
  publicKey(keyVersion?: string): { keyVersion: string; spki: Buffer };
  /** Signs note text (Ed25519: the text; ECDSA: its SHA-256) with the current version. */
  sign(text: Buffer): Promise<{ signature: Buffer; keyVersion: string }>;
}

/** How to open the audit log. */
export interface AuditLogOptions {
  /** The SQLite file of the log (its own file, not the store's). */
  path: string;
  /** The checkpoint origin line, also the note key name. */
  origin: string;
  key: AuditKey;
  clock: Clock;
  log: Logger;
}

/** A signed checkpoint as the log keeps it. */
export interface StoredCheckpoint {
  size: number;
  root: Buffer;
  /** The signed note text. */
  note: string;
  keyVersion: string;
  createdAt: Date;
}

/** One stored entry. */
export interface StoredEntry {
  index: number;
  data: Buffer;
  leaf: Buffer;
}

/** Counters of the group commit, for tests and the benchmark. */
export interface AuditLogStats {
  flushes: number;
  entries: number;
  failures: number;
}

interface Waiter {
  data: Buffer;
  resolve(): void;
  reject(err: unknown): void;
}

// Perfect subtrees of every 4th height are stored; heights in between are recomputed from at most 8 children.
const STRIDE = 4;
const MAX_PAGE = 1000;

const SCHEMA = `
  CREATE TABLE IF NOT EXISTS entries (idx INTEGER PRIMARY KEY, data BLOB NOT NULL, leaf BLOB NOT NULL) STRICT;
  CREATE TABLE IF NOT EXISTS nodes (level INTEGER NOT NULL, idx INTEGER NOT NULL, hash BLOB NOT NULL, PRIMARY KEY (level, idx)) STRICT, WITHOUT ROWID;
  CREATE TABLE IF NOT EXISTS checkpoints (size INTEGER PRIMARY KEY, root BLOB NOT NULL, note TEXT NOT NULL, key_version TEXT NOT NULL, created_at INTEGER NOT NULL) STRICT;
`;

const unavailable = (cause: unknown): SigilError => new SigilError('AUDIT_UNAVAILABLE', 'the audit log cannot be written', { cause });

/**
 * The audit log: an append-only RFC 6962 Merkle tree of canonical JSON entries in its own SQLite file,
 * with signed C2SP checkpoints. Appends are group-committed: one transaction (one fsync) per flush, and no
 * `record` resolves before the transaction holding its entry committed. A failed write rejects every
 * waiter with AUDIT_UNAVAILABLE and makes `ready()` throw until a later write succeeds.
 */
export class AuditLog implements AuditSink {
  readonly origin: string;
  readonly #db: DatabaseSync;
  readonly #key: AuditKey;
  readonly #clock: Clock;
  readonly #log: Logger;
  readonly #q: Record<'insertEntry' | 'insertNode' | 'leaf' | 'node' | 'page' | 'count' | 'insertCheckpoint' | 'checkpointAt' | 'latestCheckpoint', StatementSync>;
  #tree: CompactRange;
  #queue: Waiter[] = [];
  #scheduled = false;
  #broken: SigilError | null = null;
  #lastT = 0;
  #latest: StoredCheckpoint | null;
  #signing: Promise<StoredCheckpoint> | null = null;
  #closed = false;
  readonly stats: AuditLogStats = { flushes: 0, entries: 0, failures: 0 };

  private constructor(o: AuditLogOptions, db: DatabaseSync) {
    this.origin = checkOrigin(o.origin);
    this.#db = db;
    this.#key = o.key;
    this.#clock = o.clock;
    this.#log = o.log;
    this.#q = {
      insertEntry: db.prepare('INSERT INTO entries (idx, data, leaf) VALUES (?, ?, ?)'),
      insertNode: db.prepare('INSERT OR REPLACE INTO nodes (level, idx, hash) VALUES (?, ?, ?)'),
      leaf: db.prepare('SELECT leaf FROM entries WHERE idx = ?'),
      node: db.prepare('SELECT hash FROM nodes WHERE level = ? AND idx = ?'),
      page: db.prepare('SELECT idx, data, leaf FROM entries WHERE idx >= ? AND idx < ? ORDER BY idx'),
      count: db.prepare('SELECT COUNT(*) AS n, COALESCE(MAX(idx), -1) AS max FROM entries'),
      insertCheckpoint: db.prepare('INSERT OR IGNORE INTO checkpoints (size, root, note, key_version, created_at) VALUES (?, ?, ?, ?, ?)'),
      checkpointAt: db.prepare('SELECT * FROM checkpoints WHERE size = ?'),
      latestCheckpoint: db.prepare('SELECT * FROM checkpoints ORDER BY size DESC LIMIT 1'),
    };
    this.#tree = new CompactRange();
    this.#latest = null;
  }

  /**
   * Opens (or creates) the log and verifies it: recomputes the tree from the stored leaf hashes, rebuilds
   * the subtree cache, and checks every stored checkpoint's root and the latest one's signature. A log that
   * does not match its checkpoints refuses to open (FAILED_PRECONDITION: tampered).
   */
  static open(o: AuditLogOptions): AuditLog {
    if (o.path !== ':memory:') mkdirSync(dirname(o.path), { recursive: true, mode: 0o700 });
    const db = new DatabaseSync(o.path);
    try {
      // A blocked write fails fast (fail closed) rather than stalling the event loop.
      db.exec('PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 20;');
      db.exec(SCHEMA);
      const log = new AuditLog(o, db);
      log.#load();
      return log;
    } catch (err) {
      db.close();
      throw err;
    }
  }

  /** The number of durable entries. */
  get size(): number {
    return this.#tree.size;
  }

  /** The root hash at the current size. */
  root(): Buffer {
    return this.#tree.root();
  }

  /** Throws AUDIT_UNAVAILABLE while the last write failed: an act is refused before it starts. */
  ready(): void {
    if (this.#closed) throw new SigilError('AUDIT_UNAVAILABLE', 'the audit log is closed');
    if (this.#broken) throw this.#broken;
  }

  /** Queues the entry; resolves once the transaction that holds it committed, rejects AUDIT_UNAVAILABLE otherwise. */
  record(e: AuditEvent): Promise<void> {
    if (this.#closed) return Promise.reject(new SigilError('AUDIT_UNAVAILABLE', 'the audit log is closed'));
    let data: Buffer;
    try {
      // Time never decreases along the log, so order in time is order in the log.
      const now = Math.max(this.#clock.now().getTime(), this.#lastT);
      this.#lastT = now;
      data = encodeEntry({ t: new Date(now).toISOString(), ...e });
    } catch (err) {
      return Promise.reject(err);
    }
    return new Promise<void>((resolve, reject) => {
      this.#queue.push({ data, resolve, reject });
      if (!this.#scheduled) {
        this.#scheduled = true;
        // Everything recorded in this turn of the event loop goes into one transaction.
        setImmediate(() => this.#flush());
      }
    });
  }

  /** Writes every queued entry in one transaction, then settles their promises. */
  #flush(): void {
    this.#scheduled = false;
    const batch = this.#queue;
    this.#queue = [];
    if (batch.length === 0) return;
    try {
      if (this.#broken) this.#resync();
      // Append to a copy: the in-memory tree moves only once the file has the entries.
      const next = this.#tree.clone();
      const nodes: CompletedSubtree[] = [];
      const start = next.size;
      const leaves = batch.map((w) => leafHash(w.data));
      for (const l of leaves) next.append(l, (s) => s.level % STRIDE === 0 && nodes.push(s));
      this.#db.exec('BEGIN IMMEDIATE');
      try {
        for (let i = 0; i < batch.length; i++) this.#q.insertEntry.run(start + i, batch[i]!.data, leaves[i]!);
        for (const s of nodes) this.#q.insertNode.run(s.level, s.index, s.hash);
        this.#db.exec('COMMIT');
      } catch (err) {
        if (this.#db.isTransaction) this.#db.exec('ROLLBACK');
        throw err;
      }
      this.#tree = next;
      this.#broken = null;
      this.stats.flushes++;
      this.stats.entries += batch.length;
    } catch (err) {
      this.stats.failures++;
      const e = unavailable(err);
      if (!this.#broken) this.#log.error({ err }, 'audit log write failed: refusing audited acts until a write succeeds');
      this.#broken = e;
      for (const w of batch) w.reject(e);
      return;
    }
    for (const w of batch) w.resolve();
  }

  /**
   * After a failed write: the file may hold more than memory says (a commit that reported failure after
   * writing). Reload the tree from the file so the two agree before appending again.
   */
  #resync(): void {
    const { n, max } = this.#q.count.get() as { n: number; max: number };
    if (n === this.#tree.size && max === n - 1) return;
    this.#log.warn({ memory: this.#tree.size, file: n }, 'audit log file and memory disagree after a failed write: reloading');
    this.#load();
  }

  /** Recomputes the tree from the stored leaf hashes and checks it against the stored checkpoints. */
  #load(): void {
    const cps = (this.#db.prepare('SELECT * FROM checkpoints ORDER BY size').all() as unknown as CheckpointRow[]).map(toCheckpoint);
    let want = 0;
    const tree = new CompactRange();
    const nodes: CompletedSubtree[] = [];
    const check = (): void => {
      while (want < cps.length && cps[want]!.size === tree.size) {
        const cp = cps[want]!;
        if (!cp.root.equals(tree.root())) {
          throw new SigilError('FAILED_PRECONDITION', `audit log tampered: the stored entries do not hash to the root of the checkpoint at size ${cp.size}`);
        }
        want++;
      }
    };
    check();
    for (const row of this.#db.prepare('SELECT idx, leaf FROM entries ORDER BY idx').iterate() as Iterable<{ idx: number; leaf: Uint8Array }>) {
      if (row.idx !== tree.size) throw new SigilError('FAILED_PRECONDITION', `audit log tampered: entry ${tree.size} is missing`);
      tree.append(Buffer.from(row.leaf), (s) => s.level % STRIDE === 0 && nodes.push(s));
      check();
    }
    if (want < cps.length) {
      throw new SigilError('FAILED_PRECONDITION', `audit log tampered: it holds ${tree.size} entries but a checkpoint covers ${cps[cps.length - 1]!.size}`);
    }
    const latest = cps.at(-1) ?? null;
    if (latest) {
      const pk = this.#key.publicKey(latest.keyVersion);
      const c = openCheckpoint(latest.note, noteVerifier(this.origin, pk.spki), this.origin);
      if (c.size !== latest.size || !c.root.equals(latest.root)) throw new SigilError('FAILED_PRECONDITION', `audit log tampered: checkpoint ${latest.size} does not match its signed note`);
    }
    // The subtree cache is derived from the leaves: rebuild it so it cannot disagree with them.
    this.#db.exec('BEGIN IMMEDIATE');
    try {
      this.#db.exec('DELETE FROM nodes');
      for (const s of nodes) this.#q.insertNode.run(s.level, s.index, s.hash);
      this.#db.exec('COMMIT');
    } catch (err) {
      if (this.#db.isTransaction) this.#db.exec('ROLLBACK');
      throw err;
    }
    this.#tree = tree;
    this.#latest = latest;
    const last = this.#tree.size > 0 ? (this.#q.page.get(this.#tree.size - 1, this.#tree.size) as { data: Uint8Array } | undefined) : undefined;
    if (last) this.#lastT = Math.max(this.#lastT, Date.parse((JSON.parse(Buffer.from(last.data).toString('utf8')) as { t: string }).t) || 0);
  }

  /** Reads perfect subtree hashes from the file: leaves, stored heights, and heights in between recomputed. */
  readonly #read: PerfectReader = (level, index) => {
    if (level === 0) {
      const r = this.#q.leaf.get(index) as { leaf: Uint8Array } | undefined;
      if (!r) throw new SigilError('INTERNAL', `audit entry ${index} is missing`);
      return Buffer.from(r.leaf);
    }
    if (level % STRIDE === 0) {
      const r = this.#q.node.get(level, index) as { hash: Uint8Array } | undefined;
      if (r) return Buffer.from(r.hash);
    }
    return nodeHash(this.#read(level - 1, index * 2), this.#read(level - 1, index * 2 + 1));
  };

  /** The root hash of the tree of the first `size` entries. */
  rootAt(size: number): Buffer {
    this.#checkSize(size, 'size');
    return size === this.#tree.size ? this.#tree.root() : rangeRoot(this.#read, 0, size);
  }

  /** The inclusion proof of entry `index` in the tree of `size` entries (the current size by default). */
  inclusionProof(index: number, size = this.#tree.size): Buffer[] {
    this.#checkSize(size, 'tree size');
    if (!Number.isSafeInteger(index) || index < 0 || index >= size) throw new SigilError('INVALID_ARGUMENT', `index ${index} is outside the tree of size ${size}`);
    return inclusionProof(this.#read, index, size);
  }

  /** The consistency proof from the tree of `oldSize` entries to the tree of `newSize` (the current size by default). */
  consistencyProof(oldSize: number, newSize = this.#tree.size): Buffer[] {
    this.#checkSize(newSize, 'new size');
    if (!Number.isSafeInteger(oldSize) || oldSize < 0 || oldSize > newSize) throw new SigilError('INVALID_ARGUMENT', `old size ${oldSize} must be between 0 and ${newSize}`);
    return consistencyProof(this.#read, oldSize, newSize);
  }

  /** Up to `count` entries from `from` (at most 1000 a page). */
  entries(from: number, count: number): StoredEntry[] {
    if (!Number.isSafeInteger(from) || from < 0) throw new SigilError('INVALID_ARGUMENT', 'from must be a non-negative integer');
    if (!Number.isSafeInteger(count) || count < 0) throw new SigilError('INVALID_ARGUMENT', 'count must be a non-negative integer');
    const end = Math.min(from + Math.min(count, MAX_PAGE), this.#tree.size);
    if (end <= from) return [];
    return (this.#q.page.all(from, end) as Array<{ idx: number; data: Uint8Array; leaf: Uint8Array }>).map((r) => ({ index: r.idx, data: Buffer.from(r.data), leaf: Buffer.from(r.leaf) }));
  }

  /** The checkpoint stored at exactly `size`, or null. */
  checkpointAt(size: number): StoredCheckpoint | null {
    const r = this.#q.checkpointAt.get(size) as CheckpointRow | undefined;
    return r ? toCheckpoint(r) : null;
  }

  /** The latest signed checkpoint; signs a new one first when the tree grew since the last. */
  async latestCheckpoint(): Promise<StoredCheckpoint> {
    if (this.#latest && this.#latest.size === this.#tree.size) return this.#latest;
    // One signature at a time: callers arriving meanwhile share it (and sign again if the tree grew).
    while (this.#signing) await this.#signing.catch(() => undefined);
    if (this.#latest && this.#latest.size === this.#tree.size) return this.#latest;
    this.#signing = this.#signLatest();
    try {
      return await this.#signing;
    } finally {
      this.#signing = null;
    }
  }

  async #signLatest(): Promise<StoredCheckpoint> {
    const size = this.#tree.size;
    const root = this.#tree.root();
    const pk = this.#key.publicKey();
    const { type, publicKey } = noteKeyOfSpki(pk.spki);
    let used = pk.keyVersion;
    const note = await signCheckpoint(
      { origin: this.origin, size, root, extensions: [] },
      {
        name: this.origin,
        keyId: noteKeyId(this.origin, type, publicKey),
        sign: async (text) => {
          const s = await this.#key.sign(text);
          used = s.keyVersion;
          return s.signature;
        },
      },
    );
    if (used !== pk.keyVersion) throw new SigilError('AUDIT_UNAVAILABLE', 'the audit key changed while signing a checkpoint; retry');
    const cp: StoredCheckpoint = { size, root, note, keyVersion: used, createdAt: this.#clock.now() };
    try {
      this.#q.insertCheckpoint.run(size, root, note, used, cp.createdAt.getTime());
    } catch (err) {
      throw unavailable(err);
    }
    if (!this.#latest || this.#latest.size < size) this.#latest = cp;
    return cp;
  }

  /** The audit key's public key and note identity, for verifiers. */
  publicKey(): { keyVersion: string; spki: Buffer; keyName: string; keyId: Buffer } {
    const pk = this.#key.publicKey();
    const { type, publicKey } = noteKeyOfSpki(pk.spki);
    return { ...pk, keyName: this.origin, keyId: noteKeyId(this.origin, type, publicKey) };
  }

  /** Writes what is queued, then closes the file; later records reject. */
  close(): void {
    if (this.#closed) return;
    this.#flush();
    this.#closed = true;
    this.#db.close();
  }

  #checkSize(size: number, what: string): void {
    if (!Number.isSafeInteger(size) || size < 0 || size > this.#tree.size) throw new SigilError('INVALID_ARGUMENT', `${what} ${size} must be between 0 and ${this.#tree.size}`);
  }
}

interface CheckpointRow {
  size: number;
  root: Uint8Array;
  note: string;
  key_version: string;
  created_at: number;
}

function toCheckpoint(r: CheckpointRow): StoredCheckpoint {
  return { size: r.size, root: Buffer.from(r.root), note: r.note, keyVersion: r.key_version, createdAt: new Date(r.created_at) };
}
