import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { promisify } from 'node:util';
import { mkdir, mkdtemp, rm, writeFile, readFile, stat } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify, parse } from 'yaml';
import { missingTools } from '../helpers/hw.ts';
import { tempToken, type TempToken } from '../helpers/softhsm.ts';
import { createDevCa, issueLeaf } from '../../src/dev/pki.ts';
import { loadConfig } from '../../src/config/load.ts';
import { startDaemon } from '../../src/main.ts';
import { silentLogger } from '../../src/log.ts';

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
    // Which backend, which token and which PIN file: the PKCS#11 error alone says none of them.
    assert.equal(r.stderr.split('\n').filter((l) => l.startsWith('sigild: ')).length, 1, r.stderr);
    assert.match(r.stderr, new RegExp(`^sigild: backend hsm \\(pkcs11, token "sigil", pin file ${pinFile.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\\): pkcs11 login failed: CKR_PIN_INCORRECT \\(the PIN is the whole of .*wrong-pin less one trailing newline\\)$`, 'm'));
    assert.doesNotMatch(r.stderr, /99999999/);
  });

  test('config validate names an empty PIN file, a PIN file of two lines and a port out of range, without the PIN', async () => {
    const empty = join(dir, 'empty-pin');
    const twoLines = join(dir, 'two-line-pin');
    await writeFile(empty, '\n', { mode: 0o600 });
    await writeFile(twoLines, '4711\n\n', { mode: 0o600 });
    const file = join(dir, 'pins.yaml');
    await writeFile(file, stringify({ ...goodConfig, listen: '127.0.0.1:99999', metrics: { listen: '127.0.0.1:65536' }, backends: { hsm: { ...token.config, pinFile: empty }, hsm2: { ...token.config, pinFile: twoLines } } }));
    const err = await run(process.execPath, [bin('sigild'), 'config', 'validate', file]).then(
      () => assert.fail('validate accepted it'),
      (e: { code: number; stderr: string }) => e,
    );
    assert.equal(err.code, 2);
    assert.match(err.stderr, /: 4 problems:\n/);
    assert.match(err.stderr, new RegExp(`backends\\.hsm\\.pinFile: ${empty} is empty: put the token's user PIN in it`));
    assert.match(err.stderr, new RegExp(`backends\\.hsm2\\.pinFile: ${twoLines} holds more than one line: the PIN is the whole file less one trailing newline`));
    assert.match(err.stderr, /\n {2}listen: the port must be 0 to 65535 \(0 picks a free one\)/);
    assert.match(err.stderr, /\n {2}metrics\.listen: the port must be 0 to 65535/);
    assert.doesNotMatch(err.stderr, /4711/);
  });

  test('a missing config file is one line, for validate and for serve', async () => {
    for (const args of [['config', 'validate', 'nosuch.yaml'], ['serve', '--config', 'nosuch.yaml']]) {
      const err = await run(process.execPath, [bin('sigild'), ...args], { cwd: dir }).then(
        () => assert.fail('accepted a missing file'),
        (e: { code: number; stderr: string }) => e,
      );
      assert.equal(err.code, 2);
      assert.equal(err.stderr, 'sigild: cannot read the config file nosuch.yaml: no such file\n');
    }
    // No --config at all, or an unknown command: one line pointing at --help, exit 2, no usage dump.
    for (const [args, line] of [
      [['backup'], "sigild: required option '-c, --config <file>' not specified (see --help)\n"],
      [['tpm', 'rekey'], "sigild: required option '-c, --config <file>' not specified (see --help)\n"],
      [['bogus'], "sigild: unknown command 'bogus' (see --help)\n"],
    ] as const) {
      const err = await run(process.execPath, [bin('sigild'), ...args], { cwd: dir }).then(
        () => assert.fail(`accepted ${args.join(' ')}`),
        (e: { code: number; stderr: string }) => e,
      );
      assert.deepEqual({ code: err.code, stderr: err.stderr }, { code: 2, stderr: line });
    }
  });

  test('a fresh store against a token that holds sigil\'s keys already says which store it is and what to check', async () => {
    // A daemon on this token with the store state/sigil.db made sigil's keys (audit, identity CA, trusted root).
    const made = join(dir, 'made.yaml');
    await writeFile(made, stringify(goodConfig));
    await (await startDaemon(loadConfig(made), { log: silentLogger() })).stop();
    const file = join(dir, 'fresh.yaml');
    await writeFile(file, stringify({ ...goodConfig, store: { sqlite: { path: 'fresh/sigil.db' } } }));
    const r = await run(process.execPath, [bin('sigild'), 'serve', '--config', file], { timeout: 30_000 }).then(
      () => assert.fail('started'),
      (e: { code: number; stderr: string }) => e,
    );
    assert.equal(r.code, 1);
    assert.match(r.stderr, new RegExp(`^sigild: a pkcs11 key labelled "sigil-sigil-[a-z-]+-v1" already exists on token "sigil", but the store ${join(dir, 'fresh/sigil.db')} does not record it: point store\\.sqlite\\.path at the store that made the backend's keys, or give a new store a new token \\(docs/operations\\.md, "One daemon per store"\\)$`, 'm'));
  });

  test('dev prepares a data directory, writes client credentials and sigild.addr, and serves', async () => {
    const data = join(dir, 'dev');
    const child = spawn(process.execPath, [bin('sigild'), 'dev', '--data-dir', data, '--listen', '127.0.0.1:0'], { stdio: ['ignore', 'ignore', 'pipe'] });
    let log = '';
    child.stderr!.on('data', (b: Buffer) => (log += b.toString()));
    try {
      const addr = await waitFor(join(data, 'sigild.addr'), child);
      assert.match(addr, /^127\.0\.0\.1:\d+$/);
      for (const f of ['client/ca.pem', 'client/admin.pem', 'client/admin-key.pem', 'client/approver.pem', 'client/auditor.pem', 'config.yaml', 'sigil.db', 'sigil.db.lock']) assert.ok(existsSync(join(data, f)), f);
      // The config says that it is rewritten at every start, and how to keep changes.
      assert.match(await readFile(join(data, 'config.yaml'), 'utf8'), /^# Written by `sigild dev` at every start: edits here are lost at the next start\.\n(#.*\n)*# .*sigild serve --config my\.yaml`\.\n/);
      assert.equal((await stat(join(data, 'client/admin-key.pem'))).mode & 0o777, 0o600);
      assert.equal((await stat(data)).mode & 0o777, 0o700);
      const cfg = parse(await readFile(join(data, 'config.yaml'), 'utf8')) as { mode: string; backends: { softhsm: { type: string } }; auth: { roles: Record<string, string[]> } };
      assert.equal(cfg.mode, 'development');
      assert.deepEqual(cfg.auth.roles.approver, ['cn:sigil-approver']);
      assert.deepEqual(cfg.auth.roles.auditor, ['cn:sigil-auditor']);
      assert.equal(cfg.backends.softhsm.type, 'pkcs11');
      const env = { ...process.env, SIGIL_ADDR: addr, SIGIL_CACERT: join(data, 'client/ca.pem'), SIGIL_CLIENT_CERT: join(data, 'client/admin.pem'), SIGIL_CLIENT_KEY: join(data, 'client/admin-key.pem') };
      const created = await run(process.execPath, [bin('sigilctl'), 'key', 'create', 'dev/demo', '--alg', 'ed25519'], { env });
      assert.match(created.stdout, /created dev\/demo {2}ED25519/);
      // The approver certificate dev makes holds the approver role.
      const approver = { ...env, SIGIL_CLIENT_CERT: join(data, 'client/approver.pem'), SIGIL_CLIENT_KEY: join(data, 'client/approver-key.pem') };
      const listed = await run(process.execPath, [bin('sigilctl'), 'approvals', 'list'], { env: approver });
      assert.match(listed.stdout, /no approvals/);
      assert.match(log, /export SIGIL_ADDR=/);
    } finally {
      child.kill('SIGINT');
      await exited(child);
    }
    assert.ok(!existsSync(join(data, 'sigild.addr')), 'the address file is removed on stop');
  });

  test('a start-up step failing with an unexpected error is one line for the operator, its detail (stack) in the log', async () => {
    // A swtpm that will not start (swtpm_setup runs it too): not one of sigil's errors.
    const fakeBin = join(dir, 'fake-bin');
    await mkdir(fakeBin, { recursive: true });
    await writeFile(join(fakeBin, 'swtpm'), '#!/bin/sh\necho "swtpm: broken for this test" >&2\nexit 1\n', { mode: 0o755 });
    const r = await run(process.execPath, [bin('sigild'), 'dev', '--data-dir', join(dir, 'dev-broken')], { env: { ...process.env, PATH: `${fakeBin}:${process.env.PATH}` }, timeout: 60_000 }).then(
      () => assert.fail('started'),
      (e: { code: number; stderr: string }) => e,
    );
    assert.equal(r.code, 1);
    const lines = r.stderr.split('\n').filter(Boolean);
    const plain = lines.filter((l) => !l.startsWith('{'));
    assert.equal(plain.length, 1, r.stderr);
    // swtpm_setup, which runs it, fails first.
    assert.match(plain[0]!, /^sigild: .*swtpm/);
    const failed = lines.filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as { msg: string; err?: { stack?: string } }).find((l) => l.msg === 'sigild failed');
    assert.match(failed?.err?.stack ?? '', /\n {4}at /, 'the log line carries the stack');
  });
});
