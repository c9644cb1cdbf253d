import { z } from 'zod';
import { pkcs11ConfigSchema } from './pkcs11/config.ts';
import { softConfigSchema } from './soft/config.ts';

/** One configured backend; `type` picks the module in `registry.ts`. */
export const backendConfigSchema = z.discriminatedUnion('type', [pkcs11ConfigSchema, softConfigSchema]);

/** A parsed backend config. */
export type BackendConfig = z.infer<typeof backendConfigSchema>;
