import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { status as Status, type ServiceError } from '@grpc/grpc-js';
import { missingTools } from '../helpers/hw.ts';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.ts';
import { rpc, type Clients } from '../../src/cli/client.ts';
import { Algorithm } from '../../src/gen/sigil/v1/signer.ts';
import { leafHash } from '../../src/audit/merkle.ts';

const run = promisify(execFile);
const skip = missingTools('softhsm', 'softhsm2-util', 'openssl');
const SIGILCTL = new URL('../../bin/sigilctl.js', import.meta.url).pathname;

describe('the daemon with audit.fullCheckAtStartMax: 0 (always the fast start)', { skip: skip ?? false }, () => {
  let td: TestDaemon;
  const client = (who: 'signer' | 'admin' | 'auditor'): Clients => td.client(who);
  const verify = async (): Promise<{ code: number; stderr: string; report: { ok: boolean; size: number } }> => {
    const env = { ...process.env, SIGIL_ADDR: td.daemon.address, SIGIL_CACERT: td.ca, SIGIL_CLIENT_CERT: td.ids.auditor.cert, SIGIL_CLIENT_KEY: td.ids.auditor.key };
    try {
      const r = await run(process.execPath, [SIGILCTL, 'audit', 'verify', '-o', 'json'], { env, maxBuffer: 16 * 1024 * 1024 });
      return { code: 0, stderr: r.stderr, report: JSON.parse(r.stdout) as { ok: boolean; size: number } };
    } catch (err) {
      const e = err as { stdout: string; stderr: string; code: number };
      return { code: e.code, stderr: e.stderr, report: JSON.parse(e.stdout || '{}') as { ok: boolean; size: number } };
    }
  };
  const signN = async (n: number, from = 0) => {
    const c = client('signer');
    for (let i = 0; i < n; i++) await rpc.sign(c, { key: 'release/app', digest: createHash('sha256').update(`artifact ${from + i}`).digest() });
  };
  const scrape = async () => (await fetch(`http://${td.daemon.metricsAddress}/metrics`)).text();

  before(async () => {
    td = await startTestDaemon({ extraConfig: { audit: { fullCheckAtStartMax: 0 } } });
    await rpc.createKey(client('admin'), { name: 'release/app', algorithm: Algorithm.ECDSA_P256_SHA256, backend: '' });
  });
  after(async () => {
    await td?.stop();
  });

  test('starts on its latest checkpoint, checks the rest in the background, signs, and sigilctl audit verify passes', async () => {
    await signN(40);
    const cp = await td.daemon.audit.latestCheckpoint();
    assert.ok(cp.size >= 40);
    await signN(3, 40);
    const size = td.daemon.audit.size;
    await td.stopDaemon();
    const db = new DatabaseSync(join(td.dir, 'audit.db'));
    const latest = () => (db.prepare('SELECT MAX(size) AS n FROM checkpoints').get() as { n: number }).n;
    assert.equal(latest(), size, 'a clean stop signs a checkpoint over everything');
    // As after a crash: the last entries are covered by no checkpoint.
    db.prepare('DELETE FROM checkpoints WHERE size > ?').run(cp.size);
    db.close();
    await td.restart();
    assert.equal(td.daemon.audit.size, size, 'the entries after the checkpoint were appended');
    assert.equal(td.daemon.audit.fullCheck.size, cp.size, 'opened on the latest checkpoint');
    const done = await td.daemon.audit.fullCheckDone();
    assert.equal(done.state, 'clean');
    const metrics = await scrape();
    assert.match(metrics, new RegExp(`^sigil_audit_verified_entries ${cp.size}$`, 'm'));
    assert.match(metrics, /^sigil_audit_full_check_state\{state="clean"\} 1$/m);
    assert.match(metrics, /^sigil_audit_log_up 1$/m);
    await signN(5, 100);
    const v = await verify();
    assert.equal(v.code, 0, v.stderr);
    assert.equal(v.report.ok, true);
    assert.ok(v.report.size >= size + 5);
  });

  test('an old entry rewritten while stopped: the daemon starts, the background check fails the log, and Sign is refused until restart', async () => {
    const cp = await td.daemon.audit.latestCheckpoint();
    assert.ok(cp.size >= 32, 'entry 3 lies under a stored subtree the start does not read');
    await td.stopDaemon();
    // A forged entry with its leaf hash to match: only the tree's root, against the checkpoint, shows it.
    const db = new DatabaseSync(join(td.dir, 'audit.db'));
    const original = Buffer.from((db.prepare('SELECT data FROM entries WHERE idx = 3').get() as { data: Uint8Array }).data);
    db.prepare('UPDATE entries SET data = ?, leaf = ? WHERE idx = 3').run(Buffer.from('forged'), leafHash(Buffer.from('forged')));
    db.close();
    await td.restart();
    const done = await td.daemon.audit.fullCheckDone();
    assert.equal(done.state, 'tampered');
    assert.match(done.finding ?? '', /do not hash to the root of the checkpoint/);
    const c = client('signer');
    for (let i = 0; i < 2; i++) {
      await assert.rejects(rpc.sign(c, { key: 'release/app', digest: Buffer.alloc(32, i) }), (e: ServiceError) => e.code === Status.UNAVAILABLE);
    }
    const metrics = await scrape();
    assert.match(metrics, /^sigil_audit_log_up 0$/m);
    assert.match(metrics, /^sigil_audit_full_check_state\{state="tampered"\} 1$/m);
    await td.stopDaemon();
    // Restored: the next start is clean again, so `after` finds a running td.daemon.
    const fix = new DatabaseSync(join(td.dir, 'audit.db'));
    fix.prepare('UPDATE entries SET data = ?, leaf = ? WHERE idx = 3').run(original, leafHash(original));
    fix.close();
    await td.restart();
    assert.equal((await td.daemon.audit.fullCheckDone()).state, 'clean');
  });

  test("an old entry's bytes rewritten with its leaf hash left alone: the background check names the entry, and so does sigilctl audit verify", async () => {
    await td.stopDaemon();
    const db = new DatabaseSync(join(td.dir, 'audit.db'));
    const row = db.prepare('SELECT data FROM entries WHERE idx = 3').get() as { data: Uint8Array };
    const pristine = Buffer.from(row.data);
    const data = Buffer.from(pristine);
    data[data.indexOf('"act":"') + 7] ^= 0x01;
    db.prepare('UPDATE entries SET data = ? WHERE idx = 3').run(data);
    db.close();
    await td.restart();
    const done = await td.daemon.audit.fullCheckDone();
    assert.equal(done.state, 'tampered');
    assert.equal(done.finding, 'the bytes of entry 3 do not hash to its stored leaf hash');
    const v = await verify();
    assert.equal(v.code, 1, 'the auditor sees it too');
    assert.match(v.stderr + JSON.stringify(v.report), /entry-modified/);
    await td.stopDaemon();
    const fix = new DatabaseSync(join(td.dir, 'audit.db'));
    fix.prepare('UPDATE entries SET data = ? WHERE idx = 3').run(pristine);
    fix.close();
    await td.restart();
    assert.equal((await td.daemon.audit.fullCheckDone()).state, 'clean');
  });
});
