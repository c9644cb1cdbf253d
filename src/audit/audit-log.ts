import { DatabaseSync, type StatementSync } from 'node:sqlite';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { Worker } from 'node:worker_threads';
import { SigilError } from '../errors.ts';
import type { Clock } from '../clock.ts';
import type { Logger } from '../log.ts';
import { siblingModule, WorkerClient } from '../worker-client.ts';
import type { AuditEvent, AuditSink } from './audit-sink.ts';
import { encodeEntry } from './entry.ts';
import { CompactRange, consistencyProof, inclusionProof, leafHash, nodeHash, rangeRoot, rangeTiles, type CompletedSubtree, type PerfectReader } from './merkle.ts';
import { checkOrigin, noteKeyId, noteKeyOfSpki, noteVerifier, openCheckpoint, signCheckpoint } from './note.ts';
import type { WriterData, WriterReply, WriterRequest } from './audit-writer.ts';
import type { AuditKeyVersion } from './audit-key.ts';
import type { CheckData, CheckMessage } from './audit-check-worker.ts';

/** The key that signs checkpoints: the reserved key `sigil/audit`, reached through the key service (`auditKeyOf`). */
export interface AuditKey {
  /** The public key (DER SPKI) of `keyVersion`, or of the current version. */
  publicKey(keyVersion?: string): { keyVersion: string; spki: Buffer };
  /** Signs note text (Ed25519: the text; ECDSA: its SHA-256) with the current version. */
  sign(text: Buffer): Promise<{ signature: Buffer; keyVersion: string }>;
  /** Every version, oldest first, with its window; without it the log knows the current version only. */
  versions?(): AuditKeyVersion[];
}

/** One audit key version as verifiers need it: the version, its window, and its signed-note identity. */
export interface AuditKeyVersionInfo extends AuditKeyVersion {
  /** The note key name: the log's origin. */
  keyName: string;
  /** The note key id (4 bytes) that this version's checkpoint signatures carry. */
  keyId: Buffer;
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
  /**
   * Up to this many entries, `open` recomputes the whole tree before it returns (the full check); above
   * it, `open` verifies the latest checkpoint's frontier and the entries after it, and the full check runs
   * in a background thread. 0: always the fast start. Default 1,000,000.
   */
  fullCheckAtStartMax?: number;
}

