import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { initSoftHsmToken } from '../../src/dev/softhsm.ts';
import type { Pkcs11Config } from '../../src/signers/pkcs11/config.ts';

/** A fresh SoftHSM token in its own temp dir, with a ready pkcs11 backend config. */
export interface TempToken {
  dir: string;
  conf: string;
  module: string;
  label: string;
  pinFile: string;
  soPinFile: string;
  config: Pkcs11Config;
  /** Removes the temp dir and its token. */
  cleanup(): Promise<void>;
}

/** Creates a SoftHSM token labelled `label` under a new temp dir; one per test file. */
export async function tempToken(label = 'sigil'): Promise<TempToken> {
  const dir = await mkdtemp(join(tmpdir(), 'sigil-softhsm-'));
  try {
    const t = await initSoftHsmToken({ dir, label });
    return {
      dir,
      conf: t.conf,
      module: t.module,
      label: t.label,
      pinFile: t.pinFile,
      soPinFile: t.soPinFile,
      config: { type: 'pkcs11', module: t.module, token: t.label, pinFile: t.pinFile, sessions: 4, signThread: false, softhsmConf: t.conf },
      cleanup: () => rm(dir, { recursive: true, force: true }),
    };
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
}
