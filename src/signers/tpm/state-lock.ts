import { createHash, randomBytes } from 'node:crypto';
import { chmod, link, mkdir, open, readFile, rename, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { SigilError } from '../../errors.ts';
import type { Logger } from '../../log.ts';

/** Name of the lock file inside a TPM backend's state directory. */
export const LOCK_FILE = 'sigild.lock';

/** Who holds a state directory: a process id and, on Linux, that process's start time. */
export interface LockHolder {
  pid: number;
  /** Field 22 of /proc/<pid>/stat (clock ticks since boot), or null where /proc is absent. */
  start: string | null;
}

/** An exclusive hold on a state directory, kept until `release`. */
export interface StateLock {
  /** Path of the lock file. */
  readonly path: string;
  /** Removes the lock file if it is still this hold's own; idempotent. */
  release(): Promise<void>;
}

const ATTEMPTS = 3;
const MAX_CLAIMS = 8;

/** The start time of process `pid` from /proc, or null when it cannot be read (no /proc, or gone). */
export async function processStart(pid: number): Promise<string | null> {
  let text: string;
  try {
    text = await readFile(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return null;
  }
  // The command name (field 2) sits in parentheses and may hold spaces or ')': fields resume after the last ')'.
  const rest = text.slice(text.lastIndexOf(')') + 2).split(' ');
  // rest[0] is field 3 (state); starttime is field 22 (proc(5)).
  const start = rest[19];
  return start !== undefined && /^\d+$/.test(start) ? start : null;
}

/**
 * True when the process named by `h` runs: signal 0 reaches it (EPERM means it exists under another
 * user), and where both start times are known they agree, so a recycled pid is not taken for the holder.
 */
export async function holderAlive(h: LockHolder): Promise<boolean> {
  try {
    process.kill(h.pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  if (h.start === null) return true;
  const now = await processStart(h.pid);
  return now === null || now === h.start;
}

function parseHolder(text: string): LockHolder | null {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    return null;
  }
  if (typeof v !== 'object' || v === null) return null;
  const { pid, start } = v as Record<string, unknown>;
  if (typeof pid !== 'number' || !Number.isSafeInteger(pid) || pid < 1) return null;
  if (start !== null && (typeof start !== 'string' || !/^\d+$/.test(start))) return null;
  return { pid, start };
}

function code(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException).code;
}

async function syncDir(dir: string): Promise<void> {
  const dh = await open(dir, 'r');
  try {
    await dh.sync();
  } finally {
    await dh.close();
  }
}

/**
 * Takes the exclusive lock of a TPM backend's state directory (creating the directory, mode 0700).
 * The lock file is written whole under a temporary name and hard-linked into place: link(2) fails
 * when the name exists, so exactly one process creates it and nobody ever reads it half-written. A
 * lock whose holder is dead (pid gone, or recycled: its /proc start time differs) is taken over; a
 * live holder gets FAILED_PRECONDITION naming the directory and its pid. One host, one pid namespace.
 */
export async function lockStateDir(dir: string, log?: Logger): Promise<StateLock> {
  try {
    await mkdir(dir, { recursive: true, mode: 0o700 });
    await chmod(dir, 0o700);
  } catch (err) {
    throw new SigilError('CONFIG_INVALID', `tpm state directory ${dir} cannot be created`, { cause: err });
  }
  const path = join(dir, LOCK_FILE);
  const me: LockHolder = { pid: process.pid, start: await processStart(process.pid) };
  // The token makes every lock file's bytes unique: release and takeover compare bytes.
  const token = randomBytes(12).toString('hex');
  const body = JSON.stringify({ ...me, since: new Date().toISOString(), token }) + '\n';
  const tmp = join(dir, `.${LOCK_FILE}.${process.pid}.${token}`);
  const io = (what: string, err: unknown) => new SigilError('BACKEND_ERROR', `tpm state directory ${dir}: ${what}`, { cause: err });
  try {
    const fh = await open(tmp, 'wx', 0o600);
    try {
      await fh.writeFile(body);
      await fh.sync();
    } finally {
      await fh.close();
    }
  } catch (err) {
    throw io('lock file cannot be written', err);
  }
  try {
    for (let attempt = 0; attempt < ATTEMPTS; attempt++) {
      let made = true;
      try {
        await link(tmp, path);
      } catch (err) {
        if (code(err) !== 'EEXIST') throw io('lock file cannot be created', err);
        made = false;
      }
      if (!made && !(await takeOverIfStale(dir, path, tmp, log))) continue;
      try {
        await syncDir(dir);
      } catch (err) {
        await unlink(path).catch(() => undefined);
        throw io('lock file cannot be made durable', err);
      }
      return new Hold(path, body);
    }
    throw new SigilError('FAILED_PRECONDITION', `tpm state directory ${dir} is being locked by another process at the same time`);
  } finally {
    await unlink(tmp).catch(() => undefined);
  }
}

/**
 * Replaces a dead holder's lock file with ours (true), or says the file changed meanwhile (false: look
 * again); throws FAILED_PRECONDITION for a live or unreadable holder.
 */
async function takeOverIfStale(dir: string, path: string, tmp: string, log: Logger | undefined): Promise<boolean> {
  const text = await readLock(dir, path);
  if (text === null) return false;
  const holder = parseHolder(text);
  if (holder === null) {
    throw new SigilError('FAILED_PRECONDITION', `tpm state directory ${dir} has an unreadable lock file ${path}; remove it if no sigild uses the directory`);
  }
  if (await holderAlive(holder)) {
    const self = holder.pid === process.pid ? ' (this process: another backend on the same directory)' : '';
    throw new SigilError('FAILED_PRECONDITION', `tpm state directory ${dir} is locked by pid ${holder.pid}${self}`);
  }
  // Several processes may find the same stale file. Each stale file (named by a hash of its bytes)
  // gets claims 0, 1, ... made with link(2), so one live process at a time holds a claim on it; the
  // next claim number is tried only when the previous claimant is dead. The claimant replaces the
  // file only if it still holds the stale bytes: nobody else can change it meanwhile, since creating
  // fails while it exists and replacing needs the claim.
  const id = createHash('sha256').update(text).digest('hex').slice(0, 16);
  let claim: string | undefined;
  for (let k = 0; k < MAX_CLAIMS && claim === undefined; k++) {
    const c = join(dir, `.${LOCK_FILE}.takeover.${id}.${k}`);
    try {
      await link(tmp, c);
      claim = c;
    } catch (err) {
      if (code(err) !== 'EEXIST') throw new SigilError('BACKEND_ERROR', `tpm state directory ${dir}: lock takeover claim cannot be created`, { cause: err });
      const other = parseHolder((await readLock(dir, c)) ?? '');
      if (other !== null && (await holderAlive(other))) {
        throw new SigilError('FAILED_PRECONDITION', `tpm state directory ${dir} is being locked by pid ${other.pid}`);
      }
    }
  }
  if (claim === undefined) throw new SigilError('FAILED_PRECONDITION', `tpm state directory ${dir} has ${MAX_CLAIMS} abandoned lock takeovers; remove its .${LOCK_FILE}.takeover.* files`);
  try {
    if ((await readLock(dir, path)) !== text) return false;
    try {
      await rename(tmp, path);
    } catch (err) {
      throw new SigilError('BACKEND_ERROR', `tpm state directory ${dir}: stale lock file ${path} cannot be replaced`, { cause: err });
    }
    log?.warn({ dir, pid: holder.pid }, 'tpm state directory lock of a dead process taken over');
    return true;
  } finally {
    await unlink(claim).catch(() => undefined);
  }
}

/** The lock file's text, or null when it does not exist. */
async function readLock(dir: string, path: string): Promise<string | null> {
  try {
    return await readFile(path, 'utf8');
  } catch (err) {
    if (code(err) === 'ENOENT') return null;
    throw new SigilError('BACKEND_ERROR', `tpm state directory ${dir}: lock file ${path} cannot be read`, { cause: err });
  }
}

class Hold implements StateLock {
  readonly path: string;
  readonly #body: string;
  #released = false;

  constructor(path: string, body: string) {
    this.path = path;
    this.#body = body;
  }

  async release(): Promise<void> {
    if (this.#released) return;
    this.#released = true;
    // Only our own file: a lock replaced meanwhile (taken over by mistake) belongs to its new holder.
    const now = await readFile(this.path, 'utf8').catch(() => null);
    if (now === this.#body) await unlink(this.path).catch(() => undefined);
  }
}
