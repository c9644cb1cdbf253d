import { createHash } from 'node:crypto';
import { closeSync, existsSync, fsyncSync, mkdirSync, openSync, readFileSync, renameSync, rmSync, statSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { AuditLog, type AuditKey } from '../audit/audit-log.ts';
import { auditedAt, reasonOf, resultOf } from '../audit/audited.ts';
import { encodeSegmentEntry, encodeSegmentHeader, parseSegment, verifySegmentAsync } from '../audit/segment.ts';
import type { VerifyKey } from '../audit/verify.ts';
import type { Clock } from '../clock.ts';
import type { Config } from '../config/schema.ts';
import { SigilError } from '../errors.ts';
import { auditKeyVersions } from '../audit/audit-key.ts';
import type { Logger } from '../log.ts';
import { auditOriginOf, auditPathOf } from './backup.ts';
import type { KeyVersionState } from './store.ts';
import { lockExclusive, lockStore } from './store-lock.ts';

/** What `sigild audit archive` is asked for. */
export interface ArchiveOptions {
  /** The directory segments are written to (made mode 0700 when missing). */
  outDir: string;
  /** Archive only entries below this index (default: all the latest checkpoint covers). */
  before?: number | undefined;
  /** The archived prefix ends on a multiple of this power of two (whole subtrees go); default 65536. */
  align?: number | undefined;
  /** At most this many entries per segment file (a multiple of `align`); default 262144. */
  segmentMax?: number | undefined;
  /** Run SQLite's VACUUM on the audit file afterwards, giving the freed pages back to the file system. */
  vacuum?: boolean | undefined;
  /** Who archives, as the audit entry names them. */
  who: string;
  clock: Clock;
  log: Logger;
}

/** One segment written, verified and pruned from the live log. */
export interface ArchivedFile {
  file: string;
  start: number;
  end: number;
  bytes: number;
  sha256: string;
  /** The size of the signed checkpoint the segment carries. */
  checkpoint: number;
  /** The index of the `audit.archive` entry written ahead of the pruning (-1 until it is written). */
  entry: number;
}

/** What an archive run did: the segments, and the log's archived prefix and size after it. */
export interface ArchiveResult {
  segments: ArchivedFile[];
  archivedEnd: number;
  size: number;
  /** Why nothing was archived, when nothing was. */
  nothing: string | null;
  /** The audit file's size in bytes after a VACUUM, when one ran. */
  vacuumed: number | null;
}

/** Default alignment of the archived prefix: subtrees of 2^16 entries. */
export const ARCHIVE_ALIGN = 65536;
/** Default entries per segment file (~60 MB at ~231 bytes an entry). */
export const SEGMENT_MAX = 262144;

/**
 * Moves the oldest entries of the audit log of the daemon configured by `cfg` into segment files in
 * `o.outDir`, with the daemon stopped: refuses while anything holds the store or the audit file (and
 * holds the store's lock and the store exclusively meanwhile, so the daemon cannot start). Opens the log
 * with its start-up check (and waits for the full check), then per segment: writes it to a temp file, fsyncs, renames,
 * fsyncs the directory, reads it back and verifies it with the audit key versions the store holds, and
 * only then removes the entries' data in one transaction, written ahead in the log as `audit.archive`.
 */
export async function archiveAuditLog(cfg: Config, o: ArchiveOptions): Promise<ArchiveResult> {
  const align = o.align ?? ARCHIVE_ALIGN;
  const segmentMax = o.segmentMax ?? SEGMENT_MAX;
  if (!Number.isSafeInteger(align) || align < 1 || (align & (align - 1)) !== 0 || align > 2 ** 30) throw new SigilError('INVALID_ARGUMENT', '--align must be a power of two up to 2^30');
  if (!Number.isSafeInteger(segmentMax) || segmentMax < align || segmentMax % align !== 0) throw new SigilError('INVALID_ARGUMENT', `--segment-max must be a positive multiple of --align (${align})`);
  if (o.before !== undefined && (!Number.isSafeInteger(o.before) || o.before < 0)) throw new SigilError('INVALID_ARGUMENT', '--before must be a non-negative integer');
  const result = await withStoppedDaemon(cfg, { ...o, doing: 'archiving' }, ({ log, verifyKeys }) => archivePrefix(log, o, align, segmentMax, verifyKeys));
  if (o.vacuum && result.segments.length > 0) result.vacuumed = vacuum(auditPathOf(cfg));
  return result;
}

/** What an offline command holds while sigild is stopped: the store's one connection (exclusive) and the audit log. */
export interface StoppedDaemon {
  /** The store, opened exclusively (a second connection would be refused): read it on this one. */
  store: DatabaseSync;
  log: AuditLog;
  /** Every audit key version's public key, to verify checkpoints and segments. */
  verifyKeys: VerifyKey[];
}

/**
 * Runs `fn` for a command that must run with the daemon configured by `cfg` stopped (`sigild audit archive`,
 * `sigild tpm rekey`): refuses while anything holds the store or the audit file, holds the store exclusively
 * meanwhile (so the daemon cannot start), and opens the audit log with its start-up check so the command's
 * acts are audited like the daemon's. `doing` names the command in the refusal.
 */
export async function withStoppedDaemon<T>(cfg: Config, o: { clock: Clock; log: Logger; doing: string }, fn: (d: StoppedDaemon) => Promise<T>): Promise<T> {
  const auditPath = auditPathOf(cfg);
  if (!existsSync(auditPath)) throw new SigilError('FAILED_PRECONDITION', `the audit log ${auditPath} does not exist: is this the config the daemon runs with?`);
  if (!existsSync(cfg.store.sqlite.path)) throw new SigilError('FAILED_PRECONDITION', `the store ${cfg.store.sqlite.path} does not exist: is this the config the daemon runs with?`);
  // The store's lock first (a running sigild is refused by name and pid); the files themselves too, in case
  // anything else has them open.
  const held = lockStore(cfg.store.sqlite.path);
  let store: DatabaseSync;
  try {
    store = exclusive(cfg.store.sqlite.path, 'store', o.doing);
  } catch (err) {
    held.release();
    throw err;
  }
  try {
    exclusive(auditPath, 'audit log', o.doing).close();
    const { key, verifyKeys } = storedAuditKey(store, cfg.audit.key);
    const log = AuditLog.open({ path: auditPath, origin: auditOriginOf(cfg), key, clock: o.clock, log: o.log, fullCheckAtStartMax: cfg.audit.fullCheckAtStartMax });
    try {
      return await fn({ store, log, verifyKeys });
    } finally {
      await log.close();
    }
  } finally {
    store.close();
    held.release();
  }
}

/** VACUUM of the (closed) audit file: rewrites it without its free pages; returns its size. */
function vacuum(path: string): number {
  const db = new DatabaseSync(path);
  try {
    db.exec('PRAGMA busy_timeout = 0; VACUUM; PRAGMA wal_checkpoint(TRUNCATE);');
  } finally {
    db.close();
  }
  return statSync(path).size;
}

/** Archives whole `align`-sized runs up to the latest checkpoint (and `o.before`), at most `segmentMax` entries a segment. */
async function archivePrefix(log: AuditLog, o: Pick<ArchiveOptions, 'outDir' | 'before' | 'who'>, align: number, segmentMax: number, verifyKeys: readonly VerifyKey[], stopping: () => boolean = () => false): Promise<ArchiveResult> {
  const check = await log.fullCheckDone();
  if (check.state !== 'clean') throw new SigilError('FAILED_PRECONDITION', `the audit log's full check did not pass (${check.state}${check.finding ? `: ${check.finding}` : ''}): nothing archived`);
  const cp = log.lastSigned();
  const done = (nothing: string | null, segments: ArchivedFile[] = []): ArchiveResult => ({ segments, archivedEnd: log.archivedEnd, size: log.size, nothing, vacuumed: null });
  if (!cp) return done('the log has no signed checkpoint yet');
  const end = Math.floor(Math.min(o.before ?? cp.size, cp.size) / align) * align;
  if (end <= log.archivedEnd) {
    return done(`entries below ${log.archivedEnd} are archived already; the latest checkpoint (size ${cp.size}${o.before !== undefined ? `, --before ${o.before}` : ''}) rounded down to a multiple of ${align} is ${end}`);
  }
  const segments: ArchivedFile[] = [];
  for (let start = log.archivedEnd; start < end; start = segments.at(-1)!.end) {
    // A daemon stopping ends the run between segments (each is whole): the rest waits for the next run.
    if (stopping()) return done(`stopped after ${segments.length} segment(s): sigild is stopping`, segments);
    segments.push(await archiveSegment(log, o.outDir, start, Math.min(end, start + segmentMax), verifyKeys, o.who));
  }
  return done(null, segments);
}

/** The file name of the segment of `[start, end)`: sorts in log order. */
export function segmentFileName(start: number, end: number): string {
  return `audit-${String(start).padStart(15, '0')}-${String(end).padStart(15, '0')}.segment`;
}

/** `lockExclusive` of one of the daemon's files, refused with a message when anything (the daemon) has it open. */
function exclusive(path: string, what: string, doing: string): DatabaseSync {
  const db = lockExclusive(path);
  if (db === null) throw new SigilError('FAILED_PRECONDITION', `the ${what} ${path} is in use: stop sigild before ${doing} (docs/operations.md)`);
  return db;
}

/**
 * The audit key as the store records it, for a log opened with the daemon stopped: every version's
 * public key (to verify checkpoints), no signing (the daemon signs the next checkpoint when it starts).
 */
function storedAuditKey(store: DatabaseSync, name: string): { key: AuditKey; verifyKeys: VerifyKey[] } {
  // Read on the connection that holds the store's exclusive lock (a SqliteStore would be a second one, refused).
  const k = store.prepare('SELECT primary_version AS p FROM keys WHERE name = ?').get(name) as { p: number } | undefined;
  const rows = store.prepare('SELECT version, state, spki, created_at FROM key_versions WHERE name = ?').all(name) as Array<{ version: number; state: KeyVersionState; spki: Uint8Array; created_at: number }>;
  const versions = k ? auditKeyVersions({ name, primaryVersion: k.p, versions: rows.map((r) => ({ version: r.version, state: r.state, spki: Buffer.from(r.spki), createdAt: new Date(r.created_at) })) }) : [];
  if (versions.length === 0) throw new SigilError('FAILED_PRECONDITION', `the store holds no audit key ${name}`);
  const current = versions.find((v) => v.current) ?? versions.at(-1)!;
  const key: AuditKey = {
    publicKey: (keyVersion) => {
      const v = keyVersion === undefined ? current : versions.find((x) => x.keyVersion === keyVersion);
      if (!v) throw new SigilError('KEY_NOT_FOUND', `no audit key version ${keyVersion}`);
      return { keyVersion: v.keyVersion, spki: v.spki };
    },
    sign: () => Promise.reject(new SigilError('FAILED_PRECONDITION', 'a command run with the daemon stopped signs no checkpoint: the daemon does')),
    versions: () => versions,
  };
  return { key, verifyKeys: versions.map((v) => ({ spki: v.spki, label: v.keyVersion })) };
}

/**
 * Archives `[start, end)`, the first entries not archived, with no other archive run on the log: writes
 * and verifies the segment, then prunes the entries as the act `audit.archive`, written ahead (its intent
 * entry, which the archive record points at, names the range, the segment and its SHA-256). Appends may go
 * on meanwhile (the daemon running).
 */
export async function archiveSegment(log: AuditLog, dir: string, start: number, end: number, keys: readonly VerifyKey[], who: string): Promise<ArchivedFile> {
  const seg = await writeVerifiedSegment(log, dir, start, end, keys);
  await auditedAt(log, { who, act: 'audit.archive', detail: { start, end, segment: seg.file, sha256: seg.sha256, checkpoint: seg.checkpoint } }, async (entry) => {
    await log.pruneArchived({ start, end, file: seg.file, sha256: seg.sha256, checkpoint: seg.checkpoint, entry });
    seg.entry = entry;
  });
  return seg;
}

/** Where and how the running daemon archives (`audit.archiveDir`, `audit.archiveAlign`, `audit.archiveSegmentMax`). */
export interface OnlineArchiveConfig {
  /** The segment directory, an absolute path; null when not configured (every run is refused). */
  dir: string | null;
  align: number;
  segmentMax: number;
}

/**
 * Archives the oldest entries of the log while the daemon runs and appends (the `ArchiveAuditLog` RPC):
 * the offline command's steps, one run at a time (a second is refused, not queued), only after the
 * background full check passed, up to the latest signed checkpoint (signed first when the tree grew).
 * A refusal is an audit entry (`audit.archive`, refused); each segment is an act written ahead.
 */
export class OnlineArchiver {
  readonly #log: AuditLog;
  readonly #cfg: OnlineArchiveConfig;
  #running = false;
  #stopping = false;
  #current: Promise<unknown> = Promise.resolve();

  constructor(log: AuditLog, cfg: OnlineArchiveConfig) {
    this.#log = log;
    this.#cfg = cfg;
  }

  /** True while a run is under way. */
  get running(): boolean {
    return this.#running;
  }

  /**
   * Stops archiving: a run under way ends after the segment it is on (each is whole), no later run starts.
   * Resolves once that run has ended, whatever its outcome: the daemon waits for it before closing the log.
   */
  stop(): Promise<void> {
    this.#stopping = true;
    return this.#current.then(
      () => undefined,
      () => undefined,
    );
  }

  /** Archives whole `align` runs below `before` (default: all the latest checkpoint covers), as `who`. */
  async run(who: string, before?: number): Promise<ArchiveResult> {
    let dir: string;
    try {
      dir = this.#admit(before);
    } catch (err) {
      await this.#log.record({ who, act: 'audit.archive', result: resultOf(err), reason: reasonOf(err), detail: { message: err instanceof SigilError ? err.message : 'internal error' } });
      throw err;
    }
    this.#running = true;
    const p = (async () => {
      try {
        // Archive up to a checkpoint that covers what is there now: a segment carries a signed checkpoint.
        await this.#log.latestCheckpoint();
        const keys = this.#log.keyVersions().map((v) => ({ spki: v.spki, label: v.keyVersion }));
        return await archivePrefix(this.#log, { outDir: dir, before, who }, this.#cfg.align, this.#cfg.segmentMax, keys, () => this.#stopping);
      } finally {
        this.#running = false;
      }
    })();
    this.#current = p;
    return p;
  }

  /**
   * Runs the archive every `every` ms (counted from the last archive record, so a restart does not reset it;
   * at once when nothing was ever archived), as `sigild`, keeping the newest `keep` entries live. Checks at
   * least hourly (timers cannot wait 30 days); a check while a run is under way or the full check still runs
   * waits for the next one. Failures are logged (and audited by `run`). Returns the function that stops it.
   */
  schedule(every: number, keep: number, clock: Clock, log: Logger): () => void {
    let timer: NodeJS.Timeout | null = null;
    let stopped = false;
    let warned: string | null = null;
    const tick = async (): Promise<void> => {
      const last = this.#log.archives().at(-1)?.createdAt.getTime() ?? null;
      if (this.#running || (last !== null && clock.now().getTime() - last < every)) return;
      // Only over a log whose check passed: a run would be refused, and audited as such, at every check otherwise.
      const state = this.#log.fullCheck.state;
      if (state !== 'clean') {
        if (state !== 'running' && state !== warned) log.warn({ state }, 'scheduled audit archive waits: the audit log full check has not passed');
        warned = state;
        return;
      }
      warned = null;
      try {
        const r = await this.run('sigild', Math.max(0, this.#log.size - keep));
        if (r.segments.length > 0) log.info({ segments: r.segments.length, archivedEnd: r.archivedEnd }, 'scheduled audit archive done');
        else log.debug({ nothing: r.nothing }, 'scheduled audit archive: nothing to archive');
      } catch (err) {
        log.error({ err }, 'scheduled audit archive failed');
      }
    };
    const next = (): void => {
      if (stopped) return;
      timer = setTimeout(() => void tick().finally(next), Math.min(every, 3_600_000));
      timer.unref();
    };
    next();
    return () => {
      stopped = true;
      if (timer) clearTimeout(timer);
    };
  }

  /** The checks before a run, all synchronous (so two calls in the same turn cannot both pass); returns the directory. */
  #admit(before: number | undefined): string {
    if (this.#cfg.dir === null) throw new SigilError('FAILED_PRECONDITION', 'audit.archiveDir is not configured: set it to the absolute path of the directory archive segments go to (docs/operations.md)');
    if (before !== undefined && (!Number.isSafeInteger(before) || before < 0)) throw new SigilError('INVALID_ARGUMENT', 'before must be a non-negative integer');
    if (this.#running) throw new SigilError('FAILED_PRECONDITION', 'an audit archive is already running: try again once it has finished');
    if (this.#stopping) throw new SigilError('FAILED_PRECONDITION', 'sigild is stopping: no audit archive starts');
    this.#log.ready();
    const c = this.#log.fullCheck;
    if (c.state === 'running') throw new SigilError('FAILED_PRECONDITION', `the audit log's full check is running (${c.verified} of ${c.size} entries verified): archive once it has passed`);
    if (c.state !== 'clean') throw new SigilError('FAILED_PRECONDITION', `the audit log's full check did not pass (${c.state}${c.finding ? `: ${c.finding}` : ''}): nothing archived`);
    return this.#cfg.dir;
  }
}

/**
 * Writes the segment of `[start, end)` durably (temp file, fsync, rename, fsync of the directory), then reads it
 * back and verifies it. Hands the event loop back between pages, so a daemon archiving online keeps serving.
 */
export async function writeVerifiedSegment(log: AuditLog, dir: string, start: number, end: number, keys: readonly VerifyKey[]): Promise<ArchivedFile> {
  const proof = log.segmentProof(start, end);
  const file = segmentFileName(start, end);
  const path = join(dir, file);
  const tmp = `${path}.tmp`;
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const fd = openSync(tmp, 'w', 0o600);
  try {
    writeSync(fd, encodeSegmentHeader({ origin: log.origin, start, end, checkpoint: proof.checkpoint.note, left: proof.left, right: proof.right }));
    for (let at = start; at < end; ) {
      const page = log.entries(at, end - at);
      if (page.length === 0) throw new SigilError('INTERNAL', `audit entry ${at} could not be read`);
      writeSync(fd, Buffer.concat(page.map((e) => encodeSegmentEntry(e.data))));
      at = page.at(-1)!.index + 1;
      await new Promise((resolve) => setImmediate(resolve));
    }
    fsyncSync(fd);
  } catch (err) {
    closeSync(fd);
    rmSync(tmp, { force: true });
    throw err;
  }
  closeSync(fd);
  renameSync(tmp, path);
  const dfd = openSync(dir, 'r');
  try {
    fsyncSync(dfd);
  } finally {
    closeSync(dfd);
  }
  const bytes = readFileSync(path);
  const r = await verifySegmentAsync(parseSegment(bytes), keys, log.origin);
  if (!r.ok || r.start !== start || r.end !== end) throw new SigilError('FAILED_PRECONDITION', `the segment ${path} does not verify after writing (${r.failure ?? 'wrong range'}): nothing pruned`);
  return { file, start, end, bytes: bytes.length, sha256: createHash('sha256').update(bytes).digest('hex'), checkpoint: proof.checkpoint.size, entry: -1 };
}
