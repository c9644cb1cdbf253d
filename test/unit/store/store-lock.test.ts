import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chmod, mkdtemp, readdir, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { assertCode } from '../../helpers/assert.ts';
import { lockStore, storeLockPath } from '../../../src/store/store-lock.ts';

const LOCK = new URL('../../../src/store/store-lock.ts', import.meta.url).href;

test('one holder at a time, in this process too; released, it can be taken again; no journal beside it', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'sigil-lock-'));
  try {
    const store = join(dir, 'state', 'sigil.db');
    const a = lockStore(store);
    assert.equal(a.store, store);
    assert.ok(existsSync(storeLockPath(store)));
    await assertCode(Promise.resolve().then(() => lockStore(store)), 'FAILED_PRECONDITION', (m) => assert.equal(m, `the store ${store} is in use by another sigild (pid ${process.pid}): stop it first`));
    a.release();
    a.release();
    const b = lockStore(store);
    b.release();
    assert.deepEqual(await readdir(join(dir, 'state')), ['sigil.db.lock']);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('held by another process: refused naming its pid; after that process is SIGKILLed the lock is free', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'sigil-lock-'));
  const store = join(dir, 'sigil.db');
  const child = spawn(process.execPath, ['--input-type=module', '-e', `const m = await import(${JSON.stringify(LOCK)}); m.lockStore(${JSON.stringify(store)}); console.log('held'); setInterval(() => {}, 1000);`], { stdio: ['ignore', 'pipe', 'inherit'] });
  try {
    await new Promise<void>((resolve, reject) => {
      child.stdout!.on('data', (b: Buffer) => /held/.test(b.toString()) && resolve());
      child.once('exit', (code) => reject(new Error(`the holder exited (${code})`)));
    });
    await assertCode(Promise.resolve().then(() => lockStore(store)), 'FAILED_PRECONDITION', (m) => assert.equal(m, `the store ${store} is in use by another sigild (pid ${child.pid}): stop it first`));
    const gone = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGKILL');
    await gone;
    lockStore(store).release();
  } finally {
    child.kill('SIGKILL');
    await rm(dir, { recursive: true, force: true });
  }
});

test('a damaged lock file is named, with what to do; an in-memory store needs no lock', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'sigil-lock-'));
  try {
    const store = join(dir, 'sigil.db');
    await writeFile(storeLockPath(store), 'x'.repeat(200));
    await assertCode(Promise.resolve().then(() => lockStore(store)), 'FAILED_PRECONDITION', (m) => assert.equal(m, `the store's lock file ${store}.lock is damaged: with no sigild running on ${store}, remove it`));
    const a = lockStore(':memory:');
    const b = lockStore(':memory:');
    a.release();
    b.release();
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('two spellings of one store (a symlink to it) are one lock', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'sigil-lock-'));
  try {
    const store = join(dir, 'sigil.db');
    await writeFile(store, '');
    await symlink(store, join(dir, 'alias.db'));
    const a = lockStore(store);
    try {
      await assertCode(Promise.resolve().then(() => lockStore(join(dir, 'alias.db'))), 'FAILED_PRECONDITION', /is in use by another sigild/);
    } finally {
      a.release();
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('a lock file this user may not write is refused, not held as a shared lock a second sigild would share', { skip: process.getuid?.() === 0 ? false : 'needs root to run a child as another user' }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'sigil-lock-'));
  try {
    await chmod(dir, 0o755);
    const store = join(dir, 'sigil.db');
    // Made by root (an operator's `sigild audit archive` run as root), then a daemon running as another user.
    lockStore(store).release();
    const run = (): Promise<string> =>
      new Promise((resolve) => {
        const child = spawn(process.execPath, ['--input-type=module', '-e', `const m = await import(${JSON.stringify(LOCK)}); try { m.lockStore(${JSON.stringify(store)}); console.log('held'); } catch (e) { console.log(e.message); }`], { uid: 65534, gid: 65534, stdio: ['ignore', 'pipe', 'inherit'] });
        let out = '';
        child.stdout!.on('data', (b: Buffer) => void (out += b.toString()));
        child.once('exit', () => resolve(out.trim()));
      });
    assert.match(await run(), new RegExp(`^the store's lock file ${storeLockPath(store).replace(/[.]/g, '\\.')} is not writable by uid 65534 \\(owner uid 0\\): chown it to the user sigild runs as$`));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
