import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { readFile } from 'node:fs/promises';
import { createHash, createPublicKey, verify } from 'node:crypto';
import { pino } from 'pino';
import { missingTools } from '../helpers/hw.ts';
import { tempToken, type TempToken } from '../helpers/softhsm.ts';
import { SqliteStore } from '../../src/store/sqlite.ts';
import { BackendRegistry } from '../../src/signers/registry.ts';
import { KeyService } from '../../src/keys/key-service.ts';
import { KeyLifecycle } from '../../src/keys/lifecycle.ts';
import { KeyScheduler } from '../../src/keys/scheduler.ts';
import { backendLabel } from '../../src/keys/names.ts';
import { SigilError } from '../../src/errors.ts';
import type { AuditEvent, AuditSink } from '../../src/audit/audit-sink.ts';
import type { Clock } from '../../src/clock.ts';

const run = promisify(execFile);
const skip = missingTools('softhsm', 'softhsm2-util', 'pkcs11-tool');
const HOUR = 3_600_000;
const DAY = 24 * HOUR;
const alice = { subject: 'CN=alice', fingerprint: 'aa'.repeat(32) };
const bob = { subject: 'CN=bob', fingerprint: 'bb'.repeat(32) };
const msg = Buffer.from('release 1.2.3');
const digest = createHash('sha256').update(msg).digest();

/** A clock tests move by hand. */
class FakeClock implements Clock {
  t = Date.parse('2026-03-01T00:00:00Z');
  now(): Date {
    return new Date(this.t);
  }
  advance(ms: number): void {
    this.t += ms;
  }
}

/** An audit sink that keeps events in memory and can be made to fail. */
class MemorySink implements AuditSink {
  events: AuditEvent[] = [];
  down = false;
  ready(): void {
    if (this.down) throw new SigilError('AUDIT_UNAVAILABLE', 'audit log unavailable');
  }
  async record(e: AuditEvent): Promise<void> {
    if (this.down) throw new SigilError('AUDIT_UNAVAILABLE', 'audit log unavailable');
    this.events.push(e);
  }
  acts(): string[] {
    return this.events.map((e) => `${e.act}:${e.result}`);
  }
}

function code(c: string, re?: RegExp): (e: unknown) => boolean {
  return (e) => {
    assert.ok(e instanceof SigilError, String(e));
    assert.equal(e.code, c, e.message);
    if (re) assert.match(e.message, re);
    return true;
  };
}

