// `sigild backup` against a running daemon (real SoftHSM token, the daemon's own files), then a restore: a second
// daemon started on the copied store and audit log signs with the keys of the backup, knows nothing made after it,
// and its audit log verifies.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { copyFile, mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { pino } from 'pino';
import { parse, stringify } from 'yaml';
import { missingTools } from '../helpers/hw.ts';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.ts';
import { verifyWithNode } from '../helpers/verify.ts';
import { connect, promised, rpc, type Clients } from '../../src/cli/client.ts';
import type { GetCheckpointResponse } from '../../src/gen/sigil/v1/audit.ts';
import { Algorithm } from '../../src/gen/sigil/v1/signer.ts';
import { parseConfig } from '../../src/config/load.ts';
import { startDaemon, type Daemon } from '../../src/main.ts';
import type { BackupManifest } from '../../src/store/backup.ts';

const run = promisify(execFile);
const skip = missingTools('softhsm', 'softhsm2-util');
const SIGILD = new URL('../../bin/sigild.js', import.meta.url).pathname;
const SIGILCTL = new URL('../../bin/sigilctl.js', import.meta.url).pathname;

const sigild = (args: string[]) =>
  run(process.execPath, [SIGILD, ...args]).then(
    (r) => ({ code: 0, stdout: r.stdout, stderr: r.stderr }),
    (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, stdout: e.stdout, stderr: e.stderr }),
  );

