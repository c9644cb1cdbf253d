// Admin acts are written ahead to the real audit log (SQLite file, writer thread) with the soft backend:
// the intent is durable before the act runs, or the act does not happen; an outcome that cannot be written
// leaves the intent in the log. The log is broken the way a second process would: by holding its write lock.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { pino } from 'pino';
import { AuditLog } from '../../../src/audit/audit-log.ts';
import { memoryAuditKey, TEST_AUDIT_ORIGIN } from '../../helpers/audit-key.ts';
import type { AuditSink } from '../../../src/audit/audit-sink.ts';
import { decodeEntry, type AuditEntry } from '../../../src/audit/entry.ts';
import { verifyLog } from '../../../src/audit/verify.ts';
import { isSigilError } from '../../../src/errors.ts';
import { KeyLifecycle } from '../../../src/keys/lifecycle.ts';
import { KeyService } from '../../../src/keys/key-service.ts';
import { KeyScheduler } from '../../../src/keys/scheduler.ts';
import { backendLabel } from '../../../src/keys/names.ts';
import { BackendRegistry } from '../../../src/signers/registry.ts';
import { canCreateKeys } from '../../../src/signers/signer.ts';
import { SqliteStore } from '../../../src/store/sqlite.ts';

const ORIGIN = TEST_AUDIT_ORIGIN;
const DAY = 86_400_000;
const alice = { subject: 'CN=alice', fingerprint: 'aa'.repeat(32) };
const { key: auditKey, spki } = memoryAuditKey();
const unavailable = (e: unknown) => isSigilError(e, 'AUDIT_UNAVAILABLE');

