import { z } from 'zod';

/**
 * Config of one PKCS#11 backend: the module to load, the token (by label) and a file holding the user
 * PIN, which is read once when the backend opens and never logged.
 */
export const pkcs11ConfigSchema = z.strictObject({
  type: z.literal('pkcs11'),
  /** Path of the PKCS#11 module (.so). */
  module: z.string().min(1),
  /** Token label; slot ids can change, labels do not. */
  token: z.string().min(1).max(32),
  /** File whose content (trailing newline trimmed) is the user PIN. */
  pinFile: z.string().min(1),
  /** Sessions in the pool; each runs one operation at a time. */
  sessions: z.number().int().min(1).max(64).default(8),
  /**
   * Make ECDSA signatures on a signing thread of the daemon rather than on its event loop: measured
   * +10% unary and +16% SignStream throughput for ~15 MB more RSS (docs/benchmarks.md). Off by default
   * to keep the daemon under its memory budget.
   */
  signThread: z.boolean().default(false),
  /** SoftHSM only: a softhsm2.conf, set as SOFTHSM2_CONF before C_Initialize (SoftHSM reads it then). */
  softhsmConf: z.string().min(1).optional(),
});

/** A parsed PKCS#11 backend config. */
export type Pkcs11Config = z.infer<typeof pkcs11ConfigSchema>;
