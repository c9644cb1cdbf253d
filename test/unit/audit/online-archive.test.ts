// The online archive (`OnlineArchiver`, the ArchiveAuditLog RPC's engine) on a log that keeps appending: one run
// at a time, refusals audited, no run during the background full check, a checkpoint signed first, appends that
// keep committing during the run, and reads of a range whose prune committed but was not yet acknowledged.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { AuditLog } from '../../../src/audit/audit-log.ts';
import { isSigilError } from '../../../src/errors.ts';
import { silentLogger } from '../../../src/log.ts';
import { OnlineArchiver, writeVerifiedSegment } from '../../../src/store/audit-archive.ts';
import { memoryAuditKey, TEST_AUDIT_ORIGIN, signEvent, tempAuditFile } from '../../helpers/audit-key.ts';

const { key, spki } = memoryAuditKey();
const event = signEvent;

async function fixture(n: number, fullCheckAtStartMax?: number) {
  const { dir, path, open, cleanup } = tempAuditFile('sigil-online-archive-', key);
  const segDir = join(dir, 'segments');
  let log = open();
  await Promise.all(Array.from({ length: n }, (_, i) => log.record(event(i))));
  if (fullCheckAtStartMax !== undefined) {
    await log.latestCheckpoint();
    await log.close();
    log = open(fullCheckAtStartMax);
  }
  return { dir, path, segDir, log, cleanup: async () => { await log.close(); cleanup(); } };
}

const acts = (log: AuditLog, act: string) =>
  log.entries(log.archivedEnd, 1000).map((e) => JSON.parse(e.data.toString('utf8')) as { act: string; result: string; reason?: string; detail?: Record<string, unknown> }).filter((e) => e.act === act);

const refused = (pattern: RegExp) => (err: unknown) => isSigilError(err, 'FAILED_PRECONDITION') && pattern.test(err.message);

test('without audit.archiveDir every run is refused, audited, and nothing changes', async () => {
  const f = await fixture(40);
  try {
    const a = new OnlineArchiver(f.log, { dir: null, align: 16, segmentMax: 16 });
    const size = f.log.size;
    await assert.rejects(a.run('CN=admin'), refused(/audit\.archiveDir is not configured/));
    assert.equal(f.log.archivedEnd, 0);
    assert.equal(f.log.size, size + 1, 'one entry: the refusal');
    const [e] = acts(f.log, 'audit.archive');
    assert.equal(e?.result, 'refused');
    assert.equal(e?.reason, 'FAILED_PRECONDITION');
  } finally {
    await f.cleanup();
  }
});

test('a run signs a checkpoint over the grown tree, archives whole aligned runs below it, and appends keep committing meanwhile', async () => {
  const f = await fixture(40);
  try {
    assert.equal(f.log.lastSigned(), null);
    const a = new OnlineArchiver(f.log, { dir: f.segDir, align: 16, segmentMax: 16 });
    const run = a.run('CN=admin');
    // Appends during the run: every one commits, none is lost.
    const during = Array.from({ length: 50 }, (_, i) => f.log.record(event(1000 + i)));
    const r = await run;
    await Promise.all(during);
    assert.ok(f.log.lastSigned()!.size >= 40, 'a checkpoint covering the first 40 was signed');
    assert.deepEqual(r.segments.map((s) => [s.start, s.end]), [[0, 16], [16, 32]]);
    assert.equal(r.archivedEnd, 32);
    assert.equal(statSync(f.segDir).mode & 0o777, 0o700);
    assert.deepEqual(readdirSync(f.segDir).sort(), r.segments.map((s) => s.file));
    // Each archive record points at its own intent entry, which names the same range.
    for (const [i, s] of r.segments.entries()) {
      const rec = f.log.archives()[i]!;
      assert.equal(rec.entry, s.entry);
      const intent = JSON.parse(f.log.entries(s.entry, 1)[0]!.data.toString('utf8')) as { act: string; result: string; detail: { start: number; end: number } };
      assert.deepEqual([intent.act, intent.result, intent.detail.start, intent.detail.end], ['audit.archive', 'started', s.start, s.end]);
    }
    const outcomes = acts(f.log, 'audit.archive').filter((e) => e.result === 'ok');
    assert.equal(outcomes.length, 2);
    const digests = new Set(f.log.entries(32, 1000).map((e) => (JSON.parse(e.data.toString('utf8')) as { digest?: string }).digest));
    for (let i = 0; i < 50; i++) assert.ok(digests.has(event(1000 + i).digest), `append ${i} during the run is in the log`);
    // A reopened log (full check) agrees.
    const size = f.log.size;
    await f.log.close();
    const again = AuditLog.open({ path: f.path, origin: TEST_AUDIT_ORIGIN, key, clock: { now: () => new Date('2031-01-01T00:00:00Z') }, log: silentLogger() });
    try {
      assert.equal(again.size, size);
      assert.equal(again.archivedEnd, 32);
    } finally {
      await again.close();
    }
  } finally {
    await f.cleanup();
  }
});

