import { isAbsolute } from 'node:path';
import { z } from 'zod';
import { backendConfigSchema } from '../signers/config.ts';
import { checkKeyName } from '../keys/names.ts';
import { parseDuration } from './duration.ts';
import { attestationPoliciesSchema } from '../attest/policy.ts';

/** A duration such as `90s`, `15m` or `24h`, parsed to milliseconds. */
const duration = z.string().transform((text, ctx) => {
  try {
    return parseDuration(text);
  } catch (err) {
    ctx.addIssue({ code: 'custom', message: (err as Error).message });
    return z.NEVER;
  }
});

const HOUR = 3_600_000;

const keyName = z.string().superRefine((name, ctx) => {
  try {
    checkKeyName(name);
  } catch (err) {
    ctx.addIssue({ code: 'custom', message: (err as Error).message });
  }
});

/** A SPIFFE trust domain: lower-case letters, digits, `.`, `-` and `_` (SPIFFE ID spec, 2.1). */
const trustDomain = z.string().regex(/^[a-z0-9]([a-z0-9._-]{0,253}[a-z0-9])?$/, 'must be a spiffe trust domain: lower-case letters, digits, . - _');

/** The identity CA: issues short-lived builder certificates, signing with a sigil key. */
const identitySchema = z.strictObject({
  trustDomain,
  /** The name of the CA's key; created on first start. */
  caKey: keyName.default('sigil/identity-ca'),
  algorithm: z.enum(['ECDSA_P256_SHA256', 'ECDSA_P384_SHA384', 'RSA_PKCS1_SHA256', 'ED25519']).default('ECDSA_P256_SHA256'),
  /** The backend that holds the CA key; the default backend when absent. */
  backend: z.string().min(1).optional(),
  /** Default lifetime of a builder certificate. */
  lifetime: duration.default(15 * 60_000),
  /** The longest lifetime a builder certificate may get (at most 24h). */
  maxLifetime: duration.default(24 * HOUR),
});

/**
 * The audit log: its own SQLite file, and the key that signs its checkpoints. The origin is the first line
 * of every checkpoint and the note key name; it names this log for verifiers.
 */
const auditSchema = z.strictObject({
  /** The log's SQLite file; `audit.db` next to the store's file when absent. */
  path: z.string().min(1).optional(),
  /** The checkpoint origin; `sigil/<hostname>/audit` when absent. Printable ASCII, no space or +. */
  origin: z.string().regex(/^[\x21-\x2a\x2c-\x7e]{1,255}$/, 'must be 1 to 255 printable ascii characters without space or +').optional(),
  /** The checkpoint key's name (reserved: no RPC may sign with it); created on first start (Ed25519 where the backend has it, else ECDSA P-256). */
  key: keyName.default('sigil/audit'),
  /** The backend for a newly created checkpoint key; the default backend when absent. */
  backend: z.string().min(1).optional(),
  /** Sign a checkpoint this often when the log grew (besides on request); none when absent. */
  checkpointInterval: duration.optional(),
  /**
   * Up to this many entries the whole log is re-verified before the daemon starts; above it the start checks
   * the latest checkpoint's frontier and the entries after it, and the full check runs in the background. 0: always the fast start.
   */
  fullCheckAtStartMax: z.number().int().min(0).default(1_000_000),
  /**
   * Where the running daemon writes archive segments (`sigilctl audit archive`): an absolute path, created
   * mode 0700 when missing. Absent: the RPC is refused; the offline `sigild audit archive --out` still works.
   */
  archiveDir: z.string().min(1).refine((p) => isAbsolute(p), 'must be an absolute path').optional(),
  /** The archived prefix ends on a multiple of this power of two (whole subtrees go). */
  archiveAlign: z.number().int().min(1).max(2 ** 30).refine((n) => (n & (n - 1)) === 0, 'must be a power of two').default(65536),
  /** At most this many entries per segment file: a multiple of archiveAlign. */
  archiveSegmentMax: z.number().int().min(1).default(262144),
  /** Archive on a schedule this often (counted from the last archive run that archived something); none when absent. Needs archiveDir. */
  archiveEvery: duration.optional(),
  /** A scheduled run keeps at least this many of the newest entries live (the RPC's `before` is the log's size minus it). */
  archiveKeep: z.number().int().min(0).default(0),
});

