import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { isSigilError } from '../../../src/errors.ts';
import { holderAlive, LOCK_FILE, lockStateDir, processStart } from '../../../src/signers/tpm/state-lock.ts';

// The state-directory lock without a TPM: real files, real processes (a child node holding the lock,
// killed with SIGKILL as a crashed sigild would be).

let root: string;
let n = 0;
const fresh = () => join(root, `state-${n++}`);
const lockModule = fileURLToPath(new URL('../../../src/signers/tpm/state-lock.ts', import.meta.url));

before(async () => {
  root = await mkdtemp(join(tmpdir(), 'sigil-tpm-lock-'));
});
after(async () => {
  await rm(root, { recursive: true, force: true });
});

async function holder(dir: string): Promise<{ pid: number; start: string | null }> {
  return JSON.parse(await readFile(join(dir, LOCK_FILE), 'utf8')) as { pid: number; start: string | null };
}

async function refused(p: Promise<unknown>, dir: string, pid: number): Promise<void> {
  await assert.rejects(p, (e) => {
    assert.ok(isSigilError(e, 'FAILED_PRECONDITION'), String(e));
    assert.ok(e.message.includes(dir), e.message);
    assert.ok(e.message.includes(`pid ${pid}`), e.message);
    return true;
  });
}

// A pid that certainly ran and certainly ended: a child that exited.
async function deadPid(): Promise<number> {
  const c = spawn(process.execPath, ['-e', ''], { stdio: 'ignore' });
  await new Promise((r) => c.once('exit', r));
  return c.pid!;
}

