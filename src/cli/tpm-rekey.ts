import type { DatabaseSync } from 'node:sqlite';
import { audited } from '../audit/audited.ts';
import type { Clock } from '../clock.ts';
import type { Config } from '../config/schema.ts';
import { SigilError } from '../errors.ts';
import { keyVersionRef } from '../keys/names.ts';
import type { Logger } from '../log.ts';
import { open as openTpm } from '../signers/tpm/index.ts';
import type { TpmConfig } from '../signers/tpm/config.ts';
import { withStoppedDaemon } from '../store/audit-archive.ts';

/** What `sigild tpm rekey` is asked for. */
export interface RekeyOptions {
  /** Only this configured tpm backend (default: every one). */
  backend?: string | undefined;
  /** List the keys that would get an authValue, change nothing. */
  dryRun: boolean;
  /** Who acts, as the audit entries name them (`local:<user>`). */
  who: string;
  clock: Clock;
  log: Logger;
  /** Told of each key as soon as it is done (or found, with `dryRun`). */
  onKey?: (k: RekeyedKey) => void;
}

/** One key the command dealt with. */
export interface RekeyedKey {
  backend: string;
  label: string;
  uri: string;
  /** The key version that uses it (`name@N`), when the store has one. */
  keyVersion: string | null;
  result: 'changed' | 'would change';
}

/**
 * Gives every TPM key sigil made with an empty authValue (before sigil set one) a fresh random one, with
 * the daemon stopped: each change is audited as `tpm.rekey`, written ahead, and crash-safe (an interrupted
 * one is settled when the backend next opens). Keys sigil did not make are never touched.
 */
export async function rekeyTpmKeys(cfg: Config, o: RekeyOptions): Promise<RekeyedKey[]> {
  const backends = Object.entries(cfg.backends).filter(([name, b]) => b.type === 'tpm' && (o.backend === undefined || name === o.backend));
  if (o.backend !== undefined && backends.length === 0) {
    throw new SigilError('INVALID_ARGUMENT', `no tpm backend named ${JSON.stringify(o.backend)} in the config`);
  }
  if (backends.length === 0) throw new SigilError('INVALID_ARGUMENT', 'the config has no tpm backend');
  return withStoppedDaemon(cfg, { clock: o.clock, log: o.log, doing: 'changing tpm authValues' }, async ({ store, log: audit }) => {
    const out: RekeyedKey[] = [];
    for (const [name, b] of backends) {
      const { resilience: _, ...own } = b as TpmConfig & { resilience?: unknown };
      const backend = await openTpm(own as TpmConfig, { name, log: o.log.child({ module: 'backend', backend: name }), production: cfg.mode === 'production' });
      try {
        for (const k of await backend.emptyAuthKeys()) {
          const keyVersion = keyVersionOf(store, name, k.uri);
          if (o.dryRun) {
            out.push({ backend: name, label: k.label, uri: k.uri, keyVersion, result: 'would change' });
            o.onKey?.(out.at(-1)!);
            continue;
          }
          await audited(audit, { who: o.who, act: 'tpm.rekey', key: keyVersion ?? undefined, detail: { backend: name, label: k.label, uri: k.uri } }, () => backend.setAuthValue(k.label));
          out.push({ backend: name, label: k.label, uri: k.uri, keyVersion, result: 'changed' });
          o.onKey?.(out.at(-1)!);
        }
      } finally {
        await backend.close();
      }
    }
    return out;
  });
}

/** The key version (`name@N`) of backend `backend` whose URI is `uri`, read on the command's store connection. */
function keyVersionOf(store: DatabaseSync, backend: string, uri: string): string | null {
  const row = store.prepare('SELECT v.name AS name, v.version AS version FROM key_versions v JOIN keys k ON k.name = v.name WHERE k.backend = ? AND v.uri = ?').get(backend, uri) as
    | { name: string; version: number }
    | undefined;
  return row === undefined ? null : keyVersionRef(row.name, row.version);
}
