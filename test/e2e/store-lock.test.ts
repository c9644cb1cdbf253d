// One daemon per store: a second `sigild serve` on a served store, and a second `sigild dev` on a served data
// directory, are refused with one line naming the store and the pid holding it, having written nothing; the first
// keeps serving and signing. The lock dies with its process: after a SIGKILL the next daemon starts.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { promisify } from 'node:util';
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { parse, stringify } from 'yaml';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, createServer, type AddressInfo } from 'node:net';
import { missingTools } from '../helpers/hw.ts';
import { assertCode } from '../helpers/assert.ts';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.ts';
import { rpc } from '../../src/cli/client.ts';
import { Algorithm } from '../../src/gen/sigil/v1/signer.ts';
import { parseConfig } from '../../src/config/load.ts';
import { startDaemon } from '../../src/main.ts';
import { silentLogger } from '../../src/log.ts';

const run = promisify(execFile);
const SIGILD = new URL('../../bin/sigild.js', import.meta.url).pathname;
const skip = missingTools('softhsm', 'softhsm2-util');
const skipDev = missingTools('softhsm', 'softhsm2-util', 'openssl', 'swtpm', 'swtpm_setup');

const sigild = (args: string[]) =>
  run(process.execPath, [SIGILD, ...args], { timeout: 60_000 }).then(
    (r) => ({ code: 0, stdout: r.stdout, stderr: r.stderr }),
    (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, stdout: e.stdout, stderr: e.stderr }),
  );

/** Starts `sigild ARGS` in the background, collecting its standard error. */
function background(args: string[]): { child: ChildProcess; stderr: () => string } {
  const child = spawn(process.execPath, [SIGILD, ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  child.stderr!.on('data', (b: Buffer) => (err += b.toString()));
  return { child, stderr: () => err };
}

/** Resolves once `ready()` holds; rejects when the child exits first or the deadline passes. */
async function until(ready: () => boolean, child: ChildProcess, what: string, ms = 60_000): Promise<void> {
  const end = Date.now() + ms;
  while (!ready()) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`exited (${child.exitCode ?? child.signalCode}) before ${what}`);
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function exited(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => child.once('exit', () => resolve()));
}

/** Every file under `dir` with its size, mtime and SHA-256 (those `skip` names left out). */
async function snapshot(dir: string, skip: (name: string) => boolean = () => false): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const e of await readdir(dir, { recursive: true, withFileTypes: true })) {
    if (!e.isFile() || skip(e.name)) continue;
    const p = join(e.parentPath, e.name);
    const s = await stat(p);
    out[p.slice(dir.length + 1)] = `${s.size} ${s.mtimeMs} ${s.mode.toString(8)} ${createHash('sha256').update(await readFile(p)).digest('hex')}`;
  }
  return out;
}