// Another process that takes the lock and keeps it until killed.
async function otherHolder(dir: string): Promise<ChildProcess> {
  const code = `const { lockStateDir } = await import(${JSON.stringify(lockModule)}); await lockStateDir(${JSON.stringify(dir)}); console.log('locked'); setInterval(() => {}, 1000);`;
  const c = spawn(process.execPath, ['--input-type=module', '-e', code], { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise<void>((resolve, reject) => {
    c.stdout!.once('data', () => resolve());
    c.once('exit', (codeOrNull) => reject(new Error(`lock holder exited with ${codeOrNull}`)));
  });
  return c;
}

test('a second lock on the same directory is refused at once, naming the directory and the holder pid; release frees it', async () => {
  const dir = fresh();
  const first = await lockStateDir(dir);
  assert.equal((await stat(dir)).mode & 0o777, 0o700);
  assert.equal((await stat(first.path)).mode & 0o777, 0o600);
  assert.equal((await holder(dir)).pid, process.pid);
  const t0 = performance.now();
  await refused(lockStateDir(dir), dir, process.pid);
  assert.ok(performance.now() - t0 < 200);
  assert.equal((await holder(dir)).pid, process.pid, 'the refused attempt left the lock as it was');
  await first.release();
  await first.release();
  await assert.rejects(stat(first.path), { code: 'ENOENT' });
  const second = await lockStateDir(dir);
  await second.release();
  // No temporary or set-aside files are left behind.
  assert.deepEqual(await readdir(dir), []);
});

test('a lock held by another live process is refused; once that process is killed the lock is taken over', async () => {
  const dir = fresh();
  const other = await otherHolder(dir);
  try {
    assert.equal((await holder(dir)).pid, other.pid);
    await refused(lockStateDir(dir), dir, other.pid!);
  } finally {
    other.kill('SIGKILL');
    await new Promise((r) => other.once('exit', r));
  }
  const mine = await lockStateDir(dir);
  assert.equal((await holder(dir)).pid, process.pid);
  await mine.release();
});

test('a stale lock naming a pid that does not exist is taken over', async () => {
  const dir = fresh();
  const pid = await deadPid();
  assert.equal(await holderAlive({ pid, start: null }), false);
  await lockStateDir(dir).then((l) => l.release());
  await writeFile(join(dir, LOCK_FILE), JSON.stringify({ pid, start: '12345' }), { mode: 0o600 });
  const mine = await lockStateDir(dir);
  assert.equal((await holder(dir)).pid, process.pid);
  await mine.release();
});

test('a recycled pid is not taken for the holder: same pid, other start time, is stale', { skip: (await processStart(process.pid)) === null ? 'no /proc' : false }, async () => {
  const dir = fresh();
  const start = (await processStart(process.pid))!;
  assert.equal(await holderAlive({ pid: process.pid, start }), true);
  // As after a container restart where sigild is pid 1 again.
  const earlier = String(BigInt(start) + 1n);
  assert.equal(await holderAlive({ pid: process.pid, start: earlier }), false);
  await lockStateDir(dir).then((l) => l.release());
  await writeFile(join(dir, LOCK_FILE), JSON.stringify({ pid: process.pid, start: earlier }));
  const mine = await lockStateDir(dir);
  assert.equal((await holder(dir)).start, start);
  await mine.release();
});

test('an unreadable lock file is refused with its path and left untouched', async () => {
  const dir = fresh();
  await lockStateDir(dir).then((l) => l.release());
  for (const body of ['', 'not json', '{"pid":"12"}', '{"pid":0,"start":null}', '{"pid":12,"start":"x"}']) {
    await writeFile(join(dir, LOCK_FILE), body);
    await assert.rejects(lockStateDir(dir), (e) => isSigilError(e, 'FAILED_PRECONDITION') && e.message.includes(join(dir, LOCK_FILE)) && /unreadable/.test(e.message), body);
    assert.equal(await readFile(join(dir, LOCK_FILE), 'utf8'), body);
  }
});

test('release leaves alone a lock file that is no longer its own', async () => {
  const dir = fresh();
  const l = await lockStateDir(dir);
  await rm(l.path);
  const replacement = JSON.stringify({ pid: 424242, start: null });
  await writeFile(l.path, replacement);
  await l.release();
  assert.equal(await readFile(l.path, 'utf8'), replacement);
});

test('a state directory that cannot be created is CONFIG_INVALID', async () => {
  const file = join(root, 'a-file');
  await writeFile(file, '');
  await assert.rejects(lockStateDir(join(file, 'state')), (e) => isSigilError(e, 'CONFIG_INVALID'));
});

test('several takers racing over one stale lock: exactly one wins, the others are refused', async () => {
  const dir = fresh();
  await lockStateDir(dir).then((l) => l.release());
  for (let round = 0; round < 5; round++) {
    await writeFile(join(dir, LOCK_FILE), JSON.stringify({ pid: await deadPid(), start: null }));
    const results = await Promise.allSettled(Array.from({ length: 6 }, () => lockStateDir(dir)));
    const won = results.filter((r) => r.status === 'fulfilled');
    assert.equal(won.length, 1, `round ${round}`);
    for (const r of results) if (r.status === 'rejected') assert.ok(isSigilError(r.reason, 'FAILED_PRECONDITION'), String(r.reason));
    assert.equal((await holder(dir)).pid, process.pid);
    await won[0]!.value.release();
    assert.deepEqual(await readdir(dir), []);
  }
});

test('a takeover claim abandoned by a process that died mid-takeover does not block the next one', async () => {
  const dir = fresh();
  await lockStateDir(dir).then((l) => l.release());
  const stale = JSON.stringify({ pid: await deadPid(), start: null });
  await writeFile(join(dir, LOCK_FILE), stale);
  const id = createHash('sha256').update(stale).digest('hex').slice(0, 16);
  const abandoned = join(dir, `.${LOCK_FILE}.takeover.${id}.0`);
  await writeFile(abandoned, JSON.stringify({ pid: await deadPid(), start: null }));
  const mine = await lockStateDir(dir);
  assert.equal((await holder(dir)).pid, process.pid);
  await mine.release();
  // A live claimant, by contrast, makes a taker back off.
  await writeFile(join(dir, LOCK_FILE), stale);
  await writeFile(abandoned, JSON.stringify({ pid: process.pid, start: await processStart(process.pid) }));
  await assert.rejects(lockStateDir(dir), (e) => isSigilError(e, 'FAILED_PRECONDITION') && e.message.includes(`being locked by pid ${process.pid}`));
  assert.equal(await readFile(join(dir, LOCK_FILE), 'utf8'), stale);
});
