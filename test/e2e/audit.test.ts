import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { copyFileSync, rmSync, writeFileSync } from 'node:fs';
import { generateKeyPairSync as genKeys, createHash } from 'node:crypto';
import { join } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { status as Status, type ServiceError } from '@grpc/grpc-js';
import { missingTools } from '../helpers/hw.ts';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.ts';
import { promised, rpc, type Clients } from '../../src/cli/client.ts';
import { Algorithm } from '../../src/gen/sigil/v1/signer.ts';
import type { ListEntriesResponse, GetCheckpointResponse } from '../../src/gen/sigil/v1/audit.ts';

const run = promisify(execFile);
const skip = missingTools('softhsm', 'softhsm2-util', 'openssl');
const SIGILCTL = new URL('../../bin/sigilctl.js', import.meta.url).pathname;

// Every call moves the clock 1 ms on, so no two entries share a time and a reordering shows in the times.
let tick = 0;
const clock = { now: () => new Date(Date.now() + ++tick) };

describe('the audit log end to end', { skip: skip ?? false }, () => {
  let td: TestDaemon;
  let dbPath: string;
  let saved: string;
  let savedSize: number;
  const client = (who: keyof TestDaemon['ids']): Clients => td.client(who);
  const ctl = async (args: string[], who: 'auditor' | 'signer' | 'admin' = 'auditor'): Promise<{ stdout: string; stderr: string; code: number }> => {
    try {
      const r = await run(process.execPath, [SIGILCTL, ...args], {
        env: { ...process.env, SIGIL_ADDR: td.daemon.address, SIGIL_CACERT: td.ca, SIGIL_CLIENT_CERT: td.ids[who].cert, SIGIL_CLIENT_KEY: td.ids[who].key },
        maxBuffer: 16 * 1024 * 1024,
      });
      return { ...r, code: 0 };
    } catch (err) {
      const e = err as { stdout: string; stderr: string; code: number };
      return { stdout: e.stdout, stderr: e.stderr, code: e.code };
    }
  };
  const verify = async (...extra: string[]) => {
    const r = await ctl(['audit', 'verify', '-o', 'json', ...extra]);
    return { code: r.code, stderr: r.stderr, report: JSON.parse(r.stdout) as { ok: boolean; size: number; failure: { check: string; index?: number; message: string } | null; openIntents: Array<{ act: string }> } };
  };
  const signN = async (n: number) => {
    const c = client('signer');
    for (let i = 0; i < n; i++) await rpc.sign(c, { key: 'release/app', digest: createHash('sha256').update(`artifact ${i}`).digest() });
  };

  before(async () => {
    td = await startTestDaemon({ clock });
    dbPath = join(td.dir, 'audit.db');
    await rpc.createKey(client('admin'), { name: 'release/app', algorithm: Algorithm.ECDSA_P256_SHA256, backend: '' });
  });
  after(async () => {
    await td?.stop();
  });

  test('signs, refusals and key creation land in the log; verify passes; auditors read, signers do not', async () => {
    await signN(20);
    const nobody = client('nobody');
    await assert.rejects(rpc.sign(nobody, { key: 'release/app', digest: Buffer.alloc(32) }), (e: ServiceError) => e.code === Status.PERMISSION_DENIED);
    await assert.rejects(rpc.sign(client('signer'), { key: 'sigil/audit', message: Buffer.from('forged checkpoint') }), (e: ServiceError) => e.code === Status.PERMISSION_DENIED);

    const page = await promised<ListEntriesResponse>((md, cb) => client('auditor').audit.listEntries({ from: 0, count: 1000 }, md, cb));
    const entries = page.entries.map((e) => JSON.parse(e.data.toString()) as Record<string, unknown>);
    assert.ok(entries.some((e) => e.act === 'key.create' && e.key === 'sigil/audit@1' && e.who === 'sigild'), 'the audit key creation');
    const created = entries.find((e) => e.act === 'key.create' && e.key === 'release/app@1' && e.who === 'CN=test-admin' && e.result === 'ok');
    assert.ok(created, 'the admin act');
    // Written ahead: its intent comes first, with the same intent id.
    const intent = (created.detail as { intent?: string }).intent;
    assert.ok(intent);
    const started = entries.filter((e) => e.result === 'started' && (e.detail as { intent?: string } | undefined)?.intent === intent);
    assert.equal(started.length, 1);
    assert.deepEqual([started[0]!.act, started[0]!.key, started[0]!.who], ['key.create', 'release/app', 'CN=test-admin']);
    assert.ok(entries.indexOf(started[0]!) < entries.indexOf(created));
    const signs = entries.filter((e) => e.act === 'sign' && e.result === 'ok');
    assert.equal(signs.length, 20);
    assert.equal(signs[0]!.digest, createHash('sha256').update('artifact 0').digest('hex'));
    assert.equal(signs[0]!.key, 'release/app@1');
    assert.equal(signs[0]!.who, 'CN=ci-signer-1');
    assert.ok(entries.some((e) => e.act === 'request.refused' && e.who === 'CN=nobody' && e.reason === 'PERMISSION_DENIED'));
    assert.ok(entries.some((e) => e.act === 'sign' && e.result === 'refused' && e.key === 'sigil/audit' && e.reason === 'PERMISSION_DENIED'));

    await assert.rejects(
      promised<GetCheckpointResponse>((md, cb) => client('signer').audit.getCheckpoint({ treeSize: 0 }, md, cb)),
      (e: ServiceError) => e.code === Status.PERMISSION_DENIED,
    );
    const admin = await promised<GetCheckpointResponse>((md, cb) => client('admin').audit.getCheckpoint({ treeSize: 0 }, md, cb));
    assert.ok(admin.treeSize >= 24);

    const v = await verify();
    assert.equal(v.code, 0, v.stderr);
    assert.ok(v.report.ok);
    assert.deepEqual(v.report.openIntents, [], 'every act written ahead has its outcome');
    assert.match(v.stderr, /fetched from the server/);
    const denied = await ctl(['audit', 'verify'], 'signer');
    assert.equal(denied.code, 1);
    assert.match(denied.stderr, /PERMISSION_DENIED/);
  });

  test('a saved checkpoint, an inclusion proof, and a pinned key (the right one passes, a wrong one fails)', async () => {
    saved = join(td.dir, 'saved.checkpoint');
    const cp = await ctl(['audit', 'checkpoint', '--out', saved, '-o', 'json']);
    assert.equal(cp.code, 0, cp.stderr);
    savedSize = (JSON.parse(cp.stdout) as { treeSize: number }).treeSize;
    await signN(10);
    const proof = await ctl(['audit', 'proof', '--index', '3', '-o', 'json']);
    assert.equal(proof.code, 0, proof.stderr);
    assert.equal((JSON.parse(proof.stdout) as { ok: boolean }).ok, true);

    const key = await promised<{ pem: string }>((md, cb) => client('auditor').audit.getAuditKey({}, md, cb));
    const pinned = join(td.dir, 'audit.pub.pem');
    writeFileSync(pinned, key.pem);
    const ok = await verify('--checkpoint', saved, '--key', pinned);
    assert.equal(ok.code, 0, JSON.stringify(ok.report));
    assert.equal(ok.report.size, savedSize + 10);
    const wrong = join(td.dir, 'wrong.pub.pem');
    writeFileSync(wrong, genKeys('ed25519').publicKey.export({ format: 'pem', type: 'spki' }));
    const bad = await verify('--key', wrong);
    assert.equal(bad.code, 1);
    assert.equal(bad.report.failure?.check, 'checkpoint-signature');
  });

  test('fail closed: while the audit file cannot be written, Sign returns UNAVAILABLE and no signature', async () => {
    const locker = new DatabaseSync(dbPath);
    try {
      locker.exec('BEGIN IMMEDIATE');
      const c = client('signer');
      await assert.rejects(rpc.sign(c, { key: 'release/app', digest: Buffer.alloc(32, 1) }), (e: ServiceError) => e.code === Status.UNAVAILABLE);
      // Known broken: refused before the backend signs.
      const batch = await rpc.signBatch(c, { requests: [{ key: 'release/app', digest: Buffer.alloc(32, 2) }] });
      assert.equal(batch.results[0]!.signature, undefined);
      assert.equal(batch.results[0]!.error?.code, Status.UNAVAILABLE);
      locker.exec('COMMIT');
    } finally {
      locker.close();
    }
    // The next write heals the log: the refusal that probed it is recorded, and signing works again.
    await signN(1).catch(() => undefined);
    await signN(1);
    const v = await verify('--checkpoint', saved);
    assert.equal(v.code, 0, JSON.stringify(v.report));
  });

  describe('tampering with the stopped daemon\'s audit file', () => {
    let pristine: string;
    before(async () => {
      await td.stopDaemon();
      pristine = join(td.dir, 'pristine.db');
      copyFileSync(dbPath, pristine);
    });
    const tampered = async (fn: (db: DatabaseSync) => void) => {
      rmSync(`${dbPath}-wal`, { force: true });
      rmSync(`${dbPath}-shm`, { force: true });
      copyFileSync(pristine, dbPath);
      const db = new DatabaseSync(dbPath);
      fn(db);
      db.close();
    };
    const dropCheckpoints = (db: DatabaseSync) => db.exec('DELETE FROM checkpoints');
    const withDaemon = async (fn: () => Promise<void>) => {
      await td.restart();
      try {
        await fn();
      } finally {
        await td.stopDaemon();
      }
    };

    test('a flipped byte in an entry, its leaf hash left alone: the daemon refuses to start, naming the entry', async () => {
      await tampered((db) => {
        const row = db.prepare('SELECT data FROM entries WHERE idx = 5').get() as { data: Uint8Array };
        const data = Buffer.from(row.data);
        const at = data.indexOf('"digest":"') + 10;
        data[at] = data[at] === 0x30 ? 0x31 : 0x30;
        db.prepare('UPDATE entries SET data = ? WHERE idx = 5').run(data);
      });
      await assert.rejects(td.restart(), /audit log tampered: the bytes of entry 5 do not hash to its stored leaf hash/);
    });

    test('a flipped byte with its leaf hash recomputed: the daemon refuses to start; with the checkpoints dropped too, the saved checkpoint catches it', async () => {
      const flip = (db: DatabaseSync) => {
        const row = db.prepare('SELECT data FROM entries WHERE idx = 5').get() as { data: Uint8Array };
        const data = Buffer.from(row.data);
        const at = data.indexOf('"digest":"') + 10;
        data[at] = data[at] === 0x30 ? 0x31 : 0x30;
        const leaf = createHash('sha256').update(Buffer.from([0])).update(data).digest();
        db.prepare('UPDATE entries SET data = ?, leaf = ? WHERE idx = 5').run(data, leaf);
      };
      await tampered(flip);
      await assert.rejects(td.restart(), /audit log tampered: the stored entries do not hash to the root of the checkpoint/);
      await tampered((db) => {
        flip(db);
        dropCheckpoints(db);
      });
      await withDaemon(async () => {
        const v = await verify('--checkpoint', saved);
        assert.equal(v.code, 1);
        assert.equal(v.report.failure?.check, 'rewritten');
        assert.equal(v.report.failure?.index, savedSize - 1);
      });
    });

    test('a removed entry: the daemon refuses to start; renumbered with checkpoints dropped, the saved checkpoint catches it', async () => {
      await tampered((db) => db.exec('DELETE FROM entries WHERE idx = 7'));
      await assert.rejects(td.restart(), /audit log tampered: entry 7 is missing/);
      await tampered((db) => {
        db.exec('DELETE FROM entries WHERE idx = 7');
        db.exec('UPDATE entries SET idx = -idx WHERE idx > 7; UPDATE entries SET idx = -idx - 1 WHERE idx < 0');
        dropCheckpoints(db);
      });
      await withDaemon(async () => {
        const v = await verify('--checkpoint', saved);
        assert.equal(v.code, 1);
        assert.equal(v.report.failure?.check, 'rewritten');
      });
    });

    test('two swapped entries: verify names the reordered entry even without a saved checkpoint', async () => {
      await tampered((db) => {
        db.exec('UPDATE entries SET idx = -1 WHERE idx = 3; UPDATE entries SET idx = 3 WHERE idx = 4; UPDATE entries SET idx = 4 WHERE idx = -1');
        dropCheckpoints(db);
      });
      await withDaemon(async () => {
        const v = await verify();
        assert.equal(v.code, 1);
        assert.deepEqual([v.report.failure?.check, v.report.failure?.index], ['entry-reordered', 4]);
        const s = await verify('--checkpoint', saved);
        assert.equal(s.code, 1);
      });
    });

    test('a tail truncated below the saved checkpoint', async () => {
      await tampered((db) => {
        db.prepare('DELETE FROM entries WHERE idx >= ?').run(savedSize - 3);
        db.prepare('DELETE FROM checkpoints WHERE size > ?').run(savedSize - 3);
      });
      await withDaemon(async () => {
        const v = await verify('--checkpoint', saved);
        assert.equal(v.code, 1);
        assert.deepEqual([v.report.failure?.check, v.report.failure?.index], ['truncated', savedSize - 3]);
      });
    });

    test('a tail truncated and rewritten past the saved size, with a new checkpoint signed over it', async () => {
      await tampered((db) => {
        db.prepare('DELETE FROM entries WHERE idx >= ?').run(savedSize - 3);
        db.prepare('DELETE FROM checkpoints WHERE size > ?').run(savedSize - 3);
      });
      await withDaemon(async () => {
        await signN(10);
        const plain = await verify();
        assert.equal(plain.code, 0, 'without a saved checkpoint a consistent rewrite cannot be told apart');
        const v = await verify('--checkpoint', saved);
        assert.equal(v.code, 1);
        assert.deepEqual([v.report.failure?.check, v.report.failure?.index], ['rewritten', savedSize - 1]);
        assert.ok(v.report.size > savedSize);
      });
    });

    test('the untouched file still opens and verifies', async () => {
      await tampered(() => {});
      await withDaemon(async () => {
        const v = await verify('--checkpoint', saved);
        assert.equal(v.code, 0, JSON.stringify(v.report));
      });
      // Leave a running daemon for `after`.
      await td.restart();
    });
  });
});
