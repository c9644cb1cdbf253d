import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import fc from 'fast-check';
import { AuditLog } from '../../../src/audit/audit-log.ts';
import { CompactRange, leafHash, memoryReader, rangeTiles, verifyConsistency, verifyInclusion } from '../../../src/audit/merkle.ts';
import { parseSegment, verifySegment, type Segment } from '../../../src/audit/segment.ts';
import { isSigilError } from '../../../src/errors.ts';
import { archiveSegment, writeVerifiedSegment } from '../../../src/store/audit-archive.ts';
import { memoryAuditKey, TEST_AUDIT_ORIGIN, signEvent, tempAuditFile } from '../../helpers/audit-key.ts';

const { key, spki } = memoryAuditKey();
const KEYS = [{ spki, label: 'sigil/audit@1' }];
const event = signEvent;

// Checkpoint at 100, then 5 entries no checkpoint covers; segments of [0, 64) are archived.
const CP = 100;
const SIZE = 105;

async function fixture(who = 'CN=ci-signer-1') {
  const { dir, path, open, cleanup } = tempAuditFile('sigil-audit-archive-', key);
  const segDir = join(dir, 'segments');
  const log = open();
  await Promise.all(Array.from({ length: CP }, (_, i) => log.record({ ...event(i), who })));
  await log.latestCheckpoint();
  await Promise.all(Array.from({ length: SIZE - CP }, (_, i) => log.record(event(CP + i))));
  return {
    dir,
    path,
    segDir,
    log,
    open,
    sql: (fn: (db: DatabaseSync) => void) => {
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

/** Archives `[start, end)` of an open log the way `sigild audit archive` does, minus the lock. */
function archive(log: AuditLog, segDir: string, start: number, end: number) {
  return archiveSegment(log, segDir, start, end, KEYS, 'local:test');
}

function refuses(open: () => AuditLog, pattern: RegExp, what = ''): void {
  assert.throws(open, (err: unknown) => isSigilError(err, 'FAILED_PRECONDITION') && pattern.test(err.message), what);
}

test('compact range tiles and appendSubtree rebuild the root of any tree from a prefix frontier, leaves and the subtrees after them', () => {
  const leaves = Array.from({ length: 77 }, (_, i) => leafHash(Buffer.from(`e${i}`)));
  const read = memoryReader(leaves);
  for (const [a, b] of [[0, 77], [0, 1], [16, 48], [5, 6], [13, 70], [64, 77], [76, 77]] as const) {
    const tree = CompactRange.at(read, a);
    for (let i = a; i < b; i++) tree.append(leaves[i]!);
    for (const s of rangeTiles(b, 77)) tree.appendSubtree(s.level, read(s.level, s.index));
    assert.equal(tree.size, 77);
    assert.ok(tree.root().equals(CompactRange.at(read, 77).root()), `[${a}, ${b})`);
  }
  assert.throws(() => new CompactRange(3, [leaves[0]!, leaves[1]!]).appendSubtree(1, leaves[2]!), /does not start at 3/);
});

test('a segment is written, verifies on its own, and pruning keeps size, root and every proof while entry reads name the segment', async () => {
  const f = await fixture();
  try {
    const before = f.log.root();
    const seg = await archive(f.log, f.segDir, 0, 64);
    assert.equal(seg.file, 'audit-000000000000000-000000000000064.segment');
    const bytes = readFileSync(join(f.segDir, seg.file));
    const parsed = parseSegment(bytes);
    assert.equal(parsed.entries.length, 64);
    const r = verifySegment(parsed, KEYS, TEST_AUDIT_ORIGIN);
    assert.deepEqual({ ok: r.ok, start: r.start, end: r.end, size: r.checkpointSize, by: r.signedBy }, { ok: true, start: 0, end: 64, size: CP, by: 'sigil/audit@1' });

    // The log only grew by the act's two entries (intent and outcome): the tree of SIZE entries is unchanged.
    assert.equal(f.log.size, SIZE + 2);
    assert.ok(f.log.rootAt(SIZE).equals(before));
    const size = f.log.size;
    const root = f.log.root();
    assert.equal(f.log.archivedEnd, 64);
    assert.throws(() => f.log.entries(12, 5), (err: unknown) => isSigilError(err, 'FAILED_PRECONDITION') && err.message.startsWith(`entry 12 is archived in segment ${seg.file}`) && err.message.includes(seg.sha256));
    assert.equal(f.log.entries(64, 1000).length, size - 64);
    // The leaf hashes stay: inclusion of archived and live entries, and consistency from inside the archived prefix.
    const entry70 = f.log.entries(70, 1)[0]!;
    for (const i of [3, 63, 64, 70, 104]) {
      const leaf = i === 70 ? entry70.leaf : leafHash(i < 64 ? parsed.entries[i]! : f.log.entries(i, 1)[0]!.data);
      assert.ok(verifyInclusion(i, size, leaf, f.log.inclusionProof(i), root), `inclusion of ${i}`);
    }
    for (const m of [1, 37, 64, 100]) assert.ok(verifyConsistency(m, size, f.log.rootAt(m), root, f.log.consistencyProof(m)), `consistency from ${m}`);
    // A second segment continues where the first ended; a range that does not start there is refused.
    assert.throws(() => f.log.segmentProof(0, 80), /starts at the first entry not archived, 64/);
    assert.throws(() => f.log.segmentProof(64, 101), /at most at the latest checkpoint's size 100/);
    await archive(f.log, f.segDir, 64, 96);
    assert.deepEqual(f.log.archives().map((a) => [a.start, a.end, a.entry]), [[0, 64, SIZE], [64, 96, SIZE + 2]]);
    const final = { size: f.log.size, root: f.log.root() };
    await f.log.close();

    for (const max of [undefined, 0]) {
      const again = f.open(max);
      try {
        assert.equal((await again.fullCheckDone()).state, 'clean', `start with fullCheckAtStartMax ${max}`);
        assert.equal(again.size, final.size);
        assert.ok(again.root().equals(final.root));
        assert.equal(again.archivedEnd, 96);
        assert.throws(() => again.entries(95, 1), /entry 95 is archived in segment audit-000000000000064-000000000000096\.segment/);
        assert.equal(again.entries(96, 1000).length, final.size - 96);
        assert.ok(verifyInclusion(99, final.size, again.entries(99, 1)[0]!.leaf, again.inclusionProof(99), final.root));
        await again.record(event(SIZE));
        assert.equal(again.size, final.size + 1);
        final.size++;
        final.root = again.root();
      } finally {
        await again.close();
      }
    }
  } finally {
    f.cleanup();
  }
});

test('start refuses entries whose data vanished without an archive record, and archive records that do not match the entries or their audit.archive entry', async () => {
  const f = await fixture();
  try {
    await archive(f.log, f.segDir, 0, 32);
    const intent = f.log.archives()[0]!.entry;
    assert.equal(intent, SIZE, 'the record points at the audit.archive intent, the first entry after the fixture');
    assert.deepEqual(f.log.entries(intent, 2).map((e) => JSON.parse(e.data.toString()) as { act: string; result: string }).map((e) => [e.act, e.result]), [['audit.archive', 'started'], ['audit.archive', 'ok']]);
    await f.log.close();
    const full = () => f.open();
    const fast = () => f.open(0);
    const saved = f.sql;
    const snapshot = readFileSync(f.path);
    const restore = () => {
      rmSync(`${f.path}-wal`, { force: true });
      rmSync(`${f.path}-shm`, { force: true });
      writeFileSync(f.path, snapshot);
    };
    const cases: Array<[string, string, RegExp, boolean]> = [
      // [what, sql, finding, also refused by the fast start]
      ['data deleted past the archived range', "UPDATE entries SET data = X'' WHERE idx >= 32 AND idx < 48", /the data of entry 32 is gone but no archive record covers it/, true],
      ['data deleted and the record widened over it', "UPDATE entries SET data = X'' WHERE idx >= 32 AND idx < 48; UPDATE archives SET end = 48", /the archive record of \[0, 48\) does not match the audit\.archive entry 105/, true],
      ['the record larger than what was pruned', 'UPDATE archives SET end = 40', /the archive record of \[0, 40\) does not match the audit\.archive entry 105/, true],
      ['the record smaller than what was pruned', 'UPDATE archives SET end = 16', /the archive record of \[0, 16\) does not match the audit\.archive entry 105/, true],
      ['the audit.archive entry rewritten to match a larger record', "UPDATE archives SET end = 40; UPDATE entries SET data = CAST(replace(CAST(data AS TEXT), '\"end\":32', '\"end\":40') AS BLOB) WHERE idx = 105", /the archive record of \[0, 40\) does not match the audit\.archive entry 105/, true],
      ['the record points at another entry', 'UPDATE archives SET entry = 104', /does not match the audit\.archive entry 104/, true],
      ['the record names a checkpoint that does not cover it', 'UPDATE archives SET checkpoint = 7', /names no stored checkpoint that covers it/, true],
      ['the record does not start at 0', 'UPDATE archives SET start = 8', /do not cover one range from entry 0/, true],
      ['the record names another segment', "UPDATE archives SET sha256 = '" + '0'.repeat(64) + "'", /does not match the audit\.archive entry 105/, true],
      ['the record removed', 'DELETE FROM archives', /the data of entry 0 is gone but no archive record covers it/, true],
      ['rows removed outright', 'DELETE FROM entries WHERE idx >= 32 AND idx < 40', /entry 32 is missing/, false],
      ['a hole in the checkpointed part', "UPDATE entries SET data = X'' WHERE idx = 80", /the data of entry 80 is gone but no archive record covers it/, false],
    ];
    for (const [what, sql, finding, fastToo] of cases) {
      saved((db) => db.exec(sql));
      refuses(full, finding, what);
      if (fastToo) {
        refuses(fast, finding, `${what} (fast start)`);
      } else {
        // The fast start reads only the frontier of the latest checkpoint: its background check finds it.
        let bg: AuditLog | null = null;
        try {
          bg = fast();
          const done = await bg.fullCheckDone();
          assert.equal(done.state, 'tampered', what);
          assert.match(done.finding ?? '', finding, what);
        } catch (err) {
          assert.ok(isSigilError(err, 'FAILED_PRECONDITION') && finding.test(err.message), `${what}: ${String(err)}`);
        } finally {
          await bg?.close();
        }
      }
      restore();
    }
    const clean = fast();
    assert.equal((await clean.fullCheckDone()).state, 'clean', 'the restored file opens');
    await clean.close();
  } finally {
    f.cleanup();
  }
});

test('a segment with a changed entry, from another log, or with wrong subtrees does not verify', async () => {
  const f = await fixture();
  const other = await fixture('CN=ci-signer-2');
  try {
    const seg = await writeVerifiedSegment(f.log, f.segDir, 0, 64, KEYS);
    const bytes = readFileSync(join(f.segDir, seg.file));
    const text = bytes.toString('utf8');
    const fails = (s: Segment, pattern: RegExp, origin = TEST_AUDIT_ORIGIN, keys = KEYS) => {
      const r = verifySegment(s, keys, origin);
      assert.equal(r.ok, false, String(pattern));
      assert.match(r.failure ?? '', pattern);
    };
    // One digest changed, the entry still canonical: only the tree shows it.
    const changed = text.replace(event(5).digest, event(5).digest.replace(/5$/, '6'));
    assert.notEqual(changed, text);
    fails(parseSegment(Buffer.from(changed)), /do not hash to the root of its checkpoint at size 100/);
    // Two entries swapped.
    const lines = text.split('\n');
    [lines[10], lines[11]] = [lines[11]!, lines[10]!];
    fails(parseSegment(Buffer.from(lines.join('\n'))), /entry 9 is older than the entry before it|do not hash/);
    // A subtree hash after the entries changed.
    const seg2 = parseSegment(bytes);
    seg2.header.right[0] = leafHash(Buffer.from('x'));
    fails(seg2, /do not hash to the root/);
    // Another log signed by another key, and another origin.
    const otherKey = memoryAuditKey();
    fails(parseSegment(bytes), /checkpoint does not verify/, TEST_AUDIT_ORIGIN, [{ spki: otherKey.spki, label: 'other' }]);
    fails(parseSegment(bytes), /segment of the log sigil\/test\/audit, not of sigil\/elsewhere\/audit/, 'sigil/elsewhere/audit');
    // A segment of another log under the same key and origin verifies on its own (it is genuine), but its entries
    // are not this log's: chained to this log's subtrees it does not reach this log's root.
    const theirs = parseSegment(readFileSync(join(other.segDir, (await writeVerifiedSegment(other.log, other.segDir, 0, 64, KEYS)).file)));
    assert.ok(verifySegment(theirs, KEYS).ok);
    const mixed: Segment = { header: { ...parseSegment(bytes).header }, entries: theirs.entries };
    fails(mixed, /do not hash to the root/);
  } finally {
    await f.log.close();
    await other.log.close();
    f.cleanup();
    other.cleanup();
  }
});

test('fuzz: the segment parser takes untrusted bytes without crashing, and a mutated segment never verifies', async () => {
  const f = await fixture();
  try {
    const seg = await writeVerifiedSegment(f.log, f.segDir, 0, 16, KEYS);
    const good = readFileSync(join(f.segDir, seg.file));
    const tryParse = (b: Uint8Array): Segment | null => {
      try {
        return parseSegment(b);
      } catch (err) {
        assert.ok(isSigilError(err, 'INVALID_ARGUMENT'), String(err));
        return null;
      }
    };
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 2048 }), (b) => {
        const s = tryParse(Buffer.concat([Buffer.from('sigil-audit-segment v1\n'), b]));
        if (s) assert.equal(verifySegment(s, KEYS).ok, false);
        tryParse(b);
      }),
      { numRuns: 500 },
    );
    fc.assert(
      fc.property(fc.nat({ max: good.length - 1 }), fc.integer({ min: 1, max: 255 }), (at, x) => {
        const b = Buffer.from(good);
        b[at] = b[at]! ^ x;
        const s = tryParse(b);
        if (s) assert.equal(verifySegment(s, KEYS, TEST_AUDIT_ORIGIN).ok, false, `byte ${at} changed`);
      }),
      { numRuns: 500 },
    );
    fc.assert(
      fc.property(fc.nat({ max: good.length - 1 }), (cut) => {
        const s = tryParse(good.subarray(0, cut));
        if (s) assert.equal(verifySegment(s, KEYS).ok, false);
      }),
      { numRuns: 200 },
    );
    assert.ok(verifySegment(parseSegment(good), KEYS).ok);
  } finally {
    await f.log.close();
    f.cleanup();
  }
});
