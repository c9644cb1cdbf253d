import { closeSync, createReadStream, fstatSync, openSync, readSync, statSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { SingleBar, Presets } from 'cli-progress';
import { Algorithm } from '../gen/sigil/v1/signer.ts';
import { SigilError } from '../errors.ts';

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

/** Hashes a file while streaming it from disk, with a progress bar on stderr when `showProgress`. */
export async function hashFile(path: string, hash: 'sha256' | 'sha384', showProgress: boolean): Promise<Buffer> {
  const h = createHash(hash);
  await streamFile(path, showProgress, (c) => h.update(c));
  return h.digest();
}

/**
 * Reads a file of at most `max` bytes, refusing a larger one before reading it (MESSAGE_TOO_LARGE naming
 * `what`); reads through one descriptor, so a file that grows meanwhile is still cut off at `max + 1`.
 */
export function readBounded(path: string, max: number, what: string): Buffer {
  const fd = openSync(path, 'r');
  try {
    const st = fstatSync(fd);
    if (st.isDirectory()) throw new SigilError('INVALID_ARGUMENT', `${what} ${path} is a directory`);
    const tooLarge = (): never => {
      throw new SigilError('MESSAGE_TOO_LARGE', `${what} ${path} is larger than ${max / 1048576} MiB`);
    };
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