test('a second run while one is under way is refused (not queued), audited, and the first completes', async () => {
  const f = await fixture(40);
  try {
    const a = new OnlineArchiver(f.log, { dir: f.segDir, align: 16, segmentMax: 16 });
    const first = a.run('CN=admin');
    assert.equal(a.running, true);
    await assert.rejects(a.run('CN=admin-2'), refused(/already running/));
    const r = await first;
    assert.equal(r.archivedEnd, 32);
    assert.equal(a.running, false);
    const refusals = acts(f.log, 'audit.archive').filter((e) => e.result === 'refused');
    assert.equal(refusals.length, 1);
    // Afterwards a run is admitted again; nothing is left to archive below the next aligned boundary.
    const again = await a.run('CN=admin', 32);
    assert.equal(again.segments.length, 0);
    assert.match(again.nothing ?? '', /archived already/);
  } finally {
    await f.cleanup();
  }
});

test('stop ends a run between segments (each whole) and refuses later runs: a daemon stopping does not wait for a whole backlog', async () => {
  const f = await fixture(64);
  try {
    const a = new OnlineArchiver(f.log, { dir: f.segDir, align: 16, segmentMax: 16 });
    const run = a.run('CN=admin');
    await a.stop();
    const r = await run;
    assert.ok(r.segments.length < 4, `${r.segments.length} of 4 segments`);
    assert.match(r.nothing ?? '', /^stopped after \d segment\(s\): sigild is stopping$/);
    assert.equal(f.log.archivedEnd, r.segments.length * 16, 'what was archived is whole');
    await assert.rejects(a.run('CN=admin'), refused(/sigild is stopping/));
  } finally {
    await f.cleanup();
  }
});

test('a run while the background full check is running is refused, naming it', async () => {
  const f = await fixture(40, 0);
  try {
    assert.equal(f.log.fullCheck.state, 'running');
    const a = new OnlineArchiver(f.log, { dir: f.segDir, align: 16, segmentMax: 16 });
    await assert.rejects(a.run('CN=admin'), refused(/full check is running/));
    assert.equal(f.log.archivedEnd, 0);
    assert.equal((await f.log.fullCheckDone()).state, 'clean', 'the check saw no rows vanish');
    assert.equal((await a.run('CN=admin')).archivedEnd, 32);
  } finally {
    await f.cleanup();
  }
});

test('bad input is refused and changes nothing', async () => {
  const f = await fixture(40);
  try {
    const a = new OnlineArchiver(f.log, { dir: f.segDir, align: 16, segmentMax: 16 });
    await assert.rejects(a.run('CN=admin', -1), (err: unknown) => isSigilError(err, 'INVALID_ARGUMENT'));
    await assert.rejects(a.run('CN=admin', 1.5), (err: unknown) => isSigilError(err, 'INVALID_ARGUMENT'));
    assert.equal(f.log.archivedEnd, 0);
  } finally {
    await f.cleanup();
  }
});

test('a read of a range whose prune the writer committed but the log has not heard of yet names the segment, never empty bytes', async () => {
  const f = await fixture(40);
  try {
    await f.log.latestCheckpoint();
    const seg = await writeVerifiedSegment(f.log, f.segDir, 0, 16, [{ spki, label: 'k' }]);
    const entry = await f.log.recordAt({ who: 'CN=admin', act: 'audit.archive', result: 'started', detail: { start: 0, end: 16, segment: seg.file, sha256: seg.sha256, checkpoint: seg.checkpoint } });
    const pruned = f.log.pruneArchived({ start: 0, end: 16, file: seg.file, sha256: seg.sha256, checkpoint: seg.checkpoint, entry });
    // Block the event loop until the writer thread's commit is visible: its answer cannot be handled meanwhile.
    const db = new DatabaseSync(f.path, { readOnly: true });
    try {
      const deadline = Date.now() + 10_000;
      while ((db.prepare('SELECT COUNT(*) AS n FROM archives').get() as { n: number }).n === 0) if (Date.now() > deadline) throw new Error('the prune never committed');
    } finally {
      db.close();
    }
    assert.equal(f.log.archivedEnd, 0, 'the log has not handled the answer yet');
    assert.throws(() => f.log.entries(0, 5), (err: unknown) => isSigilError(err, 'FAILED_PRECONDITION') && /entry 0 is archived in segment audit-0+-0+16\.segment/.test(err.message));
    assert.throws(() => f.log.entries(10, 1), (err: unknown) => isSigilError(err, 'FAILED_PRECONDITION') && /entry 10 is archived/.test(err.message));
    assert.equal(f.log.entries(16, 1)[0]!.data.length > 0, true);
    await pruned;
    assert.equal(f.log.archivedEnd, 16);
  } finally {
    await f.cleanup();
  }
});

