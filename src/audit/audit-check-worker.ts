// The audit log's background full check, as a worker thread: after a fast start (the log verified only
// against its latest checkpoint's frontier), it re-reads the whole file up to that checkpoint on its own
// read-only connection, off the event loop, while writes go on past it.
import { parentPort, workerData } from 'node:worker_threads';
import { DatabaseSync } from 'node:sqlite';
import { fullCheck } from './audit-check.ts';

/** What the check thread is started with. */
export interface CheckData {
  path: string;
  size: number;
  stride: number;
  /** The first entry not archived. */
  archivedEnd: number;
  /** One Int32: the main thread stores 1 to stop the check between pages. */
  stop: SharedArrayBuffer;
}

/** What the check thread reports: progress, then one of clean, tampered (with the finding), stopped or error. */
export type CheckMessage =
  | { op: 'progress'; verified: number }
  | { op: 'clean'; seconds: number }
  | { op: 'tampered'; finding: string }
  | { op: 'stopped' }
  | { op: 'error'; message: string };

const port = parentPort;
if (!port) throw new Error('audit-check-worker runs as a worker thread');
const d = workerData as CheckData;
const stop = new Int32Array(d.stop);
const t0 = performance.now();
let db: DatabaseSync | null = null;
try {
  db = new DatabaseSync(d.path, { readOnly: true });
  const r = fullCheck(db, {
    size: d.size,
    stride: d.stride,
    archivedEnd: d.archivedEnd,
    progress: (verified) => port.postMessage({ op: 'progress', verified } satisfies CheckMessage),
    stopped: () => Atomics.load(stop, 0) === 1,
  });
  if (r.ok) port.postMessage({ op: 'clean', seconds: (performance.now() - t0) / 1000 } satisfies CheckMessage);
  else if ('finding' in r) port.postMessage({ op: 'tampered', finding: r.finding } satisfies CheckMessage);
  else port.postMessage({ op: 'stopped' } satisfies CheckMessage);
} catch (err) {
  port.postMessage({ op: 'error', message: String((err as { message?: unknown }).message ?? err) } satisfies CheckMessage);
} finally {
  db?.close();
}
