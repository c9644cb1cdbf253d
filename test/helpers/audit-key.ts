import { generateKeyPairSync, sign, type KeyObject } from 'node:crypto';
import type { AuditKey } from '../../src/audit/audit-log.ts';

/** The origin the audit-log tests name their logs with. */
export const TEST_AUDIT_ORIGIN = 'sigil/test/audit';

/**
 * An Ed25519 checkpoint key held in memory, standing in for `sigil/audit@1` where a test drives the audit
 * log without a backend: the key, its DER public key, and its private key for forging on purpose.
 */
export function memoryAuditKey(): { key: AuditKey; spki: Buffer; privateKey: KeyObject } {
  const pair = generateKeyPairSync('ed25519');
  const spki = pair.publicKey.export({ format: 'der', type: 'spki' });
  return {
    key: {
      publicKey: () => ({ keyVersion: 'sigil/audit@1', spki }),
      sign: async (text) => ({ signature: sign(null, text, pair.privateKey), keyVersion: 'sigil/audit@1' }),
    },
    spki,
    privateKey: pair.privateKey,
  };
}
