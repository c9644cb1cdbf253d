// The audit log's writer thread: it owns the one connection that writes the log's SQLite file, so the
// fsync of every group commit happens here and not on the daemon's event loop (which must keep starting
// signatures meanwhile). It imports nothing of sigil's: the main thread computes entries, leaf hashes and
// subtree nodes, and this thread only stores them, one transaction per message.
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
  | { id: number; op: 'close' };

/** The writer's answer: the transaction committed, or why it did not. */
export type WriterReply = { id: number; ok: true } | { id: number; ok: false; message: string; sqlite?: string };

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

function handle(m: WriterRequest): void {
  switch (m.op) {
    case 'append': {
      const n = m.ends.length;
      transaction(() => {
        let from = 0;
        for (let i = 0; i < n; i++) {
          const to = m.ends[i]!;
          insertEntry.run(m.start + i, m.data.subarray(from, to), m.leaves.subarray(i * 32, i * 32 + 32));
          from = to;
        }
        for (const [level, index, hash] of m.nodes) insertNode.run(level, index, hash);
      });
      return;
    }
    case 'checkpoint':
      transaction(() => insertCheckpoint.run(m.size, m.root, m.note, m.keyVersion, m.createdAt));
      return;
    case 'close':
      db.close();
      return;
  }
}

port.on('message', (m: WriterRequest) => {
  let reply: WriterReply;
  try {
    handle(m);
    reply = { id: m.id, ok: true };
  } catch (err) {
    const e = err as { message?: unknown; code?: unknown; errstr?: unknown };
    reply = { id: m.id, ok: false, message: String(e.message ?? err), ...(typeof e.errstr === 'string' ? { sqlite: e.errstr } : {}) };
  }
  port.postMessage(reply);
  if (m.op === 'close') port.close();
});
