// The audit log's writer thread: it owns the one connection that writes the log's SQLite file, so the
// fsync of every group commit happens here and not on the daemon's event loop (which must keep starting
// signatures meanwhile). It imports nothing of sigil's: the main thread computes entries, leaf hashes and
// subtree nodes, and this thread only stores them. The main thread sends each event-loop turn's entries
// without waiting for earlier commits; everything that arrived while a commit was running goes into the
// next transaction (one fsync for all of it).
import { parentPort, workerData } from 'node:worker_threads';
import { DatabaseSync } from 'node:sqlite';

/** What the main thread asks of the writer. */
export type WriterRequest =
  | {
      id: number;
      op: 'append';
      /** Index of the first entry. */
      start: number;
      /** The entries' canonical JSON, back to back; `ends[i]` is where entry i ends. */
      data: Uint8Array;
      ends: Uint32Array;
      /** 32-byte leaf hashes, back to back. */
      leaves: Uint8Array;
      /** Completed subtrees to keep: [level, index, hash]. */
      nodes: Array<[number, number, Uint8Array]>;
    }
  | { id: number; op: 'checkpoint'; size: number; root: Uint8Array; note: string; keyVersion: string; createdAt: number }
  /** Removes the data of entries `[start, end)` (archived in `file`, checked by the main thread) and records the range. */
  | { id: number; op: 'prune'; start: number; end: number; file: string; sha256: string; checkpoint: number; entry: number; createdAt: number }
  | { id: number; op: 'close' };

/** The writer's answer for requests `ids`: their transaction committed, or why it did not. */
export type WriterReply = { ids: number[]; ok: true } | { ids: number[]; ok: false; message: string; sqlite?: string };

/** What the writer is started with. */
export interface WriterData {
  path: string;
}

const port = parentPort;
if (!port) throw new Error('audit-writer runs as a worker thread');
const { path } = workerData as WriterData;
const db = new DatabaseSync(path);
// The same settings as the main connection: durable commits, and a blocked write fails fast (fail closed).
db.exec('PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 20;');
const insertEntry = db.prepare('INSERT INTO entries (idx, data, leaf) VALUES (?, ?, ?)');
const insertNode = db.prepare('INSERT OR REPLACE INTO nodes (level, idx, hash) VALUES (?, ?, ?)');
const insertCheckpoint = db.prepare('INSERT OR IGNORE INTO checkpoints (size, root, note, key_version, created_at) VALUES (?, ?, ?, ?, ?)');

function transaction(body: () => void): void {
  db.exec('BEGIN IMMEDIATE');
  try {
    body();
    db.exec('COMMIT');
  } catch (err) {
    if (db.isTransaction) db.exec('ROLLBACK');
    throw err;
  }
}

type Append = Extract<WriterRequest, { op: 'append' }>;
type Prune = Extract<WriterRequest, { op: 'prune' }>;

/**
 * The prune of an archived range, all or nothing. Rows are deleted and written again without their data
 * (rather than updated in place): SQLite frees the pages the old rows filled, and later appends reuse them,
 * so the file stops growing without a VACUUM. It runs here, between two append transactions, because this
 * connection owns the write lock: a prune on another connection would hold it long enough for appends to
 * hit their busy timeout and fail closed.
 */
function prune(m: Prune): void {
  transaction(() => {
    db.exec('CREATE TEMP TABLE IF NOT EXISTS archiving (idx INTEGER PRIMARY KEY, leaf BLOB NOT NULL); DELETE FROM temp.archiving');
    const n = db.prepare('INSERT INTO temp.archiving SELECT idx, leaf FROM entries WHERE idx >= ? AND idx < ? AND length(data) > 0').run(m.start, m.end).changes;
    if (Number(n) !== m.end - m.start) throw new Error(`archiving [${m.start}, ${m.end}) found ${n} entries with data, not ${m.end - m.start}`);
    db.prepare('DELETE FROM entries WHERE idx >= ? AND idx < ?').run(m.start, m.end);
    db.exec("INSERT INTO entries (idx, data, leaf) SELECT idx, X'', leaf FROM temp.archiving ORDER BY idx; DELETE FROM temp.archiving");
    db.prepare('INSERT INTO archives (start, end, file, sha256, checkpoint, entry, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)').run(m.start, m.end, m.file, m.sha256, m.checkpoint, m.entry, m.createdAt);
  });
}

/** The index the next entry must have: the file's entry count. */
const countEntries = db.prepare('SELECT COALESCE(MAX(idx) + 1, 0) AS n FROM entries');
let expected = (countEntries.get() as { n: number }).n;
let queue: WriterRequest[] = [];
let scheduled = false;

function failure(ids: number[], err: unknown): WriterReply {
  const e = err as { message?: unknown; errstr?: unknown };
  return { ids, ok: false, message: String(e.message ?? err), ...(typeof e.errstr === 'string' ? { sqlite: e.errstr } : {}) };
}

/** Writes a run of consecutive appends in one transaction. */
function commit(group: Append[]): void {
  if (group.length === 0) return;
  const ids = group.map((m) => m.id);
  try {
    let next = expected;
    transaction(() => {
      for (const m of group) {
        let from = 0;
        for (let i = 0; i < m.ends.length; i++) {
          const to = m.ends[i]!;
          insertEntry.run(m.start + i, m.data.subarray(from, to), m.leaves.subarray(i * 32, i * 32 + 32));
          from = to;
        }
        for (const [level, index, hash] of m.nodes) insertNode.run(level, index, hash);
        next = m.start + m.ends.length;
      }
    });
    expected = next;
    port!.postMessage({ ids, ok: true } satisfies WriterReply);
  } catch (err) {
    // A commit may fail after writing: what counts is what the file holds.
    try {
      expected = (countEntries.get() as { n: number }).n;
    } catch {
      // The file cannot be read either; the next append's index check decides.
    }
    port!.postMessage(failure(ids, err));
  }
}

/** Handles everything that arrived since the last run, in order, appends grouped into transactions. */
function run(): void {
  scheduled = false;
  const msgs = queue;
  queue = [];
  let group: Append[] = [];
  let tip = expected;
  const flush = (): void => {
    commit(group);
    group = [];
    tip = expected;
  };
  for (const m of msgs) {
    if (m.op === 'append') {
      if (m.start !== tip) {
        flush();
        // Sent on top of a write that failed: its indices are wrong, the main thread resends after a resync.
        if (m.start !== tip) {
          port!.postMessage({ ids: [m.id], ok: false, message: `an earlier audit write failed (entry ${m.start} sent, ${tip} expected)` } satisfies WriterReply);
          continue;
        }
      }
      group.push(m);
      tip += m.ends.length;
      continue;
    }
    flush();
    try {
      if (m.op === 'checkpoint') transaction(() => insertCheckpoint.run(m.size, m.root, m.note, m.keyVersion, m.createdAt));
      else if (m.op === 'prune') prune(m);
      else db.close();
      port!.postMessage({ ids: [m.id], ok: true } satisfies WriterReply);
    } catch (err) {
      port!.postMessage(failure([m.id], err));
    }
    if (m.op === 'close') {
      port!.close();
      return;
    }
  }
  flush();
}

port.on('message', (m: WriterRequest) => {
  queue.push(m);
  if (!scheduled) {
    scheduled = true;
    // Messages delivered in the same turn (those that queued during the last commit) share a transaction.
    setImmediate(run);
  }
});
