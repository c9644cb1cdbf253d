import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { cp, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { launchSwtpm, prepareSwtpmState, type SwtpmState } from '../../src/dev/swtpm.ts';
import { isSigilError } from '../../src/errors.ts';
import { KeyTable } from '../../src/signers/tpm/key-table.ts';
import { signingKeyTemplate } from '../../src/signers/tpm/templates.ts';
import { TPM_RH } from '../../src/tpm/constants.ts';
import { SRK_TEMPLATE_ECC, templateBytes } from '../../src/tpm/templates.ts';
import { Tpm } from '../../src/tpm/tpm.ts';
import { readEk } from '../../src/tpm/attestation-client.ts';
import { spkiOf } from '../../src/tpm/structures.ts';
import { ekHash } from '../../src/attest/ek.ts';

/** A running swtpm (TPM 2.0 simulator) on 127.0.0.1 with EK certificates issued by a local CA. */
export interface Swtpm {
  host: '127.0.0.1';
  /** TCP command port; the control port is `port + 1`. */
  port: number;
  /** TCTI string for tpm2-tools (`TPM2TOOLS_TCTI`) and for `openTransport`. */
  tcti: string;
  /** This instance's own copy of the TPM state. */
  stateDir: string;
  /** PEM bundle: the swtpm_localca root and the intermediate that issued the EK certificates. */
  ekCaFile: string;
  /** The intermediate CA that issued the EK certificates: its PEM certificate and private key (shared, read only). */
  ekIssuer: { certFile: string; keyFile: string };
  /** Sends a signal to the swtpm process (SIGSTOP and SIGCONT pause and resume it). */
  signal(sig: NodeJS.Signals): void;
  /** Kills swtpm and removes its temp dir. */
  stop(): Promise<void>;
}

/** Options of `startSwtpm`. */
export interface SwtpmOptions {
  /** Extra arguments for `swtpm socket`. */
  extraArgs?: string[];
}

let prepared: Promise<SwtpmState> | undefined;
const children = new Set<ChildProcess>();
const dirs = new Set<string>();

process.once('exit', () => {
  for (const c of children) c.kill('SIGKILL');
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

// swtpm_setup runs once per test process (~1 s); each instance then copies that state (~30 ms).
function preparedState(): Promise<SwtpmState> {
  prepared ??= (async () => {
    const dir = await mkdtemp(join(tmpdir(), 'sigil-swtpm-prep-'));
    dirs.add(dir);
    return prepareSwtpmState(dir);
  })().catch((err: unknown) => {
    prepared = undefined;
    throw err;
  });
  return prepared;
}

/**
 * Starts a swtpm on free ports over a copy of a state prepared once per process (EK certs included).
 * Every test file starts its own and stops it in `after`.
 */
export async function startSwtpm(opts: SwtpmOptions = {}): Promise<Swtpm> {
  const prep = await preparedState();
  const dir = await mkdtemp(join(tmpdir(), 'sigil-swtpm-'));
  dirs.add(dir);
  try {
    const stateDir = join(dir, 'state');
    await cp(prep.state, stateDir, { recursive: true });
    const ekCaFile = join(dir, 'ek-ca.pem');
    await cp(prep.caBundle, ekCaFile);
    const tpm = await launchSwtpm(stateDir, opts.extraArgs ?? []);
    children.add(tpm.child);
    tpm.child.once('exit', () => children.delete(tpm.child));
    return {
      host: '127.0.0.1',
      port: tpm.port,
      tcti: tpm.tcti,
      stateDir,
      ekCaFile,
      ekIssuer: { certFile: prep.issuerCert, keyFile: prep.issuerKey },
      signal: (sig) => void tpm.child.kill(sig),
      async stop() {
        await tpm.stop();
        await rm(dir, { recursive: true, force: true });
        dirs.delete(dir);
      },
    };
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    dirs.delete(dir);
    throw err;
  }
}

/** Environment for spawning tpm2-tools against `s`. */
export function swtpmEnv(s: Swtpm): { TPM2TOOLS_TCTI: string } {
  return { TPM2TOOLS_TCTI: s.tcti };
}

/**
 * Pauses `sw` until `probe` (a call on the backend under test) failed with BACKEND_UNAVAILABLE and the
 * backend's socket timed out, so the backend hangs up; swtpm serves one connection, so the next call reconnects.
 */
export async function dropTpmConnection(sw: Swtpm, probe: () => Promise<unknown>): Promise<void> {
  sw.signal('SIGSTOP');
  try {
    await assert.rejects(probe(), (e) => isSigilError(e, 'BACKEND_UNAVAILABLE'));
    await new Promise((r) => setTimeout(r, 300));
  } finally {
    sw.signal('SIGCONT');
  }
}

/** Runs `f` with a TPM client of its own on `sw` (a second user of the TPM, as another process would be). */
export async function withTpmClient<T>(sw: Swtpm, f: (tpm: Tpm) => Promise<T>): Promise<T> {
  const tpm = await Tpm.open(sw.tcti);
  try {
    return await f(tpm);
  } finally {
    await tpm.close();
  }
}

/** The EK hash sigild knows a builder on `sw` by (the RSA EK sigil-agent uses by default). */
export async function swtpmEkHash(sw: Swtpm): Promise<string> {
  return withTpmClient(sw, async (tpm) => {
    const ek = await readEk(tpm, 'rsa');
    await tpm.flushContext(ek.handle);
    return ekHash(spkiOf(ek.public));
  });
}

/**
 * The hex authValue the TPM backend with state directory `stateDir` gave the key it persisted at `handle`
 * (`0x81......`), for tpm2-tools' `-p hex:...`; throws when that table has none.
 */
export async function tpmKeyAuth(stateDir: string, handle: string): Promise<string> {
  const auth = (await KeyTable.open(stateDir)).byHandle(Number.parseInt(handle, 16))?.auth;
  if (auth === undefined) throw new Error(`the tpm key table in ${stateDir} has no authValue for ${handle}`);
  return auth;
}

/**
 * Creates a P-256 signing key with an empty authValue under the standard SRK and persists it at `handle` (the
 * way another TPM user, or sigil before it set authValues, makes one); returns its name.
 */
export async function persistP256Key(tpm: Tpm, handle: number): Promise<Buffer> {
  const srk = await tpm.createPrimary(TPM_RH.OWNER, templateBytes(SRK_TEMPLATE_ECC));
  try {
    const made = await tpm.create(srk.handle, templateBytes(signingKeyTemplate('EC_P256')!));
    const loaded = await tpm.load(srk.handle, made.private, made.public);
    try {
      await tpm.evictControl(loaded.handle, handle);
    } finally {
      await tpm.flushContext(loaded.handle);
    }
    return loaded.name;
  } finally {
    await tpm.flushContext(srk.handle);
  }
}

/**
 * Makes a P-256 key on `sw` the way sigil's TPM backend did before it set an authValue: TPM2_Create under
 * the standard SRK with an empty userAuth, persisted at `handle`, and an entry without `auth` in the key
 * table in `stateDir` (no backend may have that directory or the TPM open meanwhile).
 */
export async function makeEmptyAuthKey(sw: Swtpm, stateDir: string, label: string, handle: number): Promise<void> {
  const name = await withTpmClient(sw, (tpm) => persistP256Key(tpm, handle));
  const table = await KeyTable.open(stateDir);
  await table.put({ label, handle, name: name.toString('hex'), algorithm: 'ECDSA_P256_SHA256', createdAt: new Date().toISOString() });
}
