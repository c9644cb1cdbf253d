import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { pino } from 'pino';
import { memoryAuditKey, TEST_AUDIT_ORIGIN, signEvent, tempAuditFile, type TempAuditFile } from '../../helpers/audit-key.ts';
import { isSigilError } from '../../../src/errors.ts';
import { CompactRange, leafHash, verifyConsistency, verifyInclusion } from '../../../src/audit/merkle.ts';
import { noteVerifier, openCheckpoint } from '../../../src/audit/note.ts';
import { decodeEntry } from '../../../src/audit/entry.ts';

const silent = pino({ level: 'silent' });
const { key, spki } = memoryAuditKey();
const ORIGIN = TEST_AUDIT_ORIGIN;

const tempLog = (): TempAuditFile => tempAuditFile('sigil-audit-', key, silent);

const event = signEvent;

test('group commit: concurrent records share one transaction and none resolves before its entry is committed', async () => {
  const t = tempLog();
  const log = t.open();
  const other = new DatabaseSync(t.path);
  const count = other.prepare('SELECT COUNT(*) AS n FROM entries');
  try {
    const seen: number[] = [];
    await Promise.all(
      Array.from({ length: 50 }, (_, i) =>
        log.record(event(i)).then(() => {
          // Another connection sees the entry: it is in the file, committed, when the promise resolves.
          seen.push((count.get() as { n: number }).n);
        }),
      ),
    );
    assert.ok(seen.every((n) => n === 50), `a separate reader saw ${seen.join(',')}`);
    assert.equal(log.stats.flushes, 1, 'one transaction for the whole burst');
    assert.equal(log.size, 50);
    await log.record(event(50));
    assert.equal(log.stats.flushes, 2);
    const entries = log.entries(0, 100);
    assert.equal(entries.length, 51);
    for (const e of entries) {
      assert.deepEqual(e.leaf, leafHash(e.data));
      assert.equal(decodeEntry(e.data).act, 'sign');
    }
    assert.ok(entries.every((e, i) => i === 0 || decodeEntry(e.data).t >= decodeEntry(entries[i - 1]!.data).t), 'times never decrease');
  } finally {
    other.close();
    await log.close();
    t.cleanup();
  }
});

test('a failed write rejects every waiter with AUDIT_UNAVAILABLE, ready() throws, and the next successful write heals it', async () => {
  const t = tempLog();
  const log = t.open();
  const locker = new DatabaseSync(t.path);
  try {
    await log.record(event(0));
    const rootBefore = log.root();
    // Another process holds the write lock: the log's transaction cannot start.
    locker.exec('BEGIN IMMEDIATE');
    const results = await Promise.allSettled(Array.from({ length: 10 }, (_, i) => log.record(event(i + 1))));
    assert.ok(results.every((r) => r.status === 'rejected' && isSigilError(r.reason, 'AUDIT_UNAVAILABLE')), 'every waiter rejected');
    assert.throws(() => log.ready(), (e) => isSigilError(e, 'AUDIT_UNAVAILABLE'));
    assert.equal(log.healthy, false, 'sigil_audit_log_up reads 0');
    assert.ok(log.stats.failures > 0);
    assert.equal(log.size, 1, 'the in-memory tree did not move');
    assert.deepEqual(log.root(), rootBefore);
    // Still broken: a new record fails too.
    await assert.rejects(log.record(event(99)), (e) => isSigilError(e, 'AUDIT_UNAVAILABLE'));
    locker.exec('COMMIT');
    await log.record(event(100));
    assert.doesNotThrow(() => log.ready());
    assert.equal(log.healthy, true);
    assert.equal(log.size, 2);
    const cr = new CompactRange();
    for (const e of log.entries(0, 10)) cr.append(leafHash(e.data));
    assert.deepEqual(log.root(), cr.root(), 'memory matches the file');
  } finally {
    locker.close();
    await log.close();
    t.cleanup();
  }
});

