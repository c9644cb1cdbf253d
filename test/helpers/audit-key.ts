import { generateKeyPairSync, sign, type KeyObject } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AuditLog, type AuditKey } from '../../src/audit/audit-log.ts';
import { silentLogger, type Logger } from '../../src/log.ts';

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

/** The `i`th sign entry the audit-log tests record (its digest is `i` in hex, so entries differ). */
export function signEvent(i: number): { who: string; act: string; key: string; digest: string; result: 'ok' } {
  return { who: 'CN=ci-signer-1', act: 'sign', key: 'release@1', digest: i.toString(16).padStart(64, '0'), result: 'ok' };
}

/** An audit file in a fresh temp dir, and how to open it: `key`, TEST_AUDIT_ORIGIN, a clock a second further at every read. */
export interface TempAuditFile {
  dir: string;
  path: string;
  /** Opens the log (with `fullCheckAtStartMax` when given). */
  open(fullCheckAtStartMax?: number): AuditLog;
  /** Removes the temp dir. */
  cleanup(): void;
}

/** Makes a TempAuditFile under a temp dir named `prefix...`; `log` receives the audit log's own lines (silent by default). */
export function tempAuditFile(prefix: string, key: AuditKey, log: Logger = silentLogger()): TempAuditFile {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  const path = join(dir, 'audit.db');
  let t = Date.parse('2030-01-01T00:00:00Z');
  const clock = { now: () => new Date((t += 1000)) };
  return {
    dir,
    path,
    open: (fullCheckAtStartMax) => AuditLog.open({ path, origin: TEST_AUDIT_ORIGIN, key, clock, log, ...(fullCheckAtStartMax === undefined ? {} : { fullCheckAtStartMax }) }),
    cleanup: () => rmSync(dir, { recursive: true, force: true }),
  };
}
