import { spawn, type ChildProcess } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { connect, rpc } from '../src/cli/client.ts';
import { createDevCa, issueLeaf } from '../src/dev/pki.ts';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** The operator PKI a benchmark's sigild runs with: file paths under the benchmark's directory. */
export interface BenchPki {
  ca: string;
  serverCert: string;
  serverKey: string;
  /** Client `CN=bench-admin` (map it to the admin role). */
  adminCert: string;
  adminKey: string;
  /** Client `CN=bench-signer` (map it to the signer role). */
  signerCert: string;
  signerKey: string;
}

/** Writes `text` to `dir/name`, readable by its owner only, and returns the path. */
export async function writePrivate(dir: string, name: string, text: string): Promise<string> {
  const p = join(dir, name);
  await writeFile(p, text, { mode: 0o600 });
  return p;
}

/** Makes an operator CA named `caName`, a server certificate for 127.0.0.1 and the admin and signer clients, in `dir`. */
export async function writeBenchPki(dir: string, caName: string): Promise<BenchPki> {
  const ca = await createDevCa(caName);
  const server = await issueLeaf(ca, { cn: 'sigild', usage: 'server', dns: ['localhost'], ips: ['127.0.0.1'] });
  const admin = await issueLeaf(ca, { cn: 'bench-admin', usage: 'client' });
  const signer = await issueLeaf(ca, { cn: 'bench-signer', usage: 'client' });
  return {
    ca: await writePrivate(dir, 'ca.pem', ca.cert),
    serverCert: await writePrivate(dir, 'server.pem', server.cert),
    serverKey: await writePrivate(dir, 'server-key.pem', server.key),
    adminCert: await writePrivate(dir, 'admin.pem', admin.cert),
    adminKey: await writePrivate(dir, 'admin-key.pem', admin.key),
    signerCert: await writePrivate(dir, 'signer.pem', signer.cert),
    signerKey: await writePrivate(dir, 'signer-key.pem', signer.key),
  };
}

/** sigild as a benchmark runs it: a subprocess, its recent output, and how to stop it. */
export interface SigildProcess {
  child: ChildProcess;
  /** The last 20 kB the daemon wrote to stdout and stderr. */
  output(): string;
  stop(): Promise<void>;
}

/**
 * Starts `bin/sigild.js serve --config FILE` as users run it (the launcher picks `dist/` and adds the heap
 * flags) and resolves once an admin's ListKeys answers at `addr`; fails with the daemon's output when it exits
 * or stays silent for 30 s. SIGIL_BENCH_TEE=1 copies its output to this process's stderr.
 */
export async function spawnSigild(configFile: string, admin: { addr: string; ca: string; cert: string; key: string }): Promise<SigildProcess> {
  const child = spawn(process.execPath, [join(ROOT, 'bin/sigild.js'), 'serve', '--config', configFile], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env } });
  let out = '';
  const keep = (d: Buffer): void => {
    if (process.env.SIGIL_BENCH_TEE) process.stderr.write(d);
    out = (out + d.toString()).slice(-20000);
  };
  child.stdout!.on('data', keep);
  child.stderr!.on('data', keep);
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  const c = connect(admin);
  try {
    const deadline = Date.now() + 30000;
    for (;;) {
      if (child.exitCode !== null) throw new Error(`sigild exited at start:\n${out}`);
      if (await rpc.adminListKeys(c, { prefix: '' }).then(() => true, () => false)) break;
      if (Date.now() > deadline) throw new Error(`sigild did not answer within 30 s:\n${out}`);
      await sleep(100);
    }
  } finally {
    c.close();
  }
  return {
    child,
    output: () => out,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        const t = setTimeout(() => child.kill('SIGKILL'), 15000);
        await exited;
        clearTimeout(t);
      }
    },
  };
}
