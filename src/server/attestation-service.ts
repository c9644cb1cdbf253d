import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { AttestationServer, BuilderIdentity as PbIdentity, Quote } from '../gen/sigil/v1/attestation.ts';
import type { Logger } from '../log.ts';
import type { Clock } from '../clock.ts';
import { SigilError, isSigilError } from '../errors.ts';
import type { Attestation, QuoteEvidence, Verifier } from '../attest/verifier.ts';
import type { AttestationPolicy } from '../attest/policy.ts';
import type { IdentityCa, IssuedCertificate } from '../identity/identity-ca.ts';
import type { Metrics } from './metrics.ts';
import type { Principal, Role } from './auth.ts';
import { recordRefusal, unary, type RpcContext } from './rpc.ts';
import { hashOf } from '../tpm/structures.ts';
import type { AuditSink } from '../audit/audit-sink.ts';
import { reasonOf, resultOf } from '../audit/audited.ts';

const BUILDERS: readonly Role[] = ['builder'];
// Bounds on what an unauthenticated caller may make the daemon parse.
const MAX_STRUCT = 4096;
const MAX_CERT = 8192;
const MAX_EVENT_LOG = 4 * 1024 * 1024;

/** What the Attestation service needs. */
export interface AttestationDeps {
  verifier: Verifier;
  ca: IdentityCa;
  policies: ReadonlyMap<string, AttestationPolicy>;
  nonceTtlMs: number;
  clock: Clock;
  audit: Logger;
  /** The audit log: enrollments and renewals, issued or refused, are recorded before the answer leaves. */
  sink: AuditSink;
  metrics: Metrics;
  /** Spends a one-time join token by hash; false when it was spent before. */
  useJoinToken(tokenHash: string, policy: string): boolean;
}

/**
 * The `sigil.v1.Attestation` service: TPM enrollment and renewal in, builder certificates out. Every
 * issuance and every refusal lands in the audit channel and the enrollments metric.
 */
