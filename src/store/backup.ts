import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, copyFile, mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { backup, DatabaseSync } from 'node:sqlite';
import { verifyLog, type VerifyKey } from '../audit/verify.ts';
import { CompactRange } from '../audit/merkle.ts';
import type { Config } from '../config/schema.ts';
import { keyVersionRef } from '../keys/names.ts';
import { SigilError } from '../errors.ts';

/** One file a backup wrote: its path inside the backup directory, size and SHA-256. */
export interface BackupFile {
  path: string;
  bytes: number;
  sha256: string;
}

/** `manifest.json` of a backup: what it holds, what it checked, and what it does not hold. */
export interface BackupManifest {
  createdAt: string;
  /** The config file the daemon state was found by. */
  config: string;
  files: BackupFile[];
  store: { keys: number; versions: number };
  /**
   * The audit log as copied: its size, the latest signed checkpoint in it (null before the first one), and
   * whether the copy verifies against that checkpoint with the audit key versions in the copied store.
   */
  audit: {
    entries: number;
    checkpoint: { size: number; keyVersion: string; note: string } | null;
    /** `from`: the first entry verified (the end of the archived prefix, whose entries are in archive segments, not in the log). */
    verified: { ok: boolean; from: number; size: number; signedBy: string | null; failure: string | null } | null;
  };
  /** What a restore also needs and this backup leaves to the operator: key material in backends, secrets. */
  notIncluded: string[];
}

/** Where the daemon of `cfg` keeps its audit log (as `startDaemon` picks it). */
export function auditPathOf(cfg: Config): string {
  return cfg.audit.path ?? join(dirname(cfg.store.sqlite.path), 'audit.db');
}

/** The audit log's origin (checkpoint origin line and note key name) for the daemon of `cfg` (as `startDaemon` picks it). */
export function auditOriginOf(cfg: Config): string {
  return cfg.audit.origin ?? `sigil/${hostname().toLowerCase().replace(/[^a-z0-9.-]/g, '-') || 'localhost'}/audit`;
}

/**
 * Copies the state of the daemon configured by `cfg` into `outDir` (new or empty; made mode 0700) while it
 * may be running: the store and then the audit log with SQLite's online backup (each a consistent
 * snapshot; the store first, so every store change in the copy has its written-ahead audit entry in the
 * copy of the log), and each TPM backend's key table (it holds the keys' authValues) and pinned storage
 * key. Both databases are integrity-checked in the copy. Key material held by backends and the secret
 * files the config names are not copied: the manifest lists them.
 */
export async function backupDaemonState(cfg: Config, configFile: string, outDir: string, now: Date): Promise<BackupManifest> {
  await prepareOut(outDir);
  const files: BackupFile[] = [];
  const keep = async (path: string): Promise<void> => {
    await chmod(path, 0o600);
    const data = await readFile(path);
    files.push({ path: relative(outDir, path), bytes: data.length, sha256: createHash('sha256').update(data).digest('hex') });
  };

  const storeCopy = join(outDir, 'sigil.db');
  await snapshot(cfg.store.sqlite.path, storeCopy, 'store');
  await keep(storeCopy);
  const auditSource = auditPathOf(cfg);
  const auditCopy = join(outDir, 'audit.db');
  let auditInfo: BackupManifest['audit'] = { entries: 0, checkpoint: null, verified: null };
  if (existsSync(auditSource)) {
    await snapshot(auditSource, auditCopy, 'audit log');
    await keep(auditCopy);
    auditInfo = await readAudit(auditCopy, storeCopy, cfg.audit.key);
  }
  const notIncluded: string[] = [
    `the TLS key ${cfg.tls.keyFile} and certificates (tls.*): back them up with the host's secrets`,
  ];
  for (const [name, b] of Object.entries(cfg.backends)) {
    switch (b.type) {
      case 'tpm': {
        // The key table, and the pinned storage key the backend holds its TPM to (docs/backends.md).
        for (const file of ['keys.json', 'srk.json']) {
          const from = join(b.stateDir, file);
          if (!existsSync(from)) continue;
          const to = join(outDir, 'tpm', name, file);
          await mkdir(dirname(to), { recursive: true, mode: 0o700 });
          await copyFile(from, to);
          await keep(to);
        }
        notIncluded.push(`backend ${name} (tpm): the keys themselves, which never leave that TPM; the key table copied here (with their authValues) is only of use with it`);
        break;
      }
      case 'pkcs11':
        notIncluded.push(`backend ${name} (pkcs11): the token's key objects and the PIN file ${b.pinFile}: back them up with the HSM's own tools (for SoftHSM, its token directory)`);
        break;
      case 'awskms':
        notIncluded.push(`backend ${name} (awskms): the keys stay in AWS KMS${b.credentialsFile ? `; the credentials file ${b.credentialsFile}` : ''}`);
        break;
      case 'gcpkms':
        notIncluded.push(`backend ${name} (gcpkms): the keys stay in Cloud KMS${b.credentialsFile ? `; the credentials file ${b.credentialsFile}` : ''}`);
        break;
      default:
        notIncluded.push(`backend ${name} (${b.type}): its keys`);
    }
  }
  const manifest: BackupManifest = { createdAt: now.toISOString(), config: configFile, files, store: readStore(storeCopy), audit: auditInfo, notIncluded };
  const m = join(outDir, 'manifest.json');
  await writeFile(m, `${JSON.stringify(manifest, null, 2)}\n`, { mode: 0o600 });
  return manifest;
}