describe('sigild backup, and a daemon restored from it', { skip: skip ?? false }, () => {
  let td: TestDaemon;
  let restored: Daemon | null = null;
  const clients: Clients[] = [];
  const out = () => join(td.dir, 'backup');
  const digest = (s: string) => createHash('sha256').update(s).digest();

  before(async () => {
    td = await startTestDaemon();
    const admin = td.client('admin');
    await rpc.createKey(admin, { name: 'rel/app', algorithm: Algorithm.ECDSA_P256_SHA256, backend: '' });
    for (let i = 0; i < 3; i++) await rpc.sign(td.client('signer'), { key: 'rel/app', digest: digest(`before ${i}`) });
  });
  after(async () => {
    for (const c of clients) c.close();
    await restored?.stop();
    await td?.stop();
  });

  test('backs up the running daemon: store and audit log copied whole and checked, files and hashes in the manifest, what is left out named', async () => {
    // A signed checkpoint to verify the copy against (made when a client asks, or on audit.checkpointInterval).
    await promised<GetCheckpointResponse>((md, cb) => td.client('auditor').audit.getCheckpoint({ treeSize: 0 }, md, cb));
    const r = await sigild(['backup', '--config', td.configFile, '--out', out()]);
    assert.equal(r.code, 0, r.stderr);
    const live = new DatabaseSync(join(td.dir, 'sigil.db'), { readOnly: true });
    const keys = (live.prepare('SELECT count(*) AS n FROM keys').get() as { n: number }).n;
    live.close();
    assert.match(r.stdout, new RegExp(`^backup written to ${out()}: ${keys} keys`));
    assert.equal((await stat(out())).mode & 0o777, 0o700);
    const m = JSON.parse(await readFile(join(out(), 'manifest.json'), 'utf8')) as BackupManifest;
    assert.deepEqual(m.files.map((f) => f.path).sort(), ['audit.db', 'sigil.db']);
    // Only what the manifest lists (no -wal or -shm beside the copies), every file 0600.
    const listed = (await readdir(out())).sort();
    assert.deepEqual(listed, ['audit.db', 'manifest.json', 'sigil.db']);
    for (const f of listed) assert.equal((await stat(join(out(), f))).mode & 0o777, 0o600, f);
    for (const f of m.files) {
      const data = await readFile(join(out(), f.path));
      assert.equal(createHash('sha256').update(data).digest('hex'), f.sha256, f.path);
      assert.equal((await stat(join(out(), f.path))).mode & 0o777, 0o600, f.path);
    }
    assert.equal(m.store.keys, keys);
    assert.ok(m.audit.checkpoint, 'the checkpoint the auditor asked for is in the copy');
    assert.deepEqual(m.audit.verified, { ok: true, from: 0, size: m.audit.checkpoint.size, signedBy: 'sigil/audit@1', failure: null });
    assert.match(r.stdout, new RegExp(`audit log copy verified: its first ${m.audit.checkpoint.size} entries hash to the checkpoint signed by sigil/audit@1`));
    assert.ok(m.audit.entries >= td.daemon.audit.size - 1 && m.audit.entries <= td.daemon.audit.size, `${m.audit.entries} entries copied of ${td.daemon.audit.size}`);
    assert.ok(m.notIncluded.some((x) => /backend softhsm \(pkcs11\): the token's key objects and the PIN file/.test(x)), JSON.stringify(m.notIncluded));
    // The copy is a database SQLite opens as it is (no WAL left behind), with every signature's entry.
    const copy = new DatabaseSync(join(out(), 'audit.db'), { readOnly: true });
    const signs = (copy.prepare('SELECT data FROM entries').all() as Array<{ data: Uint8Array }>).map((e) => JSON.parse(Buffer.from(e.data).toString()) as { act: string; result: string }).filter((e) => e.act === 'sign' && e.result === 'ok');
    copy.close();
    assert.equal(signs.length, 3);
  });

  test('refuses a directory that is not empty, and a config whose store does not exist, changing nothing', async () => {
    const again = await sigild(['backup', '--config', td.configFile, '--out', out()]);
    assert.equal(again.code, 2);
    assert.equal(again.stderr, `sigild: ${out()} is not empty: a backup goes into a new or empty directory\n`);
    const cfg = parse(await readFile(td.configFile, 'utf8')) as { store: { sqlite: { path: string } } };
    cfg.store.sqlite.path = join(td.dir, 'elsewhere', 'sigil.db');
    const wrong = join(td.dir, 'wrong.yaml');
    await writeFile(wrong, stringify(cfg));
    const missing = await sigild(['backup', '--config', wrong, '--out', join(td.dir, 'backup-2')]);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /^sigild: the store .*elsewhere\/sigil\.db does not exist: is this the config the daemon runs with\?\n$/);
  });

  test("copies a tpm backend's key table and pinned storage key (the backend is not opened)", async () => {
    const cfg = parse(await readFile(td.configFile, 'utf8')) as { backends: Record<string, unknown> };
    const stateDir = join(td.dir, 'tpm-state');
    await mkdir(stateDir, { mode: 0o700 });
    const files = { 'keys.json': '{"version":1,"keys":[]}\n', 'srk.json': '{"version":1,"name":"000b","public":"00","pinnedAt":"x"}\n' };
    for (const [f, text] of Object.entries(files)) await writeFile(join(stateDir, f), text, { mode: 0o600 });
    cfg.backends.board = { type: 'tpm', transport: 'swtpm:host=127.0.0.1,port=9', stateDir };
    const withTpm = join(td.dir, 'with-tpm.yaml');
    await writeFile(withTpm, stringify(cfg));
    const dest = join(td.dir, 'backup-tpm');
    const r = await sigild(['backup', '--config', withTpm, '--out', dest]);
    assert.equal(r.code, 0, r.stderr);
    const m = JSON.parse(await readFile(join(dest, 'manifest.json'), 'utf8')) as BackupManifest;
    assert.deepEqual(m.files.map((f) => f.path).filter((f) => f.startsWith('tpm/')).sort(), ['tpm/board/keys.json', 'tpm/board/srk.json']);
    for (const [f, text] of Object.entries(files)) assert.equal(await readFile(join(dest, 'tpm', 'board', f), 'utf8'), text);
  });

  test('a daemon started on the restored files signs with the keys of the backup, knows nothing newer, and its audit log verifies', async () => {
    await rpc.createKey(td.client('admin'), { name: 'rel/late', algorithm: Algorithm.ECDSA_P256_SHA256, backend: '' });
    await td.daemon.stop();
    // Restore: the backup's files in a fresh directory, the config pointed at them (same token, same TLS).
    const dir = join(td.dir, 'restored');
    await mkdir(dir);
    await copyFile(join(out(), 'sigil.db'), join(dir, 'sigil.db'));
    await copyFile(join(out(), 'audit.db'), join(dir, 'audit.db'));
    const cfg = parse(await readFile(td.configFile, 'utf8')) as { store: { sqlite: { path: string } } };
    cfg.store.sqlite.path = join(dir, 'sigil.db');
    const file = join(dir, 'config.yaml');
    await writeFile(file, stringify(cfg));
    restored = await startDaemon(parseConfig(stringify(cfg), file), { log: pino({ level: 'silent' }) });
    const c = (who: 'admin' | 'signer' | 'auditor') => {
      const x = connect({ addr: restored!.address, ca: td.ca, cert: td.ids[who].cert, key: td.ids[who].key });
      clients.push(x);
      return x;
    };
    const names = (await rpc.adminListKeys(c('admin'), { prefix: 'rel/' })).keys.map((k) => k.name);
    assert.deepEqual(names, ['rel/app']);
    const msg = 'after the restore';
    const res = await rpc.sign(c('signer'), { key: 'rel/app', digest: digest(msg) });
    const pk = await rpc.getPublicKey(c('signer'), { key: res.keyVersion });
    assert.ok(verifyWithNode(Algorithm.ECDSA_P256_SHA256, pk.spkiDer, Buffer.from(msg), res.signature));
    const v = await run(process.execPath, [SIGILCTL, 'audit', 'verify'], {
      env: { ...process.env, SIGIL_ADDR: restored.address, SIGIL_CACERT: td.ca, SIGIL_CLIENT_CERT: td.ids.auditor.cert, SIGIL_CLIENT_KEY: td.ids.auditor.key },
    });
    assert.match(v.stdout, /^ok: \d+ entries verified/);
  });

  test('a backup of an audit log someone altered is written, and says so: exit 1, the failure in the manifest', async () => {
    // The original daemon is stopped (the test above); its own audit file gets one entry's bytes changed.
    const live = new DatabaseSync(join(td.dir, 'audit.db'));
    const row = live.prepare('SELECT idx, data FROM entries WHERE idx = 2').get() as { idx: number; data: Uint8Array };
    const data = Buffer.from(row.data);
    data[data.length - 3]! ^= 0x01;
    live.prepare('UPDATE entries SET data = ? WHERE idx = ?').run(data, row.idx);
    live.close();
    const dir = join(td.dir, 'backup-of-altered');
    const r = await sigild(['backup', '--config', td.configFile, '--out', dir]);
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stdout, /AUDIT LOG COPY DOES NOT VERIFY: entry 2 (is altered|was modified)/);
    const m = JSON.parse(await readFile(join(dir, 'manifest.json'), 'utf8')) as BackupManifest;
    assert.equal(m.audit.verified?.ok, false);
  });
});