export function attestationService(ctx: RpcContext, d: AttestationDeps): AttestationServer {
  const outcome = async <T>(kind: 'enroll' | 'renew', policy: string, fields: Record<string, unknown>, fn: () => Promise<T>, who = 'anonymous'): Promise<T> => {
    const act = kind === 'enroll' ? 'enrollment' : 'renewal';
    let r: T;
    try {
      d.sink.ready();
      r = await fn();
    } catch (err) {
      const reason = isSigilError(err) ? err.code : 'INTERNAL';
      d.metrics.enrollments.inc({ kind, policy: policy || '-', outcome: reason });
      d.audit.warn({ kind, policy, reason, detail: isSigilError(err) ? err.message : 'internal error', ...fields }, kind === 'enroll' ? 'enrollment refused' : 'renewal refused');
      // The refusal's message, as request.refused entries carry it (messages never hold a secret); internal causes stay in the log.
      await d.sink.record({ who, act, result: resultOf(err), reason: reasonOf(err), detail: { policy: policy || undefined, ...fields, ...(isSigilError(err) && err.code !== 'INTERNAL' ? { why: err.message } : {}) } });
      throw err;
    }
    const issued = (r as { identity?: PbIdentity }).identity;
    await d.sink.record({ who, act, result: 'ok', detail: { policy: policy || undefined, ...fields, ...(issued ? { spiffeId: issued.spiffeId, notAfter: issued.notAfter?.toISOString() } : { step: 'challenge' }) } });
    return r;
  };

  const policyOf = (name: string): AttestationPolicy => {
    if (name === '') {
      if (d.policies.size === 1) return d.policies.values().next().value!;
      throw new SigilError('INVALID_ARGUMENT', `name an attestation policy: this daemon has ${d.policies.size === 0 ? 'none' : [...d.policies.keys()].join(', ')}`);
    }
    const p = d.policies.get(name);
    if (!p) throw new SigilError('INVALID_ARGUMENT', `no attestation policy ${name}: this daemon has ${d.policies.size === 0 ? 'none' : [...d.policies.keys()].join(', ')}`);
    return p;
  };

  const selection = (p: AttestationPolicy) => ({ bank: p.pcrs.bank, indices: p.pcrs.select });
  const expireTime = () => new Date(d.clock.now().getTime() + d.nonceTtlMs);

  const issue = async (a: Attestation, spki: Buffer, claims: Record<string, string>, lifetimeSeconds: number, kind: 'enroll' | 'renew'): Promise<PbIdentity> => {
    const cert: IssuedCertificate = await d.ca.issue({
      spki,
      ekHash: a.ekHash,
      akName: a.akName,
      pcrSelection: `${hashOf(a.pcrSelection.hash)}:${a.pcrSelection.pcrs.join(',')}`,
      pcrDigest: a.pcrDigest,
      policy: a.policy,
      claims,
      ...lifetimeOf(d.policies.get(a.policy), lifetimeSeconds),
    });
    d.metrics.enrollments.inc({ kind, policy: a.policy, outcome: 'issued' });
    d.audit.info({ kind, policy: a.policy, ekHash: a.ekHash, akName: a.akName, san: cert.san, serial: cert.serial, notAfter: cert.notAfter.toISOString(), claims }, kind === 'enroll' ? 'builder enrolled' : 'builder renewed');
    return { certificatePem: cert.certificatePem, caCertificatePem: cert.caCertificatePem, spiffeId: cert.san, notBefore: cert.notBefore, notAfter: cert.notAfter };
  };

  return {
    beginEnrollment: unary(ctx, 'BeginEnrollment', null, async (req, call) => {
      if (req.renewal) {
        let who: Principal;
        try {
          who = ctx.auth.require(call, BUILDERS);
        } catch (err) {
          // A renewal without a valid builder identity (expired, revoked, another role) is a refused request in the log.
          throw await recordRefusal(ctx, call, 'BeginEnrollment', err);
        }
        const b = who.builder!;
        return outcome('renew', b.policy, { ekHash: b.ekHash, san: b.san }, async () => {
          if (req.ekCertificate.length || req.ekPublic.length || req.akPublic.length || req.policy || req.joinToken) {
            throw new SigilError('INVALID_ARGUMENT', 'a renewal request carries no other field');
          }
          const policy = d.policies.get(b.policy);
          if (policy === undefined) throw new SigilError('FAILED_PRECONDITION', removedPolicy(b.policy));
          const nonce = await d.verifier.renewChallenge({ ekHash: b.ekHash, akName: b.akName });
          return { nonce, credentialBlob: Buffer.alloc(0), encryptedSecret: Buffer.alloc(0), expireTime: expireTime(), pcrSelection: selection(policy) };
        }, who.subject);
      }
      return outcome('enroll', req.policy, {}, async () => {
        const policy = policyOf(req.policy);
        if (req.akPublic.length === 0) throw new SigilError('INVALID_ARGUMENT', 'ak_public is required');
        if (req.ekCertificate.length === 0 && req.ekPublic.length === 0) throw new SigilError('INVALID_ARGUMENT', 'give ek_certificate, ek_public or both');
        bounded('ak_public', req.akPublic, MAX_STRUCT);
        bounded('ek_public', req.ekPublic, MAX_STRUCT);
        bounded('ek_certificate', req.ekCertificate, MAX_CERT);
        checkJoinToken(d, policy, req.joinToken);
        const r = await d.verifier.begin({
          policy: policy.name,
          akPublic: req.akPublic,
          ...(req.ekCertificate.length ? { ekCert: req.ekCertificate } : {}),
          ...(req.ekPublic.length ? { ekPublic: req.ekPublic } : {}),
        });
        return { ...r, expireTime: expireTime(), pcrSelection: selection(policy) };
      });
    }),

    finishEnrollment: unary(ctx, 'FinishEnrollment', null, async (req) =>
      outcome('enroll', '', {}, async () => {
        const evidence = evidenceOf(req.nonce, req.quote, req.identityPublicKey);
        const a = await d.verifier.finish({ ...evidence, activatedSecret: req.activatedSecret });
        return { identity: await issue(a, req.identityPublicKey, req.claims, req.lifetimeSeconds, 'enroll') };
      }),
    ),

    renew: unary(ctx, 'Renew', BUILDERS, async (req, who) => {
      const b = who.builder!;
      return outcome('renew', b.policy, { ekHash: b.ekHash, san: b.san }, async () => {
        const a = await d.verifier.renew(evidenceOf(req.nonce, req.quote, req.identityPublicKey));
        // The nonce was issued to a builder; it must be this one (a nonce is not a bearer token).
        if (a.ekHash !== b.ekHash) throw new SigilError('PERMISSION_DENIED', 'the renewal nonce was issued to another builder');
        return { identity: await issue(a, req.identityPublicKey, req.claims, req.lifetimeSeconds, 'renew') };
      }, who.subject);
    }),
  };
}

