// The audit log's writer thread dying: what it held fails with AUDIT_UNAVAILABLE, the log refuses acts
// until a write succeeds, the next write starts a new thread and succeeds, and file and memory agree.
// The writer is killed through the process's 'worker' event (every Worker the process creates is handed to
// it), so the log needs no test hook.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import type { Worker } from 'node:worker_threads';
import { pino } from 'pino';
import { AuditLog } from '../../../src/audit/audit-log.ts';
import { memoryAuditKey, TEST_AUDIT_ORIGIN, signEvent, tempAuditFile } from '../../helpers/audit-key.ts';
import { CompactRange, leafHash } from '../../../src/audit/merkle.ts';
import { decodeEntry } from '../../../src/audit/entry.ts';
import { verifyLog } from '../../../src/audit/verify.ts';
import { isSigilError } from '../../../src/errors.ts';

const ORIGIN = TEST_AUDIT_ORIGIN;
const { key, spki } = memoryAuditKey();

const workers: Worker[] = [];
process.on('worker', (w) => workers.push(w));

const event = signEvent;
const turn = () => new Promise((r) => setImmediate(r));

interface Harness {
  path: string;
  log: AuditLog;
  /** Error-level log lines of the audit log (`audit writer thread stopped` when it died holding requests). */
  errors: string[];
  /** The writer thread now (the newest worker the process made). */
  writer(): Promise<Worker>;
  cleanup(): Promise<void>;
}

async function harness(): Promise<Harness> {
  const errors: string[] = [];
  const f = tempAuditFile('sigil-audit-death-', key, pino({ level: 'error' }, { write: (l: string) => void errors.push((JSON.parse(l) as { msg: string }).msg) }));
  const log = f.open();
  return {
    path: f.path,
    log,
    errors,
    writer: async () => {
      // The 'worker' event comes a turn after the thread is made.
      await turn();
      return workers.at(-1)!;
    },
    cleanup: async () => {
      await log.close();
      f.cleanup();
    },
  };
}

/** The entries and root as the file holds them, read through a connection of its own. */
function fileState(path: string): { digests: string[]; root: Buffer } {
  const db = new DatabaseSync(path, { readOnly: true });
  try {
    const rows = db.prepare('SELECT idx, data, leaf FROM entries ORDER BY idx').all() as Array<{ idx: number; data: Uint8Array; leaf: Uint8Array }>;
    const tree = new CompactRange();
    rows.forEach((r, i) => {
      assert.equal(r.idx, i, 'no gap in the file');
      assert.deepEqual(Buffer.from(r.leaf), leafHash(r.data), `entry ${i}'s stored leaf hash`);
      tree.append(leafHash(r.data));
    });
    return { digests: rows.map((r) => decodeEntry(r.data).digest!), root: tree.root() };
  } finally {
    db.close();
  }
}

/** The log in memory agrees with the file, and the whole log verifies against a fresh signed checkpoint. */
async function assertConsistent(h: Harness): Promise<string[]> {
  const file = fileState(h.path);
  assert.equal(h.log.size, file.digests.length, 'memory and file hold as many entries');
  assert.deepEqual(h.log.root(), file.root, 'memory and file have the same root');
  const cp = await h.log.latestCheckpoint();
  assert.equal(cp.size, file.digests.length);
  const report = await verifyLog({ entries: h.log.entries(0, 1000), checkpoint: cp.note, spki, origin: ORIGIN });
  assert.deepEqual(report.failure, null);
  assert.ok(report.ok);
  return file.digests;
}

test('the writer killed with batches in flight: they reject AUDIT_UNAVAILABLE, the log refuses until the next write, which succeeds on a new thread', async () => {
  const h = await harness();
  const locker = new DatabaseSync(h.path);
  try {
    await Promise.all([0, 1, 2].map((i) => h.log.record(event(i))));
    const writer = await h.writer();
    // Nothing can commit while another connection holds the write lock: the batches are held by the writer.
    locker.exec('BEGIN IMMEDIATE');
    const held: Promise<void>[] = [];
    for (let b = 0; b < 3; b++) {
      for (let i = 0; i < 4; i++) held.push(h.log.record(event(10 + b * 4 + i)));
      await turn();
    }
    await writer.terminate();
    const results = await Promise.allSettled(held);
    for (const r of results) assert.ok(r.status === 'rejected' && isSigilError(r.reason, 'AUDIT_UNAVAILABLE'), `a held record: ${r.status === 'rejected' ? String(r.reason) : 'resolved'}`);
    assert.ok(h.errors.includes('audit writer thread stopped'), `the writer died holding requests (logged: ${h.errors.join('; ')})`);
    assert.throws(() => h.log.ready(), (e) => isSigilError(e, 'AUDIT_UNAVAILABLE'), 'acts are refused while the last write failed');
    assert.equal(h.log.size, 3, 'the committed tree did not move');
    locker.exec('COMMIT');

    const before = workers.length;
    await h.log.record(event(100));
    assert.equal(workers.length, before + 1, 'the next write started a new writer thread');
    assert.doesNotThrow(() => h.log.ready(), 'a successful write heals the log');
    await Promise.all([101, 102].map((i) => h.log.record(event(i))));
    const digests = await assertConsistent(h);
    assert.deepEqual(digests, [0, 1, 2, 100, 101, 102].map((i) => event(i).digest), 'none of the killed batches reached the file');
  } finally {
    locker.close();
    await h.cleanup();
  }
});

test('the writer killed at random points (no lock): every record resolves or rejects AUDIT_UNAVAILABLE, and after the next write memory and file agree', async () => {
  const h = await harness();
  try {
    let n = 0;
    const resolved = new Set<string>();
    let rejected = 0;
    for (let round = 0; round < 24; round++) {
      const writer = await h.writer();
      const batch: Array<{ digest: string; p: Promise<void> }> = [];
      // 1 to 4 batches in flight (one per event-loop turn), killed right after the last was sent.
      for (let b = 0; b <= round % 4; b++) {
        for (let i = 0; i < 5; i++) {
          const e = event(n++);
          batch.push({ digest: e.digest, p: h.log.record(e) });
        }
        await turn();
      }
      await writer.terminate();
      for (const { digest, p } of batch) {
        try {
          await p;
          resolved.add(digest);
        } catch (err) {
          assert.ok(isSigilError(err, 'AUDIT_UNAVAILABLE'), String(err));
          rejected++;
        }
      }
      // A commit the thread made before it died, unanswered, is in the file: the log reloads it before appending.
      const e = event(n++);
      await h.log.record(e);
      resolved.add(e.digest);
    }
    assert.ok(rejected > 0, 'some kills caught records in flight');
    assert.ok(h.errors.includes('audit writer thread stopped'), 'the writer died holding requests');
    const inFile = new Set(await assertConsistent(h));
    for (const d of resolved) assert.ok(inFile.has(d), `resolved record ${d} is in the file`);
  } finally {
    await h.cleanup();
  }
});

test('an idle writer that died loses nothing: the log stays ready and the next write starts a new thread', async () => {
  const h = await harness();
  try {
    await h.log.record(event(0));
    const writer = await h.writer();
    await writer.terminate();
    assert.doesNotThrow(() => h.log.ready());
    const before = workers.length;
    await h.log.record(event(1));
    assert.equal(workers.length, before + 1);
    assert.deepEqual(await assertConsistent(h), [event(0).digest, event(1).digest]);
    assert.equal(h.errors.length, 0, 'nothing was lost, so nothing to report');
  } finally {
    await h.cleanup();
  }
});
