import { X509Certificate } from 'node:crypto';
import { z } from 'zod';
import { SigilError } from '../errors.ts';
import { parseDuration } from '../config/duration.ts';
import { TPM_ALG } from '../tpm/constants.ts';
import { eventTypeByName, type EventRule } from './eventlog.ts';
import { EkCrls, parseEkCrl, type EkCrlExpired } from './ek-crl.ts';

/** PCR banks a policy may quote, with their TPM_ALG id and digest size. */
export const PCR_BANKS = {
  sha1: { alg: TPM_ALG.SHA1, size: 20 },
  sha256: { alg: TPM_ALG.SHA256, size: 32 },
  sha384: { alg: TPM_ALG.SHA384, size: 48 },
} as const;

/** A PCR bank name of the config. */
export type PcrBank = keyof typeof PCR_BANKS;

const hex = z.string().regex(/^([0-9a-f]{2})+$/, 'must be lower-case hex');
const pcrIndex = z.number().int().min(0).max(23);

const ruleSchema = z.strictObject({
  /** PCR index or indices the rule matches. */
  pcr: z.union([pcrIndex, z.array(pcrIndex).min(1)]).optional(),
  /** Event type: a name such as `EV_SEPARATOR` or its number. */
  type: z.union([z.string(), z.number().int().min(0).max(0xffffffff)]).optional(),
  /** The event's digest in the policy's bank. */
  digest: hex.optional(),
  /** The event data as hex. */
  data: hex.optional(),
  /** The event data as UTF-8 text (exclusive with `data`). */
  text: z.string().optional(),
  /** At least one event must match this rule. */
  require: z.boolean().default(false),
});

/**
 * One named attestation policy of the config. EK trust by CA bundle (`ekCaFiles`, PEM, roots and
 * intermediates) and/or allowlist (`ekHashes`); the PCR selection the quote must cover exactly; the
 * values by golden sets (any one set matching passes) and/or event-log rules.
 */
export const attestationPolicySchema = z
  .strictObject({
    ekCaFiles: z.array(z.string().min(1)).default([]),
    ekHashes: z.array(z.string().regex(/^[0-9a-f]{64}$/, 'must be 64 lower-case hex digits (sha-256 of the ek spki)')).default([]),
    /**
     * CRLs (DER or PEM) of the EK CAs, read at each enrollment and renewal so a new one needs no restart; each
     * must be signed by a CA of `ekCaFiles`. Only CAs with a CRL here are checked.
     */
    ekCrlFiles: z.array(z.string().min(1)).default([]),
    /** A CA's newest CRL past its nextUpdate: `refuse` the EKs it speaks for until the file is refreshed, or `warn` and use it. */
    ekCrlExpired: z.enum(['refuse', 'warn']).default('refuse'),
    pcrs: z.strictObject({
      bank: z.enum(['sha256', 'sha384', 'sha1']),
      select: z.array(pcrIndex).min(1),
    }),
    golden: z.array(z.record(z.string().regex(/^(0|[1-9][0-9]?)$/, 'pcr index'), hex)).min(1).optional(),
    eventLog: z.strictObject({ rules: z.array(ruleSchema).min(1) }).optional(),
    akAlgorithms: z.array(z.enum(['rsa', 'ecc'])).min(1).default(['rsa', 'ecc']),
    /**
     * When set, enrollment needs a one-time join token whose SHA-256 (lower-case hex) is a line of this
     * file; the file is read at each enrollment, so tokens can be added without a restart.
     */
    joinTokenFile: z.string().min(1).optional(),
    /** Lifetime of the certificates this policy's builders get (default: identity.lifetime); a runner may ask for less. */
    // A duration string, or milliseconds (loadPolicies also runs over an already parsed config).
    identityLifetime: z
      .union([
        z.number().int(),
        z.string().transform((text, ctx) => {
          try {
            return parseDuration(text);
          } catch (err) {
            ctx.addIssue({ code: 'custom', message: (err as Error).message });
            return z.NEVER;
          }
        }),
      ])
      .refine((ms) => ms >= 1000 && ms <= 24 * 3_600_000, 'must be between 1s and 24h')
      .optional(),
  })
  .superRefine((p, ctx) => {
    if (p.ekCaFiles.length === 0 && p.ekHashes.length === 0) {
      ctx.addIssue({ code: 'custom', path: ['ekCaFiles'], message: 'give ekCaFiles, ekHashes or both' });
    }
    if (p.ekCrlFiles.length > 0 && p.ekCaFiles.length === 0) {
      ctx.addIssue({ code: 'custom', path: ['ekCrlFiles'], message: 'needs ekCaFiles: a crl is checked against the ca that signed it' });
    }
    if (p.golden === undefined && p.eventLog === undefined) {
      ctx.addIssue({ code: 'custom', path: ['golden'], message: 'give golden values, eventLog rules or both' });
    }
    const select = new Set(p.pcrs.select);
    if (select.size !== p.pcrs.select.length) ctx.addIssue({ code: 'custom', path: ['pcrs', 'select'], message: 'lists a pcr twice' });
    const size = PCR_BANKS[p.pcrs.bank].size;
    p.golden?.forEach((set, i) => {
      for (const [k, v] of Object.entries(set)) {
        if (!select.has(Number(k))) ctx.addIssue({ code: 'custom', path: ['golden', i, k], message: 'pcr is not in pcrs.select' });
        if (v.length !== size * 2) ctx.addIssue({ code: 'custom', path: ['golden', i, k], message: `must be ${size} bytes (${p.pcrs.bank})` });
      }
      // Every selected PCR is pinned: a set that leaves one out would accept any value for it.
      for (const pcr of select) {
        if (!Object.hasOwn(set, String(pcr))) ctx.addIssue({ code: 'custom', path: ['golden', i], message: `lacks pcr ${pcr}` });
      }
    });
    p.eventLog?.rules.forEach((r, i) => {
      if (r.pcr === undefined && r.type === undefined && r.digest === undefined && r.data === undefined && r.text === undefined) {
        ctx.addIssue({ code: 'custom', path: ['eventLog', 'rules', i], message: 'a rule names at least one of pcr, type, digest, data, text' });
      }
      if (typeof r.type === 'string' && eventTypeByName(r.type) === undefined) {
        ctx.addIssue({ code: 'custom', path: ['eventLog', 'rules', i, 'type'], message: `unknown event type ${r.type}` });
      }
      if (r.digest !== undefined && r.digest.length !== size * 2) {
        ctx.addIssue({ code: 'custom', path: ['eventLog', 'rules', i, 'digest'], message: `must be ${size} bytes (${p.pcrs.bank})` });
      }
      if (r.data !== undefined && r.text !== undefined) {
        ctx.addIssue({ code: 'custom', path: ['eventLog', 'rules', i], message: 'give data or text, not both' });
      }
      for (const pcr of typeof r.pcr === 'number' ? [r.pcr] : r.pcr ?? []) {
        if (!select.has(pcr)) ctx.addIssue({ code: 'custom', path: ['eventLog', 'rules', i, 'pcr'], message: `pcr ${pcr} is not in pcrs.select` });
      }
    });
  });

