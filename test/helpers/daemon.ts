import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { createDevCa, issueLeaf, type PemPair } from '../../src/dev/pki.ts';
import { parseConfig } from '../../src/config/load.ts';
import { startDaemon, type Daemon } from '../../src/main.ts';
import { connect, type Clients } from '../../src/cli/client.ts';
import { pino } from 'pino';
import { Writable } from 'node:stream';
import { tempToken, type TempToken } from './softhsm.ts';
import type { Clock } from '../../src/clock.ts';
import { decodeEntry, type AuditEntry } from '../../src/audit/entry.ts';

/** Client credential files of one identity. */
export interface Identity {
  cert: string;
  key: string;
}

/** A daemon on 127.0.0.1:0 over a fresh SoftHSM token, with admin, signer, no-role and outsider identities. */
export interface TestDaemon {
  dir: string;
  /** The daemon running now (after `restart`, the new one). */
  readonly daemon: Daemon;
  /** Its gRPC address (a restart listens on a new free port). */
  readonly address: string;
  token: TempToken;
  ca: string;
  /**
   * Files of each client identity: `admin` and `admin2` (role admin), `approver` and `approver2` (role approver),
   * `signer` (role signer), `auditor` (role auditor), `nobody` (trusted, no role), `outsider` (another CA).
   */
  ids: Record<'admin' | 'admin2' | 'approver' | 'approver2' | 'signer' | 'auditor' | 'nobody' | 'outsider', Identity>;
  /** Every log line the daemon wrote so far, parsed. */
  logs(): Array<Record<string, unknown>>;
  /** Every entry of the daemon's audit log so far, decoded. */
  auditEntries(): AuditEntry[];
  /** The config file the daemon runs with (and re-reads at `daemon.reload()`), for starting it as a subprocess too. */
  configFile: string;
  /** Clients of the running daemon, authenticated as an identity (or with no client certificate). */
  client(who: keyof TestDaemon['ids'] | 'anonymous'): Clients;
  /** Stops the daemon and closes the clients `client` made, keeping its files (token, store, audit log) for a restart. */
  stopDaemon(): Promise<void>;
  /**
   * Starts a daemon again on the same config and files (stopping the running one first), with the same clock
   * and log lines; `client`, `auditEntries` and `logs` follow it. When the start fails, no daemon runs.
   */
  restart(): Promise<Daemon>;
  /** Stops the daemon if one runs and removes every file. */
  stop(): Promise<void>;
}

async function writePair(dir: string, name: string, p: PemPair): Promise<Identity> {
  const cert = join(dir, `${name}.pem`);
  const key = join(dir, `${name}-key.pem`);
  await writeFile(cert, p.cert);
  await writeFile(key, p.key, { mode: 0o600 });
  return { cert, key };
}

/** Starts sigild in this process on a free port; every test file makes its own. `clock` replaces the wall clock. */
export async function startTestDaemon(opts: { extraConfig?: Record<string, unknown>; extraBackends?: Record<string, unknown>; clock?: Clock } = {}): Promise<TestDaemon> {
  const dir = await mkdtemp(join(tmpdir(), 'sigil-e2e-'));
  const token = await tempToken('sigil');
  const ca = await createDevCa('sigil test operator CA');
  const other = await createDevCa('someone else');
  const caFile = join(dir, 'ca.pem');
  await writeFile(caFile, ca.cert);
  const server = await writePair(dir, 'server', await issueLeaf(ca, { cn: 'sigild', usage: 'server', dns: ['localhost'], ips: ['127.0.0.1'] }));
  const ids = {
    admin: await writePair(dir, 'admin', await issueLeaf(ca, { cn: 'test-admin', usage: 'client' })),
    admin2: await writePair(dir, 'admin2', await issueLeaf(ca, { cn: 'test-admin-2', usage: 'client' })),
    approver: await writePair(dir, 'approver', await issueLeaf(ca, { cn: 'test-approver', usage: 'client' })),
    approver2: await writePair(dir, 'approver2', await issueLeaf(ca, { cn: 'test-approver-2', usage: 'client' })),
    signer: await writePair(dir, 'signer', await issueLeaf(ca, { cn: 'ci-signer-1', usage: 'client' })),
    auditor: await writePair(dir, 'auditor', await issueLeaf(ca, { cn: 'test-auditor', usage: 'client' })),
    nobody: await writePair(dir, 'nobody', await issueLeaf(ca, { cn: 'nobody', usage: 'client' })),
    outsider: await writePair(dir, 'outsider', await issueLeaf(other, { cn: 'test-admin', usage: 'client' })),
  };
  const config = {
    mode: 'development',
    listen: '127.0.0.1:0',
    metrics: { listen: '127.0.0.1:0' },
    tls: { certFile: server.cert, keyFile: server.key, clientCaFile: caFile },
    auth: { roles: { admin: ['cn:test-admin', 'cn:test-admin-2'], approver: ['cn:test-approver', 'cn:test-approver-2'], signer: ['cn:ci-signer-*'], auditor: ['cn:test-auditor'] } },
    store: { sqlite: { path: join(dir, 'sigil.db') } },
    backends: { softhsm: token.config, ...opts.extraBackends },
    defaultBackend: 'softhsm',
    log: { level: 'silent' },
    ...opts.extraConfig,
  };
  const configFile = join(dir, 'config.yaml');
  const text = stringify(config);
  await writeFile(configFile, text);
  const lines: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      lines.push(...chunk.toString().split('\n').filter(Boolean));
      cb();
    },
  });
  // The file, not `text`: a test may change the config between restarts.
  const start = async (): Promise<Daemon> => startDaemon(parseConfig(await readFile(configFile, 'utf8'), configFile), { log: pino({ level: 'debug' }, sink), configFile, ...(opts.clock ? { clock: opts.clock } : {}) });
  let daemon = await start();
  let running = true;
  const opened: Clients[] = [];
  const stopDaemon = async (): Promise<void> => {
    for (const c of opened.splice(0)) c.close();
    if (!running) return;
    running = false;
    await daemon.stop();
  };
  return {
    dir,
    get daemon() {
      return daemon;
    },
    get address() {
      return daemon.address;
    },
    token,
    ca: caFile,
    ids,
    configFile,
    logs: () => lines.map((l) => JSON.parse(l) as Record<string, unknown>),
    auditEntries: () => {
      const out: AuditEntry[] = [];
      while (out.length < daemon.audit.size) {
        const page = daemon.audit.entries(out.length, daemon.audit.size - out.length);
        if (page.length === 0) break;
        for (const e of page) out.push(decodeEntry(e.data));
      }
      return out;
    },
    client: (who) => {
      const id = who === 'anonymous' ? undefined : ids[who];
      const c = connect({ addr: daemon.address, ca: caFile, cert: id?.cert, key: id?.key });
      opened.push(c);
      return c;
    },
    stopDaemon,
    restart: async () => {
      await stopDaemon();
      daemon = await start();
      running = true;
      return daemon;
    },
    stop: async () => {
      await stopDaemon();
      await token.cleanup();
      await rm(dir, { recursive: true, force: true });
    },
  };
}