/** Which builder identities may use which keys: a rule grants its keys to any identity it lists. */
const builderRuleSchema = z.strictObject({
  /** Key-name globs; `*` matches any run of characters. */
  keys: z.array(z.string().regex(/^[a-z0-9*][a-z0-9._/*-]{0,127}$/, 'must be a key-name glob: lower-case letters, digits, -_./ and *')).min(1),
  identities: z
    .array(
      z.strictObject({
        /** A glob over the certificate's SPIFFE id, e.g. `spiffe://sigil.example/builder/tpm/*`. */
        san: z.string().min(1).max(512),
        /** When set, the attestation policy named in the certificate must equal it. */
        policy: z.string().min(1).max(64).optional(),
        /** When set, every claim must be present and match its glob. */
        claims: z.record(z.string().min(1).max(64), z.string().max(256)).optional(),
      }),
    )
    .min(1),
});

const hostPort = z
  .string()
  .regex(/^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):\d{1,5}$/, 'must be host:port, e.g. 127.0.0.1:8443 (port 0 picks a free one)')
  .refine((s) => Number(/:(\d{1,5})$/.exec(s)?.[1] ?? 0) <= 65535, 'the port must be 0 to 65535 (0 picks a free one)');

/**
 * A role-mapping pattern matched against the client certificate: `cn:NAME`, `subject:RFC4514-DN`,
 * `dns:NAME`, `uri:URI` or `fingerprint:SHA256-HEX`; `*` matches any run of characters.
 */
const principalPattern = z.string().regex(/^(cn|subject|dns|uri|fingerprint):.+$/, 'must start with cn:, subject:, dns:, uri: or fingerprint:');