/** Why a builder enrolled under a policy the config no longer names cannot renew. */
function removedPolicy(name: string): string {
  return `attestation policy ${name} is no longer configured: its builders cannot renew (enroll under a configured policy)`;
}

/** A policy with a join-token file needs a token listed there and never used before; it is spent now. */
function checkJoinToken(d: AttestationDeps, policy: AttestationPolicy, token: string): void {
  if (!policy.joinTokenFile) {
    if (token) throw new SigilError('INVALID_ARGUMENT', `policy ${policy.name} takes no join token`);
    return;
  }
  if (!token) throw new SigilError('PERMISSION_DENIED', `policy ${policy.name} needs a join token`);
  if (token.length > 256) throw new SigilError('INVALID_ARGUMENT', 'join token too long');
  const hash = createHash('sha256').update(token).digest('hex');
  let listed: boolean;
  try {
    listed = readFileSync(policy.joinTokenFile, 'utf8').split('\n').some((line) => line.trim().toLowerCase() === hash);
  } catch (err) {
    throw new SigilError('INTERNAL', 'cannot read the join token file', { cause: err });
  }
  if (!listed) throw new SigilError('PERMISSION_DENIED', 'unknown join token');
  if (!d.useJoinToken(hash, policy.name)) throw new SigilError('PERMISSION_DENIED', 'join token already used');
}

/** The lifetime to ask the CA for: the runner's wish, capped by the policy's lifetime (the CA caps it again at its maximum). */
function lifetimeOf(policy: AttestationPolicy | undefined, requestedSeconds: number): { lifetimeMs?: number } {
  const wanted = requestedSeconds > 0 ? requestedSeconds * 1000 : undefined;
  const cap = policy?.identityLifetimeMs;
  if (wanted === undefined) return cap === undefined ? {} : { lifetimeMs: cap };
  return { lifetimeMs: cap === undefined ? wanted : Math.min(wanted, cap) };
}

function bounded(field: string, b: Buffer, max: number): void {
  if (b.length > max) throw new SigilError('INVALID_ARGUMENT', `${field} is ${b.length} bytes, over the ${max}-byte limit`);
}

function evidenceOf(nonce: Buffer, q: Quote | undefined, spki: Buffer): QuoteEvidence {
  if (!q) throw new SigilError('INVALID_ARGUMENT', 'quote is required');
  if (nonce.length === 0) throw new SigilError('INVALID_ARGUMENT', 'nonce is required');
  if (spki.length === 0) throw new SigilError('INVALID_ARGUMENT', 'identity_public_key is required');
  bounded('quote.attest', q.attest, MAX_STRUCT);
  bounded('quote.signature', q.signature, MAX_STRUCT);
  bounded('quote.event_log', q.eventLog, MAX_EVENT_LOG);
  bounded('identity_public_key', spki, MAX_STRUCT);
  const pcrValues = new Map<number, Buffer>();
  for (const [k, v] of Object.entries(q.pcrValues)) pcrValues.set(Number(k), v);
  return {
    nonce,
    quote: q.attest,
    quoteSignature: q.signature,
    pcrValues,
    identitySpki: spki,
    ...(q.eventLog.length ? { eventLog: q.eventLog } : {}),
  };
}
