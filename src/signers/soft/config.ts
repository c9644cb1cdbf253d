import { z } from 'zod';

/** Config of the software backend (tests and development only): keys are PKCS#8 PEM files in `dir`. */
export const softConfigSchema = z.strictObject({
  type: z.literal('soft'),
  /** Directory holding one `<uuid>.pem` (mode 0600) per key. */
  dir: z.string().min(1),
});

/** A parsed soft backend config. */
export type SoftConfig = z.infer<typeof softConfigSchema>;
