import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { status } from '@grpc/grpc-js';
import { missingTools } from '../helpers/hw.ts';
import { rejectsWith } from '../helpers/assert.ts';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.ts';
import { rpc } from '../../src/cli/client.ts';
import { parseConfig } from '../../src/config/load.ts';
import { KeyVersionState } from '../../src/gen/sigil/v1/signer.ts';
import { ApprovalState } from '../../src/gen/sigil/v1/admin.ts';
import type { Clock } from '../../src/clock.ts';

const run = promisify(execFile);
const skip = missingTools('softhsm', 'softhsm2-util', 'openssl', 'pkcs11-tool');
const SIGILCTL = new URL('../../bin/sigilctl.js', import.meta.url).pathname;
const HOUR = 3_600_000;
const DAY = 24 * HOUR;

class FakeClock implements Clock {
  t = Date.now();
  now(): Date {
    return new Date(this.t);
  }
}

type Who = 'admin' | 'admin2' | 'approver' | 'approver2' | 'signer' | 'auditor';

describe('key lifecycle through sigild and sigilctl', { skip: skip ?? false }, () => {
  let d: TestDaemon;
  let env: NodeJS.ProcessEnv;
  const clock = new FakeClock();

  const ctl = async (args: string[], who: Who = 'admin'): Promise<{ stdout: string; stderr: string; code: number }> => {
    try {
      const r = await run(process.execPath, [SIGILCTL, ...args], { env: { ...env, SIGIL_CLIENT_CERT: d.ids[who].cert, SIGIL_CLIENT_KEY: d.ids[who].key } });
      return { ...r, code: 0 };
    } catch (err) {
      const e = err as { stdout: string; stderr: string; code: number };
      return { stdout: e.stdout, stderr: e.stderr, code: e.code };
    }
  };
  const ok = async (args: string[], who: Who = 'admin'): Promise<string> => {
    const r = await ctl(args, who);
    assert.equal(r.code, 0, r.stderr);
    return r.stdout;
  };
  const json = async <T>(args: string[], who: Who = 'admin'): Promise<T> => JSON.parse(await ok([...args, '-o', 'json'], who)) as T;
  const rejects = (p: Promise<unknown>, code: number, re: RegExp, reason?: string): Promise<void> => rejectsWith(p, code, re, reason);
  const tokenLabels = async (): Promise<string[]> => {
    const pin = (await readFile(d.token.pinFile, 'utf8')).trim();
    const r = await run('pkcs11-tool', ['--module', d.token.module, '--token-label', d.token.label, '--login', '--pin', pin, '--list-objects', '--type', 'privkey'], {
      env: { ...process.env, SOFTHSM2_CONF: d.token.conf },
    });
    return [...r.stdout.matchAll(/label:\s+(\S+)/g)].map((m) => m[1]!);
  };
  const digest = randomBytes(32);

  before(async () => {
    d = await startTestDaemon({ clock, extraConfig: { keys: { minDestroyWindow: '1h', defaultDestroyWindow: '2h', approvalTtl: '1d' } } });
    env = { ...process.env, SIGIL_ADDR: d.address, SIGIL_CACERT: d.ca };
  });
  after(async () => d?.stop());

  test('rotate keeps old signatures verifiable with openssl; the name signs with the new version', async () => {
    const file = join(d.dir, 'a.bin');
    await writeFile(file, randomBytes(4096));
    await ok(['key', 'create', 'rel/app', '--alg', 'P256']);
    await ok(['sign', '--key', 'rel/app', '--file', file, '--out', join(d.dir, 'a1.sig')], 'signer');
    const r = await json<{ newVersion: number; key: { primaryVersion: number } }>(['key', 'rotate', 'rel/app']);
    assert.equal(r.newVersion, 2);
    assert.equal(r.key.primaryVersion, 2);
    assert.match(await ok(['sign', '--key', 'rel/app', '--file', file, '--out', join(d.dir, 'a2.sig')], 'signer'), /with rel\/app@2/);
    await ok(['key', 'pubkey', 'rel/app@1', '--out', join(d.dir, 'p1.pem')]);
    await ok(['key', 'pubkey', 'rel/app@2', '--out', join(d.dir, 'p2.pem')]);
    const v = (pub: string, sig: string) => run('openssl', ['dgst', '-sha256', '-verify', join(d.dir, pub), '-signature', join(d.dir, sig), file]);
    assert.match((await v('p1.pem', 'a1.sig')).stdout, /Verified OK/);
    assert.match((await v('p2.pem', 'a2.sig')).stdout, /Verified OK/);
    await assert.rejects(v('p1.pem', 'a2.sig'));
    assert.match(await ok(['key', 'versions', 'rel/app']), /@1 {2}ENABLED[\s\S]*@2 {2}ENABLED/);
  });

  test('min_sign_version, disable (instant), enable, compromised', async () => {
    const s = d.client('signer');
    const a = d.client('admin');
    await ok(['key', 'policy', 'rel/app', '--min-sign-version', '2']);
    const refused = await ctl(['sign', '--key', 'rel/app@1', '--file', join(d.dir, 'a.bin'), '--out', join(d.dir, 'x.sig')], 'signer');
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /FAILED_PRECONDITION: key rel\/app@1 is below min_sign_version 2/);
    await rejects(rpc.sign(s, { key: 'rel/app@1', digest, message: undefined }), status.FAILED_PRECONDITION, /below min_sign_version 2/, 'BELOW_MIN_SIGN_VERSION');
    await ok(['key', 'policy', 'rel/app', '--min-sign-version', '1']);

    assert.equal((await rpc.sign(s, { key: 'rel/app@1', digest, message: undefined })).keyVersion, 'rel/app@1');
    await rpc.disableKeyVersion(a, { key: 'rel/app@1', compromised: false, compromiseTime: undefined });
    await rejects(rpc.sign(s, { key: 'rel/app@1', digest, message: undefined }), status.FAILED_PRECONDITION, /rel\/app@1 is DISABLED/, 'KEY_VERSION_DISABLED');
    await rejects(rpc.disableKeyVersion(a, { key: 'rel/app@2', compromised: false, compromiseTime: undefined }), status.FAILED_PRECONDITION, /primary version.*rotate the key first/);
    await rpc.enableKeyVersion(a, { key: 'rel/app@1' });
    assert.equal((await rpc.sign(s, { key: 'rel/app@1', digest, message: undefined })).keyVersion, 'rel/app@1');

    // A compromise time before the version was made would close its trusted-root window before it opens: refused,
    // and nothing changes.
    const made = (await json<{ versions: Array<{ version: number; createTime: string }> }>(['key', 'show', 'rel/app'])).versions.find((v) => v.version === 1)!.createTime;
    const early = await ctl(['key', 'disable', 'rel/app@1', '--compromised', '--since', new Date(Date.parse(made) - 1000).toISOString()]);
    assert.equal(early.code, 1);
    assert.match(early.stderr, /INVALID_ARGUMENT: compromise time .* is before rel\/app@1 was made/);
    assert.equal((await rpc.sign(s, { key: 'rel/app@1', digest, message: undefined })).keyVersion, 'rel/app@1');

    const since = new Date(Date.parse(made)).toISOString(); // its whole life
    const dis = await json<{ versions: Array<{ state: string; revokeTime: string }> }>(['key', 'disable', 'rel/app@1', '--compromised', '--since', since]);
    assert.equal(dis.versions[0]!.state, 'DISABLED');
    assert.equal(dis.versions[0]!.revokeTime, since);
    const en = await ctl(['key', 'enable', 'rel/app@1']);
    assert.equal(en.code, 1);
    assert.match(en.stderr, /compromised and can never be enabled again/);
    await rejects(rpc.sign(s, { key: 'rel/app@1', digest, message: undefined }), status.FAILED_PRECONDITION, /DISABLED \(compromised\)/, 'KEY_VERSION_COMPROMISED');
  });

  test('destruction at window end removes the object from the token; the public key stays served; production refuses a 1h minimum', async () => {
    await ok(['key', 'create', 'tmp/k', '--alg', 'P256']);
    await ok(['key', 'rotate', 'tmp/k']);
    const short = await ctl(['key', 'schedule-destroy', 'tmp/k@1', '--window', '30m']);
    assert.match(short.stderr, /INVALID_ARGUMENT: destroy window 30m is shorter than the minimum 1h/);
    const sch = await json<{ key: { versions: Array<{ state: string; destroyTime: string }> } }>(['key', 'schedule-destroy', 'tmp/k@1']);
    assert.equal(sch.key.versions[0]!.state, 'DESTROY_SCHEDULED');
    assert.equal(Date.parse(sch.key.versions[0]!.destroyTime), clock.t + 2 * HOUR, 'the configured default window');
    assert.ok((await tokenLabels()).includes('sigil-tmp-k-v1'));
    clock.t += 2 * HOUR;
    assert.deepEqual((await d.daemon.scheduler.tick()).destroyed, ['tmp/k@1']);
    assert.ok(!(await tokenLabels()).includes('sigil-tmp-k-v1'), 'gone from the token');
    assert.ok((await tokenLabels()).includes('sigil-tmp-k-v2'));
    await rejects(rpc.sign(d.client('signer'), { key: 'tmp/k@1', digest, message: undefined }), status.FAILED_PRECONDITION, /DESTROYED/, 'KEY_VERSION_DESTROYED');
    assert.match(await ok(['key', 'pubkey', 'tmp/k@1']), /BEGIN PUBLIC KEY/);
    assert.match(await ok(['key', 'show', 'tmp/k']), /@1 {2}DESTROYED \(destroyed /);

    const prod = (await readFile(d.configFile, 'utf8')).replace('mode: development', 'mode: production').replace(/keys:\n(  .*\n)+/, 'keys:\n  minDestroyWindow: 1h\n');
    assert.throws(() => parseConfig(prod, d.configFile), /keys\.minDestroyWindow: must be at least 24h in production mode/);
  });

  test('approvals: only an approver who is not the requester; reject and expiry change nothing', async () => {
    await ok(['key', 'create', 'fw/ota', '--alg', 'P256']);
    await ok(['key', 'rotate', 'fw/ota']);
    await ok(['key', 'policy', 'fw/ota', '--destroy-approval', 'on']);
    const r = await json<{ approval: { id: string; state: string } }>(['key', 'schedule-destroy', 'fw/ota@1', '--window', '3h']);
    assert.equal(r.approval.state, 'PENDING');
    const id = r.approval.id;
    assert.equal((await rpc.getKey(d.client('admin'), { name: 'fw/ota' })).key!.versions[0]!.state, KeyVersionState.ENABLED, 'nothing changes yet');

    for (const who of ['admin', 'admin2', 'signer', 'auditor'] as const) {
      await rejects(rpc.approveRequest(d.client(who), { id }), status.PERMISSION_DENIED, /./);
    }
    const listed = await json<Array<{ id: string; requestedBy: string }>>(['approvals', 'list', '--state', 'pending'], 'auditor');
    assert.deepEqual(listed.map((a) => a.id), [id]);
    assert.match(listed[0]!.requestedBy, /test-admin/);
    clock.t += HOUR;
    // Text names what the request would do in words (window=3h), not as raw json.
    assert.match(await ok(['approvals', 'approve', id], 'approver'), new RegExp(`^approved ${id} {2}APPROVED {2}destroy fw/ota@1 {2}window=3h {2}requested by`));
    const v1 = (await rpc.listKeyVersions(d.client('auditor'), { name: 'fw/ota' })).versions[0]!;
    assert.equal(v1.state, KeyVersionState.DESTROY_SCHEDULED);
    assert.equal(v1.destroyTime!.getTime(), clock.t + 3 * HOUR, 'the window starts at approval');
    await rejects(rpc.approveRequest(d.client('approver2'), { id }), status.FAILED_PRECONDITION, /APPROVED/);
    await ok(['key', 'cancel-destroy', 'fw/ota@1']);

    const rej = (await json<{ approval: { id: string } }>(['key', 'schedule-destroy', 'fw/ota@1', '--window', '3h'])).approval.id;
    assert.match(await ok(['approvals', 'reject', rej, '--reason', 'still shipping'], 'approver2'), /REJECTED .*still shipping/);
    assert.equal((await rpc.getKey(d.client('admin'), { name: 'fw/ota' })).key!.versions[0]!.state, KeyVersionState.DISABLED);

    const exp = (await json<{ approval: { id: string } }>(['key', 'schedule-destroy', 'fw/ota@1', '--window', '3h'])).approval.id;
    clock.t += DAY;
    assert.deepEqual((await d.daemon.scheduler.tick()).expired, [exp]);
    const all = await rpc.listApprovals(d.client('admin'), { state: ApprovalState.UNSPECIFIED, key: 'fw/ota' });
    assert.deepEqual(all.approvals.map((a) => a.state), [ApprovalState.EXPIRED, ApprovalState.REJECTED, ApprovalState.APPROVED]);
    assert.equal((await rpc.getKey(d.client('admin'), { name: 'fw/ota' })).key!.versions[0]!.state, KeyVersionState.DISABLED);

    // Switching the protection off waits for an approver too.
    const off = await json<{ approval: { id: string } | null; key: { policy: { destroyNeedsApproval: boolean } } }>(['key', 'policy', 'fw/ota', '--destroy-approval', 'off']);
    assert.ok(off.approval);
    assert.equal(off.key.policy.destroyNeedsApproval, true);
    await ok(['approvals', 'approve', off.approval.id], 'approver2');
    assert.equal((await rpc.getKey(d.client('admin'), { name: 'fw/ota' })).key!.policy!.destroyNeedsApproval, false);
  });

  test('role lists: key reads for admin and auditor, changes for admin only', async () => {
    await rejects(rpc.listKeyVersions(d.client('signer'), { name: 'rel/app' }), status.PERMISSION_DENIED, /./);
    await rejects(rpc.rotateKey(d.client('auditor'), { name: 'rel/app' }), status.PERMISSION_DENIED, /./);
    await rejects(rpc.rotateKey(d.client('approver'), { name: 'rel/app' }), status.PERMISSION_DENIED, /./);
    await rejects(rpc.listApprovals(d.client('signer'), { state: 0, key: '' }), status.PERMISSION_DENIED, /./);
  });

  test('requests refused by the admin service before an act starts are audit entries too, and change nothing', async () => {
    const admin = d.client('admin');
    const before = (await rpc.getKey(admin, { name: 'rel/app' })).key;
    const at = d.auditEntries().length;
    await rejects(rpc.disableKeyVersion(admin, { key: 'rel/app@1', compromised: false, compromiseTime: new Date() }), status.INVALID_ARGUMENT, /compromise_time needs compromised/);
    await rejects(rpc.scheduleDestroyKeyVersion(admin, { key: 'rel/app@1', windowSeconds: Number.MAX_SAFE_INTEGER }), status.INVALID_ARGUMENT, /window_seconds must be between/);
    await rejects(rpc.updateKeyPolicy(admin, { name: 'rel/app' }), status.INVALID_ARGUMENT, /set at least one policy field/);
    assert.deepEqual(
      d.auditEntries().slice(at).map((e) => [e.act, e.key, e.result, e.reason]),
      [
        ['key.disable', 'rel/app@1', 'refused', 'INVALID_ARGUMENT'],
        ['key.schedule-destroy', 'rel/app@1', 'refused', 'INVALID_ARGUMENT'],
        ['key.policy', 'rel/app', 'refused', 'INVALID_ARGUMENT'],
      ],
    );
    assert.deepEqual((await rpc.getKey(admin, { name: 'rel/app' })).key, before, 'nothing changed');
  });

  test("the daemon's reserved keys: the audit key can only be rotated (test/e2e/audit-rotation.test.ts); the trusted-root key takes no policy and its current version cannot be destroyed (test/e2e/trust-root-rotation.test.ts)", async () => {
    const admin = d.client('admin');
    const before = await Promise.all(['sigil/audit', 'sigil/trust-root'].map(async (name) => (await rpc.getKey(admin, { name })).key!));
    const audit = /reserved for the daemon's own use: it signs the audit log's checkpoints and can only be rotated/;
    const root = /it signs the trusted root, the anchor verifiers pin/;
    await rejects(rpc.disableKeyVersion(admin, { key: 'sigil/audit@1', compromised: false, compromiseTime: undefined }), status.FAILED_PRECONDITION, audit);
    await rejects(rpc.scheduleDestroyKeyVersion(admin, { key: 'sigil/trust-root@1', windowSeconds: 0 }), status.FAILED_PRECONDITION, root);
    await rejects(rpc.updateKeyPolicy(admin, { name: 'sigil/trust-root', minSignVersion: 2 }), status.FAILED_PRECONDITION, root);
    await rejects(rpc.updateKeyPolicy(admin, { name: 'sigil/audit', minSignVersion: 1 }), status.FAILED_PRECONDITION, audit);
    const after = await Promise.all(['sigil/audit', 'sigil/trust-root'].map(async (name) => (await rpc.getKey(admin, { name })).key!));
    assert.deepEqual(after, before, 'nothing changed');
  });

  test('auto-rotation on the fake clock, and after a restart', async () => {
    await ok(['key', 'create', 'ci/prov', '--alg', 'P256']);
    const p = await json<{ key: { nextRotationTime: string } }>(['key', 'policy', 'ci/prov', '--auto-rotate', '30d']);
    assert.equal(Date.parse(p.key.nextRotationTime), clock.t + 30 * DAY);
    clock.t += 30 * DAY;
    assert.deepEqual((await d.daemon.scheduler.tick()).rotated, ['ci/prov@2']);
    assert.equal((await rpc.sign(d.client('signer'), { key: 'ci/prov', digest, message: undefined })).keyVersion, 'ci/prov@2');

    // Stop the daemon, let 31 days pass, start it again on the same store: the first tick catches up.
    await d.stopDaemon();
    clock.t += 31 * DAY;
    await d.restart();
    await d.daemon.scheduler.tick();
    const k = d.daemon.keys.getKey('ci/prov');
    assert.equal(k.primaryVersion, 3);
    assert.equal(k.nextRotationAt!.getTime(), clock.t + 30 * DAY);
  });
});
