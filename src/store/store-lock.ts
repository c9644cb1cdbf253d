import { existsSync, mkdirSync, readFileSync, realpathSync, statSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { SigilError } from '../errors.ts';

/** The hold one program has on a store: while it lasts, no other sigild serves, changes or archives that store. */
export interface StoreLock {
  /** The store file (absolute) the lock guards. */
  readonly store: string;
  /** Gives the lock up; later calls do nothing. The process ending gives it up too, however it ends. */
  release(): void;
}

// The connections holding a lock: a lock whose holder dropped its StoreLock without releasing it stays held
// (never closed by the garbage collector) until the process ends.
const HELD = new Set<DatabaseSync>();

/** The lock file of the store at `storePath`: beside it, `<store>.lock`. */
export function storeLockPath(storePath: string): string {
  return `${resolve(storePath)}.lock`;
}

/**
 * Takes the store's lock, refusing (FAILED_PRECONDITION, naming the store and the pid holding it when the system
 * tells) while any program, this process included, holds it. Every program that writes the store takes it first
 * (`sigild serve`, `sigild dev`, `sigild audit archive`), so a second one stops before it has written anything.
 *
 * What is locked is `<store>.lock`, an otherwise unused SQLite file, with SQLite's exclusive locking mode: an
 * OS-level (POSIX advisory) lock the kernel drops when the process ends, SIGKILL included, so a crash never leaves
 * a lock to clean up by hand. Not the store itself: the daemon opens it on several connections and threads.
 * POSIX locks belong to the process and end when it closes ANY descriptor of the file: nothing in a process
 * holding the lock may open `<store>.lock` otherwise (a backup or copy of the store's directory must skip it).
 */
export function lockStore(storePath: string): StoreLock {
  if (storePath === ':memory:') return { store: storePath, release: () => undefined };
  mkdirSync(dirname(resolve(storePath)), { recursive: true, mode: 0o700 });
  // The file the path names, through any symlink: two spellings of one store are one lock.
  const store = existsSync(storePath) ? realpathSync(storePath) : join(realpathSync(dirname(resolve(storePath))), basename(storePath));
  const file = storeLockPath(store);
  // No journal file beside the lock: the only write is the empty database's first page, on creation.
  let db: DatabaseSync | null;
  try {
    db = lockExclusive(file, 'PRAGMA journal_mode = MEMORY;');
  } catch (err) {
    // Only its first write (on creation) can be torn, by a power loss: the file holds nothing else.
    if (/not a database|malformed/i.test((err as Error).message)) throw new SigilError('FAILED_PRECONDITION', `the store's lock file ${file} is damaged: with no sigild running on ${store}, remove it`, { cause: err });
    throw err;
  }
  if (db === null) {
    const pid = lockHolder(file);
    throw new SigilError('FAILED_PRECONDITION', `the store ${store} is in use by another sigild${pid === null ? '' : ` (pid ${pid})`}: stop it first`);
  }
  // SQLite opens a file this user may not write read-only, and then holds only a shared (read) lock, which a second
  // reader shares: a write proves the lock is the exclusive one.
  try {
    db.exec('BEGIN EXCLUSIVE; PRAGMA user_version = 1; COMMIT;');
  } catch (err) {
    db.close();
    if (/readonly|read-only/i.test((err as Error).message)) {
      const st = statSync(file);
      throw new SigilError('FAILED_PRECONDITION', `the store's lock file ${file} is not writable by uid ${process.getuid?.() ?? '?'} (owner uid ${st.uid}): chown it to the user sigild runs as`, { cause: err });
    }
    throw new SigilError('BACKEND_ERROR', `cannot lock ${file}: ${(err as Error).message}`, { cause: err });
  }
  const held = db;
  HELD.add(held);
  return {
    store,
    release: () => {
      HELD.delete(held);
      if (held.isOpen) held.close();
    },
  };
}

/**
 * Opens `path` with SQLite's exclusive locking mode and takes the write lock (after running `setup`, SQL for the
 * connection): null when any other connection, in any process, has the file open or locked; once taken, nobody
 * else can open it until the returned connection closes (or its process ends).
 */
export function lockExclusive(path: string, setup = ''): DatabaseSync | null {
  let db: DatabaseSync;
  try {
    db = new DatabaseSync(path);
  } catch (err) {
    throw new SigilError('BACKEND_ERROR', `cannot open ${path}: ${(err as Error).message}`, { cause: err });
  }
  try {
    db.exec(`PRAGMA busy_timeout = 0; ${setup} PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE; COMMIT;`);
    return db;
  } catch (err) {
    db.close();
    if (/locked|busy/i.test(String((err as { message?: unknown }).message))) return null;
    throw new SigilError('BACKEND_ERROR', `cannot lock ${path}: ${(err as Error).message}`, { cause: err });
  }
}

/**
 * The pid of the process holding a POSIX write lock on `file`, from the kernel's lock table (`/proc/locks`, Linux;
 * its lines read `N: POSIX ADVISORY WRITE <pid> <major>:<minor>:<inode> <start> <end>`); null where there is no
 * such table or it does not say.
 */
function lockHolder(file: string): number | null {
  try {
    const st = statSync(file);
    // st_dev in the kernel's user-space encoding; /proc/locks prints major and minor in hex.
    const dev = BigInt(st.dev);
    const major = Number(((dev >> 8n) & 0xfffn) | ((dev >> 32n) & ~0xfffn));
    const minor = Number((dev & 0xffn) | ((dev >> 12n) & ~0xffn));
    const id = `${major.toString(16).padStart(2, '0')}:${minor.toString(16).padStart(2, '0')}:${st.ino}`;
    for (const line of readFileSync('/proc/locks', 'utf8').split('\n')) {
      const f = line.trim().split(/\s+/);
      // Waiters are listed with "->" after the number; only a granted lock names the holder.
      if (f[1] !== 'POSIX' || f[3] !== 'WRITE' || f[5] !== id) continue;
      const pid = Number(f[4]);
      if (Number.isSafeInteger(pid) && pid > 0) return pid;
    }
  } catch {
    // No lock table (not Linux) or the file went away: the refusal goes without a pid.
  }
  return null;
}
