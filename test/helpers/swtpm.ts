import { spawn, type ChildProcess } from 'node:child_process';
import { execFile } from 'node:child_process';
import { rmSync } from 'node:fs';
import { cp, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer, connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

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
  /** Kills swtpm and removes its temp dir. */
  stop(): Promise<void>;
}

/** Options of `startSwtpm`. */
export interface SwtpmOptions {
  /** Extra arguments for `swtpm socket`. */
  extraArgs?: string[];
}

interface Prepared {
  dir: string;
  state: string;
  caBundle: string;
}

let prepared: Promise<Prepared> | undefined;
const children = new Set<ChildProcess>();
const dirs = new Set<string>();

process.once('exit', () => {
  for (const c of children) c.kill('SIGKILL');
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

// swtpm_setup with swtpm_localca creates the EKs (RSA 2048 at 0x81010001, ECC P-384 at 0x81010016),
// their certificates in NV and a platform certificate; done once per process, then copied.
async function prepare(): Promise<Prepared> {
  const dir = await mkdtemp(join(tmpdir(), 'sigil-swtpm-prep-'));
  dirs.add(dir);
  const ca = join(dir, 'ca');
  const state = join(dir, 'state');
  await mkdir(ca);
  await mkdir(state);
  await writeFile(
    join(dir, 'setup.conf'),
    [
      'create_certs_tool = /usr/bin/swtpm_localca',
      `create_certs_tool_config = ${join(dir, 'localca.conf')}`,
      `create_certs_tool_options = ${join(dir, 'localca.options')}`,
      'active_pcr_banks = sha256',
      '',
    ].join('\n'),
  );
  await writeFile(
    join(dir, 'localca.conf'),
    [
      `statedir = ${ca}`,
      `signingkey = ${join(ca, 'signkey.pem')}`,
      `issuercert = ${join(ca, 'issuercert.pem')}`,
      `certserial = ${join(ca, 'certserial')}`,
      '',
    ].join('\n'),
  );
  await writeFile(
    join(dir, 'localca.options'),
    '--platform-manufacturer sigil\n--platform-version 2.1\n--platform-model swtpm\n',
  );
  await run('swtpm_setup', [
    '--tpm2',
    '--tpmstate', state,
    '--config', join(dir, 'setup.conf'),
    '--create-ek-cert',
    '--create-platform-cert',
    '--lock-nvram',
    '--overwrite',
  ]);
  const root = await readFile(join(ca, 'swtpm-localca-rootca-cert.pem'), 'utf8');
  const intermediate = await readFile(join(ca, 'issuercert.pem'), 'utf8');
  const caBundle = join(dir, 'ek-ca.pem');
  await writeFile(caBundle, `${root.trimEnd()}\n${intermediate.trimEnd()}\n`);
  return { dir, state, caBundle };
}

function preparedState(): Promise<Prepared> {
  prepared ??= prepare().catch((err) => {
    prepared = undefined;
    throw err;
  });
  return prepared;
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      srv.close(() => (typeof addr === 'object' && addr !== null ? resolve(addr.port) : reject(new Error('no port'))));
    });
  });
}

function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.once('error', () => resolve(false));
    srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)));
  });
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host: '127.0.0.1', port });
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// Starts swtpm on port/port+1; resolves once the control port accepts, rejects if swtpm exits first.
// The control port is probed rather than the command port: swtpm serves one command connection at a
// time, and a probe there could race the first real client.
async function launch(stateDir: string, port: number, extraArgs: string[]): Promise<ChildProcess> {
  const child = spawn(
    'swtpm',
    [
      'socket', '--tpm2',
      '--tpmstate', `dir=${stateDir}`,
      '--server', `type=tcp,port=${port},bindaddr=127.0.0.1`,
      '--ctrl', `type=tcp,port=${port + 1},bindaddr=127.0.0.1`,
      '--flags', 'not-need-init,startup-clear',
      ...extraArgs,
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  children.add(child);
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  let exited = false;
  child.once('exit', () => {
    exited = true;
    children.delete(child);
  });
  const deadline = Date.now() + 5000;
  while (Date.now() < deadline) {
    if (exited) throw new Error(`swtpm exited at start: ${stderr.trim()}`);
    if ((await canConnect(port + 1)) && (await canConnect(port))) {
      if (!exited) return child;
    }
    await sleep(20);
  }
  child.kill('SIGKILL');
  throw new Error(`swtpm did not answer on port ${port}: ${stderr.trim()}`);
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
    let lastErr: unknown;
    for (let attempt = 0; attempt < 10; attempt++) {
      const port = await freePort();
      if (port >= 65535 || !(await portFree(port + 1))) continue;
      let child: ChildProcess;
      try {
        child = await launch(stateDir, port, opts.extraArgs ?? []);
      } catch (err) {
        lastErr = err;
        continue;
      }
      return {
        host: '127.0.0.1',
        port,
        tcti: `swtpm:host=127.0.0.1,port=${port}`,
        stateDir,
        ekCaFile,
        async stop() {
          if (child.exitCode === null && child.signalCode === null) {
            const gone = new Promise<void>((r) => child.once('exit', () => r()));
            child.kill('SIGTERM');
            const t = setTimeout(() => child.kill('SIGKILL'), 2000);
            await gone;
            clearTimeout(t);
          }
          await rm(dir, { recursive: true, force: true });
          dirs.delete(dir);
        },
      };
    }
    throw new Error(`could not start swtpm: ${String(lastErr)}`);
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