test('batches sent while earlier ones are still being committed: a failure fails the ones behind it, and the log recovers in order', async () => {
  const t = tempLog();
  const log = t.open();
  const locker = new DatabaseSync(t.path);
  const turn = () => new Promise((r) => setImmediate(r));
  try {
    await log.record(event(0));
    // Three batches, one per event-loop turn, all in flight at once behind a held write lock.
    locker.exec('BEGIN IMMEDIATE');
    const doomed: Promise<void>[] = [];
    for (let b = 0; b < 3; b++) {
      for (let i = 0; i < 5; i++) doomed.push(log.record(event(1 + b * 5 + i)));
      await turn();
    }
    const results = await Promise.allSettled(doomed);
    assert.ok(results.every((r) => r.status === 'rejected' && isSigilError(r.reason, 'AUDIT_UNAVAILABLE')), 'every batch behind the failed one failed too');
    assert.equal(log.size, 1);
    locker.exec('COMMIT');
    // Recovery: again several batches in flight, all committed, in order.
    const ok: Promise<void>[] = [];
    for (let b = 0; b < 4; b++) {
      for (let i = 0; i < 5; i++) ok.push(log.record(event(100 + b * 5 + i)));
      await turn();
    }
    await Promise.all(ok);
    assert.equal(log.size, 21);
    const entries = log.entries(0, 100);
    assert.deepEqual(entries.map((e) => decodeEntry(e.data).digest), [0, ...Array.from({ length: 20 }, (_, i) => 100 + i)].map((i) => event(i).digest));
    const cr = new CompactRange();
    for (const e of entries) cr.append(leafHash(e.data));
    assert.deepEqual(log.root(), cr.root(), 'memory matches the file');
  } finally {
    locker.close();
    await log.close();
    t.cleanup();
  }
});

test('close writes what was recorded before it, refuses what comes after, and a reopened log holds exactly that', async () => {
  const t = tempLog();
  let log = t.open();
  try {
    await log.record(event(0));
    // A transaction in flight and a group waiting behind it, when close is called.
    const first = Array.from({ length: 20 }, (_, i) => log.record(event(1 + i)));
    await new Promise((r) => setImmediate(r));
    const second = Array.from({ length: 20 }, (_, i) => log.record(event(21 + i)));
    const closed = log.close();
    await assert.rejects(log.record(event(99)), (e) => isSigilError(e, 'AUDIT_UNAVAILABLE'));
    assert.throws(() => log.ready(), (e) => isSigilError(e, 'AUDIT_UNAVAILABLE'));
    await Promise.all([...first, ...second]);
    await closed;
    assert.equal(log.close(), closed, 'closing twice is the same close');
    log = t.open();
    assert.equal(log.size, 41);
    assert.deepEqual(log.entries(0, 100).map((e) => decodeEntry(e.data).digest), Array.from({ length: 41 }, (_, i) => event(i).digest));
  } finally {
    await log.close();
    t.cleanup();
  }
});

test('checkpoints are signed notes over the current tree; proofs from the file verify against them', async () => {
  const t = tempLog();
  const log = t.open();
  try {
    const v = noteVerifier(ORIGIN, spki);
    const empty = await log.latestCheckpoint();
    assert.equal(openCheckpoint(empty.note, v, ORIGIN).size, 0);
    for (let i = 0; i < 37; i++) await log.record(event(i));
    const small = await log.latestCheckpoint();
    assert.equal(small.size, 37);
    assert.equal(await log.latestCheckpoint(), small, 'no new signature while the tree has not grown');
    await Promise.all(Array.from({ length: 300 }, (_, i) => log.record(event(100 + i))));
    const [a, b] = await Promise.all([log.latestCheckpoint(), log.latestCheckpoint()]);
    assert.equal(a.size, 337);
    assert.equal(a.note, b.note, 'concurrent callers share one signature');
    const cp = openCheckpoint(a.note, v, ORIGIN);
    assert.deepEqual(cp.root, log.root());
    for (const i of [0, 1, 16, 36, 255, 256, 336]) {
      const e = log.entries(i, 1)[0]!;
      assert.ok(verifyInclusion(i, 337, leafHash(e.data), log.inclusionProof(i, 337), cp.root), `inclusion of ${i}`);
    }
    for (const m of [0, 1, 16, 37, 64, 300, 337]) {
      assert.ok(verifyConsistency(m, 337, log.rootAt(m), cp.root, log.consistencyProof(m, 337)), `consistency ${m} -> 337`);
    }
    assert.ok(verifyConsistency(37, 337, small.root, cp.root, log.consistencyProof(37)));
    assert.throws(() => log.inclusionProof(337, 337), (e) => isSigilError(e, 'INVALID_ARGUMENT'));
    assert.throws(() => log.consistencyProof(5, 400), (e) => isSigilError(e, 'INVALID_ARGUMENT'));
  } finally {
    await log.close();
    t.cleanup();
  }
});

