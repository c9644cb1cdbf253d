import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Enrollments } from '../../../src/attest/enrollments.ts';
import { SqliteStore } from '../../../src/store/sqlite.ts';
import type { AuditEvent, AuditSink } from '../../../src/audit/audit-sink.ts';
import { SigilError, isSigilError } from '../../../src/errors.ts';
import type { EnrollmentRecord } from '../../../src/store/store.ts';

const t0 = new Date('2026-03-04T05:06:07.000Z');
const EK = 'ab'.repeat(32);
const AK = '000b' + 'cd'.repeat(32);
const rec: EnrollmentRecord = { ekHash: EK, akName: AK, akPublic: Buffer.from([1]), policy: 'ci', resetCount: 7, restartCount: 2, clock: 99_000n, updatedAt: t0, ekCertificate: null, ekPublic: null };

function setup(opts: { failAt?: number; revoked?: Set<string> } = {}) {
  const store = new SqliteStore(':memory:');
  const events: AuditEvent[] = [];
  const sink: AuditSink = {
    record: async (e) => {
      if (opts.failAt === events.length) throw new SigilError('AUDIT_UNAVAILABLE', 'the audit log cannot be written');
      events.push(e);
    },
    ready: () => {},
  };
  const revoked = opts.revoked ?? new Set<string>();
  const e = new Enrollments({ store, sink, isRevoked: (ek, ak) => revoked.has(ek) || revoked.has(`${ek}/${ak}`) });
  return { store, events, e };
}

const code = (c: string, re?: RegExp) => (err: unknown) => isSigilError(err) && err.code === c && (re === undefined || re.test(err.message));

test('list: by prefix, any case; a prefix that is not hex is INVALID_ARGUMENT; the revoked flag follows the ek or its enrolled ak', () => {
  const revoked = new Set<string>();
  const { store, e } = setup({ revoked });
  store.putEnrollment(rec);
  store.putEnrollment({ ...rec, ekHash: 'cd'.repeat(32) });
  assert.deepEqual(e.list('').map((v) => v.record.ekHash), [EK, 'cd'.repeat(32)]);
  assert.deepEqual(e.list('AB').map((v) => v.record.ekHash), [EK]);
  assert.throws(() => e.list('a%'), code('INVALID_ARGUMENT', /hex/));
  assert.throws(() => e.list('a'.repeat(65)), code('INVALID_ARGUMENT'));
  assert.equal(e.list(EK)[0]!.revoked, false);
  revoked.add(`${EK}/${AK}`);
  assert.equal(e.list(EK)[0]!.revoked, true, 'its enrolled ak is revoked');
  revoked.clear();
  revoked.add(EK);
  assert.equal(e.list(EK)[0]!.revoked, true, 'its ek is revoked');
});

test('forget: written ahead, the record deleted, the outcome names what was forgotten; bad input and unknown eks change nothing', async () => {
  const { store, events, e } = setup();
  store.putEnrollment(rec);
  await assert.rejects(e.forget('xyz', 're-imaged', 'CN=admin'), code('INVALID_ARGUMENT', /ek hash must be 64 hex digits/));
  await assert.rejects(e.forget(EK, '  ', 'CN=admin'), code('INVALID_ARGUMENT', /reason is required/));
  await assert.rejects(e.forget(EK, 'a\u001b[2Jb', 'CN=admin'), code('INVALID_ARGUMENT', /one line/));
  await assert.rejects(e.forget(EK, 'x'.repeat(201), 'CN=admin'), code('INVALID_ARGUMENT', /longer than 200/));
  await assert.rejects(e.forget('ef'.repeat(32), 're-imaged', 'CN=admin'), code('KEY_NOT_FOUND', /^no enrollment for ek (ef){32}$/));
  assert.deepEqual(store.getEnrollment(EK), rec);
  assert.deepEqual(events.map((x) => x.result), ['started', 'refused', 'started', 'refused', 'started', 'refused', 'started', 'refused', 'started', 'refused']);
  events.length = 0;

  const v = await e.forget(EK.toUpperCase(), ' re-imaged ', 'CN=admin');
  assert.deepEqual(v.record, rec);
  assert.equal(store.getEnrollment(EK), null);
  assert.equal(events.length, 2);
  const [started, ok] = events as [AuditEvent, AuditEvent];
  assert.deepEqual({ ...started, detail: { ...started.detail, intent: undefined } }, { who: 'CN=admin', act: 'enrollment.forget', result: 'started', detail: { ekHash: EK.toUpperCase(), reason: ' re-imaged ', intent: undefined } });
  assert.deepEqual(ok, {
    who: 'CN=admin',
    act: 'enrollment.forget',
    result: 'ok',
    detail: { ekHash: EK, akName: AK, policy: 'ci', resetCount: 7, restartCount: 2, clock: '99000', updatedAt: t0.toISOString(), revoked: false, reason: 're-imaged', intent: started.detail!.intent },
  });
  await assert.rejects(e.forget(EK, 're-imaged', 'CN=admin'), code('KEY_NOT_FOUND'), 'forgotten already');
});

test('forget: nothing is deleted when the intent cannot be written (fail closed)', async () => {
  const { store, e } = setup({ failAt: 0 });
  store.putEnrollment(rec);
  await assert.rejects(e.forget(EK, 're-imaged', 'CN=admin'), code('AUDIT_UNAVAILABLE'));
  assert.deepEqual(store.getEnrollment(EK), rec);
});
