import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { promisify } from 'node:util';
import { mkdtemp, rm, writeFile, readFile, stat } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify, parse } from 'yaml';
import { missingTools } from '../helpers/hw.ts';
import { tempToken, type TempToken } from '../helpers/softhsm.ts';
import { createDevCa, issueLeaf } from '../../src/dev/pki.ts';

const run = promisify(execFile);
const skip = missingTools('softhsm', 'softhsm2-util', 'openssl');
const bin = (n: string): string => new URL(`../../bin/${n}.js`, import.meta.url).pathname;

async function waitFor(file: string, child: ChildProcess, ms = 30_000): Promise<string> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (existsSync(file)) {
      const s = (await readFile(file, 'utf8')).trim();
      if (s) return s;
    }
    if (child.exitCode !== null) throw new Error(`exited with ${child.exitCode}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${file}`);
}

function exited(child: ChildProcess): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve({ code: child.exitCode, signal: child.signalCode });
  return new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
}

describe('sigild as a program', { skip: skip ?? false }, () => {
  let dir: string;
  let token: TempToken;
  let goodConfig: Record<string, unknown>;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'sigil-sigild-'));
    token = await tempToken('sigil');
    const ca = await createDevCa('test ca');
    const server = await issueLeaf(ca, { cn: 'sigild', usage: 'server', ips: ['127.0.0.1'] });
    await writeFile(join(dir, 'ca.pem'), ca.cert);
    await writeFile(join(dir, 'server.pem'), server.cert);
    await writeFile(join(dir, 'server-key.pem'), server.key, { mode: 0o600 });
    goodConfig = {
      listen: '127.0.0.1:0',
      tls: { certFile: 'server.pem', keyFile: 'server-key.pem', clientCaFile: 'ca.pem' },
      auth: { roles: { admin: ['cn:admin'], signer: ['cn:ci-*'] } },
      store: { sqlite: { path: 'state/sigil.db' } },
      backends: { hsm: token.config },
      defaultBackend: 'hsm',
    };
  });
  after(async () => {
    await token?.cleanup();
    await rm(dir, { recursive: true, force: true });
  });

  test('config validate accepts a good config (relative paths resolve against the file)', async () => {
    const file = join(dir, 'good.yaml');
    await writeFile(file, stringify(goodConfig));
    const r = await run(process.execPath, [bin('sigild'), 'config', 'validate', file]);
    assert.equal(r.stdout, `${file}: ok\n`);
  });

  test('config validate reports every problem at once and exits 2', async () => {
    const file = join(dir, 'bad.yaml');
    const bad = {
      ...goodConfig,
      listen: 'nowhere',
      colour: 'blue',
      tls: { certFile: 'missing.pem', keyFile: 'server-key.pem', clientCaFile: 'ca.pem' },
      auth: { roles: { admin: ['admin'], signer: [] } },
      backends: { hsm: { ...token.config, pin: '1234' }, dev: { type: 'soft', dir: 'soft' } },
      defaultBackend: 'nope',
      mode: 'production',
    };
    await writeFile(file, stringify(bad));
    const err = await run(process.execPath, [bin('sigild'), 'config', 'validate', file]).then(
      () => assert.fail('validate accepted a bad config'),
      (e: { code: number; stderr: string }) => e,
    );
    assert.equal(err.code, 2);
    for (const want of [
      /listen: must be host:port/,
      /Unrecognized key: "colour"/i,
      /auth\.roles\.admin\.0: must start with cn:/,
      /backends\.hsm: Unrecognized key: "pin"/i,
    ]) {
      assert.match(err.stderr, want);
    }
    assert.doesNotMatch(err.stderr, /1234/, 'a secret put in the config by mistake is not echoed');
  });

  test('config validate reports semantic problems: unknown default backend, soft in production, unreadable files', async () => {
    const file = join(dir, 'semantic.yaml');
    await writeFile(file, stringify({ ...goodConfig, mode: 'production', tls: { certFile: 'missing.pem', keyFile: 'server-key.pem', clientCaFile: 'ca.pem' }, backends: { hsm: token.config, dev: { type: 'soft', dir: 'soft' } }, defaultBackend: 'nope' }));
    const err = await run(process.execPath, [bin('sigild'), 'config', 'validate', file]).then(
      () => assert.fail('accepted'),
      (e: { code: number; stderr: string }) => e,
    );
    assert.equal(err.code, 2);
    assert.match(err.stderr, /defaultBackend: names no configured backend \(have: hsm, dev\)/);
    assert.match(err.stderr, /backends\.dev\.type: the soft backend is for tests and development; production mode refuses it/);
    assert.match(err.stderr, /tls\.certFile: cannot read .*missing\.pem/);
  });

  test('config validate refuses a tls key that is not its certificate\'s, without echoing the key', async () => {
    const other = await issueLeaf(await createDevCa('another ca'), { cn: 'other', usage: 'server', ips: ['127.0.0.1'] });
    await writeFile(join(dir, 'other-key.pem'), other.key, { mode: 0o600 });
    const file = join(dir, 'mismatch.yaml');
    await writeFile(file, stringify({ ...goodConfig, tls: { certFile: 'server.pem', keyFile: 'other-key.pem', clientCaFile: 'ca.pem' } }));
    const err = await run(process.execPath, [bin('sigild'), 'config', 'validate', file]).then(
      () => assert.fail('accepted'),
      (e: { code: number; stderr: string }) => e,
    );
    assert.equal(err.code, 2);
    assert.match(err.stderr, /tls\.keyFile: .*other-key\.pem is not the private key of .*server\.pem/);
    assert.doesNotMatch(err.stderr, /PRIVATE KEY/);
  });

  test('serve starts, answers health, and stops cleanly on SIGTERM', async () => {
    const file = join(dir, 'serve.yaml');
    await writeFile(file, stringify({ ...goodConfig, metrics: { listen: '127.0.0.1:0' } }));
    const child = spawn(process.execPath, [bin('sigild'), 'serve', '--config', file], { stdio: ['ignore', 'ignore', 'pipe'] });
    let log = '';
    child.stderr!.on('data', (b: Buffer) => (log += b.toString()));
    const end = Date.now() + 30_000;
    while (!/sigild serving/.test(log) && Date.now() < end && child.exitCode === null) await new Promise((r) => setTimeout(r, 50));
    const line = JSON.parse(log.split('\n').find((l) => l.includes('sigild serving'))!) as { address: string; metrics: string };
    assert.match(line.address, /^127\.0\.0\.1:\d+$/);
    const metrics = await (await fetch(`http://${line.metrics}/metrics`)).text();
    assert.match(metrics, /sigil_process_resident_memory_bytes/);
    assert.ok((await stat(join(dir, 'state/sigil.db'))).isFile(), 'the store was created');
    child.kill('SIGTERM');
    const { code } = await exited(child);
    assert.equal(code, 0);
    assert.match(log, /sigild stopped/);
  });

  test('a wrong PIN stops the start with a clear error that does not contain the PIN', async () => {
    const pinFile = join(dir, 'wrong-pin');
    await writeFile(pinFile, '99999999\n', { mode: 0o600 });
    const file = join(dir, 'wrongpin.yaml');
    await writeFile(file, stringify({ ...goodConfig, backends: { hsm: { ...token.config, pinFile } } }));
    const r = await run(process.execPath, [bin('sigild'), 'serve', '--config', file]).then(
      () => assert.fail('started with a wrong pin'),
      (e: { code: number; stderr: string }) => e,
    );
    assert.equal(r.code, 1);
    assert.match(r.stderr, /CKR_PIN_INCORRECT/);
    assert.doesNotMatch(r.stderr, /99999999/);
  });

  test('dev prepares a data directory, writes client credentials and sigild.addr, and serves', async () => {
    const data = join(dir, 'dev');
    const child = spawn(process.execPath, [bin('sigild'), 'dev', '--data-dir', data, '--listen', '127.0.0.1:0'], { stdio: ['ignore', 'ignore', 'pipe'] });
    let log = '';
    child.stderr!.on('data', (b: Buffer) => (log += b.toString()));
    try {
      const addr = await waitFor(join(data, 'sigild.addr'), child);
      assert.match(addr, /^127\.0\.0\.1:\d+$/);
      for (const f of ['client/ca.pem', 'client/admin.pem', 'client/admin-key.pem', 'config.yaml', 'sigil.db']) assert.ok(existsSync(join(data, f)), f);
      assert.equal((await stat(join(data, 'client/admin-key.pem'))).mode & 0o777, 0o600);
      assert.equal((await stat(data)).mode & 0o777, 0o700);
      const cfg = parse(await readFile(join(data, 'config.yaml'), 'utf8')) as { mode: string; backends: { softhsm: { type: string } } };
      assert.equal(cfg.mode, 'development');
      assert.equal(cfg.backends.softhsm.type, 'pkcs11');
      const env = { ...process.env, SIGIL_ADDR: addr, SIGIL_CACERT: join(data, 'client/ca.pem'), SIGIL_CLIENT_CERT: join(data, 'client/admin.pem'), SIGIL_CLIENT_KEY: join(data, 'client/admin-key.pem') };
      const created = await run(process.execPath, [bin('sigilctl'), 'key', 'create', 'dev/demo', '--alg', 'ed25519'], { env });
      assert.match(created.stdout, /created dev\/demo {2}ED25519/);
      assert.match(log, /export SIGIL_ADDR=/);
    } finally {
      child.kill('SIGINT');
      await exited(child);
    }
    assert.ok(!existsSync(join(data, 'sigild.addr')), 'the address file is removed on stop');
  });
});
