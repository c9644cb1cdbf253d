import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync, chmodSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { stringify } from 'yaml';
import { createDevCa, issueLeaf, type PemPair } from './pki.ts';
import { initSoftHsmToken } from './softhsm.ts';
import { prepareSwtpmState } from './swtpm.ts';
import { lockStore, type StoreLock } from '../store/store-lock.ts';

/** The store's file name inside a dev data directory. */
const DEV_STORE = 'sigil.db';

/** Paths of a prepared development data directory. */
export interface DevDir {
  dir: string;
  config: string;
  addrFile: string;
  client: { ca: string; adminCert: string; adminKey: string; signerCert: string; signerKey: string; approverCert: string; approverKey: string; auditorCert: string; auditorKey: string };
  /** The demo builder's TPM state (swtpm), whose EK CA the `dev` attestation policy trusts. */
  swtpmState: string;
  /** Where `sigild dev` writes the demo TPM's transport spec for `sigil-agent --tpm`. */
  tpmFile: string;
  /** The demo swtpm's pid file, by which a later start stops one a killed `sigild dev` left running. */
  swtpmPidFile: string;
  /** The store's lock, taken before anything in the directory was touched; `startDaemon` takes it over. */
  lock: StoreLock;
}

/**
 * Prepares (or reuses) everything `sigild dev` needs under one directory: a SoftHSM2 token with a
 * random PIN in a file, a development operator CA with server, admin, signer, approver and auditor certificates, and a
 * config that ties them together. Secrets are files of mode 0600 in directories of mode 0700. Takes the
 * store's lock first: a directory a daemon serves is refused with nothing in it changed.
 */
export async function prepareDevDir(dirArg: string, listen: string): Promise<DevDir> {
  const dir = resolve(dirArg);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const lock = lockStore(join(dir, DEV_STORE));
  try {
    return await prepare(dir, listen, lock);
  } catch (err) {
    lock.release();
    throw err;
  }
}

