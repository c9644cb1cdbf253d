import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DatabaseSync } from 'node:sqlite';
import { pino } from 'pino';
import { AuditLog } from '../../../src/audit/audit-log.ts';
import { memoryAuditKey, signEvent, tempAuditFile } from '../../helpers/audit-key.ts';
import { fullCheck } from '../../../src/audit/audit-check.ts';
import { isSigilError } from '../../../src/errors.ts';
import { leafHash, verifyConsistency, verifyInclusion } from '../../../src/audit/merkle.ts';
import { Metrics } from '../../../src/server/metrics.ts';

const silent = pino({ level: 'silent' });
const { key } = memoryAuditKey();
const event = signEvent;

// Checkpoints at 37 and 300, then 5 entries no checkpoint covers yet. The tree at 300 = 256 + 32 + 8 + 4: its
// frontier is the stored row (8, 0), the height-5 subtree made of rows (4, 16) and (4, 17), and leaves 288..299.
const CP = 300;
const SIZE = 305;

interface Fixture {
  path: string;
  open(fullCheckAtStartMax?: number): AuditLog;
  tamper(fn: (db: DatabaseSync) => void): void;
  cleanup(): void;
}

async function fixture(): Promise<Fixture> {
  const { path, open, cleanup } = tempAuditFile('sigil-audit-fast-', key, silent);
  const log = open();
  for (let i = 0; i < 37; i++) await log.record(event(i));
  await log.latestCheckpoint();
  await Promise.all(Array.from({ length: CP - 37 }, (_, i) => log.record(event(37 + i))));
  assert.equal((await log.latestCheckpoint()).size, CP);
  await Promise.all(Array.from({ length: SIZE - CP }, (_, i) => log.record(event(CP + i))));
  await log.close();
  return {
    path,
    open,
    tamper: (fn) => {
      const db = new DatabaseSync(path);
      try {
        fn(db);
      } finally {
        db.close();
      }
    },
    cleanup,
  };
}

const forged = leafHash(Buffer.from('forged'));
const setLeaf = (idx: number) => (db: DatabaseSync) => db.prepare('UPDATE entries SET leaf = ? WHERE idx = ?').run(forged, idx);
/** A forged entry whose leaf hash matches it: only the tree's root against a checkpoint shows it. */
const setEntry = (idx: number) => (db: DatabaseSync) => db.prepare('UPDATE entries SET data = ?, leaf = ? WHERE idx = ?').run(Buffer.from('forged'), leafHash(Buffer.from('forged')), idx);
/** An entry's bytes changed, its leaf hash left alone. */
const setBytes = (idx: number) => (db: DatabaseSync) => db.prepare("UPDATE entries SET data = CAST(data || X'20' AS BLOB) WHERE idx = ?").run(idx);
const setNode = (level: number, idx: number) => (db: DatabaseSync) => {
  assert.equal(db.prepare('UPDATE nodes SET hash = ? WHERE level = ? AND idx = ?').run(forged, level, idx).changes, 1, `row (${level}, ${idx}) exists`);
};

test('a clean log opens on the fast path with the size, root and proofs of a full open, keeps its subtree cache, and the background check passes', async () => {
  const f = await fixture();
  try {
    // A row of a height the log never stores: the full open rebuilds the cache (dropping it), the fast one keeps the cache as it is.
    f.tamper((db) => db.prepare('INSERT INTO nodes (level, idx, hash) VALUES (2, 0, ?)').run(forged));
    const fast = f.open(0);
    let stray: number;
    try {
      assert.equal(fast.fullCheck.state, 'running');
      assert.equal(fast.fullCheck.size, CP, 'the background check covers the checkpoint the start verified against');
      const probe = new DatabaseSync(f.path, { readOnly: true });
      stray = (probe.prepare('SELECT COUNT(*) AS n FROM nodes WHERE level = 2').get() as { n: number }).n;
      probe.close();
      const fastView = { size: fast.size, root: fast.root(), inc: [0, 3, 255, 256, 299, 300, 304].map((i) => fast.inclusionProof(i)), con: [1, 37, 256, 300].map((m) => fast.consistencyProof(m)) };
      const done = await fast.fullCheckDone();
      assert.deepEqual([done.state, done.verified, done.finding], ['clean', CP, null]);
      assert.ok(done.seconds !== null && done.seconds >= 0);
      const cp = await fast.latestCheckpoint();
      await fast.close();
      assert.equal(stray, 1, 'the fast path did not rebuild the subtree cache');

      const full = f.open();
      try {
        assert.equal(full.fullCheck.state, 'clean', 'a small log is checked in full before open returns');
        assert.equal(full.fullCheck.verified, SIZE);
        assert.equal(fastView.size, SIZE);
        assert.equal(full.size, SIZE);
        assert.deepEqual(fastView.root, full.root());
        assert.deepEqual(fastView.inc, [0, 3, 255, 256, 299, 300, 304].map((i) => full.inclusionProof(i)));
        assert.deepEqual(fastView.con, [1, 37, 256, 300].map((m) => full.consistencyProof(m)));
        assert.equal(cp.size, SIZE, 'the fast-opened log signed a checkpoint over everything');
        [0, 3, 255, 256, 299, 300, 304].forEach((i, k) => assert.ok(verifyInclusion(i, SIZE, full.entries(i, 1)[0]!.leaf, fastView.inc[k]!, cp.root), `inclusion of ${i}`));
        assert.ok(verifyConsistency(37, SIZE, full.rootAt(37), cp.root, fastView.con[1]!));
      } finally {
        await full.close();
      }
    } finally {
      await fast.close();
    }
  } finally {
    f.cleanup();
  }
});