/** The full check of the log (see `AuditLog.fullCheck`): where it stands, how far it got, how long it took. */
export interface FullCheckStatus {
  /** `running` in the background; `clean`; `tampered` (the log refuses acts until restart); `error`: it could not finish (the log stays up); `stopped` by close. */
  state: 'running' | 'clean' | 'tampered' | 'error' | 'stopped';
  /** The tree size it verifies up to: the size at open (full check at start) or the latest checkpoint's (background). */
  size: number;
  /** Entries verified so far. */
  verified: number;
  /** How long it took, once it ended (whatever the outcome). */
  seconds: number | null;
  /** What it found when tampered, or why it could not finish. */
  finding: string | null;
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

/**
 * A range of entries moved to an archive segment (`sigild audit archive`): their data is gone from the
 * file, their leaf hashes stay (so every proof still works), and the segment holds the entries.
 */
export interface ArchivedSegment {
  /** Entries `[start, end)`. */
  start: number;
  end: number;
  /** The segment's file name (in the directory the operator keeps segments in). */
  file: string;
  /** SHA-256 of the segment file, hex. */
  sha256: string;
  /** The size of the signed checkpoint the segment carries. */
  checkpoint: number;
  /** The index of the `audit.archive` entry written ahead of the pruning, which names the same range and segment. */
  entry: number;
  createdAt: Date;
}

/** What a segment of `[start, end)` records besides its entries: the checkpoint that covers it and the subtrees around it. */
export interface SegmentProof {
  checkpoint: StoredCheckpoint;
  /** The frontier of `[0, start)`, largest subtree first. */
  left: Buffer[];
  /** The aligned subtrees covering `[end, checkpoint.size)`, left to right. */
  right: Buffer[];
}

/** Counters of the group commit, for tests and the benchmark. */
export interface AuditLogStats {
  flushes: number;
  entries: number;
  failures: number;
}

interface Waiter {
  data: Buffer;
  /** Called with the entry's index once its transaction committed. */
  resolve(index: number): void;
  reject(err: unknown): void;
}

// Perfect subtrees of every 4th height are stored; heights in between are recomputed from at most 8 children.
const STRIDE = 4;
const MAX_PAGE = 1000;
const FULL_CHECK_AT_START_MAX = 1_000_000;

const SCHEMA = `
  CREATE TABLE IF NOT EXISTS entries (idx INTEGER PRIMARY KEY, data BLOB NOT NULL, leaf BLOB NOT NULL) STRICT;
  CREATE TABLE IF NOT EXISTS nodes (level INTEGER NOT NULL, idx INTEGER NOT NULL, hash BLOB NOT NULL, PRIMARY KEY (level, idx)) STRICT, WITHOUT ROWID;
  CREATE TABLE IF NOT EXISTS checkpoints (size INTEGER PRIMARY KEY, root BLOB NOT NULL, note TEXT NOT NULL, key_version TEXT NOT NULL, created_at INTEGER NOT NULL) STRICT;
  CREATE TABLE IF NOT EXISTS archives (start INTEGER PRIMARY KEY, end INTEGER NOT NULL, file TEXT NOT NULL, sha256 TEXT NOT NULL, checkpoint INTEGER NOT NULL, entry INTEGER NOT NULL, created_at INTEGER NOT NULL) STRICT;
`;

const unavailable = (cause: unknown): SigilError => new SigilError('AUDIT_UNAVAILABLE', 'the audit log cannot be written', { cause });
const tampered = (what: string): SigilError => new SigilError('FAILED_PRECONDITION', `audit log tampered: ${what}`);

/**
 * The audit log: an append-only RFC 6962 Merkle tree of canonical JSON entries in its own SQLite file,
 * with signed C2SP checkpoints. Appends are group-committed: one transaction (one fsync) per flush, and no
 * `record` resolves before the transaction holding its entry committed. A failed write rejects every
 * waiter with AUDIT_UNAVAILABLE and makes `ready()` throw until a later write succeeds; a background full
 * check that finds the file tampered makes it throw until restart.
 */
export class AuditLog implements AuditSink {
  readonly origin: string;
  readonly #db: DatabaseSync;
  readonly #key: AuditKey;
  readonly #clock: Clock;
  readonly #log: Logger;
  readonly #q: Record<'insertNode' | 'leaf' | 'node' | 'page' | 'count' | 'maxIdx' | 'checkpointAt' | 'latestCheckpoint', StatementSync>;
  readonly #path: string;
  readonly #fullCheckMax: number;
  // Started once the file has been verified: a log that refuses to open leaves no thread holding it.
  #writer!: WriterThread;
  /** The tree of the committed entries: what every read and proof uses. */
  #tree: CompactRange;
  /** The tree of everything sent to the writer (committed or not): where the next batch appends. */
  #tip: CompactRange;
  #queue: Waiter[] = [];
  #scheduled = false;
  /** Batches sent to the writer and not yet answered, in order. */
  #inFlight = new Set<Promise<void>>();
  #closing: Promise<void> | null = null;
  #broken: SigilError | null = null;
  /** Set when the background full check found the file tampered: unlike a failed write, no later write clears it. */
  #tampered: SigilError | null = null;
  #check: FullCheckStatus = { state: 'clean', size: 0, verified: 0, seconds: null, finding: null };
  #checker: { worker: Worker; stop: Int32Array; ended: Promise<void> } | null = null;
  #checked: Promise<FullCheckStatus> = Promise.resolve(this.#check);
  #lastT = 0;
  #latest: StoredCheckpoint | null;
  /** The archived ranges, in order from entry 0 (contiguous, checked at open). */
  #archives: ArchivedSegment[] = [];
  /**
   * The range being pruned by the writer thread: from its commit until the writer's answer arrives, the file
   * holds those entries without data while `#archives` does not list them yet; reads name the segment instead.
   */
  #pruning: Omit<ArchivedSegment, 'createdAt'> | null = null;
  /** `archivedFrontier` for the archived prefix it was computed at. */
  #frontier: { end: number; hashes: Buffer[] } | null = null;
  #signing: Promise<StoredCheckpoint> | null = null;
  #closed = false;
  readonly stats: AuditLogStats = { flushes: 0, entries: 0, failures: 0 };
  /** Called once per committed batch with the seconds from leaving the event loop to the commit (metrics). */
  onCommit: ((seconds: number, entries: number) => void) | null = null;

  private constructor(o: AuditLogOptions, db: DatabaseSync) {
    this.origin = checkOrigin(o.origin);
    this.#db = db;
    this.#key = o.key;
    this.#clock = o.clock;
    this.#log = o.log;
    this.#path = o.path;
    const max = o.fullCheckAtStartMax ?? FULL_CHECK_AT_START_MAX;
    if (!Number.isSafeInteger(max) || max < 0) throw new SigilError('INVALID_ARGUMENT', 'fullCheckAtStartMax must be a non-negative integer');
    this.#fullCheckMax = max;
    this.#q = {
      insertNode: db.prepare('INSERT OR REPLACE INTO nodes (level, idx, hash) VALUES (?, ?, ?)'),
      leaf: db.prepare('SELECT leaf FROM entries WHERE idx = ?'),
      node: db.prepare('SELECT hash FROM nodes WHERE level = ? AND idx = ?'),
      page: db.prepare('SELECT idx, data, leaf FROM entries WHERE idx >= ? AND idx < ? ORDER BY idx'),
      count: db.prepare('SELECT COUNT(*) AS n, COALESCE(MAX(idx), -1) AS max FROM entries'),
      maxIdx: db.prepare('SELECT COALESCE(MAX(idx), -1) AS max FROM entries'),
      checkpointAt: db.prepare('SELECT * FROM checkpoints WHERE size = ?'),
      latestCheckpoint: db.prepare('SELECT * FROM checkpoints ORDER BY size DESC LIMIT 1'),
    };
    this.#tree = new CompactRange();
    this.#tip = this.#tree;
    this.#latest = null;
  }

