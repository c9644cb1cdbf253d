import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, mkdir, readFile, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** Where distributions install the SoftHSM2 PKCS#11 module, most common first. */
export const SOFTHSM_MODULE_PATHS: readonly string[] = [
  '/usr/lib/softhsm/libsofthsm2.so',
  '/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so',
  '/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so',
  '/usr/lib64/softhsm/libsofthsm2.so',
  '/usr/lib64/pkcs11/libsofthsm2.so',
  '/usr/local/lib/softhsm/libsofthsm2.so',
];

/** The path of the installed SoftHSM2 module, or null when SoftHSM is not installed. */
export function findSoftHsmModule(): string | null {
  return SOFTHSM_MODULE_PATHS.find((p) => existsSync(p)) ?? null;
}

/** A SoftHSM token ready for the pkcs11 backend: its config file, module, label and secret files. */
export interface SoftHsmToken {
  conf: string;
  module: string;
  label: string;
  pinFile: string;
  soPinFile: string;
  tokenDir: string;
}

/** The text of a private softhsm2.conf whose tokens live in `tokenDir`. */
export function softHsmConfText(tokenDir: string): string {
  return `# written by sigil for development and tests\ndirectories.tokendir = ${tokenDir}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n`;
}

/**
 * Creates (or reuses) a SoftHSM token labelled `label` under `dir` with its own softhsm2.conf, a random
 * user PIN and SO PIN in 0600 files. For development and tests only.
 */
export async function initSoftHsmToken(opts: { dir: string; label: string }): Promise<SoftHsmToken> {
  const module = findSoftHsmModule();
  if (module === null) throw new Error('softhsm2 is not installed: no libsofthsm2.so found');
  const dir = resolve(opts.dir);
  const label = opts.label;
  const tokenDir = join(dir, 'tokens');
  const conf = join(dir, 'softhsm2.conf');
  const pinFile = join(dir, 'user.pin');
  const soPinFile = join(dir, 'so.pin');
  await mkdir(tokenDir, { recursive: true, mode: 0o700 });
  await chmod(dir, 0o700);
  const env = { ...process.env, SOFTHSM2_CONF: conf };

  if (existsSync(conf) && existsSync(pinFile) && existsSync(soPinFile)) {
    const { stdout } = await run('softhsm2-util', ['--show-slots'], { env });
    if (tokenLabels(stdout).includes(label)) return { conf, module, label, pinFile, soPinFile, tokenDir };
  }
  await writeFile(conf, softHsmConfText(tokenDir), { mode: 0o600 });
  const pin = existsSync(pinFile) ? (await readFile(pinFile, 'utf8')).trim() : randomBytes(12).toString('hex');
  const soPin = existsSync(soPinFile) ? (await readFile(soPinFile, 'utf8')).trim() : randomBytes(12).toString('hex');
  await writeFile(pinFile, `${pin}\n`, { mode: 0o600 });
  await writeFile(soPinFile, `${soPin}\n`, { mode: 0o600 });
  // The PINs appear on softhsm2-util's command line, visible in `ps` for a moment: acceptable for a
  // throwaway dev or test token, never for a real one.
  await run('softhsm2-util', ['--init-token', '--free', '--label', label, '--so-pin', soPin, '--pin', pin], { env });
  return { conf, module, label, pinFile, soPinFile, tokenDir };
}

function tokenLabels(showSlots: string): string[] {
  const labels: string[] = [];
  for (const m of showSlots.matchAll(/^\s*Label:\s*(.*)$/gm)) labels.push(m[1]!.trim());
  return labels;
}