test('the schedule archives as sigild when due (counted from the last archive record), keeping the newest entries live', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'sigil-online-archive-'));
  let now = Date.parse('2030-01-01T00:00:00Z');
  const clock = { now: () => new Date(now) };
  const log = AuditLog.open({ path: join(dir, 'audit.db'), origin: TEST_AUDIT_ORIGIN, key, clock, log: silentLogger() });
  const a = new OnlineArchiver(log, { dir: join(dir, 'segments'), align: 16, segmentMax: 16 });
  const stop = a.schedule(1000, 8, clock, silentLogger());
  const waitFor = async (what: string, cond: () => boolean) => {
    const deadline = Date.now() + 10_000;
    while (!cond()) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  };
  try {
    await Promise.all(Array.from({ length: 40 }, (_, i) => log.record(event(i))));
    // Nothing archived yet: due at the first check. 40 - 8 kept = 32, a multiple of 16.
    await waitFor('the first scheduled run', () => log.archivedEnd === 32);
    const intents = acts(log, 'audit.archive').filter((e) => e.result === 'started');
    assert.ok(intents.length >= 1 && intents.every((e) => (e as { who?: string }).who === 'sigild'));
    await Promise.all(Array.from({ length: 40 }, (_, i) => log.record(event(100 + i))));
    // The clock has not moved: the next checks find it not due.
    await new Promise((r) => setTimeout(r, 2300));
    assert.equal(log.archivedEnd, 32);
    now += 1000;
    await waitFor('the second scheduled run', () => log.archivedEnd > 32);
    assert.ok(log.size - log.archivedEnd >= 8, 'at least 8 entries stay live');
    assert.equal(log.archivedEnd % 16, 0);
  } finally {
    stop();
    await a.stop();
    await log.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('the schedule waits, without a refused entry at each check, while the full check has not passed', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'sigil-online-archive-'));
  const clock = { now: () => new Date(Date.parse('2030-01-01T00:00:00Z')) };
  const log = AuditLog.open({ path: join(dir, 'audit.db'), origin: TEST_AUDIT_ORIGIN, key, clock, log: silentLogger() });
  // The log as the archiver sees it, with a background check that ended in an error (a disk that failed under it).
  let state: 'error' | 'clean' = 'error';
  const seen = new Proxy(log, {
    get: (target, prop) => {
      if (prop === 'fullCheck') return { ...target.fullCheck, state };
      const v: unknown = Reflect.get(target, prop, target);
      return typeof v === 'function' ? (v as (...args: unknown[]) => unknown).bind(target) : v;
    },
  });
  const warnings: string[] = [];
  const logger = Object.assign(Object.create(silentLogger()) as ReturnType<typeof silentLogger>, { warn: (_o: unknown, msg: string) => void warnings.push(msg) });
  const a = new OnlineArchiver(seen, { dir: join(dir, 'segments'), align: 16, segmentMax: 16 });
  const stop = a.schedule(1000, 0, clock, logger);
  try {
    await Promise.all(Array.from({ length: 40 }, (_, i) => log.record(event(i))));
    await new Promise((r) => setTimeout(r, 2300));
    assert.equal(log.archivedEnd, 0, 'nothing archived');
    assert.equal(acts(log, 'audit.archive').length, 0, 'no refused run audited at each check');
    assert.deepEqual(warnings, ['scheduled audit archive waits: the audit log full check has not passed'], 'warned once');
    state = 'clean';
    for (const deadline = Date.now() + 10_000; log.archivedEnd === 0; ) {
      if (Date.now() > deadline) assert.fail('the schedule did not run once the check passed');
      await new Promise((r) => setTimeout(r, 20));
    }
  } finally {
    stop();
    await a.stop();
    await log.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