describe('key lifecycle on SoftHSM', { skip: skip ?? false }, () => {
  let token: TempToken;
  let pin: string;
  let clock: FakeClock;
  let sink: MemorySink;
  let store: SqliteStore;
  let backends: BackendRegistry;
  let keys: KeyService;
  let life: KeyLifecycle;
  let scheduler: KeyScheduler;
  const log = pino({ level: 'silent' });

  /** Labels of the objects on the token of one class, listed by pkcs11-tool (independent of sigil). */
  const labels = async (type: 'privkey' | 'pubkey'): Promise<string[]> => {
    const r = await run('pkcs11-tool', ['--module', token.module, '--token-label', token.label, '--login', '--pin', pin, '--list-objects', '--type', type], {
      env: { ...process.env, SOFTHSM2_CONF: token.conf },
    });
    return [...r.stdout.matchAll(/label:\s+(\S+)/g)].map((m) => m[1]!).sort();
  };
  const verifies = (ref: string, sig: Buffer): boolean =>
    verify('sha256', msg, { key: createPublicKey({ key: keys.publicKey(ref).spki, format: 'der', type: 'spki' }), dsaEncoding: 'der' }, sig);

  const open = (): void => {
    store = new SqliteStore(`${token.dir}/sigil.db`);
    backends = new BackendRegistry({ hsm: token.config }, { log, production: false });
    keys = new KeyService({ store, backends, defaultBackend: 'hsm', maxMessageBytes: 1 << 20, log, clock });
    life = new KeyLifecycle({ store, backends, keys, audit: sink, clock, log, minDestroyWindowMs: DAY, defaultDestroyWindowMs: 7 * DAY, approvalTtlMs: DAY });
    scheduler = new KeyScheduler({ store, lifecycle: life, clock, log, intervalMs: 1000 });
  };
  const close = async (): Promise<void> => {
    await backends.closeAll();
    store.close();
  };

  before(async () => {
    token = await tempToken('sigil-life');
    pin = (await readFile(token.pinFile, 'utf8')).trim();
    clock = new FakeClock();
    sink = new MemorySink();
    open();
  });
  after(async () => {
    await close();
    await token?.cleanup();
  });

  it('rotation makes a new primary in the same backend; old signatures stay verifiable', async () => {
    await keys.createKey('rel/app', 'ECDSA_P256_SHA256');
    const s1 = await keys.sign('rel/app', { digest });
    assert.equal(s1.keyVersion, 'rel/app@1');
    const { key, version } = await life.rotate(alice, 'rel/app');
    assert.equal(version, 2);
    assert.equal(key.primaryVersion, 2);
    assert.deepEqual(key.versions.map((v) => v.state), ['ENABLED', 'ENABLED']);
    const s2 = await keys.sign('rel/app', { digest });
    assert.equal(s2.keyVersion, 'rel/app@2', 'the very next request uses the new primary');
    assert.ok(verifies('rel/app@1', s1.signature));
    assert.ok(verifies('rel/app@2', s2.signature));
    assert.ok(!verifies('rel/app@1', s2.signature));
    assert.deepEqual(await labels('privkey'), [backendLabel('rel/app', 1), backendLabel('rel/app', 2)]);
    assert.deepEqual(sink.acts().slice(-1), ['key.rotate:ok']);
    assert.equal(sink.events.at(-1)!.key, 'rel/app@2');
  });

  it("a daemon key's follow-up that fails after a rotation: the rotation stands and says what is late, in words safe to show", async () => {
    await keys.createKey('own/ca', 'ECDSA_P256_SHA256');
    let failure: Error = new SigilError('BACKEND_UNAVAILABLE', 'backend hsm is unreachable');
    const followed = new KeyLifecycle({
      store, backends, keys, audit: sink, clock, log, minDestroyWindowMs: DAY, defaultDestroyWindowMs: 7 * DAY, approvalTtlMs: DAY,
      identityCa: { name: 'own/ca', rotated: () => Promise.reject(failure), changed: () => {} },
    });
    const r = await followed.rotate(alice, 'own/ca');
    assert.equal(r.version, 2);
    assert.equal(keys.getKey('own/ca').primaryVersion, 2, 'the rotation stands');
    assert.equal(r.behind, 'identity ca key rotated but the new generation has no ca certificate yet; the previous one keeps issuing: backend hsm is unreachable');
    failure = new Error('ENOENT: /secret/path/pin');
    const again = await followed.rotate(alice, 'own/ca');
    assert.equal(again.version, 3);
    assert.match(again.behind ?? '', /: internal error \(see the daemon log\)$/);
    assert.ok(!again.behind!.includes('secret'));
    // A follow-up that succeeds says nothing; another key has no follow-up.
    const ok = new KeyLifecycle({
      store, backends, keys, audit: sink, clock, log, minDestroyWindowMs: DAY, defaultDestroyWindowMs: 7 * DAY, approvalTtlMs: DAY,
      identityCa: { name: 'own/ca', rotated: async () => ({ keyVersion: 'own/ca@4' }), changed: () => {} },
    });
    assert.equal((await ok.rotate(alice, 'own/ca')).behind, undefined);
    await keys.createKey('own/other', 'ECDSA_P256_SHA256');
    assert.equal((await followed.rotate(alice, 'own/other')).behind, undefined);
  });

  it('rotation under load fails no request; each request uses the old or the new primary', async () => {
    const inflight = Array.from({ length: 200 }, (_, i) => (i === 50 ? life.rotate(alice, 'rel/app').then(() => null) : keys.sign('rel/app', { digest })));
    const results = await Promise.all(inflight);
    const used = new Set(results.filter((r) => r !== null).map((r) => r!.keyVersion));
    for (const u of used) assert.ok(u === 'rel/app@2' || u === 'rel/app@3', u);
    for (const r of results) if (r) assert.ok(verifies(r.keyVersion, r.signature));
    assert.equal((await keys.sign('rel/app', { digest })).keyVersion, 'rel/app@3');
  });

  it('min_sign_version refuses older explicit versions; min_verify_version hides their public keys', async () => {
    await life.updatePolicy(alice, 'rel/app', { minSignVersion: 2 });
    await assert.rejects(keys.sign('rel/app@1', { digest }), code('FAILED_PRECONDITION', /below min_sign_version 2/));
    assert.equal((await keys.sign('rel/app@2', { digest })).keyVersion, 'rel/app@2');
    await assert.rejects(life.updatePolicy(alice, 'rel/app', { minSignVersion: 4 }), code('FAILED_PRECONDITION', /above the primary/));
    await assert.rejects(life.updatePolicy(alice, 'rel/app', { minVerifyVersion: 3 }), code('INVALID_ARGUMENT', /above min_sign_version/));
    assert.equal(keys.publicKey('rel/app@1').keyVersion, 'rel/app@1');
    await life.updatePolicy(alice, 'rel/app', { minVerifyVersion: 2 });
    assert.throws(() => keys.publicKey('rel/app@1'), code('FAILED_PRECONDITION', /min_verify_version/));
    await life.updatePolicy(alice, 'rel/app', { minSignVersion: 1, minVerifyVersion: 1 });
    // Each act: its intent written ahead, then its outcome naming the same intent.
    const policy = sink.events.filter((e) => e.act === 'key.policy');
    assert.deepEqual(
      policy.map((e) => e.result),
      ['started', 'ok', 'started', 'refused', 'started', 'refused', 'started', 'ok', 'started', 'ok'],
    );
    for (let i = 0; i < policy.length; i += 2) assert.equal(policy[i + 1]!.detail!['intent'], policy[i]!.detail!['intent'], `act ${i / 2}: outcome and intent paired`);
    assert.equal(new Set(policy.map((e) => e.detail!['intent'])).size, 5, 'one intent id per act');
  });

  it('disable is instant, enable restores; the primary cannot be disabled without a rotation', async () => {
    assert.equal((await keys.sign('rel/app@2', { digest })).keyVersion, 'rel/app@2', 'cached signer');
    await life.disable(alice, 'rel/app@2');
    await assert.rejects(keys.sign('rel/app@2', { digest }), code('FAILED_PRECONDITION', /rel\/app@2 is DISABLED/));
    assert.ok(keys.publicKey('rel/app@2').spki.length > 0, 'a disabled version still serves its public key');
    await assert.rejects(life.disable(alice, 'rel/app@3'), code('FAILED_PRECONDITION', /primary version.*rotate the key first/));
    await assert.rejects(life.disable(alice, 'rel/app'), code('INVALID_ARGUMENT', /name the version/));
    await life.enable(alice, 'rel/app@2');
    assert.equal((await keys.sign('rel/app@2', { digest })).keyVersion, 'rel/app@2');
    await assert.rejects(life.enable(alice, 'rel/app@2'), code('FAILED_PRECONDITION', /is ENABLED, not DISABLED/));
  });

  it('a version disabled as compromised never signs or enables again; a compromised primary stops the bare name until a rotation', async () => {
    // Before the version was made: its trust window would close before it opens.
    const made = keys.getKey('rel/app').versions[0]!.createdAt;
    await assert.rejects(life.disable(alice, 'rel/app@1', { compromised: true, since: new Date(made.getTime() - 1) }), code('INVALID_ARGUMENT', /before rel\/app@1 was made/));
    assert.equal(keys.getKey('rel/app').versions[0]!.revokedAt, null, 'nothing changed');
    clock.advance(2 * HOUR);
    const since = new Date(clock.t - HOUR);
    await life.disable(alice, 'rel/app@1', { compromised: true, since });
    const v1 = keys.getKey('rel/app').versions[0]!;
    assert.equal(v1.state, 'DISABLED');
    assert.deepEqual(v1.revokedAt, since);
    await assert.rejects(life.enable(alice, 'rel/app@1'), code('FAILED_PRECONDITION', /compromised and can never be enabled/));
    await assert.rejects(life.disable(alice, 'rel/app@2', { compromised: true, since: new Date(clock.t + HOUR) }), code('INVALID_ARGUMENT', /future/));

    await life.disable(alice, 'rel/app@3', { compromised: true });
    await assert.rejects(keys.sign('rel/app', { digest }), code('FAILED_PRECONDITION', /primary version rel\/app@3 .* DISABLED \(compromised\): rotate the key/));
    await life.rotate(alice, 'rel/app');
    assert.equal((await keys.sign('rel/app', { digest })).keyVersion, 'rel/app@4');
  });

  it('schedule and cancel destruction; the window has a floor; the primary cannot be scheduled', async () => {
    await assert.rejects(life.scheduleDestroy(alice, 'rel/app@2', HOUR), code('INVALID_ARGUMENT', /shorter than the minimum 1d/));
    await assert.rejects(life.scheduleDestroy(alice, 'rel/app@4'), code('FAILED_PRECONDITION', /primary version.*rotate the key first/));
    const { key, approval } = await life.scheduleDestroy(alice, 'rel/app@2');
    assert.equal(approval, null);
    const v2 = key.versions[1]!;
    assert.equal(v2.state, 'DESTROY_SCHEDULED');
    assert.equal(v2.destroyAt!.getTime(), clock.t + 7 * DAY);
    await assert.rejects(keys.sign('rel/app@2', { digest }), code('FAILED_PRECONDITION', /DESTROY_SCHEDULED/));
    await life.cancelDestroy(alice, 'rel/app@2');
    assert.equal(keys.getKey('rel/app').versions[1]!.state, 'DISABLED');
    await assert.rejects(life.cancelDestroy(alice, 'rel/app@2'), code('FAILED_PRECONDITION', /not scheduled/));
  });

  it('destruction at window end removes the objects from the token; the public key stays served', async () => {
    const s2 = await (async () => {
      await life.enable(alice, 'rel/app@2');
      return keys.sign('rel/app@2', { digest });
    })();
    await life.scheduleDestroy(alice, 'rel/app@2', DAY);
    clock.advance(DAY - 1);
    assert.deepEqual((await scheduler.tick()).destroyed, [], 'not before the window ends');
    assert.ok((await labels('privkey')).includes(backendLabel('rel/app', 2)));
    clock.advance(1);
    assert.deepEqual((await scheduler.tick()).destroyed, ['rel/app@2']);
    const v2 = keys.getKey('rel/app').versions[1]!;
    assert.equal(v2.state, 'DESTROYED');
    assert.equal(v2.destroyedAt!.getTime(), clock.t);
    assert.ok(!(await labels('privkey')).includes(backendLabel('rel/app', 2)));
    assert.ok(!(await labels('pubkey')).includes(backendLabel('rel/app', 2)), 'the public object goes too');
    await assert.rejects(keys.sign('rel/app@2', { digest }), code('FAILED_PRECONDITION', /DESTROYED/));
    assert.ok(verifies('rel/app@2', s2.signature), 'old signatures verify against the kept public key');
    await assert.rejects(life.enable(alice, 'rel/app@2'), code('FAILED_PRECONDITION'));
    assert.ok(sink.events.some((e) => e.act === 'key.destroy' && e.who === 'sigild' && e.key === 'rel/app@2' && e.result === 'ok'));
  });

  it('approvals: destruction waits for an approver who is not the requester; reject and expiry change nothing', async () => {
    await keys.createKey('fw/ota', 'ECDSA_P256_SHA256');
    await life.rotate(alice, 'fw/ota');
    await life.updatePolicy(alice, 'fw/ota', { destroyNeedsApproval: true });
    const r = await life.scheduleDestroy(alice, 'fw/ota@1', 2 * DAY);
    assert.ok(r.approval);
    assert.equal(r.approval.state, 'PENDING');
    assert.equal(keys.getKey('fw/ota').versions[0]!.state, 'ENABLED', 'nothing changes until approved');
    assert.equal(sink.events.at(-1)!.act, 'approval.request');
    await assert.rejects(life.scheduleDestroy(alice, 'fw/ota@1'), code('FAILED_PRECONDITION', /already pending/));
    await assert.rejects(life.approve(alice, r.approval.id), code('PERMISSION_DENIED', /requester/));
    await assert.rejects(life.approve({ subject: alice.subject, fingerprint: 'cc'.repeat(32) }, r.approval.id), code('PERMISSION_DENIED'), 'same subject, another certificate');
    await assert.rejects(life.approve({ subject: 'CN=carol', fingerprint: alice.fingerprint }, r.approval.id), code('PERMISSION_DENIED'), 'same certificate, another subject');
    clock.advance(HOUR);
    const { approval, key } = await life.approve(bob, r.approval.id);
    assert.equal(approval.state, 'APPROVED');
    assert.deepEqual(approval.decidedBy, bob);
    assert.equal(key.versions[0]!.state, 'DESTROY_SCHEDULED');
    assert.equal(key.versions[0]!.destroyAt!.getTime(), clock.t + 2 * DAY, 'the window starts at approval');
    await assert.rejects(life.approve(bob, r.approval.id), code('FAILED_PRECONDITION', /APPROVED/));
    await life.cancelDestroy(alice, 'fw/ota@1');

    const rej = (await life.scheduleDestroy(alice, 'fw/ota@1')).approval!;
    await assert.rejects(life.reject(alice, rej.id, 'mine'), code('PERMISSION_DENIED'));
    assert.equal((await life.reject(bob, rej.id, 'still needed')).state, 'REJECTED');
    assert.equal(keys.getKey('fw/ota').versions[0]!.state, 'DISABLED');

    const exp = (await life.scheduleDestroy(alice, 'fw/ota@1')).approval!;
    clock.advance(DAY);
    await assert.rejects(life.approve(bob, exp.id), code('FAILED_PRECONDITION', /expired/));
    assert.deepEqual((await scheduler.tick()).expired, [exp.id]);
    assert.equal(store.getApproval(exp.id)!.state, 'EXPIRED');
    assert.equal(keys.getKey('fw/ota').versions[0]!.state, 'DISABLED');
    assert.ok(sink.events.some((e) => e.act === 'approval.expire' && e.who === 'sigild'));

    // A pending destruction can be withdrawn by cancel-destroy.
    const wd = (await life.scheduleDestroy(alice, 'fw/ota@1')).approval!;
    await life.cancelDestroy(alice, 'fw/ota@1');
    assert.equal(store.getApproval(wd.id)!.state, 'CANCELLED');
  });

  it('turning destroy approval off needs approval itself', async () => {
    const r = await life.updatePolicy(alice, 'fw/ota', { destroyNeedsApproval: false, minSignVersion: 2 });
    assert.ok(r.approval);
    assert.equal(keys.getKey('fw/ota').policy.destroyNeedsApproval, true, 'unchanged until approved');
    assert.equal(keys.getKey('fw/ota').policy.minSignVersion, 1);
    await life.approve(bob, r.approval.id);
    assert.deepEqual(keys.getKey('fw/ota').policy, { minSignVersion: 2, minVerifyVersion: 1, autoRotatePeriodMs: null, destroyNeedsApproval: false });
    // Turning it on needs nobody.
    assert.equal((await life.updatePolicy(alice, 'fw/ota', { destroyNeedsApproval: true })).approval, null);
  });

  it('auto-rotation follows the fake clock and catches up after a restart', async () => {
    await keys.createKey('ci/prov', 'ECDSA_P256_SHA256');
    await life.updatePolicy(alice, 'ci/prov', { autoRotatePeriodMs: 30 * DAY });
    assert.equal(keys.getKey('ci/prov').nextRotationAt!.getTime(), clock.t + 30 * DAY);
    clock.advance(30 * DAY - 1);
    assert.deepEqual((await scheduler.tick()).rotated, []);
    clock.advance(1);
    assert.deepEqual((await scheduler.tick()).rotated, ['ci/prov@2']);
    assert.equal(keys.getKey('ci/prov').nextRotationAt!.getTime(), clock.t + 30 * DAY);
    assert.ok(sink.events.some((e) => e.act === 'key.rotate' && e.who === 'sigild' && e.key === 'ci/prov@2'));

    // Down for 65 days: one rotation on start, not one per missed period.
    await close();
    clock.advance(65 * DAY);
    open();
    const report = await scheduler.tick();
    assert.deepEqual(report.rotated, ['ci/prov@3']);
    assert.equal(keys.getKey('ci/prov').primaryVersion, 3);
    assert.equal((await keys.sign('ci/prov', { digest })).keyVersion, 'ci/prov@3');
    assert.deepEqual((await scheduler.tick()).rotated, []);
  });

  it('recovery: a PENDING version left by a crash is dropped with its half-made object; DESTROYING finishes', async () => {
    // A crash after "backend created" but before "store recorded": make the object by label by hand.
    const pending = store.insertPendingVersion('ci/prov', (v) => backendLabel('ci/prov', v), clock.now());
    const backend = (await backends.get('hsm')) as unknown as { createKey(s: { label: string; algorithm: string }): Promise<{ uri: string }> };
    await backend.createKey({ label: pending.label!, algorithm: 'ECDSA_P256_SHA256' });
    // A crash after "store DESTROYING" but before the backend destroy.
    store.updateVersion('ci/prov', 1, ['ENABLED'], { state: 'DESTROYING', destroyAt: clock.now() });
    // A PENDING version whose object was never made.
    await close();
    open();
    const p2 = store.insertPendingVersion('ci/prov', (v) => backendLabel('ci/prov', v), clock.now());
    assert.equal(p2.version, pending.version + 1);
    await assert.rejects(keys.sign(`ci/prov@${pending.version}`, { digest }), code('KEY_NOT_FOUND'), 'a PENDING version is invisible');
    assert.ok((await labels('privkey')).includes(pending.label!));

    const report = await life.recover();
    assert.deepEqual(report.dropped, [
      { keyVersion: `ci/prov@${pending.version}`, objectRemoved: true },
      { keyVersion: `ci/prov@${p2.version}`, objectRemoved: false },
    ]);
    assert.deepEqual(report.destroyed, ['ci/prov@1']);
    const k = keys.getKey('ci/prov');
    assert.deepEqual(k.versions.map((v) => `${v.version}:${v.state}`), ['1:DESTROYED', '2:ENABLED', '3:ENABLED']);
    const onToken = await labels('privkey');
    assert.ok(!onToken.includes(pending.label!));
    assert.ok(!onToken.includes(backendLabel('ci/prov', 1)));
    // The store and the token agree: every ENABLED version's object exists.
    for (const v of k.versions.filter((x) => x.state === 'ENABLED')) assert.ok(onToken.includes(backendLabel('ci/prov', v.version)));
    assert.deepEqual(await life.recover(), { dropped: [], destroyed: [], failed: [] }, 'a second pass finds nothing');
    assert.equal((await life.rotate(alice, 'ci/prov')).version, 4, 'the dropped numbers are reused');
  });

  it('fails closed: with the audit log down no act happens', async () => {
    sink.down = true;
    try {
      await assert.rejects(life.rotate(alice, 'ci/prov'), code('AUDIT_UNAVAILABLE'));
      await assert.rejects(life.disable(alice, 'ci/prov@2'), code('AUDIT_UNAVAILABLE'));
    } finally {
      sink.down = false;
    }
    assert.equal(keys.getKey('ci/prov').primaryVersion, 4);
    assert.equal(keys.getKey('ci/prov').versions[1]!.state, 'ENABLED');
  });
});