  /**
   * Opens (or creates) the log and verifies it. Up to `fullCheckAtStartMax` entries: recomputes the tree
   * from the stored leaf hashes, rebuilds the subtree cache, and checks every stored checkpoint's root and
   * the latest one's signature. Above it: checks the latest checkpoint's signature, that its frontier read
   * from the subtree cache hashes to its root, and appends the entries after it; the full check then runs
   * in a background thread (`fullCheck`). A log that does not match its checkpoints refuses to open
   * (FAILED_PRECONDITION: tampered).
   */
  static open(o: AuditLogOptions): AuditLog {
    // The writer thread opens the file by name: an in-memory database would be a different one there.
    if (o.path === ':memory:' || o.path === '') throw new SigilError('INVALID_ARGUMENT', 'the audit log needs a file path');
    mkdirSync(dirname(o.path), { recursive: true, mode: 0o700 });
    const db = new DatabaseSync(o.path);
    try {
      // A blocked write fails fast (fail closed) rather than stalling the event loop.
      db.exec('PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 20;');
      db.exec(SCHEMA);
      const log = new AuditLog(o, db);
      const t0 = performance.now();
      const from = log.#load();
      log.#writer = new WriterThread(o.path, o.log);
      if (from === null) log.#check = { state: 'clean', size: log.size, verified: log.size, seconds: (performance.now() - t0) / 1000, finding: null };
      else log.#startCheck(from);
      log.#checked = Promise.resolve(log.#check);
      if (log.#checker) log.#checked = log.#checker.ended.then(() => log.#check);
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

  /** False while the last write failed (acts are refused until a write succeeds), after the file was found tampered, or after close. */
  get healthy(): boolean {
    return !this.#closed && this.#broken === null && this.#tampered === null;
  }

  /** Throws AUDIT_UNAVAILABLE while the last write failed or once the file was found tampered: an act is refused before it starts. */
  ready(): void {
    if (this.#closed) throw new SigilError('AUDIT_UNAVAILABLE', 'the audit log is closed');
    if (this.#tampered) throw this.#tampered;
    if (this.#broken) throw this.#broken;
  }

  /** The full check: done before `open` returned (small log), or running or done in the background (fast start). */
  get fullCheck(): Readonly<FullCheckStatus> {
    return this.#check;
  }

  /** Resolves with the full check's outcome once it has finished (at once when it ran at open). */
  fullCheckDone(): Promise<Readonly<FullCheckStatus>> {
    return this.#checked;
  }

  /** Queues the entry; resolves once the transaction that holds it committed, rejects AUDIT_UNAVAILABLE otherwise. */
  record(e: AuditEvent): Promise<void> {
    // The same promise: it resolves with the index, which callers of `record` ignore.
    return this.recordAt(e) as Promise<unknown> as Promise<void>;
  }

  /** Like `record`, and resolves with the entry's index (an act that names its own intent entry needs it). */
  recordAt(e: AuditEvent): Promise<number> {
    if (this.#closed) return Promise.reject(new SigilError('AUDIT_UNAVAILABLE', 'the audit log is closed'));
    if (this.#tampered) return Promise.reject(this.#tampered);
    let data: Buffer;
    try {
      // Time never decreases along the log, so order in time is order in the log.
      const now = Math.max(this.#clock.now().getTime(), this.#lastT);
      this.#lastT = now;
      data = encodeEntry({ t: new Date(now).toISOString(), ...e });
    } catch (err) {
      return Promise.reject(err);
    }
    return new Promise<number>((resolve, reject) => {
      this.#queue.push({ data, resolve, reject });
      this.#schedule();
    });
  }

  #schedule(): void {
    if (this.#scheduled) return;
    this.#scheduled = true;
    // Everything recorded in this turn of the event loop goes to the writer as one batch.
    setImmediate(() => this.#flush());
  }

  /**
   * Sends every queued entry to the writer thread as one batch, without waiting for batches still being
   * committed (the writer puts everything that arrived during a commit into its next transaction); the
   * promises settle when the writer reports the commit. The committed tree moves in the order the writer
   * answers, which is the order of the batches.
   */
  #flush(): void {
    this.#scheduled = false;
    if (this.#queue.length === 0) return;
    // After a failed write, later batches in flight fail too (their indices follow the failed one): let them
    // settle, then make memory agree with the file before appending again.
    if (this.#broken && this.#inFlight.size > 0) return;
    const batch = this.#queue;
    this.#queue = [];
    if (this.#tampered) {
      for (const w of batch) w.reject(this.#tampered);
      return;
    }
    let next: CompactRange;
    let request: Extract<WriterRequest, { op: 'append' }>;
    let transfer: ArrayBuffer[];
    let start: number;
    try {
      if (this.#broken) this.#resync();
      next = this.#tip.clone();
      start = next.size;
      const nodes: Array<[number, number, Uint8Array]> = [];
      let total = 0;
      for (const w of batch) total += w.data.length;
      const data = new Uint8Array(total);
      const ends = new Uint32Array(batch.length);
      const leaves = new Uint8Array(batch.length * 32);
      let at = 0;
      for (let i = 0; i < batch.length; i++) {
        const d = batch[i]!.data;
        data.set(d, at);
        ends[i] = at += d.length;
        const l = leafHash(d);
        leaves.set(l, i * 32);
        next.append(l, (s) => s.level % STRIDE === 0 && nodes.push([s.level, s.index, s.hash]));
      }
      request = { id: 0, op: 'append', start, data, ends, leaves, nodes };
      // Fresh buffers of their own: moved to the writer, not copied.
      transfer = [data.buffer, ends.buffer, leaves.buffer];
    } catch (err) {
      this.#fail(batch, err);
      return;
    }
    this.#tip = next;
    const sentAt = performance.now();
    const sent: Promise<void> = this.#writer.request(request, transfer).then(
      () => {
        this.onCommit?.((performance.now() - sentAt) / 1000, batch.length);
        this.#tree = next;
        this.#broken = null;
        this.stats.flushes++;
        this.stats.entries += batch.length;
        for (let i = 0; i < batch.length; i++) batch[i]!.resolve(start + i);
      },
      (err: unknown) => this.#fail(batch, err),
    ).finally(() => {
      this.#inFlight.delete(sent);
      if (this.#queue.length > 0) this.#schedule();
    });
    this.#inFlight.add(sent);
  }

  #fail(batch: Waiter[], err: unknown): void {
    this.stats.failures++;
    const e = unavailable(err);
    if (!this.#broken) this.#log.error({ err }, 'audit log write failed: refusing audited acts until a write succeeds');
    this.#broken = e;
    for (const w of batch) w.reject(e);
  }

  /**
   * After a failed write: the file may hold more than memory says (a commit that reported failure after
   * writing). Reload the tree from the file so the two agree before appending again.
   */
  #resync(): void {
    this.#tip = this.#tree;
    const { n, max } = this.#q.count.get() as { n: number; max: number };
    if (n === this.#tree.size && max === n - 1) return;
    this.#log.warn({ memory: this.#tree.size, file: n }, 'audit log file and memory disagree after a failed write: reloading');
    this.#load();
  }

  /**
   * Loads the tree: the full check up to `fullCheckAtStartMax` entries, the fast start above it. Returns
   * null after a full check, or the size of the checkpoint the fast start verified against (what the
   * background check must still cover).
   */
  #load(): number | null {
    const { max } = this.#q.maxIdx.get() as { max: number };
    this.#loadArchives(max + 1);
    if (max + 1 > this.#fullCheckMax) {
      const row = this.#q.latestCheckpoint.get() as CheckpointRow | undefined;
      if (row) return this.#loadFast(toCheckpoint(row), max + 1);
    }
    this.#loadFull();
    return null;
  }

  /** Re-hashes every entry against its leaf hash, recomputes the tree from the leaf hashes and checks it against the stored checkpoints. */
  #loadFull(): void {
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
    const archivedEnd = this.archivedEnd;
    for (const row of this.#db.prepare('SELECT idx, data, leaf FROM entries ORDER BY idx').iterate() as Iterable<{ idx: number; data: Uint8Array; leaf: Uint8Array }>) {
      if (row.idx !== tree.size) throw new SigilError('FAILED_PRECONDITION', `audit log tampered: entry ${tree.size} is missing`);
      checkEntryBytes(row, archivedEnd);
      tree.append(Buffer.from(row.leaf), (s) => s.level % STRIDE === 0 && nodes.push(s));
      check();
    }
    if (want < cps.length) {
      throw new SigilError('FAILED_PRECONDITION', `audit log tampered: it holds ${tree.size} entries but a checkpoint covers ${cps[cps.length - 1]!.size}`);
    }
    const latest = cps.at(-1) ?? null;
    if (latest) this.#verifySignature(latest);
    // The subtree cache is derived from the leaves: rebuild it so it cannot disagree with them.
    this.#putNodes(nodes, true);
    this.#loaded(tree, latest);
  }

  /**
   * The fast start, O(log n) reads for the verified part: the tree at the latest checkpoint is rebuilt from
   * its frontier (one perfect subtree per set bit of its size, read from the subtree cache and the leaves)
   * and must hash to the signed root; only the entries after it are read one by one. The subtree cache is
   * kept; the rows the entries after the checkpoint complete are checked and rewritten where they differ.
   */
  #loadFast(cp: StoredCheckpoint, count: number): number {
    this.#verifySignature(cp);
    if (count < cp.size) throw tampered(`it holds ${count} entries but a checkpoint covers ${cp.size}`);
    const tree = CompactRange.at(this.#reader((index) => tampered(`entry ${index} is missing`)), cp.size);
    if (!tree.root().equals(cp.root)) {
      throw tampered(`the stored subtrees and entries on its frontier do not hash to the root of the checkpoint at size ${cp.size}`);
    }
    const completed: CompletedSubtree[] = [];
    const after = this.#db.prepare('SELECT idx, data, leaf FROM entries WHERE idx >= ? ORDER BY idx');
    const archivedEnd = this.archivedEnd;
    for (const row of after.iterate(cp.size) as Iterable<{ idx: number; data: Uint8Array; leaf: Uint8Array }>) {
      if (row.idx !== tree.size) throw tampered(`entry ${tree.size} is missing`);
      checkEntryBytes(row, archivedEnd);
      tree.append(Buffer.from(row.leaf), (s) => s.level % STRIDE === 0 && completed.push(s));
    }
    // The cache rows above the checkpoint are covered by no signature yet: derive them from the leaves.
    const differ = completed.filter((s) => {
      const r = this.#q.node.get(s.level, s.index) as { hash: Uint8Array } | undefined;
      return !r || !s.hash.equals(r.hash);
    });
    if (differ.length > 0) {
      this.#log.warn({ rows: differ.length, checkpoint: cp.size }, 'audit subtree cache rows after the latest checkpoint did not match their entries: rewritten');
      this.#putNodes(differ, false);
    }
    this.#loaded(tree, cp);
    return cp.size;
  }

  /**
   * Reads and checks the archive records: contiguous from entry 0, each within the entries the file holds
   * and within a stored checkpoint, and the entries on both sides of the archived prefix as archiving
   * leaves them (the last archived one without data, the first live one with). The full check compares
   * every entry.
   */
  #loadArchives(count: number): void {
    const rows = this.#db.prepare('SELECT * FROM archives ORDER BY start').all() as unknown as ArchiveRow[];
    let at = 0;
    for (const r of rows) {
      if (r.start !== at || r.end <= r.start) throw tampered(`the archive records do not cover one range from entry 0 (a record of [${r.start}, ${r.end}) follows entry ${at})`);
      if (r.end > count) throw tampered(`an archive record covers entries up to ${r.end} but the log holds ${count}`);
      const cp = this.#q.checkpointAt.get(r.checkpoint) as CheckpointRow | undefined;
      if (!cp || cp.size < r.end) throw tampered(`the archive record of [${r.start}, ${r.end}) names no stored checkpoint that covers it`);
      if (r.entry < r.end || r.entry >= count) throw tampered(`the archive record of [${r.start}, ${r.end}) names entry ${r.entry}, which cannot be its audit.archive entry`);
      at = r.end;
    }
    // Each record must agree with the audit.archive entry written ahead of it (while that entry is not archived
    // itself: then the segment holding it does), and that entry with its leaf hash.
    for (const r of rows) {
      if (r.entry < at) continue;
      const e = this.#q.page.get(r.entry, r.entry + 1) as { data: Uint8Array; leaf: Uint8Array } | undefined;
      const found = e && leafHash(e.data).equals(e.leaf) ? archiveEntryRange(e.data) : null;
      if (!found || found.start !== r.start || found.end !== r.end || found.segment !== r.file || found.sha256 !== r.sha256) {
        throw tampered(`the archive record of [${r.start}, ${r.end}) does not match the audit.archive entry ${r.entry}`);
      }
    }
    const bytes = (idx: number): number | null => (this.#db.prepare('SELECT length(data) AS n FROM entries WHERE idx = ?').get(idx) as { n: number } | undefined)?.n ?? null;
    if (at > 0 && bytes(at - 1) !== 0) throw tampered(archiveFinding(at - 1, at));
    if (at < count && bytes(at) === 0) throw tampered(archiveFinding(at, at));
    this.#archives = rows.map(toArchive);
  }

  /** Writes subtree cache rows in one transaction, after emptying the cache first when `replaceAll`. */
  #putNodes(rows: readonly CompletedSubtree[], replaceAll: boolean): void {
    this.#db.exec('BEGIN IMMEDIATE');
    try {
      if (replaceAll) this.#db.exec('DELETE FROM nodes');
      for (const s of rows) this.#q.insertNode.run(s.level, s.index, s.hash);
      this.#db.exec('COMMIT');
    } catch (err) {
      if (this.#db.isTransaction) this.#db.exec('ROLLBACK');
      throw err;
    }
  }

  #verifySignature(cp: StoredCheckpoint): void {
    const pk = this.#key.publicKey(cp.keyVersion);
    const c = openCheckpoint(cp.note, noteVerifier(this.origin, pk.spki), this.origin);
    if (c.size !== cp.size || !c.root.equals(cp.root)) throw tampered(`checkpoint ${cp.size} does not match its signed note`);
  }

  #loaded(tree: CompactRange, latest: StoredCheckpoint | null): void {
    this.#tree = tree;
    this.#tip = tree;
    this.#latest = latest;
    const last = this.#tree.size > 0 ? (this.#q.page.get(this.#tree.size - 1, this.#tree.size) as { data: Uint8Array } | undefined) : undefined;
    if (last && last.data.length > 0) this.#lastT = Math.max(this.#lastT, Date.parse((JSON.parse(Buffer.from(last.data).toString('utf8')) as { t: string }).t) || 0);
  }

  /**
   * Starts the background full check up to `size` (the checkpoint the fast start verified against) on its
   * own read-only connection. A finding fails the log until restart; a check that cannot finish is logged
   * and leaves the log up (a read error is no evidence of tampering, and writes fail closed on their own).
   */
  #startCheck(size: number): void {
    this.#check = { state: 'running', size, verified: 0, seconds: null, finding: null };
    if (size === 0) {
      this.#check = { ...this.#check, state: 'clean', seconds: 0 };
      return;
    }
    const t0 = performance.now();
    const stop = new Int32Array(new SharedArrayBuffer(4));
    const worker = new Worker(siblingModule(import.meta.url, 'audit-check-worker'), {
      workerData: { path: this.#path, size, stride: STRIDE, archivedEnd: this.archivedEnd, stop: stop.buffer as SharedArrayBuffer } satisfies CheckData,
      name: 'sigil-audit-check',
    });
    // The check never keeps the process up: close stops it, and an exiting process ends it.
    worker.unref();
    let result: CheckMessage | null = null;
    worker.on('message', (m: CheckMessage) => {
      if (m.op === 'progress') this.#check.verified = m.verified;
      else result = m;
    });
    const ended = new Promise<void>((resolve) => {
      const finish = (err?: unknown): void => {
        this.#checker = null;
        this.#checkEnded(result, err, (performance.now() - t0) / 1000);
        resolve();
      };
      worker.once('error', (err) => finish(err));
      worker.once('exit', () => finish());
    });
    this.#checker = { worker, stop, ended };
    this.#log.info({ size }, 'audit log opened on its latest checkpoint; full check running in the background');
  }

  #checkEnded(m: CheckMessage | null, err: unknown, seconds: number): void {
    if (this.#check.state !== 'running') return;
    const c = this.#check;
    if (m?.op === 'clean') {
      this.#check = { ...c, state: 'clean', verified: c.size, seconds: m.seconds };
      this.#log.info({ size: c.size, seconds: Number(m.seconds.toFixed(3)) }, 'audit log full check passed');
    } else if (m?.op === 'tampered') {
      this.#check = { ...c, state: 'tampered', finding: m.finding, seconds };
      this.#tampered = new SigilError('AUDIT_UNAVAILABLE', `audit log tampered: ${m.finding}`);
      this.#log.error({ size: c.size, finding: m.finding }, 'audit log tampered: the background full check failed; refusing audited acts until restart');
    } else if (m?.op === 'stopped') {
      this.#check = { ...c, state: 'stopped', seconds };
    } else {
      const why = m?.op === 'error' ? m.message : String((err as { message?: unknown } | undefined)?.message ?? err ?? 'the check thread exited');
      this.#check = { ...c, state: 'error', finding: why, seconds };
      this.#log.error({ size: c.size, verified: c.verified, err: why }, 'audit log full check could not finish');
    }
  }

  /** Reads perfect subtree hashes from the file: leaves, stored heights, and heights in between recomputed. */
  #reader(missing: (index: number) => SigilError): PerfectReader {
    const read: PerfectReader = (level, index) => {
      if (level === 0) {
        const r = this.#q.leaf.get(index) as { leaf: Uint8Array } | undefined;
        if (!r) throw missing(index);
        return Buffer.from(r.leaf);
      }
      if (level % STRIDE === 0) {
        const r = this.#q.node.get(level, index) as { hash: Uint8Array } | undefined;
        if (r) return Buffer.from(r.hash);
      }
      return nodeHash(read(level - 1, index * 2), read(level - 1, index * 2 + 1));
    };
    return read;
  }

  readonly #read: PerfectReader = this.#reader((index) => new SigilError('INTERNAL', `audit entry ${index} is missing`));

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

  /** Up to `count` entries from `from` (at most 1000 a page); FAILED_PRECONDITION naming the segment when `from` is archived. */
  entries(from: number, count: number): StoredEntry[] {
    if (!Number.isSafeInteger(from) || from < 0) throw new SigilError('INVALID_ARGUMENT', 'from must be a non-negative integer');
    if (!Number.isSafeInteger(count) || count < 0) throw new SigilError('INVALID_ARGUMENT', 'count must be a non-negative integer');
    const end = Math.min(from + Math.min(count, MAX_PAGE), this.#tree.size);
    if (end <= from) return [];
    const a = this.archiveOf(from);
    if (a) throw archivedError(from, a);
    const rows = this.#q.page.all(from, end) as Array<{ idx: number; data: Uint8Array; leaf: Uint8Array }>;
    for (const r of rows) {
      if (r.data.length > 0) continue;
      // Pruned by the writer while this page was read (its answer not handled yet): archived, not empty.
      const p = this.#pruning ?? this.archiveOf(r.idx);
      if (p && r.idx >= p.start && r.idx < p.end) throw archivedError(r.idx, p);
      throw new SigilError('INTERNAL', `audit entry ${r.idx} has no data and no archive record covers it`);
    }
    return rows.map((r) => ({ index: r.idx, data: Buffer.from(r.data), leaf: Buffer.from(r.leaf) }));
  }

  /** The leaf hash of entry `index` (kept for archived entries too). */
  leaf(index: number): Buffer {
    if (!Number.isSafeInteger(index) || index < 0 || index >= this.#tree.size) throw new SigilError('INVALID_ARGUMENT', `index ${index} is outside the tree of size ${this.#tree.size}`);
    return this.#read(0, index);
  }

  /** The archived ranges, oldest first: together `[0, archivedEnd)`. */
  archives(): readonly ArchivedSegment[] {
    return this.#archives;
  }

  /** The first entry not archived (0 when nothing is). */
  get archivedEnd(): number {
    return this.#archives.at(-1)?.end ?? 0;
  }

  /** The archived range that holds entry `index`, or null. */
  archiveOf(index: number): ArchivedSegment | null {
    if (index >= this.archivedEnd) return null;
    return this.#archives.find((a) => index >= a.start && index < a.end) ?? null;
  }

  /** The frontier of the archived prefix (one perfect subtree hash per set bit of `archivedEnd`, largest first): a verifier starts from it. */
  archivedFrontier(): readonly Buffer[] {
    const end = this.archivedEnd;
    if (this.#frontier?.end !== end) this.#frontier = { end, hashes: [...CompactRange.at(this.#read, end).hashes] };
    return this.#frontier.hashes;
  }

  /**
   * What a segment of `[start, end)` records besides its entries: the latest signed checkpoint (which must
   * cover `end`), the frontier before `start` and the subtrees after `end` up to that checkpoint. `start`
   * must be the first entry not archived.
   */
  segmentProof(start: number, end: number): SegmentProof {
    const cp = this.#latest;
    if (!cp) throw new SigilError('FAILED_PRECONDITION', 'the audit log has no signed checkpoint yet: nothing can be archived');
    if (start !== this.archivedEnd) throw new SigilError('INVALID_ARGUMENT', `a segment starts at the first entry not archived, ${this.archivedEnd}, not ${start}`);
    if (!Number.isSafeInteger(end) || end <= start || end > cp.size) throw new SigilError('INVALID_ARGUMENT', `a segment from ${start} must end after it and at most at the latest checkpoint's size ${cp.size}, not at ${end}`);
    const left = [...CompactRange.at(this.#read, start).hashes];
    const right = rangeTiles(end, cp.size).map((t) => this.#read(t.level, t.index));
    return { checkpoint: cp, left, right };
  }

  /**
   * Removes the data of entries `[a.start, a.end)`, archived in the segment `a.file` (verified by the
   * caller), and records the range, in one transaction run by the writer thread (between two batches of
   * appends, which keep queuing meanwhile); the leaf hashes and subtrees stay, so roots and proofs do not
   * change. `a.entry` must be the committed `audit.archive` entry naming the same range and segment, and
   * `a.checkpoint` a stored checkpoint that covers the range. The caller runs one archive at a time, after
   * the background full check ended (it reads the entries' data and would take pruned ones for tampering).
   */
  async pruneArchived(a: Omit<ArchivedSegment, 'createdAt'>): Promise<ArchivedSegment> {
    this.ready();
    if (this.#pruning) throw new SigilError('FAILED_PRECONDITION', `entries [${this.#pruning.start}, ${this.#pruning.end}) are being archived`);
    if (this.#check.state === 'running') throw new SigilError('FAILED_PRECONDITION', 'the audit log\'s full check is running: nothing can be pruned until it ended');
    if (a.start !== this.archivedEnd) throw new SigilError('INVALID_ARGUMENT', `an archived range starts at ${this.archivedEnd}, not ${a.start}`);
    const cp = Number.isSafeInteger(a.checkpoint) ? this.checkpointAt(a.checkpoint) : null;
    if (!cp || !Number.isSafeInteger(a.end) || a.end <= a.start || a.end > cp.size) {
      throw new SigilError('INVALID_ARGUMENT', `the archived range [${a.start}, ${a.end}) must end within a signed checkpoint, which it must name`);
    }
    if (!/^[0-9a-f]{64}$/.test(a.sha256) || a.file.length === 0 || /[/\\\n]/.test(a.file)) throw new SigilError('INVALID_ARGUMENT', 'an archived range needs a segment file name and its sha-256');
    const e = Number.isSafeInteger(a.entry) && a.entry >= a.end && a.entry < this.#tree.size ? this.entries(a.entry, 1)[0] : undefined;
    const named = e ? archiveEntryRange(e.data) : null;
    if (!named || named.start !== a.start || named.end !== a.end || named.segment !== a.file || named.sha256 !== a.sha256) {
      throw new SigilError('INVALID_ARGUMENT', `entry ${a.entry} is not the audit.archive entry of [${a.start}, ${a.end}) in ${a.file}`);
    }
    const rec: ArchivedSegment = { ...a, createdAt: this.#clock.now() };
    this.#pruning = { start: a.start, end: a.end, file: a.file, sha256: a.sha256, checkpoint: a.checkpoint, entry: a.entry };
    try {
      await this.#writer.request({ id: 0, op: 'prune', start: a.start, end: a.end, file: a.file, sha256: a.sha256, checkpoint: a.checkpoint, entry: a.entry, createdAt: rec.createdAt.getTime() });
      this.#archives.push(rec);
    } catch (err) {
      // The writer's transaction is all or nothing, but a writer that died after its commit and before its answer
      // leaves the prune done: the file, not the failure, says which (read on this connection).
      const done = this.#db.prepare('SELECT * FROM archives WHERE start = ? AND end = ? AND file = ? AND sha256 = ?').get(a.start, a.end, a.file, a.sha256) as ArchiveRow | undefined;
      if (done === undefined) throw new SigilError('AUDIT_UNAVAILABLE', `archiving [${a.start}, ${a.end}) could not be written: nothing pruned`, { cause: err });
      this.#log.warn({ err, start: a.start, end: a.end }, 'the audit writer failed after the prune committed: it stands');
      this.#archives.push(toArchive(done));
    } finally {
      this.#pruning = null;
    }
    this.#log.info({ start: a.start, end: a.end, file: a.file, sha256: a.sha256 }, 'audit entries archived');
    return rec;
  }

  /** The checkpoint stored at exactly `size`, or null. */
  checkpointAt(size: number): StoredCheckpoint | null {
    const r = this.#q.checkpointAt.get(size) as CheckpointRow | undefined;
    return r ? toCheckpoint(r) : null;
  }

  /** The latest checkpoint signed so far (null before the first), without signing a new one. */
  lastSigned(): StoredCheckpoint | null {
    return this.#latest;
  }

  /** The latest signed checkpoint; signs a new one first when the tree grew since the last. */
  async latestCheckpoint(): Promise<StoredCheckpoint> {
    if (this.#latest && this.#latest.size === this.#tree.size) return this.#latest;
    // Signing a tree the file no longer supports would vouch for tampered entries.
    if (this.#tampered) throw this.#tampered;
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
      await this.#writer.request({ id: 0, op: 'checkpoint', size, root, note, keyVersion: used, createdAt: cp.createdAt.getTime() });
    } catch (err) {
      throw unavailable(err);
    }
    if (!this.#latest || this.#latest.size < size) this.#latest = cp;
    return cp;
  }

  /** The audit key's public key and note identity, for verifiers. */
  publicKey(): { keyVersion: string; spki: Buffer; keyName: string; keyId: Buffer } {
    const pk = this.#key.publicKey();
    return { ...pk, keyName: this.origin, keyId: this.#noteKeyId(pk.spki) };
  }

  /**
   * Every version of the audit key, oldest first, with its window and note key id: a checkpoint signed
   * before a rotation is verified with the version whose key id its signature line carries.
   */
  keyVersions(): AuditKeyVersionInfo[] {
    const versions = this.#key.versions?.() ?? [{ ...this.#key.publicKey(), version: 0, createdAt: null, supersededAt: null, current: true }];
    return versions.map((v) => ({ ...v, keyName: this.origin, keyId: this.#noteKeyId(v.spki) }));
  }

  #noteKeyId(spki: Buffer): Buffer {
    const { type, publicKey } = noteKeyOfSpki(spki);
    return noteKeyId(this.origin, type, publicKey);
  }

  /** Writes what is queued, then stops the writer and closes the file; records made after the call reject. */
  close(): Promise<void> {
    return (this.#closing ??= (async () => {
      this.#closed = true;
      const checker = this.#checker;
      if (checker) {
        Atomics.store(checker.stop, 0, 1);
        await checker.ended;
      }
      for (;;) {
        if (this.#inFlight.size > 0) await Promise.all(this.#inFlight);
        else if (this.#queue.length > 0) this.#flush();
        else break;
      }
      await this.#writer.close();
      this.#db.close();
    })());
  }

  #checkSize(size: number, what: string): void {
    if (!Number.isSafeInteger(size) || size < 0 || size > this.#tree.size) throw new SigilError('INVALID_ARGUMENT', `${what} ${size} must be between 0 and ${this.#tree.size}`);
  }
}

/**
 * The log's writer thread (`audit-writer.ts`); a failed transaction rejects, with SQLite's error text. A
 * thread that dies rejects what it held (the log fails those records and reloads from the file before its
 * next append, since the thread may have committed without answering) and is started again on the next request.
 */
class WriterThread {
  readonly #client: WorkerClient<WriterRequest, WriterReply>;

  constructor(path: string, log: Logger) {
    this.#client = new WorkerClient({
      url: siblingModule(import.meta.url, 'audit-writer'),
      workerData: { path } satisfies WriterData,
      name: 'sigil-audit-writer',
      onLost: (err) => log.error({ err }, 'audit writer thread stopped'),
    });
    this.#client.start();
  }

  /** Sends one request; resolves when its transaction committed. */
  async request(m: WriterRequest, transfer: ArrayBuffer[] = []): Promise<void> {
    const r = await this.#client.request(m, transfer);
    if (!r.ok) throw Object.assign(new Error(r.message), r.sqlite ? { errstr: r.sqlite } : {});
  }

  /** Closes the writer's connection and waits for the thread to end. */
  close(): Promise<void> {
    return this.#client.close({ id: 0, op: 'close' });
  }
}

/** The error for a read of archived entry `index`: the segment that holds it. */
function archivedError(index: number, a: Omit<ArchivedSegment, 'createdAt'>): SigilError {
  return new SigilError('FAILED_PRECONDITION', `entry ${index} is archived in segment ${a.file} (entries ${a.start} to ${a.end - 1}, sha256 ${a.sha256})`);
}

/** A row of the `archives` table: an ArchivedSegment with its time as stored. */
type ArchiveRow = Omit<ArchivedSegment, 'createdAt'> & { created_at: number };

function toArchive(r: ArchiveRow): ArchivedSegment {
  return { start: r.start, end: r.end, file: r.file, sha256: r.sha256, checkpoint: r.checkpoint, entry: r.entry, createdAt: new Date(r.created_at) };
}

/** The range and segment an `audit.archive` entry names, or null when the bytes are not such an entry. */
function archiveEntryRange(data: Uint8Array): { start: unknown; end: unknown; segment: unknown; sha256: unknown } | null {
  try {
    const e = JSON.parse(Buffer.from(data).toString('utf8')) as { act?: unknown; detail?: Record<string, unknown> };
    if (e.act !== 'audit.archive' || typeof e.detail !== 'object' || e.detail === null) return null;
    return { start: e.detail.start, end: e.detail.end, segment: e.detail.segment, sha256: e.detail.sha256 };
  } catch {
    return null;
  }
}

/** What is wrong when entry `idx` has no data outside the archived prefix `[0, archivedEnd)`, or has data inside it. */
function archiveFinding(idx: number, archivedEnd: number): string {
  return idx < archivedEnd
    ? `entry ${idx} is recorded as archived but still holds data: the archive records do not match the entries`
    : `the data of entry ${idx} is gone but no archive record covers it`;
}

/**
 * The start-up checks of one stored entry: archived ones (below `archivedEnd`) hold no data, every other one
 * holds data that hashes to its stored leaf hash (an entry rewritten with its leaf hash left alone).
 */
function checkEntryBytes(row: { idx: number; data: Uint8Array; leaf: Uint8Array }, archivedEnd: number): void {
  if ((row.data.length === 0) !== (row.idx < archivedEnd)) throw tampered(archiveFinding(row.idx, archivedEnd));
  if (row.idx >= archivedEnd && !leafHash(row.data).equals(row.leaf)) throw tampered(`the bytes of entry ${row.idx} do not hash to its stored leaf hash`);
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
