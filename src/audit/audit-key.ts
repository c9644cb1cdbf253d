import type { KeyService } from '../keys/key-service.ts';
import { keyVersionRef } from '../keys/names.ts';
import type { KeyRecord, KeyVersionRecord } from '../store/store.ts';
import type { AuditKey } from './audit-log.ts';

/** One version of the audit key with the window in which it signs checkpoints. */
export interface AuditKeyVersion {
  /** `name@N`. */
  keyVersion: string;
  /** N; 0 where the key source does not say (test keys). */
  version: number;
  /** DER SubjectPublicKeyInfo. */
  spki: Buffer;
  /** When the version was created; null where the key source does not say (test keys). */
  createdAt: Date | null;
  /**
   * When the next version was created (the rotation that replaced this one began); null for the current
   * version. From then on the version signs no new checkpoint; what it signed stays verifiable with it.
   */
  supersededAt: Date | null;
  /** True for the version that signs checkpoints now (the key's primary version). */
  current: boolean;
}

/**
 * The versions of the audit key, oldest first: every version that holds a key (a PENDING version of a
 * rotation under way or interrupted is left out), each superseded when the next one was created.
 */
export function auditKeyVersions(
  key: Pick<KeyRecord, 'name' | 'primaryVersion'> & { versions: ReadonlyArray<Pick<KeyVersionRecord, 'version' | 'state' | 'spki' | 'createdAt'>> },
): Array<AuditKeyVersion & { createdAt: Date }> {
  const made = key.versions.filter((v) => v.state !== 'PENDING').sort((a, b) => a.version - b.version);
  return made.map((v, i) => ({
    keyVersion: keyVersionRef(key.name, v.version),
    version: v.version,
    spki: v.spki,
    createdAt: v.createdAt,
    supersededAt: made[i + 1]?.createdAt ?? null,
    current: v.version === key.primaryVersion,
  }));
}

/**
 * The audit log's checkpoint key `name`, reached through the key service: it signs with the primary
 * version (rotated like any key, through the lifecycle) and serves the public key of every version.
 */
export function auditKeyOf(keys: KeyService, name: string): AuditKey {
  return {
    publicKey: (keyVersion) => {
      const pk = keys.publicKey(keyVersion ?? name);
      return { keyVersion: pk.keyVersion, spki: pk.spki };
    },
    sign: async (text) => {
      const s = await keys.sign(name, { message: text });
      return { signature: s.signature, keyVersion: s.keyVersion };
    },
    versions: () => auditKeyVersions(keys.getKey(name)),
  };
}
