import assert from 'node:assert/strict';
import pkcs11js from 'pkcs11js';
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

/**
 * A second, independent pkcs11js handle on a module the backend under test already initialized, to
 * inspect or change the token behind the backend's back.
 */
export function rawPkcs11(module: string): pkcs11js.PKCS11 {
  const raw = new pkcs11js.PKCS11();
  raw.load(module);
  try {
    raw.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
  } catch (e) {
    assert.equal((e as pkcs11js.Pkcs11Error).code, pkcs11js.CKR_CRYPTOKI_ALREADY_INITIALIZED);
  }
  return raw;
}
