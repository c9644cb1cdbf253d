import { closeSync, createReadStream, fchmodSync, fstatSync, fsyncSync, lstatSync, openSync, readlinkSync, readSync, realpathSync, renameSync, statSync, unlinkSync, writeSync, type Stats } from 'node:fs';
import { createHash, randomBytes } from 'node:crypto';
import { basename, dirname, join, resolve } from 'node:path';
import { SingleBar, Presets } from 'cli-progress';
import { Algorithm } from '../gen/sigil/v1/signer.ts';
import { SigilError } from '../errors.ts';
import { fileErrorWords } from './errors.ts';
import { UsageError } from './commands/context.ts';

/** The hash each algorithm's digests are made with; null for Ed25519, which signs whole messages. */
export const HASH_OF: Readonly<Record<number, 'sha256' | 'sha384' | null>> = {
  [Algorithm.ECDSA_P256_SHA256]: 'sha256',
  [Algorithm.ECDSA_P384_SHA384]: 'sha384',
  [Algorithm.RSA_PKCS1_SHA256]: 'sha256',
  [Algorithm.RSA_PSS_SHA256]: 'sha256',
  [Algorithm.ED25519]: null,
};

/**
 * Streams a file from disk in 1 MiB chunks to `sink`, with a progress bar on stderr when `showProgress`;
 * returns the bytes read. One loop for signing and verifying, so both read a file the same way.
 */
export async function streamFile(path: string, showProgress: boolean, sink: (chunk: Buffer) => void): Promise<number> {
  const size = statSync(path).size;
  const bar = showProgress ? new SingleBar({ format: 'hashing |{bar}| {percentage}% {value}/{total} MiB', stream: process.stderr, clearOnComplete: true, hideCursor: true }, Presets.shades_classic) : null;
  const mib = (n: number): number => Math.round((n / 1048576) * 10) / 10;
  bar?.start(mib(size), 0);
  let done = 0;
  try {
    for await (const chunk of createReadStream(path, { highWaterMark: 1 << 20 })) {
      sink(chunk as Buffer);
      done += (chunk as Buffer).length;
      bar?.update(mib(done));
    }
  } finally {
    bar?.stop();
  }
  return done;
}

/**
 * Hashes a file while streaming it from disk, with a progress bar on stderr when `showProgress`; returns the
 * digest and the bytes read (a pipe such as /dev/stdin has no size until it is read).
 */
export async function hashFile(path: string, hash: 'sha256' | 'sha384', showProgress: boolean): Promise<{ digest: Buffer; bytes: number }> {
  const h = createHash(hash);
  const bytes = await streamFile(path, showProgress, (c) => h.update(c));
  return { digest: h.digest(), bytes };
}

/** The `limits.maxMessageBytes` of a sigild that does not state it (its default). */
export const DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024;

/**
 * Reads a file an Ed25519 key signs whole (`option` names it), refusing one over `max` bytes before reading it,
 * with a usage error that says the limit (`limit`, e.g. "sigild takes at most N bytes (limits.maxMessageBytes)").
 */
export function readWholeMessage(path: string, option: string, max: number, limit: string): Buffer {
  const refuse = (size: string): never => {
    throw new UsageError(`${option} ${path} is ${size}: an Ed25519 key signs the whole file and ${limit}; use an ECDSA or RSA key for large images`);
  };
  try {
    const st = statSync(path);
    if (st.isFile() && st.size > max) refuse(`${st.size} bytes`);
    return readBounded(path, max, option);
  } catch (err) {
    if ((err as { code?: unknown }).code === 'MESSAGE_TOO_LARGE') return refuse(`larger than ${max} bytes`);
    throw err;
  }
}

/**
 * Reads a file of at most `max` bytes, refusing a larger one before reading it (MESSAGE_TOO_LARGE naming
 * `what`); reads through one descriptor, so a file that grows meanwhile is still cut off at `max + 1`. A pipe,
 * FIFO or character device (no size to go by) is read in chunks until its end, refused once it passes `max`.
 */
export function readBounded(path: string, max: number, what: string): Buffer {
  const fd = openSync(path, 'r');
  try {
    const st = fstatSync(fd);
    if (st.isDirectory()) throw new SigilError('INVALID_ARGUMENT', `${what} ${path} is a directory`);
    const tooLarge = (): never => {
      throw new SigilError('MESSAGE_TOO_LARGE', `${what} ${path} is larger than ${max >= 1048576 ? `${max / 1048576} MiB` : `${max / 1024} KiB`}`);
    };
    if (!st.isFile()) return readStream(fd, max, tooLarge);
    if (st.size > max) tooLarge();
    const buf = Buffer.alloc(Math.min(st.size, max) + 1);
    let n = 0;
    for (;;) {
      if (n === buf.length) {
        if (n > max) tooLarge();
        throw new SigilError('INVALID_ARGUMENT', `${what} ${path} grew while it was read`);
      }
      const r = readSync(fd, buf, n, buf.length - n, null);
      if (r === 0) break;
      n += r;
    }
    return buf.subarray(0, n);
  } finally {
    closeSync(fd);
  }
}

