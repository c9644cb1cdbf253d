import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { createServer, connect } from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

// swtpm (a TPM 2.0 simulator) for `sigild dev`'s demo builder and for tests: a state with EK
// certificates from a local CA (swtpm_localca), and a launcher on free loopback ports.

/** A prepared swtpm state: the TPM state directory and the EK CA bundle that issued its EK certificates. */
export interface SwtpmState {
  state: string;
  /** PEM: the swtpm_localca root and the intermediate that issued the EK certificates. */
  caBundle: string;
  /** The intermediate's certificate (PEM) and private key (swtpm_localca's `signkey.pem`), for tests that revoke EK certificates. */
  issuerCert: string;
  issuerKey: string;
}

/** A running swtpm. */
export interface RunningSwtpm {
  /** TCP command port; the control port is `port + 1`. */
  port: number;
  /** Transport spec for sigil-agent (`--tpm`) and `TPM2TOOLS_TCTI` for tpm2-tools. */
  tcti: string;
  child: ChildProcess;
  stop(): Promise<void>;
}

/**
 * Creates (once; later calls reuse it) a swtpm state under `dir` with an RSA-2048 EK and an ECC P-384
 * EK, their certificates in NV issued by a local CA under `dir/ca`, and only the sha256 PCR bank.
 */
export async function prepareSwtpmState(dir: string): Promise<SwtpmState> {
  const ca = join(dir, 'ca');
  const state = join(dir, 'state');
  const caBundle = join(dir, 'ek-ca.pem');
  const issuer = { issuerCert: join(ca, 'issuercert.pem'), issuerKey: join(ca, 'signkey.pem') };
  if (existsSync(caBundle) && existsSync(join(state, 'tpm2-00.permall'))) return { state, caBundle, ...issuer };
  await mkdir(ca, { recursive: true, mode: 0o700 });
  await mkdir(state, { recursive: true, mode: 0o700 });
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
    [`statedir = ${ca}`, `signingkey = ${join(ca, 'signkey.pem')}`, `issuercert = ${join(ca, 'issuercert.pem')}`, `certserial = ${join(ca, 'certserial')}`, ''].join('\n'),
  );
  await writeFile(join(dir, 'localca.options'), '--platform-manufacturer sigil\n--platform-version 2.1\n--platform-model swtpm\n');
  await run('swtpm_setup', ['--tpm2', '--tpmstate', state, '--config', join(dir, 'setup.conf'), '--create-ek-cert', '--create-platform-cert', '--lock-nvram', '--overwrite']);
  const root = await readFile(join(ca, 'swtpm-localca-rootca-cert.pem'), 'utf8');
  const intermediate = await readFile(join(ca, 'issuercert.pem'), 'utf8');
  await writeFile(caBundle, `${root.trimEnd()}\n${intermediate.trimEnd()}\n`);
  return { state, caBundle, ...issuer };
}

/** Starts swtpm over `stateDir` on a free pair of loopback ports (retrying on a taken port). */
export async function launchSwtpm(stateDir: string, extraArgs: string[] = []): Promise<RunningSwtpm> {
  let lastErr: unknown;
  for (let attempt = 0; attempt < 10; attempt++) {
    const port = await freePort();
    if (port >= 65535 || !(await portFree(port + 1))) continue;
    let child: ChildProcess;
    try {
      child = await launch(stateDir, port, extraArgs);
    } catch (err) {
      lastErr = err;
      continue;
    }
    return {
      port,
      tcti: `swtpm:host=127.0.0.1,port=${port}`,
      child,
      async stop() {
        if (child.exitCode === null && child.signalCode === null) {
          const gone = new Promise<void>((r) => child.once('exit', () => r()));
          child.kill('SIGTERM');
          const t = setTimeout(() => child.kill('SIGKILL'), 2000);
          await gone;
          clearTimeout(t);
        }
      },
    };
  }
  throw new Error(`could not start swtpm: ${String(lastErr)}`);
}

/**
 * Stops the swtpm a killed `sigild dev` left running on `stateDir` (it holds the state's lock, so a new one could
 * not start), found by the pid file it was started with (`--pid file=`): only a process that still is that swtpm
 * (its command line names the state directory) gets SIGTERM, then SIGKILL after 3 s. The caller holds the data
 * directory's lock, so no live `sigild dev` owns that swtpm. Where there is no /proc, nothing is stopped.
 */
export async function stopLeftoverSwtpm(pidFile: string, stateDir: string): Promise<void> {
  let pid: number;
  try {
    pid = Number(readFileSync(pidFile, 'utf8').trim());
  } catch {
    return;
  }
  // A zombie or a gone process has no command line; a reused pid has another one.
  const isIt = (): boolean => {
    try {
      const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
      return /(^|\/)swtpm$/.test(cmd[0] ?? '') && cmd.includes(`dir=${stateDir}`);
    } catch {
      return false;
    }
  };
  if (Number.isSafeInteger(pid) && pid > 1 && isIt()) {
    for (const [signal, ms] of [['SIGTERM', 3000], ['SIGKILL', 2000]] as const) {
      try {
        process.kill(pid, signal);
      } catch {
        break;
      }
      const end = Date.now() + ms;
      while (isIt() && Date.now() < end) await sleep(20);
      if (!isIt()) break;
    }
  }
  rmSync(pidFile, { force: true });
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

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

// Resolves once both ports accept, rejects if swtpm exits first.
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
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  let exited = false;
  child.once('exit', () => (exited = true));
  const deadline = Date.now() + 5000;
  while (Date.now() < deadline) {
    if (exited) throw new Error(`swtpm exited at start: ${stderr.trim()}`);
    if ((await canConnect(port + 1)) && (await canConnect(port)) && !exited) return child;
    await sleep(20);
  }
  child.kill('SIGKILL');
  throw new Error(`swtpm did not answer on port ${port}: ${stderr.trim()}`);
}