/** The one strict schema of sigild's config file; unknown keys are errors. SIGHUP re-applies the `RELOADABLE` parts (config/reload.ts). */
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
      /** A second admin who approves destructive acts where a key's policy asks for it. */
      approver: z.array(principalPattern).default([]),
      signer: z.array(principalPattern).default([]),
      /** Reads the audit log and its proofs, nothing else. */
      auditor: z.array(principalPattern).default([]),
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
  identity: identitySchema.optional(),
  authorization: z.strictObject({ builders: z.array(builderRuleSchema).default([]) }).prefault({}),
  /** TPM attestation: enrollment of CI runners as builders (needs `identity`). */
  attestation: z
    .strictObject({
      /** How long a challenge nonce stays valid. */
      nonceTtl: duration.default(60_000),
      /** Named attestation policies; a runner enrolls under one. */
      policies: attestationPoliciesSchema,
    })
    .optional(),
  audit: auditSchema.prefault({}),
  /** Key lifecycle windows (issue 4); production refuses a minimum destroy window below 24h. */
  keys: z
    .strictObject({
      /** The shortest destroy window ScheduleDestroyKeyVersion accepts. */
      minDestroyWindow: duration.default(24 * HOUR),
      /** The destroy window when a request names none. */
      defaultDestroyWindow: duration.default(7 * 24 * HOUR),
      /** How long an approval request stays open. */
      approvalTtl: duration.default(24 * HOUR),
      /** How often the lifecycle scheduler looks for due destructions, rotations and expired approvals. */
      schedulerInterval: duration.default(30_000),
    })
    .prefault({}),
  /** The signed trusted root verifiers consume. */
  trustedRoot: z
    .strictObject({
      /** From a document's issue time to its expiry (`sigilExpiresAt`); a fresh one is signed when half of it is gone and at every change. */
      validity: duration.default(7 * 24 * HOUR),
    })
    .prefault({}),
  log: z.strictObject({ level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info') }).prefault({}),
}).superRefine((cfg, ctx) => {
  if (!(cfg.defaultBackend in cfg.backends)) {
    ctx.addIssue({ code: 'custom', path: ['defaultBackend'], message: `names no configured backend (have: ${Object.keys(cfg.backends).join(', ') || 'none'})` });
  }
  if (cfg.identity) {
    const id = cfg.identity;
    if (id.maxLifetime > 24 * HOUR) ctx.addIssue({ code: 'custom', path: ['identity', 'maxLifetime'], message: 'must be at most 24h' });
    if (id.maxLifetime < 1000) ctx.addIssue({ code: 'custom', path: ['identity', 'maxLifetime'], message: 'must be at least 1s' });
    if (id.lifetime > id.maxLifetime) ctx.addIssue({ code: 'custom', path: ['identity', 'lifetime'], message: 'must not exceed identity.maxLifetime' });
    if (id.lifetime < 1000) ctx.addIssue({ code: 'custom', path: ['identity', 'lifetime'], message: 'must be at least 1s' });
    if (id.backend !== undefined && !(id.backend in cfg.backends)) {
      ctx.addIssue({ code: 'custom', path: ['identity', 'backend'], message: `names no configured backend (have: ${Object.keys(cfg.backends).join(', ') || 'none'})` });
    }
  } else if (cfg.attestation) {
    ctx.addIssue({ code: 'custom', path: ['attestation'], message: 'attestation needs the identity section (identity.trustDomain)' });
  }
  if (cfg.attestation) {
    if (Object.keys(cfg.attestation.policies).length === 0) ctx.addIssue({ code: 'custom', path: ['attestation', 'policies'], message: 'name at least one policy' });
    if (cfg.attestation.nonceTtl < 5000 || cfg.attestation.nonceTtl > 600_000) ctx.addIssue({ code: 'custom', path: ['attestation', 'nonceTtl'], message: 'must be between 5s and 10m' });
  }
  if (cfg.audit.backend !== undefined && !(cfg.audit.backend in cfg.backends)) {
    ctx.addIssue({ code: 'custom', path: ['audit', 'backend'], message: `names no configured backend (have: ${Object.keys(cfg.backends).join(', ') || 'none'})` });
  }
  if (cfg.audit.checkpointInterval !== undefined && cfg.audit.checkpointInterval < 1000) {
    ctx.addIssue({ code: 'custom', path: ['audit', 'checkpointInterval'], message: 'must be at least 1s' });
  }
  // setInterval takes at most 2^31-1 ms (~24.8 days); above that Node fires the timer every millisecond.
  if (cfg.audit.checkpointInterval !== undefined && cfg.audit.checkpointInterval > 7 * 86_400_000) {
    ctx.addIssue({ code: 'custom', path: ['audit', 'checkpointInterval'], message: 'must be at most 7d' });
  }
  if (cfg.audit.archiveEvery !== undefined && cfg.audit.archiveDir === undefined) {
    ctx.addIssue({ code: 'custom', path: ['audit', 'archiveEvery'], message: 'needs audit.archiveDir, where the segments go' });
  }
  if (cfg.audit.archiveEvery !== undefined && cfg.audit.archiveEvery < 1000) {
    ctx.addIssue({ code: 'custom', path: ['audit', 'archiveEvery'], message: 'must be at least 1s' });
  }
  if (cfg.audit.archiveSegmentMax % cfg.audit.archiveAlign !== 0) {
    ctx.addIssue({ code: 'custom', path: ['audit', 'archiveSegmentMax'], message: `must be a multiple of audit.archiveAlign (${cfg.audit.archiveAlign})` });
  }
  if (!cfg.identity && cfg.authorization.builders.length > 0) {
    ctx.addIssue({ code: 'custom', path: ['authorization', 'builders'], message: 'builder rules need the identity section (identity.trustDomain)' });
  }
  if (cfg.trustedRoot.validity < 60_000 || cfg.trustedRoot.validity > 90 * 24 * HOUR) {
    ctx.addIssue({ code: 'custom', path: ['trustedRoot', 'validity'], message: 'must be between 1m and 90d' });
  }
  if (cfg.mode === 'production' && cfg.trustedRoot.validity < HOUR) {
    ctx.addIssue({ code: 'custom', path: ['trustedRoot', 'validity'], message: 'must be at least 1h in production mode' });
  }
  const k = cfg.keys;
  if (cfg.mode === 'production' && k.minDestroyWindow < 24 * HOUR) {
    ctx.addIssue({ code: 'custom', path: ['keys', 'minDestroyWindow'], message: 'must be at least 24h in production mode' });
  }
  if (k.minDestroyWindow < 1000) ctx.addIssue({ code: 'custom', path: ['keys', 'minDestroyWindow'], message: 'must be at least 1s' });
  if (k.defaultDestroyWindow < k.minDestroyWindow) ctx.addIssue({ code: 'custom', path: ['keys', 'defaultDestroyWindow'], message: 'must not be shorter than keys.minDestroyWindow' });
  if (k.approvalTtl < 1000 || k.approvalTtl > 30 * 24 * HOUR) ctx.addIssue({ code: 'custom', path: ['keys', 'approvalTtl'], message: 'must be between 1s and 30d' });
  if (k.schedulerInterval < 100 || k.schedulerInterval > HOUR) ctx.addIssue({ code: 'custom', path: ['keys', 'schedulerInterval'], message: 'must be between 100ms and 1h' });
  if (cfg.mode === 'production') {
    for (const [name, b] of Object.entries(cfg.backends)) {
      if (b.type === 'soft') ctx.addIssue({ code: 'custom', path: ['backends', name, 'type'], message: 'the soft backend is for tests and development; production mode refuses it' });
    }
  }
});

/** A parsed, validated config. */
export type Config = z.infer<typeof configSchema>;

/** The parsed `identity` section: durations in milliseconds. */
export type IdentityConfig = z.infer<typeof identitySchema>;

/** The parsed `audit` section: durations in milliseconds. */
export type AuditConfig = z.infer<typeof auditSchema>;

/** One parsed `authorization.builders` rule. */
export type BuilderRuleConfig = z.infer<typeof builderRuleSchema>;