test('the fast path: writes go on while the background check runs, and a reopen after them is fast and consistent', async () => {
  const f = await fixture();
  try {
    let log = f.open(0);
    const root0 = log.root();
    await Promise.all(Array.from({ length: 40 }, (_, i) => log.record(event(SIZE + i))));
    assert.equal(log.size, SIZE + 40);
    assert.ok(verifyConsistency(SIZE, SIZE + 40, root0, log.root(), log.consistencyProof(SIZE)));
    const done = await log.fullCheckDone();
    assert.equal(done.state, 'clean');
    assert.equal(done.size, CP, 'the check stops at its checkpoint while the log grew past it');
    const cp = await log.latestCheckpoint();
    await log.close();
    log = f.open(0);
    try {
      assert.equal(log.size, SIZE + 40);
      assert.deepEqual(log.root(), cp.root);
      assert.equal(log.fullCheck.size, SIZE + 40, 'the second start verified against the newer checkpoint');
      assert.equal((await log.fullCheckDone()).state, 'clean');
    } finally {
      await log.close();
    }
  } finally {
    f.cleanup();
  }
});

test('a threshold above the size keeps the full check at open; bad thresholds are refused', async () => {
  const f = await fixture();
  try {
    const log = f.open(SIZE);
    try {
      assert.deepEqual([log.fullCheck.state, log.fullCheck.size], ['clean', SIZE]);
    } finally {
      await log.close();
    }
    const fast = f.open(SIZE - 1);
    try {
      assert.equal(fast.fullCheck.size, CP, 'one entry above the threshold: the fast path');
      await fast.fullCheckDone();
    } finally {
      await fast.close();
    }
    for (const bad of [-1, 1.5, Number.NaN]) assert.throws(() => f.open(bad), (e) => isSigilError(e, 'INVALID_ARGUMENT'));
  } finally {
    f.cleanup();
  }
});

test('fast path: tampering the open verifies refuses to open, saying how', async (t) => {
  const cases: Array<[string, (db: DatabaseSync) => void, RegExp]> = [
    // (b) after the latest checkpoint
    ['an entry after the checkpoint deleted', (db) => db.exec('DELETE FROM entries WHERE idx = 302'), /entry 302 is missing/],
    ["an entry's bytes after the checkpoint", setBytes(303), /the bytes of entry 303 do not hash to its stored leaf hash/],
    ['the tail truncated below the checkpoint', (db) => db.exec('DELETE FROM entries WHERE idx >= 290'), /holds 290 entries but a checkpoint covers 300/],
    // (c) on the frontier
    ['the frontier row (8, 0)', setNode(8, 0), /on its frontier do not hash to the root of the checkpoint at size 300/],
    ['the row (4, 17) under the frontier height-5 subtree', setNode(4, 17), /on its frontier do not hash to the root of the checkpoint at size 300/],
    ['a frontier leaf', setLeaf(290), /on its frontier do not hash to the root of the checkpoint at size 300/],
    ['a frontier leaf deleted', (db) => db.exec('DELETE FROM entries WHERE idx = 299'), /entry 299 is missing/],
    ['the checkpoint root', (db) => db.prepare('UPDATE checkpoints SET root = ? WHERE size = 300').run(forged), /checkpoint 300 does not match its signed note/],
    ['the checkpoint note', (db) => db.prepare("UPDATE checkpoints SET note = replace(note, '\n300\n', '\n301\n') WHERE size = 300").run(), /signature|does not match/],
  ];
  for (const [name, tamper, why] of cases) {
    await t.test(name, async () => {
      const f = await fixture();
      try {
        f.tamper(tamper);
        assert.throws(() => f.open(0), (e) => isSigilError(e) && /FAILED_PRECONDITION|INVALID_ARGUMENT/.test(e.code) && why.test(e.message), name);
      } finally {
        f.cleanup();
      }
    });
  }
});

