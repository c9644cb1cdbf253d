import { z } from 'zod';
import { awsKmsConfigSchema } from './awskms/config.ts';
import { gcpKmsConfigSchema } from './gcpkms/config.ts';
import { pkcs11ConfigSchema } from './pkcs11/config.ts';
import { resilienceSchema } from './resilience.ts';
import { softConfigSchema } from './soft/config.ts';
import { tpmConfigSchema } from './tpm/config.ts';

// Every backend takes the same `resilience` block: deadlines, retries and the circuit breaker are sigil's,
// applied in one place (registry.ts) whatever the backend.
const withResilience = { resilience: resilienceSchema };

/** One configured backend; `type` picks the module in `registry.ts`. */
export const backendConfigSchema = z.discriminatedUnion('type', [
  pkcs11ConfigSchema.extend(withResilience),
  softConfigSchema.extend(withResilience),
  awsKmsConfigSchema.extend(withResilience),
  gcpKmsConfigSchema.extend(withResilience),
  tpmConfigSchema.extend(withResilience),
]);

/** A parsed backend config. */
export type BackendConfig = z.infer<typeof backendConfigSchema>;