async function prepareOut(outDir: string): Promise<void> {
  let entries: string[] = [];
  try {
    entries = await readdir(outDir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw new SigilError('INVALID_ARGUMENT', `cannot use ${outDir} for the backup`, { cause: err });
  }
  if (entries.length > 0) throw new SigilError('INVALID_ARGUMENT', `${outDir} is not empty: a backup goes into a new or empty directory`);
  await mkdir(outDir, { recursive: true, mode: 0o700 });
  await chmod(outDir, 0o700);
}

/** SQLite's online backup of `from` into `to` as a single file (no -wal or -shm), then an integrity check of the copy. */
async function snapshot(from: string, to: string, what: string): Promise<void> {
  if (!existsSync(from)) throw new SigilError('FAILED_PRECONDITION', `the ${what} ${from} does not exist: is this the config the daemon runs with?`);
  const src = new DatabaseSync(from, { readOnly: true });
  try {
    await backup(src, to);
  } catch (err) {
    throw new SigilError('BACKEND_ERROR', `could not copy the ${what} ${from}`, { cause: err });
  } finally {
    src.close();
  }
  // The copy carries the source's WAL mode, in which every later open (the checks below, a restore's first
  // look) leaves -wal and -shm files beside it: a rollback journal makes it one self-contained file. The
  // daemon puts a restored file back in WAL mode when it opens it.
  const rw = new DatabaseSync(to);
  try {
    rw.exec('PRAGMA journal_mode = DELETE');
  } finally {
    rw.close();
  }
  const copy = new DatabaseSync(to, { readOnly: true });
  try {
    const r = copy.prepare('PRAGMA integrity_check').all() as Array<{ integrity_check: string }>;
    if (r.length !== 1 || r[0]!.integrity_check !== 'ok') throw new SigilError('BACKEND_ERROR', `the copy of the ${what} fails its integrity check: ${r.map((x) => x.integrity_check).join('; ')}`);
  } finally {
    copy.close();
  }
}

function readStore(path: string): BackupManifest['store'] {
  const db = new DatabaseSync(path, { readOnly: true });
  try {
    const keys = (db.prepare('SELECT count(*) AS n FROM keys').get() as { n: number }).n;
    const versions = (db.prepare('SELECT count(*) AS n FROM key_versions').get() as { n: number }).n;
    return { keys, versions };
  } finally {
    db.close();
  }
}

/**
 * The copied log's size and latest checkpoint, and the copy verified against that checkpoint (every entry up to
 * it, the root, the signature) with the audit key's versions as the copied store records them.
 */
async function readAudit(path: string, storePath: string, auditKey: string): Promise<BackupManifest['audit']> {
  const db = new DatabaseSync(path, { readOnly: true });
  try {
    const entries = (db.prepare('SELECT count(*) AS n FROM entries').get() as { n: number }).n;
    const cp = db.prepare('SELECT size, key_version, note FROM checkpoints ORDER BY size DESC LIMIT 1').get() as { size: number; key_version: string; note: string } | undefined;
    if (!cp) return { entries, checkpoint: null, verified: null };
    const store = new DatabaseSync(storePath, { readOnly: true });
    let keys: VerifyKey[];
    try {
      keys = (store.prepare('SELECT version, spki FROM key_versions WHERE name = ? AND spki IS NOT NULL ORDER BY version').all(auditKey) as Array<{ version: number; spki: Uint8Array }>)
        .filter((v) => v.spki.length > 0)
        .map((v) => ({ spki: Buffer.from(v.spki), label: keyVersionRef(auditKey, v.version) }));
    } finally {
      store.close();
    }
    // An archived prefix (sigild audit archive) has leaf hashes but no data: verify from its frontier.
    const archived = db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'archives'").get()
      ? (db.prepare('SELECT COALESCE(MAX(end), 0) AS e FROM archives').get() as { e: number }).e
      : 0;
    const prefix = new CompactRange();
    for (const r of db.prepare('SELECT leaf FROM entries WHERE idx < ? ORDER BY idx').iterate(archived) as Iterable<{ leaf: Uint8Array }>) prefix.append(Buffer.from(r.leaf));
    const rows = db.prepare('SELECT idx, data, leaf FROM entries WHERE idx >= ? AND idx < ? ORDER BY idx').iterate(archived, cp.size) as Iterable<{ idx: number; data: Uint8Array; leaf: Uint8Array }>;
    const list = (function* () {
      for (const r of rows) yield { index: r.idx, data: Buffer.from(r.data), leaf: Buffer.from(r.leaf) };
    })();
    const origin = cp.note.slice(0, cp.note.indexOf('\n'));
    const r = await verifyLog({ entries: list, checkpoint: cp.note, keys, origin, start: archived > 0 ? { size: archived, frontier: prefix.hashes } : undefined });
    return {
      entries,
      checkpoint: { size: cp.size, keyVersion: cp.key_version, note: cp.note },
      verified: { ok: r.ok, from: r.from, size: r.size, signedBy: r.signedBy, failure: r.failure ? r.failure.message : null },
    };
  } finally {
    db.close();
  }
}
