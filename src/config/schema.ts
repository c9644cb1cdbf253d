import { z } from 'zod';
import { backendConfigSchema } from '../signers/config.ts';

const hostPort = z
  .string()
  .regex(/^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):\d{1,5}$/, 'must be host:port, e.g. 127.0.0.1:8443 (port 0 picks a free one)');

/**
 * A role-mapping pattern matched against the client certificate: `cn:NAME`, `subject:RFC4514-DN`,
 * `dns:NAME`, `uri:URI` or `fingerprint:SHA256-HEX`; `*` matches any run of characters.
 */
const principalPattern = z.string().regex(/^(cn|subject|dns|uri|fingerprint):.+$/, 'must start with cn:, subject:, dns:, uri: or fingerprint:');

/** The one strict schema of sigild's config file; unknown keys are errors. */
export const configSchema = z.strictObject({
  /** `production` refuses dev-only backends and shortened safety minimums. */
  mode: z.enum(['production', 'development']).default('production'),
  listen: hostPort,
  /** Where the Prometheus metrics endpoint listens (plain HTTP; keep it on loopback or a private network). */
  metrics: z.strictObject({ listen: hostPort }).optional(),
  tls: z.strictObject({
    certFile: z.string().min(1),
    keyFile: z.string().min(1),
    /** The operator CA bundle that client (admin, signer) certificates must chain to. */
    clientCaFile: z.string().min(1),
  }),
  auth: z.strictObject({
    roles: z.strictObject({
      admin: z.array(principalPattern).default([]),
      signer: z.array(principalPattern).default([]),
    }),
  }),
  store: z.strictObject({
    sqlite: z.strictObject({ path: z.string().min(1) }),
  }),
  backends: z.record(z.string().regex(/^[a-z][a-z0-9-]{0,31}$/, 'backend names are lower-case letters, digits and -'), backendConfigSchema),
  defaultBackend: z.string().min(1),
  limits: z
    .strictObject({
      /** The largest message a request may carry (Ed25519 signs whole messages). */
      maxMessageBytes: z.number().int().min(1024).max(1024 * 1024 * 1024).default(64 * 1024 * 1024),
      /** The most requests one SignBatch may carry. */
      maxBatch: z.number().int().min(1).max(1024).default(1024),
    })
    .prefault({}),
  log: z.strictObject({ level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info') }).prefault({}),
}).superRefine((cfg, ctx) => {
  if (!(cfg.defaultBackend in cfg.backends)) {
    ctx.addIssue({ code: 'custom', path: ['defaultBackend'], message: `names no configured backend (have: ${Object.keys(cfg.backends).join(', ') || 'none'})` });
  }
  if (cfg.mode === 'production') {
    for (const [name, b] of Object.entries(cfg.backends)) {
      if (b.type === 'soft') ctx.addIssue({ code: 'custom', path: ['backends', name, 'type'], message: 'the soft backend is for tests and development; production mode refuses it' });
    }
  }
});

/** A parsed, validated config. */
export type Config = z.infer<typeof configSchema>;
