import { readFile, stat } from 'node:fs/promises';
import { SigilError } from '../errors.ts';
import type { Logger } from '../log.ts';

/**
 * Reads a file that holds a secret (a PIN, credentials) named `what` in messages: CONFIG_INVALID naming the
 * file, never its content, when it cannot be read; a warning (with its mode) when group or others may read it.
 */
export async function readSecretFile(path: string, what: string, log: Logger): Promise<string> {
  let text: string;
  let mode: number;
  try {
    text = await readFile(path, 'utf8');
    mode = (await stat(path)).mode & 0o777;
  } catch (err) {
    throw new SigilError('CONFIG_INVALID', `cannot read ${what} ${path}: ${(err as NodeJS.ErrnoException).code ?? 'error'}`);
  }
  if (mode & 0o077) log.warn({ file: path, mode: mode.toString(8) }, `${what} is readable by group or others; chmod 600 it`);
  return text;
}