describe('admin acts written ahead to the audit log', () => {
  const log = pino({ level: 'silent' });
  let dir: string;
  let softDir: string;
  let t = Date.parse('2030-01-01T00:00:00Z');
  const clock = { now: () => new Date(t) };
  let audit: AuditLog;
  let locker: DatabaseSync;
  let store: SqliteStore;
  let backends: BackendRegistry;
  let keys: KeyService;
  let life: KeyLifecycle;
  /** When set, the audit file's write lock is taken right after the next intent is durable. */
  let lockAfterIntent = false;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'sigil-life-audit-'));
    softDir = join(dir, 'soft');
    const auditPath = join(dir, 'audit.db');
    audit = AuditLog.open({ path: auditPath, origin: ORIGIN, key: auditKey, clock: { now: () => new Date((t += 1)) }, log });
    locker = new DatabaseSync(auditPath);
    // The real log; the wrapper only chooses the moment the lock is taken: between an intent and its outcome.
    const sink: AuditSink = {
      ready: () => audit.ready(),
      record: async (e) => {
        await audit.record(e);
        if (lockAfterIntent && e.result === 'started') {
          lockAfterIntent = false;
          locker.exec('BEGIN IMMEDIATE');
        }
      },
    };
    store = new SqliteStore(join(dir, 'sigil.db'));
    backends = new BackendRegistry({ soft: { type: 'soft', dir: softDir } }, { log, production: false });
    keys = new KeyService({ store, backends, defaultBackend: 'soft', maxMessageBytes: 1 << 20, log, clock });
    life = new KeyLifecycle({ store, backends, keys, audit: sink, clock, log, minDestroyWindowMs: DAY, defaultDestroyWindowMs: 7 * DAY, approvalTtlMs: DAY });
    await keys.createKey('rel/app', 'ECDSA_P256_SHA256');
    await life.rotate(alice, 'rel/app');
  });
  after(async () => {
    if (locker.isTransaction) locker.exec('ROLLBACK');
    locker.close();
    await audit.close();
    await backends.closeAll();
    store.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const entries = (): AuditEntry[] => audit.entries(0, 1000).map((e) => decodeEntry(e.data));
  const softFiles = (): string[] => readdirSync(softDir).sort();
  const snapshot = () => ({ key: keys.getKey('rel/app'), soft: softFiles(), approvals: store.listApprovals({}), log: audit.size });
  const release = (): void => locker.exec('COMMIT');

  it('each act is an intent then an outcome with the same id; the log reads and verifies', async () => {
    await life.disable(alice, 'rel/app@1');
    await assert.rejects(life.enable(alice, 'rel/app@2'), (e) => isSigilError(e, 'FAILED_PRECONDITION'));
    const acts = entries().filter((e) => e.who === alice.subject);
    assert.deepEqual(
      acts.map((e) => `${e.act}:${e.result}`),
      ['key.rotate:started', 'key.rotate:ok', 'key.disable:started', 'key.disable:ok', 'key.enable:started', 'key.enable:refused'],
    );
    for (let i = 0; i < acts.length; i += 2) {
      assert.equal(typeof acts[i]!.detail?.['intent'], 'string');
      assert.equal(acts[i + 1]!.detail?.['intent'], acts[i]!.detail?.['intent'], `${acts[i]!.act}: the outcome names its intent`);
    }
    assert.equal(acts[1]!.key, 'rel/app@2', 'the outcome names the version made');
    const cp = await audit.latestCheckpoint();
    const report = await verifyLog({ entries: audit.entries(0, 1000), checkpoint: cp.note, spki, origin: ORIGIN });
    assert.equal(report.ok, true, JSON.stringify(report.failure));
  });

  it('the intent cannot be written: every act is refused with AUDIT_UNAVAILABLE and nothing changes in the store, the backend or the log', async () => {
    await life.scheduleDestroy(alice, 'rel/app@1');
    await life.cancelDestroy(alice, 'rel/app@1');
    const before = snapshot();
    locker.exec('BEGIN IMMEDIATE');
    try {
      await assert.rejects(life.rotate(alice, 'rel/app'), unavailable);
      await assert.rejects(life.enable(alice, 'rel/app@1'), unavailable);
      await assert.rejects(life.scheduleDestroy(alice, 'rel/app@1'), unavailable);
      await assert.rejects(life.updatePolicy(alice, 'rel/app', { destroyNeedsApproval: true }), unavailable);
      assert.deepEqual(snapshot(), before);
    } finally {
      release();
    }
    assert.equal(audit.size, before.log, 'no entry was written');
    // The next act's intent is the write that heals the log.
    await life.enable(alice, 'rel/app@1');
    assert.deepEqual(entries().slice(-2).map((e) => `${e.act}:${e.result}`), ['key.enable:started', 'key.enable:ok']);
  });

  it('the outcome cannot be written: the caller gets AUDIT_UNAVAILABLE and the log holds the intent of the act that happened', async () => {
    const before = audit.size;
    lockAfterIntent = true;
    try {
      await assert.rejects(life.rotate(alice, 'rel/app'), unavailable);
    } finally {
      release();
    }
    const written = entries().slice(before);
    assert.equal(written.length, 1, 'only the intent');
    assert.deepEqual([written[0]!.who, written[0]!.act, written[0]!.key, written[0]!.result], [alice.subject, 'key.rotate', 'rel/app', 'started']);
    const intent = written[0]!.detail!['intent'];
    // The rotation did happen: the intent without an outcome is how an auditor sees it may have.
    assert.equal(keys.getKey('rel/app').primaryVersion, 3);
    assert.equal(softFiles().filter((f) => f.endsWith('.pem')).length, 3, 'three key objects on the backend');
    assert.throws(() => audit.ready(), unavailable, 'the log stays broken until a write succeeds');
    await life.disable(alice, 'rel/app@2');
    assert.doesNotThrow(() => audit.ready());
    assert.ok(!entries().some((e) => e.result !== 'started' && e.detail?.['intent'] === intent), 'no outcome was ever written for that intent');
    const cp = await audit.latestCheckpoint();
    const report = await verifyLog({ entries: audit.entries(0, 1000), checkpoint: cp.note, spki, origin: ORIGIN });
    assert.equal(report.ok, true, JSON.stringify(report.failure));
  });

  it('the daemon\'s own acts: recovery and the destroy scheduler write ahead too, and do nothing when they cannot', async () => {
    // A rotation that crashed after the backend made its object: PENDING row and object, as recover() finds them.
    const pending = store.insertPendingVersion('rel/app', (v) => backendLabel('rel/app', v), clock.now());
    const backend = await backends.get('soft');
    assert.ok(canCreateKeys(backend));
    await backend.createKey({ label: pending.label!, algorithm: 'ECDSA_P256_SHA256' });
    await life.scheduleDestroy(alice, 'rel/app@1');
    t += 8 * DAY;
    const scheduler = new KeyScheduler({ store, lifecycle: life, clock, log, intervalMs: 1000 });
    const before = { soft: softFiles(), versions: store.versionsInState(['PENDING', 'DESTROY_SCHEDULED']), log: audit.size };
    locker.exec('BEGIN IMMEDIATE');
    try {
      const r = await life.recover();
      assert.deepEqual(r.dropped, []);
      assert.equal(r.failed.length, 1);
      assert.match(r.failed[0]!.error, /audit log cannot be written/);
      const tick = await scheduler.tick();
      assert.deepEqual(tick.destroyed, []);
      assert.equal(tick.failed.length, 1);
      assert.deepEqual({ soft: softFiles(), versions: store.versionsInState(['PENDING', 'DESTROY_SCHEDULED']), log: audit.size }, before, 'nothing happened');
    } finally {
      release();
    }
    const r = await life.recover();
    assert.deepEqual(r.dropped, [{ keyVersion: `rel/app@${pending.version}`, objectRemoved: true }]);
    t += 2 * 60_000; // past the scheduler's retry delay
    assert.deepEqual((await scheduler.tick()).destroyed, ['rel/app@1']);
    const own = entries().filter((e) => e.who === 'sigild');
    assert.deepEqual(own.map((e) => `${e.act}:${e.result}`), ['key.rotate:started', 'key.rotate:failed', 'key.destroy:started', 'key.destroy:ok']);
    assert.deepEqual(own[0]!.detail, { recovering: 'PENDING', intent: own[1]!.detail!['intent'] });
    assert.equal(own[1]!.reason, 'INTERRUPTED');
    assert.equal(own[3]!.detail!['intent'], own[2]!.detail!['intent']);
  });
});