test('a reopened log recomputes the same root and keeps its checkpoints', async () => {
  const t = tempLog();
  let log = t.open();
  try {
    await Promise.all(Array.from({ length: 100 }, (_, i) => log.record(event(i))));
    const cp = await log.latestCheckpoint();
    const root = log.root();
    await log.close();
    log = t.open();
    assert.equal(log.size, 100);
    assert.deepEqual(log.root(), root);
    assert.equal((await log.latestCheckpoint()).note, cp.note);
    await log.record(event(100));
    assert.equal(log.size, 101);
    assert.ok(verifyConsistency(100, 101, root, log.root(), log.consistencyProof(100)));
  } finally {
    await log.close();
    t.cleanup();
  }
});

test('a log tampered on disk refuses to open, saying how', async (t) => {
  const cases: Array<[string, (db: DatabaseSync) => void, RegExp]> = [
    ['a deleted entry', (db) => db.exec('DELETE FROM entries WHERE idx = 3'), /entry 3 is missing/],
    ['a truncated tail', (db) => db.exec('DELETE FROM entries WHERE idx >= 15'), /holds 15 entries but a checkpoint covers 20/],
    ['a rewritten entry with its leaf hash to match', (db) => db.prepare('UPDATE entries SET data = ?, leaf = ? WHERE idx = 7').run(Buffer.from('forged'), leafHash(Buffer.from('forged'))), /do not hash to the root of the checkpoint at size 20/],
    ['a rewritten leaf alone', (db) => db.prepare('UPDATE entries SET leaf = ? WHERE idx = 7').run(leafHash(Buffer.from('forged'))), /the bytes of entry 7 do not hash to its stored leaf hash/],
    ["an entry's bytes changed, its leaf hash left alone", (db) => db.prepare("UPDATE entries SET data = CAST(data || X'20' AS BLOB) WHERE idx = 9").run(), /the bytes of entry 9 do not hash to its stored leaf hash/],
    ['two swapped entries', (db) => {
      db.exec('UPDATE entries SET idx = -1 WHERE idx = 4; UPDATE entries SET idx = 4 WHERE idx = 5; UPDATE entries SET idx = 5 WHERE idx = -1');
    }, /do not hash to the root/],
    ['a forged checkpoint root', (db) => db.prepare('UPDATE checkpoints SET root = ? WHERE size = 20').run(Buffer.alloc(32)), /do not hash to the root|does not match its signed note/],
  ];
  for (const [name, tamper, why] of cases) {
    await t.test(name, async () => {
      const tl = tempLog();
      const log = tl.open();
      try {
        await Promise.all(Array.from({ length: 20 }, (_, i) => log.record(event(i))));
        await log.latestCheckpoint();
        await log.close();
        const db = new DatabaseSync(tl.path);
        tamper(db);
        db.close();
        assert.throws(() => tl.open(), (e) => isSigilError(e, 'FAILED_PRECONDITION') && why.test(e.message));
      } finally {
        tl.cleanup();
      }
    });
  }
});
