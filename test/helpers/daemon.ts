import { mkdtemp, rm, writeFile } from 'node:fs/promises';
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
  daemon: Daemon;
  address: string;
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
  /** The config file the daemon runs with, for starting it as a subprocess too. */
  configFile: string;
  /** Clients authenticated as an identity (or with no client certificate). */
  client(who: keyof TestDaemon['ids'] | 'anonymous'): Clients;
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
export async function startTestDaemon(opts: { extraConfig?: Record<string, unknown>; extraBackends?: Record<string, unknown>; start?: boolean; clock?: Clock } = {}): Promise<TestDaemon> {
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
  const daemon = await startDaemon(parseConfig(text, configFile), { log: pino({ level: 'debug' }, sink), ...(opts.clock ? { clock: opts.clock } : {}) });
  const opened: Clients[] = [];
  return {
    dir,
    daemon,
    address: daemon.address,
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
    stop: async () => {
      for (const c of opened) c.close();
      await daemon.stop();
      await token.cleanup();
      await rm(dir, { recursive: true, force: true });
    },
  };
}