/** Reads a descriptor without a size (a pipe, a FIFO) to its end in chunks, at most `max + 1` bytes in memory. */
function readStream(fd: number, max: number, tooLarge: () => never): Buffer {
  const chunks: Buffer[] = [];
  // One scratch buffer, copied out by what each read gave (a pipe gives 64 KiB at a time, often less).
  const scratch = Buffer.allocUnsafe(1 << 20);
  let n = 0;
  for (;;) {
    const r = readSync(fd, scratch, 0, Math.min(scratch.length, max + 1 - n), null);
    if (r === 0) break;
    chunks.push(Buffer.from(scratch.subarray(0, r)));
    n += r;
    if (n > max) tooLarge();
  }
  return Buffer.concat(chunks, n);
}

/**
 * An output file made ready before the work that fills it (so a bad path fails before anything is signed),
 * written whole at `commit`: into a temporary file beside it, then renamed over it, so a failure never leaves
 * half a file. `discard` removes the temporary file (call it when the work fails).
 */
export interface OutFile {
  commit(data: Buffer | string): void;
  discard(): void;
}

/**
 * Opens a temporary file in the directory of `path` (the option that named it, e.g. `--out`, in every error):
 * a missing directory, a path that is a directory, or one that cannot be written is a usage error now.
 */
export function openOut(path: string, option: string): OutFile {
  const fail = (why: string): never => {
    throw new UsageError(`cannot write ${path} (${option}): ${why}`);
  };
  // Through a symlink to the file it names (the link stays); an existing file keeps its mode.
  let target = path;
  let mode = 0o644;
  try {
    target = realpathSync(path);
    const st = statSync(target);
    if (st.isDirectory()) fail('it is a directory');
    // A device, FIFO or socket (/dev/stdout, a pipe) is written as it is: there is nothing to rename over.
    if (!st.isFile()) return directOut(target, path, option, fail);
    mode = st.mode & 0o777;
  } catch (err) {
    if (err instanceof UsageError) throw err;
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') fail(fileErrorWords(err));
    // A dangling symlink: the file it names is made.
    try {
      if (lstatSync(path).isSymbolicLink()) target = resolve(dirname(path), readlinkSync(path));
    } catch {
      // No link either: the path itself is made.
    }
  }
  const tmp = join(dirname(target), `.${basename(target)}.${randomBytes(6).toString('hex')}.tmp`);
  let fd: number | null;
  try {
    fd = openSync(tmp, 'wx', mode);
    fchmodSync(fd, mode);
  } catch (err) {
    return fail(fileErrorWords(err));
  }
  const discard = (): void => {
    if (fd === null) return;
    closeSync(fd);
    fd = null;
    try {
      unlinkSync(tmp);
    } catch {
      // Already gone: nothing to clean.
    }
  };
  return {
    commit(data) {
      if (fd === null) throw new Error(`${option} ${path} was already written`);
      try {
        writeAll(fd, data);
        fsyncSync(fd);
        closeSync(fd);
        fd = null;
        renameSync(tmp, target);
      } catch (err) {
        discard();
        try {
          unlinkSync(tmp);
        } catch {
          // Never made or already gone.
        }
        throw new Error(`cannot write ${path} (${option}): ${fileErrorWords(err)}`);
      }
    },
    discard,
  };
}

function writeAll(fd: number, data: Buffer | string): void {
  const buf = typeof data === 'string' ? Buffer.from(data) : data;
  for (let n = 0; n < buf.length; ) n += writeSync(fd, buf, n, buf.length - n);
}

/** An OutFile for a device, FIFO or socket: opened now (a path that cannot be written fails here), written at commit. */
function directOut(target: string, path: string, option: string, fail: (why: string) => never): OutFile {
  let fd: number | null;
  try {
    fd = openSync(target, 'w');
  } catch (err) {
    return fail(fileErrorWords(err));
  }
  const discard = (): void => {
    if (fd !== null) closeSync(fd);
    fd = null;
  };
  return {
    commit(data) {
      if (fd === null) throw new Error(`${option} ${path} was already written`);
      try {
        writeAll(fd, data);
      } catch (err) {
        throw new Error(`cannot write ${path} (${option}): ${fileErrorWords(err)}`);
      } finally {
        discard();
      }
    },
    discard,
  };
}

/** The status of a file an option names, or a usage error that names the option. */
export function statNamed(path: string, option: string): Stats {
  try {
    return statSync(path);
  } catch (err) {
    throw new UsageError(`cannot read ${path} (${option}): ${fileErrorWords(err)}`);
  }
}