describe('one daemon per store: sigild serve', { skip: skip ?? false }, () => {
  let td: TestDaemon;
  const digest = (s: string) => createHash('sha256').update(s).digest();

  before(async () => {
    td = await startTestDaemon();
    await rpc.createKey(td.client('admin'), { name: 'rel/app', algorithm: Algorithm.ECDSA_P256_SHA256, backend: '' });
  });
  after(async () => {
    await td?.stop();
  });

  test('a second sigild serve on the same config is refused in one line naming the store and the pid; the first keeps serving and signing', async () => {
    const store = join(td.dir, 'sigil.db');
    const files = (await readdir(td.dir)).sort();
    const entries = td.daemon.audit.size;
    const r = await sigild(['serve', '--config', td.configFile]);
    assert.equal(r.code, 1);
    // The first daemon runs in this process.
    assert.equal(r.stderr, `sigild: the store ${store} is in use by another sigild (pid ${process.pid}): stop it first\n`);
    // Nothing written: no new file, no audit entry from the refused one.
    assert.deepEqual((await readdir(td.dir)).sort(), files);
    assert.equal(td.daemon.audit.size, entries);
    // The first signs, and its audit writes go on.
    const s = await rpc.sign(td.client('signer'), { key: 'rel/app', digest: digest('after the refusal') });
    assert.equal(s.keyVersion, 'rel/app@1');
    assert.equal(td.daemon.audit.size, entries + 1);
    assert.equal(td.daemon.audit.healthy, true);
    assert.ok(!td.logs().some((l) => /audit log write failed/.test(String(l.msg))), 'no audit write failure');
  });

  test('in one process too: a second startDaemon on a served store is refused, and the first goes on', async () => {
    const entries = td.daemon.audit.size;
    await assertCode(startDaemon(parseConfig(await readFile(td.configFile, 'utf8'), td.configFile), { log: silentLogger() }), 'FAILED_PRECONDITION', new RegExp(`is in use by another sigild \\(pid ${process.pid}\\): stop it first$`));
    await rpc.sign(td.client('signer'), { key: 'rel/app', digest: digest('after the second start') });
    assert.equal(td.daemon.audit.size, entries + 1);
  });

  test('the lock dies with its process: after SIGKILL of a serving sigild the next one starts', async () => {
    await td.stopDaemon();
    // The test config logs nothing; this one says when it serves.
    const cfg = join(td.dir, 'serve.yaml');
    await writeFile(cfg, stringify({ ...(parse(await readFile(td.configFile, 'utf8')) as object), log: { level: 'info' } }));
    const first = background(['serve', '--config', cfg]);
    try {
      await until(() => /sigild serving/.test(first.stderr()), first.child, 'the first serves');
      // While it serves, this process is refused, naming the child.
      await assertCode(td.restart(), 'FAILED_PRECONDITION', new RegExp(`is in use by another sigild \\(pid ${first.child.pid}\\)`));
      first.child.kill('SIGKILL');
      await exited(first.child);
    } finally {
      first.child.kill('SIGKILL');
    }
    // No clean-up by hand: the kernel dropped the lock with the process.
    const d = await td.restart();
    const s = await rpc.sign(td.client('signer'), { key: 'rel/app', digest: digest('after the crash') });
    assert.equal(s.keyVersion, 'rel/app@1');
    assert.equal(d.audit.healthy, true);
  });

  test('a start that fails at its last step (the metrics port taken) closes what it opened: no gRPC listener left, the next start works', async () => {
    await td.stopDaemon();
    const busy = createServer();
    await new Promise<void>((res) => busy.listen(0, '127.0.0.1', res));
    const grpcPort = await freePort();
    try {
      const base = parse(await readFile(td.configFile, 'utf8')) as Record<string, unknown>;
      const cfg = parseConfig(stringify({ ...base, listen: `127.0.0.1:${grpcPort}`, metrics: { listen: `127.0.0.1:${(busy.address() as AddressInfo).port}` } }), td.configFile);
      await assert.rejects(startDaemon(cfg, { log: silentLogger() }), /EADDRINUSE/);
      const refused = await new Promise<boolean>((res) => {
        const c = connect(grpcPort, '127.0.0.1');
        c.once('connect', () => (c.destroy(), res(false)));
        c.once('error', () => res(true));
      });
      assert.ok(refused, 'the gRPC port of the failed start is closed');
    } finally {
      busy.close();
    }
    await td.restart();
    assert.equal((await rpc.sign(td.client('signer'), { key: 'rel/app', digest: digest('after a failed start') })).keyVersion, 'rel/app@1');
  });
});

/** A port free now on 127.0.0.1 (bound to 0, then closed). */
async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((res) => s.listen(0, '127.0.0.1', res));
  const port = (s.address() as AddressInfo).port;
  await new Promise<void>((res) => s.close(() => res()));
  return port;
}

describe('one daemon per store: sigild dev', { skip: skipDev ?? false }, () => {
  let dir: string;
  const running: ChildProcess[] = [];

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'sigil-lock-dev-'));
  });
  after(async () => {
    for (const c of running) {
      c.kill('SIGINT');
      await exited(c);
    }
    await rm(dir, { recursive: true, force: true });
  });

  test('a second sigild dev on a served data directory is refused and changes nothing there; after SIGKILL of the first, a new one serves', async () => {
    const data = join(dir, 'dev');
    const log = join(dir, 'first.log');
    const first = background(['dev', '--data-dir', data, '--log-file', log]);
    running.push(first.child);
    const addrFile = join(data, 'sigild.addr');
    await until(() => existsSync(addrFile), first.child, 'sigild.addr');
    // The daemon's own databases change as it runs; everything else must not.
    const sqlite = (n: string): boolean => /\.db(-wal|-shm|-journal)?$/.test(n);
    const before = await snapshot(data, sqlite);
    assert.ok(before['config.yaml'] && before['client/ca.pem'] && before['sigild.addr'], Object.keys(before).join(' '));
    const logBefore = await readFile(log, 'utf8');
    const r = await sigild(['dev', '--data-dir', data, '--log-file', log]);
    assert.equal(r.code, 1);
    assert.equal(r.stderr, `sigild: the store ${join(data, 'sigil.db')} is in use by another sigild (pid ${first.child.pid}): stop it first\n`);
    assert.deepEqual(await snapshot(data, sqlite), before);
    assert.equal(await readFile(log, 'utf8'), logBefore, 'the first one\'s log is untouched');

    first.child.kill('SIGKILL');
    await exited(first.child);
    // Left behind by the killed one: its address file (removed by the next start) and its swtpm (stopped by it).
    assert.ok(existsSync(addrFile));
    const next = background(['dev', '--data-dir', data]);
    running.push(next.child);
    await until(() => /sigild dev: serving on /.test(next.stderr()), next.child, 'the new one serves').catch((err: Error) => assert.fail(`${err.message}: ${next.stderr()}`));
    const address = /sigild dev: serving on (\S+)/.exec(next.stderr())![1];
    assert.equal((await readFile(addrFile, 'utf8')).trim(), address);
  });
});
