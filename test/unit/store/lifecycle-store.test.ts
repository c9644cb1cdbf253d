import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { SqliteStore } from '../../../src/store/sqlite.ts';
import { SigilError } from '../../../src/errors.ts';
import type { ApprovalRecord } from '../../../src/store/store.ts';
import { STORE_V4_TABLES } from '../../helpers/fixtures-text.ts';

const t0 = new Date('2026-01-02T03:04:05.678Z');
const first = { uri: 'pkcs11:token=t;id=%01', state: 'ENABLED' as const, generated: true, spki: Buffer.from([1, 2, 3]), createdAt: t0 };
const isCode = (c: string) => (e: unknown) => e instanceof SigilError && e.code === c;

test('migration 5 upgrades a version-4 store: existing keys get the default policy and ENABLED versions keep their fields', () => {
  const dir = mkdtempSync(join(tmpdir(), 'sigil-store-'));
  try {
    const path = join(dir, 'sigil.db');
    // A store as issue 2 left it: schema version 4, one key.
    const raw = new DatabaseSync(path);
    raw.exec(`${STORE_V4_TABLES}
      INSERT INTO keys VALUES ('old', 'ED25519', 'hsm', 1, ${t0.getTime()});
      INSERT INTO key_versions VALUES ('old', 1, 'pkcs11:id=%01', 'ENABLED', 1, x'0102', ${t0.getTime()});
      PRAGMA user_version = 4;`);
    raw.close();
    const s = new SqliteStore(path);
    const k = s.getKey('old')!;
    assert.deepEqual(k.policy, { minSignVersion: 1, minVerifyVersion: 1, autoRotatePeriodMs: null, destroyNeedsApproval: false });
    assert.equal(k.nextRotationAt, null);
    assert.equal(k.versions[0]!.state, 'ENABLED');
    assert.equal(k.versions[0]!.revokedAt, null);
    s.close();
    const again = new DatabaseSync(path);
    // Migration 5 and every later one ran.
    assert.ok((again.prepare('PRAGMA user_version').get() as { user_version: number }).user_version >= 5);
    again.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('pending versions: numbered above the highest, completed with primary in one step, or dropped', () => {
  const s = new SqliteStore(':memory:');
  s.insertKey({ name: 'k', algorithm: 'ED25519', backend: 'hsm', createdAt: t0 }, first);
  const p = s.insertPendingVersion('k', (v) => `sigil-k-v${v}`, t0);
  assert.equal(p.version, 2);
  assert.equal(p.state, 'PENDING');
  assert.equal(p.label, 'sigil-k-v2');
  assert.equal(s.getKey('k')!.primaryVersion, 1, 'pending does not touch the primary');
  const next = new Date(t0.getTime() + 1000);
  const k = s.completeVersion('k', 2, { uri: 'pkcs11:id=%02', spki: Buffer.from([9]) }, { primary: true, nextRotationAt: next });
  assert.equal(k.primaryVersion, 2);
  assert.deepEqual(k.nextRotationAt, next);
  assert.equal(k.versions[1]!.state, 'ENABLED');
  assert.throws(() => s.completeVersion('k', 2, { uri: 'x', spki: Buffer.alloc(0) }, { primary: true, nextRotationAt: null }), isCode('FAILED_PRECONDITION'));
  assert.throws(() => s.deletePendingVersion('k', 2), isCode('FAILED_PRECONDITION'), 'only PENDING rows can be dropped');
  const p3 = s.insertPendingVersion('k', (v) => `sigil-k-v${v}`, t0);
  assert.deepEqual(s.versionsInState(['PENDING']).map((v) => v.version), [3]);
  s.deletePendingVersion('k', p3.version);
  assert.deepEqual(s.versionsInState(['PENDING']), []);
  assert.deepEqual(s.keysDueForRotation(next), ['k']);
  assert.deepEqual(s.keysDueForRotation(t0), []);
  s.close();
});

test('updateVersion is compare-and-set on the state; a failed transaction leaves nothing behind', () => {
  const s = new SqliteStore(':memory:');
  s.insertKey({ name: 'k', algorithm: 'ED25519', backend: 'hsm', createdAt: t0 }, first);
  const v = s.updateVersion('k', 1, ['ENABLED'], { state: 'DISABLED', disabledAt: t0 });
  assert.equal(v.state, 'DISABLED');
  assert.throws(() => s.updateVersion('k', 1, ['ENABLED'], { state: 'DESTROY_SCHEDULED' }), isCode('FAILED_PRECONDITION'));
  assert.throws(
    () =>
      s.transaction(() => {
        s.updateVersion('k', 1, ['DISABLED'], { state: 'ENABLED', disabledAt: null });
        s.updateKey('k', { policy: { minSignVersion: 1, minVerifyVersion: 1, autoRotatePeriodMs: 5000, destroyNeedsApproval: true } });
        throw new Error('crash in the middle');
      }),
    /crash/,
  );
  const k = s.getKey('k')!;
  assert.equal(k.versions[0]!.state, 'DISABLED', 'rolled back');
  assert.deepEqual(k.versions[0]!.disabledAt, t0);
  assert.equal(k.policy.destroyNeedsApproval, false, 'rolled back');
  s.close();
});

test('approvals: stored, filtered, decided once', () => {
  const s = new SqliteStore(':memory:');
  s.insertKey({ name: 'k', algorithm: 'ED25519', backend: 'hsm', createdAt: t0 }, first);
  const a: ApprovalRecord = {
    id: 'a1', kind: 'destroy', key: 'k', version: 1,
    requestedBy: { subject: 'CN=alice', fingerprint: 'aa' }, requestedAt: t0, expiresAt: new Date(t0.getTime() + 1000),
    state: 'PENDING', decidedBy: null, decidedAt: null, reason: null, payload: { windowMs: 86_400_000 },
  };
  s.insertApproval(a);
  s.insertApproval({ ...a, id: 'a2', kind: 'policy', version: null, requestedAt: new Date(t0.getTime() + 1), payload: { destroyNeedsApproval: false } });
  assert.deepEqual(s.getApproval('a1'), a);
  assert.deepEqual(s.listApprovals({}).map((x) => x.id), ['a2', 'a1'], 'newest first');
  assert.deepEqual(s.listApprovals({ state: 'APPROVED' }), []);
  const d = s.updateApproval('a1', 'PENDING', { state: 'APPROVED', decidedBy: { subject: 'CN=bob', fingerprint: 'bb' }, decidedAt: t0, reason: null });
  assert.equal(d.state, 'APPROVED');
  assert.deepEqual(d.decidedBy, { subject: 'CN=bob', fingerprint: 'bb' });
  assert.throws(() => s.updateApproval('a1', 'PENDING', { state: 'REJECTED', decidedBy: null, decidedAt: t0, reason: 'x' }), isCode('FAILED_PRECONDITION'));
  assert.throws(() => s.updateApproval('nope', 'PENDING', { state: 'REJECTED', decidedBy: null, decidedAt: t0, reason: null }), isCode('KEY_NOT_FOUND'));
  assert.deepEqual(s.listApprovals({ state: 'PENDING', key: 'k' }).map((x) => x.id), ['a2']);
  s.close();
});