test('fast path: tampering inside the checkpoint but off its frontier opens, then the background check fails the log until restart', async (t) => {
  const cases: Array<[string, (db: DatabaseSync) => void, RegExp]> = [
    // (d) an old leaf under the stored row (8, 0): the first mismatch is the checkpoint at 37
    ['an old entry with a matching leaf hash', setEntry(3), /the stored entries do not hash to the root of the checkpoint at size 37/],
    ['an old entry past the first checkpoint with a matching leaf hash', setEntry(100), /the stored entries do not hash to the root of the checkpoint at size 300/],
    ['an old leaf alone', setLeaf(3), /the bytes of entry 3 do not hash to its stored leaf hash/],
    ["an old entry's bytes alone", setBytes(120), /the bytes of entry 120 do not hash to its stored leaf hash/],
    ['an old entry deleted', (db) => db.exec('DELETE FROM entries WHERE idx = 50'), /entry 50 is missing/],
    // (e) a cache row under (8, 0): no read uses it at open, the full check compares it
    ['a subtree cache row off the frontier', setNode(4, 3), /the stored subtree hash at height 4 index 3 does not match the entries below it/],
  ];
  for (const [name, tamper, why] of cases) {
    await t.test(name, async () => {
      const f = await fixture();
      try {
        f.tamper(tamper);
        const log = f.open(0);
        try {
          assert.equal(log.size, SIZE);
          const done = await log.fullCheckDone();
          assert.equal(done.state, 'tampered');
          assert.match(done.finding ?? '', why);
          assert.equal(log.healthy, false, 'sigil_audit_log_up reads 0');
          assert.throws(() => log.ready(), (e) => isSigilError(e, 'AUDIT_UNAVAILABLE') && /^audit log tampered: /.test(e.message) && why.test(e.message));
          await assert.rejects(log.record(event(1000)), (e) => isSigilError(e, 'AUDIT_UNAVAILABLE') && why.test(e.message));
          // Unlike a failed write, a later write does not heal it: nothing is written.
          await assert.rejects(log.record(event(1001)), (e) => isSigilError(e, 'AUDIT_UNAVAILABLE'));
          assert.throws(() => log.ready(), (e) => isSigilError(e, 'AUDIT_UNAVAILABLE'));
          await assert.rejects(log.latestCheckpoint(), (e) => isSigilError(e, 'AUDIT_UNAVAILABLE'), 'no checkpoint is signed over a tampered log');
          assert.equal(log.size, SIZE);
        } finally {
          await log.close();
        }
        const probe = new DatabaseSync(f.path, { readOnly: true });
        assert.equal((probe.prepare('SELECT COUNT(*) AS n FROM entries').get() as { n: number }).n, name.includes('deleted') ? SIZE - 1 : SIZE, 'nothing was appended');
        probe.close();
      } finally {
        f.cleanup();
      }
    });
  }
});

test('metrics: verified entries, the check target and its duration', async () => {
  const f = await fixture();
  try {
    const log = f.open(0);
    try {
      const m = new Metrics();
      m.watchAudit(log);
      await log.fullCheckDone();
      const text = await m.registry.metrics();
      const num = (re: RegExp) => Number(re.exec(text)?.[1]);
      assert.equal(num(/^sigil_audit_verified_entries (\d+)$/m), CP);
      assert.equal(num(/^sigil_audit_full_check_target_entries (\d+)$/m), CP);
      assert.ok(num(/^sigil_audit_full_check_seconds ([\d.e-]+)$/m) >= 0);
      assert.equal(num(/^sigil_audit_log_up (\d)$/m), 1);
      assert.equal(num(/^sigil_audit_full_check_state\{state="clean"\} (\d)$/m), 1);
    } finally {
      await log.close();
    }
    f.tamper(setNode(4, 3));
    const bad = f.open(0);
    try {
      const m = new Metrics();
      m.watchAudit(bad);
      await bad.fullCheckDone();
      const text = await m.registry.metrics();
      assert.match(text, /^sigil_audit_log_up 0$/m);
      assert.match(text, /^sigil_audit_full_check_state\{state="tampered"\} 1$/m);
      assert.match(text, /^sigil_audit_full_check_state\{state="clean"\} 0$/m);
    } finally {
      await bad.close();
    }
  } finally {
    f.cleanup();
  }
});

test('close stops a running background check', async () => {
  const f = await fixture();
  try {
    const log = f.open(0);
    assert.equal(log.fullCheck.state, 'running');
    await log.close();
    const s = await log.fullCheckDone();
    assert.ok(s.state === 'stopped' || s.state === 'clean', s.state);
    assert.equal(log.healthy, false);
  } finally {
    f.cleanup();
  }
});

test('fullCheck over a file: clean up to any size, and it names the first mismatch', async () => {
  const f = await fixture();
  try {
    const db = new DatabaseSync(f.path, { readOnly: true });
    const seen: number[] = [];
    assert.deepEqual(fullCheck(db, { size: SIZE, stride: 4, progress: (n) => seen.push(n) }), { ok: true });
    assert.deepEqual(seen, [SIZE]);
    assert.deepEqual(fullCheck(db, { size: 10, stride: 4, stopped: () => true }), { ok: false, stopped: true });
    db.close();
    f.tamper(setNode(8, 0));
    const again = new DatabaseSync(f.path, { readOnly: true });
    assert.deepEqual(fullCheck(again, { size: 255, stride: 4 }), { ok: true }, 'the row (8, 0) is not complete within 255 entries');
    assert.deepEqual(fullCheck(again, { size: 256, stride: 4 }), { ok: false, finding: 'the stored subtree hash at height 8 index 0 does not match the entries below it' });
    again.close();
  } finally {
    f.cleanup();
  }
});