/** The config's map of named attestation policies, to mount at the config's `attestation.policies`. */
export const attestationPoliciesSchema = z.record(z.string(), attestationPolicySchema).superRefine(
  (all, ctx) => {
    if (all === null || typeof all !== 'object') return;
    for (const name of Object.keys(all)) {
      if (!/^[a-z][a-z0-9-]{0,63}$/.test(name)) ctx.addIssue({ code: 'custom', path: [name], message: 'policy names are lower-case letters, digits and -' });
    }
  },
  // Names are checked even when a policy's body failed, so every problem is reported at once.
  { when: () => true },
);

/** The config form of one policy, after schema defaults. */
export type AttestationPolicyConfig = z.infer<typeof attestationPolicySchema>;

/** A policy ready for the verifier: certificates loaded, hex decoded, names resolved. */
export interface AttestationPolicy {
  name: string;
  /** Trusted EK CAs (roots and intermediates); an EK certificate must chain to one of them. */
  ekCas: X509Certificate[];
  /** Allowlisted EK hashes (lower-case hex SHA-256 of the EK SPKI). */
  ekHashes: ReadonlySet<string>;
  /** The EK CAs' CRLs, read again at each check, when the policy gives `ekCrlFiles`. */
  ekCrls?: EkCrls;
  /** The exact selection a quote must cover: bank name, its TPM_ALG id, and the PCRs ascending. */
  pcrs: { bank: PcrBank; hashAlg: number; select: number[] };
  /** Golden value sets; any one matching passes. */
  golden?: Map<number, Buffer>[];
  /** Event-log rules; when present a log must be presented, replay to the quoted values and pass them. */
  eventLog?: { rules: EventRule[] };
  /** AK key types accepted. */
  akAlgorithms: ReadonlySet<'rsa' | 'ecc'>;
  /** The file of accepted join-token hashes, when the policy asks for a token. */
  joinTokenFile?: string;
  /** Certificate lifetime for this policy's builders, in ms, when it differs from the identity CA's default. */
  identityLifetimeMs?: number;
}

/** Every problem found in the attestation policies, one line each, reported at once. */
export class PolicyProblems extends SigilError {
  readonly problems: string[];
  constructor(problems: string[]) {
    super('CONFIG_INVALID', `attestation policies: ${problems.length} problem${problems.length === 1 ? '' : 's'}:\n  ${problems.join('\n  ')}`);
    this.problems = problems;
  }
}

const PEM_CERT = /-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g;

