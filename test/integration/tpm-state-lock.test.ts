import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { isSigilError } from '../../src/errors.ts';
import { silentLogger } from '../../src/log.ts';
import { tpmConfigSchema, type TpmConfig } from '../../src/signers/tpm/config.ts';
import { open } from '../../src/signers/tpm/index.ts';
import { LOCK_FILE } from '../../src/signers/tpm/state-lock.ts';
import { missingTools } from '../helpers/hw.ts';
import { startSwtpm, type Swtpm } from '../helpers/swtpm.ts';

// The TPM backend's lock on its state directory, against a real swtpm: a second backend in this
// process and a second sigild-like process are refused; a crashed holder's lock is taken over.

const skip = missingTools('swtpm', 'swtpm_setup');
const ctx = { name: 'swtpm', log: silentLogger(), production: false };
const indexModule = fileURLToPath(new URL('../../src/signers/tpm/index.ts', import.meta.url));
const logModule = fileURLToPath(new URL('../../src/log.ts', import.meta.url));

let sw: Swtpm;
let dir: string;
let n = 0;

before(async () => {
  if (skip) return;
  sw = await startSwtpm();
  dir = await mkdtemp(join(tmpdir(), 'sigil-tpm-lock-it-'));
});
after(async () => {
  if (skip) return;
  await sw?.stop();
  await rm(dir, { recursive: true, force: true });
});

function config(stateDir = join(dir, `state-${n++}`), transport = sw.tcti): TpmConfig {
  return tpmConfigSchema.parse({ type: 'tpm', transport, stateDir, timeoutMs: 1000 });
}

async function lockPid(stateDir: string): Promise<number> {
  return (JSON.parse(await readFile(join(stateDir, LOCK_FILE), 'utf8')) as { pid: number }).pid;
}

async function refused(p: Promise<unknown>, stateDir: string, pid: number): Promise<void> {
  await assert.rejects(p, (e) => {
    assert.ok(isSigilError(e, 'FAILED_PRECONDITION'), String(e));
    assert.ok(e.message.includes(stateDir), e.message);
    assert.ok(e.message.includes(`pid ${pid}`), e.message);
    return true;
  });
}

const sha256 = (s: string) => createHash('sha256').update(s).digest();

test('a second backend on the same state directory is refused at once; after close() a new one opens and finds the keys', { skip: skip ?? false }, async () => {
  const c = config();
  const first = await open(c, ctx);
  const made = await first.createKey({ label: 'locked-v1', algorithm: 'ECDSA_P256_SHA256' });
  const t0 = performance.now();
  await refused(open(c, ctx), c.stateDir, process.pid);
  assert.ok(performance.now() - t0 < 200, 'refused without waiting for the tpm');
  // The refused open changed nothing: the first backend still creates and signs.
  await first.createKey({ label: 'locked-v2', algorithm: 'ECDSA_P256_SHA256' });
  await (await first.signer(made.uri, 'ECDSA_P256_SHA256')).sign(sha256('still mine'));
  await first.close();
  await assert.rejects(readFile(join(c.stateDir, LOCK_FILE)), { code: 'ENOENT' });

  const second = await open(c, ctx);
  try {
    assert.equal(await lockPid(c.stateDir), process.pid);
    assert.equal(await second.findKeyByLabel('locked-v1'), made.uri);
    for (const label of ['locked-v1', 'locked-v2']) await second.destroyKey((await second.findKeyByLabel(label))!);
  } finally {
    await second.close();
  }
  // The lock is gone; the key table and the pinned storage key stay.
  assert.deepEqual((await readdir(c.stateDir)).sort(), ['keys.json', 'srk.json']);
});

test('a stale lock naming a pid that does not exist is taken over at open', { skip: skip ?? false }, async () => {
  const c = config();
  const exited = spawn(process.execPath, ['-e', ''], { stdio: 'ignore' });
  await new Promise((r) => exited.once('exit', r));
  await open(c, ctx).then((b) => b.close());
  await writeFile(join(c.stateDir, LOCK_FILE), JSON.stringify({ pid: exited.pid, start: null }));
  const b = await open(c, ctx);
  try {
    assert.equal(await lockPid(c.stateDir), process.pid);
  } finally {
    await b.close();
  }
});

test('another process holding the backend open is refused by pid; once it is killed (SIGKILL) its lock is taken over', { skip: skip ?? false }, async () => {
  const c = config();
  const code = [
    `const { open } = await import(${JSON.stringify(indexModule)});`,
    `const { silentLogger } = await import(${JSON.stringify(logModule)});`,
    `await open(${JSON.stringify(c)}, { name: 'child', log: silentLogger(), production: false });`,
    `console.log('open');`,
    'setInterval(() => {}, 1000);',
  ].join('\n');
  const child: ChildProcess = spawn(process.execPath, ['--input-type=module', '-e', code], { stdio: ['ignore', 'pipe', 'inherit'] });
  try {
    await new Promise<void>((resolve, reject) => {
      child.stdout!.once('data', () => resolve());
      child.once('exit', (rc) => reject(new Error(`child exited with ${rc}`)));
    });
    assert.equal(await lockPid(c.stateDir), child.pid);
    await refused(open(c, ctx), c.stateDir, child.pid!);
  } finally {
    child.kill('SIGKILL');
    if (child.exitCode === null && child.signalCode === null) await new Promise((r) => child.once('exit', r));
  }
  const b = await open(c, ctx);
  try {
    assert.equal(await lockPid(c.stateDir), process.pid);
    const k = await b.createKey({ label: 'after-crash-v1', algorithm: 'ECDSA_P256_SHA256' });
    await b.destroyKey(k.uri);
  } finally {
    await b.close();
  }
});

test('an open that fails (tpm not listening) leaves no lock behind', { skip: skip ?? false }, async () => {
  const port = await new Promise<number>((resolve) => {
    const srv = createServer();
    srv.listen(0, '127.0.0.1', () => {
      const p = (srv.address() as { port: number }).port;
      srv.close(() => resolve(p));
    });
  });
  const c = config(undefined, `swtpm:host=127.0.0.1,port=${port}`);
  await assert.rejects(open(c, ctx), (e) => isSigilError(e, 'BACKEND_UNAVAILABLE'));
  await assert.rejects(readFile(join(c.stateDir, LOCK_FILE)), { code: 'ENOENT' });
  const ok = await open({ ...c, transport: sw.tcti }, ctx);
  await ok.close();
});