async function prepare(dir: string, listen: string, lock: StoreLock): Promise<DevDir> {
  chmodSync(dir, 0o700);
  // Left by a daemon that was killed: nobody serves this directory now (the lock says so).
  rmSync(join(dir, 'sigild.addr'), { force: true });
  rmSync(join(dir, 'tpm.spec'), { force: true });
  const hsm = await initSoftHsmToken({ dir: join(dir, 'softhsm'), label: 'sigil' });

  const pki = join(dir, 'pki');
  const client = join(dir, 'client');
  mkdirSync(pki, { recursive: true, mode: 0o700 });
  mkdirSync(client, { recursive: true, mode: 0o700 });
  const ca = await pair(join(pki, 'ca.pem'), join(pki, 'ca-key.pem'), () => createDevCa('sigil dev operator CA'));
  await pair(join(pki, 'server.pem'), join(pki, 'server-key.pem'), () =>
    issueLeaf(ca, { cn: 'sigild', usage: 'server', dns: ['localhost'], ips: ['127.0.0.1', '::1'] }),
  );
  await pair(join(client, 'admin.pem'), join(client, 'admin-key.pem'), () => issueLeaf(ca, { cn: 'sigil-admin', usage: 'client' }));
  await pair(join(client, 'signer.pem'), join(client, 'signer-key.pem'), () => issueLeaf(ca, { cn: 'sigil-signer', usage: 'client' }));
  // A second person for approvals (destroyNeedsApproval) and a read-only auditor, to try those roles.
  await pair(join(client, 'approver.pem'), join(client, 'approver-key.pem'), () => issueLeaf(ca, { cn: 'sigil-approver', usage: 'client' }));
  await pair(join(client, 'auditor.pem'), join(client, 'auditor-key.pem'), () => issueLeaf(ca, { cn: 'sigil-auditor', usage: 'client' }));
  writeFileSync(join(client, 'ca.pem'), ca.cert, { mode: 0o644 });

  // The demo builder's TPM: a swtpm state with EK certificates from a local CA (made once, ~1 s).
  const swtpm = await prepareSwtpmState(join(dir, 'swtpm'));
  const PCRS = [0, 1, 2, 3, 4, 5, 6, 7];
  const config = {
    mode: 'development',
    listen,
    metrics: { listen: '127.0.0.1:0' },
    tls: { certFile: 'pki/server.pem', keyFile: 'pki/server-key.pem', clientCaFile: 'pki/ca.pem' },
    auth: { roles: { admin: ['cn:sigil-admin'], signer: ['cn:sigil-admin', 'cn:sigil-signer'], approver: ['cn:sigil-approver'], auditor: ['cn:sigil-auditor'] } },
    store: { sqlite: { path: DEV_STORE } },
    backends: {
      softhsm: { type: 'pkcs11', module: hsm.module, token: hsm.label, pinFile: hsm.pinFile, softhsmConf: hsm.conf, sessions: 8 },
    },
    defaultBackend: 'softhsm',
    // The identity CA's key is created in the token on first start; any attested dev builder may use dev/* keys.
    identity: { trustDomain: 'sigil.dev' },
    authorization: { builders: [{ keys: ['dev/*'], identities: [{ san: 'spiffe://sigil.dev/builder/tpm/*' }] }] },
    // swtpm starts with PCRs 0-7 all zero; a real runner's policy pins its firmware's values or event log.
    attestation: {
      policies: {
        dev: { ekCaFiles: [swtpm.caBundle], pcrs: { bank: 'sha256', select: PCRS }, golden: [Object.fromEntries(PCRS.map((i) => [String(i), '00'.repeat(32)]))] },
      },
    },
  };
  const configPath = join(dir, 'config.yaml');
  writeFileSync(configPath, `${DEV_CONFIG_HEADER}${stringify(config)}`, { mode: 0o600 });
  return {
    dir,
    config: configPath,
    addrFile: join(dir, 'sigild.addr'),
    swtpmState: swtpm.state,
    tpmFile: join(dir, 'tpm.spec'),
    swtpmPidFile: join(dir, 'swtpm.pid'),
    lock,
    client: {
      ca: join(client, 'ca.pem'),
      adminCert: join(client, 'admin.pem'),
      adminKey: join(client, 'admin-key.pem'),
      signerCert: join(client, 'signer.pem'),
      signerKey: join(client, 'signer-key.pem'),
      approverCert: join(client, 'approver.pem'),
      approverKey: join(client, 'approver-key.pem'),
      auditorCert: join(client, 'auditor.pem'),
      auditorKey: join(client, 'auditor-key.pem'),
    },
  };
}

/** The head of the config `sigild dev` writes: what happens to edits, and how to keep them. */
export const DEV_CONFIG_HEADER = [
  '# Written by `sigild dev` at every start: edits here are lost at the next start.',
  '# To try a change on the running dev daemon (auth.roles, authorization.builders, attestation.policies, tls):',
  '# edit this file, then `kill -HUP <pid of sigild dev>`; sigild applies those parts and logs (and audits) the',
  '# outcome; other changes need a restart. To keep changes, copy this file in this directory (say my.yaml), edit',
  '# the copy and, with `sigild dev` stopped (one daemon per store), run `sigild serve --config my.yaml`.',
  '',
].join('\n');

/** Writes `host:port` to the address file atomically, so a reader never sees half of it. */
export function writeAddrFile(file: string, address: string): void {
  writeFileSync(`${file}.tmp`, `${address}\n`, { mode: 0o644 });
  renameSync(`${file}.tmp`, file);
}

async function pair(certFile: string, keyFile: string, make: () => Promise<PemPair>): Promise<PemPair> {
  if (existsSync(certFile) && existsSync(keyFile)) return { cert: readFileSync(certFile, 'utf8'), key: readFileSync(keyFile, 'utf8') };
  const p = await make();
  writeFileSync(keyFile, p.key, { mode: 0o600 });
  writeFileSync(certFile, p.cert, { mode: 0o644 });
  return p;
}
