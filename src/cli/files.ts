import { createReadStream, statSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { SingleBar, Presets } from 'cli-progress';
import { Algorithm } from '../gen/sigil/v1/signer.ts';

/** The hash each algorithm's digests are made with; null for Ed25519, which signs whole messages. */
export const HASH_OF: Readonly<Record<number, 'sha256' | 'sha384' | null>> = {
  [Algorithm.ECDSA_P256_SHA256]: 'sha256',
  [Algorithm.ECDSA_P384_SHA384]: 'sha384',
  [Algorithm.RSA_PKCS1_SHA256]: 'sha256',
  [Algorithm.RSA_PSS_SHA256]: 'sha256',
  [Algorithm.ED25519]: null,
};

/** Hashes a file while streaming it from disk, with a progress bar on stderr when `showProgress`. */
export async function hashFile(path: string, hash: 'sha256' | 'sha384', showProgress: boolean): Promise<Buffer> {
  const size = statSync(path).size;
  const h = createHash(hash);
  const bar = showProgress ? new SingleBar({ format: 'hashing |{bar}| {percentage}% {value}/{total} MiB', stream: process.stderr, clearOnComplete: true, hideCursor: true }, Presets.shades_classic) : null;
  const mib = (n: number): number => Math.round((n / 1048576) * 10) / 10;
  bar?.start(mib(size), 0);
  let done = 0;
  for await (const chunk of createReadStream(path, { highWaterMark: 1 << 20 })) {
    h.update(chunk as Buffer);
    done += (chunk as Buffer).length;
    bar?.update(mib(done));
  }
  bar?.stop();
  return h.digest();
}