function loadBundle(file: string, text: string, where: string, problems: string[]): X509Certificate[] {
  const blocks = text.match(PEM_CERT) ?? [];
  if (blocks.length === 0) problems.push(`${where}: ${file} holds no PEM certificate`);
  const out: X509Certificate[] = [];
  blocks.forEach((pem, i) => {
    let cert: X509Certificate;
    try {
      cert = new X509Certificate(pem);
    } catch {
      problems.push(`${where}: ${file} certificate ${i + 1} does not parse`);
      return;
    }
    if (!cert.ca) problems.push(`${where}: ${file} certificate ${i + 1} (${cert.subject.replace(/\n/g, ', ')}) is not a ca`);
    else out.push(cert);
  });
  return out;
}

function resolveRule(r: z.infer<typeof ruleSchema>): EventRule {
  return {
    ...(r.pcr !== undefined ? { pcrs: typeof r.pcr === 'number' ? [r.pcr] : [...r.pcr] } : {}),
    ...(r.type !== undefined ? { type: typeof r.type === 'number' ? r.type : eventTypeByName(r.type)! } : {}),
    ...(r.digest !== undefined ? { digest: Buffer.from(r.digest, 'hex') } : {}),
    ...(r.data !== undefined ? { data: Buffer.from(r.data, 'hex') } : {}),
    ...(r.text !== undefined ? { data: Buffer.from(r.text, 'utf8') } : {}),
    require: r.require,
  };
}

/**
 * Turns the config's `attestation.policies` (parsed YAML/JSON, not yet validated) into resolved
 * policies, reading every CA bundle and CRL with `readFile` (CRLs again at each check); throws PolicyProblems (CONFIG_INVALID) listing
 * every schema problem and every unreadable or unusable bundle at once.
 */
export function loadPolicies(raw: unknown, readFile: (path: string) => string | Buffer): Map<string, AttestationPolicy> {
  const parsed = attestationPoliciesSchema.safeParse(raw);
  const problems = parsed.success ? [] : parsed.error.issues.map((i) => `${i.path.join('.') || '(top)'}: ${i.message}`);
  const out = new Map<string, AttestationPolicy>();
  // Bundles are read even when the schema failed elsewhere, so one run reports every problem.
  const entries: [string, Partial<AttestationPolicyConfig>][] = parsed.success
    ? Object.entries(parsed.data)
    : raw !== null && typeof raw === 'object'
      ? Object.entries(raw as Record<string, Partial<AttestationPolicyConfig>>)
      : [];
  for (const [name, p] of entries) {
    const ekCas: X509Certificate[] = [];
    const files = Array.isArray(p?.ekCaFiles) ? p.ekCaFiles : [];
    files.forEach((file, i) => {
      if (typeof file !== 'string') return;
      const where = `${name}.ekCaFiles.${i}`;
      let text: string;
      try {
        text = readFile(file).toString('utf8');
      } catch (err) {
        problems.push(`${where}: cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? 'error'}`);
        return;
      }
      ekCas.push(...loadBundle(file, text, where, problems));
    });
    const asBuffer = (f: string): Buffer => {
      const d = readFile(f);
      return typeof d === 'string' ? Buffer.from(d, 'utf8') : d;
    };
    // Without ekCaFiles the schema already says so; every CRL would only add "not one of the policy's ek cas".
    const crlFiles = Array.isArray(p?.ekCrlFiles) && files.length > 0 ? p.ekCrlFiles.filter((f): f is string => typeof f === 'string') : [];
    crlFiles.forEach((file, i) => {
      const where = `${name}.ekCrlFiles.${i}`;
      let data: Buffer;
      try {
        data = asBuffer(file);
      } catch (err) {
        problems.push(`${where}: cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? 'error'}`);
        return;
      }
      const crl = parseEkCrl(file, data, ekCas);
      if (typeof crl === 'string') problems.push(`${where}: ${crl}`);
    });
    if (!parsed.success) continue;
    const cfg = p as AttestationPolicyConfig;
    const bank = PCR_BANKS[cfg.pcrs.bank];
    out.set(name, {
      name,
      ekCas,
      ekHashes: new Set(cfg.ekHashes),
      ...(cfg.ekCrlFiles.length > 0 ? { ekCrls: new EkCrls({ files: cfg.ekCrlFiles, cas: ekCas, expired: cfg.ekCrlExpired as EkCrlExpired, readFile: asBuffer }) } : {}),
      pcrs: { bank: cfg.pcrs.bank, hashAlg: bank.alg, select: [...cfg.pcrs.select].sort((a, b) => a - b) },
      ...(cfg.golden !== undefined
        ? { golden: cfg.golden.map((set) => new Map(Object.entries(set).map(([k, v]) => [Number(k), Buffer.from(v, 'hex')]))) }
        : {}),
      ...(cfg.eventLog !== undefined ? { eventLog: { rules: cfg.eventLog.rules.map(resolveRule) } } : {}),
      akAlgorithms: new Set(cfg.akAlgorithms),
      ...(cfg.joinTokenFile !== undefined ? { joinTokenFile: cfg.joinTokenFile } : {}),
      ...(cfg.identityLifetime !== undefined ? { identityLifetimeMs: cfg.identityLifetime } : {}),
    });
  }
  if (problems.length > 0) throw new PolicyProblems(problems);
  return out;
}
