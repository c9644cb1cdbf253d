import { open, rename } from 'node:fs/promises';
import { join } from 'node:path';

/**
 * Replaces `dir/file` with `body` (mode 0600) so that a crash leaves the old file or the new one, never
 * a mix: written whole to a temporary file, synced, renamed over the old one, and the directory synced.
 */
export async function writeStateFile(dir: string, file: string, body: string): Promise<void> {
  const path = join(dir, file);
  const tmp = `${path}.tmp`;
  const fh = await open(tmp, 'w', 0o600);
  try {
    await fh.writeFile(body);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(tmp, path);
  // The rename is durable only once the directory is synced.
  const dh = await open(dir, 'r');
  try {
    await dh.sync();
  } finally {
    await dh.close();
  }
}
