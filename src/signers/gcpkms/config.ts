import { z } from 'zod';
import { GCP_ID_PATTERNS } from './resource-name.ts';

const LOOPBACK = new Set(['127.0.0.1', '::1', '[::1]', 'localhost']);

/**
 * Config of one Cloud KMS backend: where sigil creates keys (project, location, key ring), how to reach
 * the service, and an optional service-account JSON file (read by the Google auth library, never logged).
 */
export const gcpKmsConfigSchema = z
  .strictObject({
    type: z.literal('gcpkms'),
    project: z.string().regex(GCP_ID_PATTERNS.project, 'a project id (6 to 30 of a-z 0-9 -) or project number'),
    location: z.string().regex(GCP_ID_PATTERNS.location, 'a location such as global or europe-west1'),
    /** Key ring in which sigil creates its CryptoKeys; created on first use when absent. */
    keyRing: z.string().regex(GCP_ID_PATTERNS.resourceId, 'a key ring id: 1 to 63 of a-z A-Z 0-9 _ -'),
    /** Host of the service; the SDK's default (the public endpoint) when absent. */
    apiEndpoint: z.string().min(1).max(253).regex(/^[A-Za-z0-9.:[\]-]+$/, 'a host name or address').optional(),
    port: z.number().int().min(1).max(65535).optional(),
    /** Tests only: plaintext gRPC to a loopback fake. Production mode refuses it. */
    insecure: z.boolean().default(false),
    /** Service-account JSON key file; application default credentials when absent. */
    credentialsFile: z.string().min(1).optional(),
    /** Protection level of the keys sigil creates: HSM for production, SOFTWARE is cheaper for tests. */
    protectionLevel: z.enum(['SOFTWARE', 'HSM']).default('HSM'),
    /** Deadline of every call to the service; also bounds the wait for a version being generated. */
    timeoutMs: z.number().int().min(100).max(120000).default(5000),
  })
  .superRefine((c, ctx) => {
    if (c.insecure && (c.apiEndpoint === undefined || !LOOPBACK.has(c.apiEndpoint))) {
      ctx.addIssue({ code: 'custom', path: ['insecure'], message: 'insecure is for a loopback fake only: set apiEndpoint to 127.0.0.1, ::1 or localhost' });
    }
    if (c.insecure && c.credentialsFile !== undefined) {
      ctx.addIssue({ code: 'custom', path: ['credentialsFile'], message: 'credentials are never sent over an insecure channel' });
    }
  });

/** A parsed Cloud KMS backend config. */
export type GcpKmsConfig = z.infer<typeof gcpKmsConfigSchema>;
