import { z } from 'zod';

/** First and last handle of the TPM owner's persistent range (TPM 2.0 Part 2, 7.2: TPM_HT_PERSISTENT, owner half). */
export const OWNER_PERSISTENT_FIRST = 0x81000000;
/** Last handle the owner may persist objects at; 0x81800000 and up belong to the platform. */
export const OWNER_PERSISTENT_LAST = 0x817fffff;

// YAML reads 0x81000100 as a number; a quoted '0x81000100' arrives as text. Both are taken.
const persistentHandle = z
  .union([z.number().int(), z.string().regex(/^0x[0-9a-fA-F]{8}$/, 'a persistent handle is 0x followed by 8 hex digits').transform((s) => Number.parseInt(s, 16))])
  .refine((h) => h >= OWNER_PERSISTENT_FIRST && h <= OWNER_PERSISTENT_LAST, 'a persistent handle must lie in the owner range 0x81000000-0x817fffff');

/**
 * Config of one TPM backend: the TPM to reach, the persistent handles sigil may use for the keys it
 * creates, and the directory holding the label -> handle table.
 */
export const tpmConfigSchema = z.strictObject({
  type: z.literal('tpm'),
  /** Transport spec as `openTransport` takes it: `swtpm:host=H,port=P`, `device:/dev/tpmrm0`, `tcti:<conf>`. */
  transport: z.string().min(1),
  /** Persistent handles for keys sigil creates; imported keys may sit anywhere in the owner range. */
  handleRange: z
    .strictObject({ first: persistentHandle, last: persistentHandle })
    .refine((r) => r.first <= r.last, 'handleRange.first must not exceed handleRange.last')
    .default({ first: 0x81000100, last: 0x810001ff }),
  /** Directory (mode 0700) of the label -> handle table; one sigild per directory (locked while open). */
  stateDir: z.string().min(1),
  /** Deadline of every call but key creation, and of each TPM command on the swtpm transport. */
  timeoutMs: z.number().int().min(100).max(120000).default(5000),
  /** Deadline of key creation: RSA key generation on a hardware TPM can take tens of seconds. */
  createTimeoutMs: z.number().int().min(1000).max(600000).default(60000),
  /**
   * Flush every transient object in the TPM at open and after a reconnect, to free the slots a killed
   * sigild left. Safe only when sigild is the TPM's only user. Default true without a resource manager,
   * ignored through one (`/dev/tpmrmN`, tpm2-abrmd), where each connection's objects are its own.
   */
  flushTransientsOnOpen: z.boolean().optional(),
});

/** A parsed TPM backend config. */
export type TpmConfig = z.infer<typeof tpmConfigSchema>;

/**
 * True when the transport reaches the TPM through a resource manager (the kernel's `/dev/tpmrmN` or
 * tpm2-abrmd), which virtualizes transient objects per connection and flushes them when it closes.
 */
export function throughResourceManager(transport: string): boolean {
  const spec = transport.startsWith('tcti:') ? transport.slice('tcti:'.length) : transport;
  if (/^(?:tabrmd|libtss2-tcti-tabrmd)/.test(spec)) return true;
  const path = spec.startsWith('device:') ? spec.slice('device:'.length).split(',')[0]! : spec;
  return /(?:^|\/)tpmrm\d+$/.test(path);
}

/** Whether the backend flushes the TPM's transient objects at open and after a reconnect. */
export function flushesTransients(config: Pick<TpmConfig, 'transport' | 'flushTransientsOnOpen'>): boolean {
  if (throughResourceManager(config.transport)) return false;
  return config.flushTransientsOnOpen ?? true;
}
