import type { AdminServer } from '../gen/sigil/v1/admin.ts';
import { SigilError } from '../errors.ts';
import { audited, reasonOf, resultOf } from '../audit/audited.ts';
import { parseKeyRef } from '../keys/names.ts';
import type { KeyService } from '../keys/key-service.ts';
import type { KeyLifecycle, PolicyPatch } from '../keys/lifecycle.ts';
import { approvalStateFromPb, approvalToPb, algorithmFromPb, keyToPb, keyVersionToPb, policyToPb } from './convert.ts';
import { unary, type RpcContext } from './rpc.ts';
import type { Principal, Role } from './auth.ts';
import type { Enrollments, EnrollmentView } from '../attest/enrollments.ts';
import type { Enrollment as PbEnrollment } from '../gen/sigil/v1/admin.ts';
import type { OnlineArchiver } from '../store/audit-archive.ts';

/** Who may change keys (create, import, rotate, disable, enable, schedule or cancel destruction, policy). */
export const KEY_CHANGERS: readonly Role[] = ['admin'];
/** Who may read keys and their versions through the Admin service. */
export const KEY_READERS: readonly Role[] = ['admin', 'auditor'];
/** Who may list approvals. */
export const APPROVAL_READERS: readonly Role[] = ['admin', 'approver', 'auditor'];
/** Who may approve or reject (never the requester: checked by the lifecycle). */
export const APPROVERS: readonly Role[] = ['approver'];
/** Who may list builder enrollments (read-only, like the revocation lists). */
export const ENROLLMENT_READERS: readonly Role[] = ['admin', 'auditor'];
/** Who may forget an enrollment (it re-opens the counters' rollback check for that TPM). */
export const ENROLLMENT_CHANGERS: readonly Role[] = ['admin'];
/** Who may archive old audit entries (their data leaves the live log for segment files). */
export const AUDIT_ARCHIVERS: readonly Role[] = ['admin'];

const MAX_SECONDS = 10 * 366 * 86_400;

/** The lifecycle acts of the Admin service, by what a refusal calls them. */
type LifecycleAct = 'rotate' | 'disable' | 'enable' | 'schedule-destroy' | 'cancel-destroy' | 'policy';
const PAST: Record<LifecycleAct, string> = {
  rotate: 'rotated',
  disable: 'disabled',
  enable: 'enabled',
  'schedule-destroy': 'scheduled for destruction',
  'cancel-destroy': 'taken out of destruction',
  policy: 'given a policy',
};

/** The actor of an act: the caller's certificate subject and fingerprint. */
function actor(who: Principal): { subject: string; fingerprint: string } {
  return { subject: who.subject, fingerprint: who.fingerprint };
}

function seconds(n: number, what: string): number {
  if (!Number.isSafeInteger(n) || n < 0 || n > MAX_SECONDS) throw new SigilError('INVALID_ARGUMENT', `${what} must be between 0 and ${MAX_SECONDS} seconds`);
  return n * 1000;
}

/** What the admin service asks the identity CA before an act on its key; IdentityCa is one. */
export interface IdentityCaKey {
  /** The version whose generation issues now. */
  readonly currentVersion: number;
  /** The versions whose generations are trusted now (their certificates may still be valid, their CRLs are signed). */
  liveVersions(): number[];
  /** Each generation's window: when an older one stops being trusted. */
  windows(): ReadonlyArray<{ version: number; liveUntil: Date | null }>;
}

/** The names of the daemon's own keys (reserved: no RPC signs with them). */
export interface DaemonKeys {
  /** The identity CA's key, when the daemon has an identity CA. */
  identityCa: string | null;
  /** The identity CA itself, whose generations decide which acts on its key are allowed. */
  identity?: IdentityCaKey | null;
  /** The audit log's checkpoint key. */
  audit: string;
  /** The key that signs the trusted root. */
  trustRoot: string;
  /** The versions of the trusted-root key that have no transition statement yet (a crash lost it; the next start makes it). */
  trustRootMissing?: (() => number[]) | null;
}

/** An enrollment record as the contract carries it. */
function enrollmentToPb(v: EnrollmentView): PbEnrollment {
  const r = v.record;
  return {
    ekHash: r.ekHash,
    akName: r.akName,
    policy: r.policy,
    resetCount: r.resetCount,
    restartCount: r.restartCount,
    clock: Number(r.clock),
    updateTime: r.updatedAt,
    ekCertificateKept: r.ekCertificate !== null && r.ekCertificate.length > 0,
    ekPublicKept: r.ekPublic !== null,
    revoked: v.revoked,
  };
}

/**
 * The `sigil.v1.Admin` service: key creation, import, inspection and lifecycle (rotation, disable,
 * destruction, policy, approvals), and the builder enrollment records (list, forget). Every act is an audit
 * log entry, durable before the answer (the lifecycle records its own).
 */
export function adminService(
  ctx: RpcContext,
  keys: KeyService,
  lifecycle: KeyLifecycle,
  daemonKeys: DaemonKeys | null = null,
  enrollments: Enrollments | null = null,
  archiver: OnlineArchiver | null = null,
): AdminServer {
  const enrolled = (): Enrollments => {
    if (enrollments === null) throw new SigilError('NOT_IMPLEMENTED', 'this daemon keeps no builder enrollments');
    return enrollments;
  };
  /**
   * The daemon's own keys (identity CA, audit, trusted root) are pinned by what they signed. The audit key
   * may only be rotated: its older versions stay, so the checkpoints they signed stay verifiable. The
   * trusted-root key may be rotated (the publisher makes the transition statement verifiers follow) and an
   * older version disabled (as compromised too), enabled or destroyed; its current version may not be disabled
   * or destroyed (verifiers would be left with no key), and it takes no policy. The identity CA key may be
   * rotated (a new generation), and an older version disabled, enabled or destroyed; refused are the acts
   * that would break a generation still trusted: disabling the current one, destroying a live one, and a
   * min version above the oldest live one (its CRL is signed with it).
   */
  const daemonKey = (ref: string, act: LifecycleAct, patch?: PolicyPatch, compromisedAct = false): string => {
    const { name, version } = parseKeyRef(ref);
    if (daemonKeys === null) return ref;
    if (name === daemonKeys.audit) {
      if (act === 'rotate') return ref;
      throw new SigilError(
        'FAILED_PRECONDITION',
        `key ${name} is reserved for the daemon's own use: it signs the audit log's checkpoints and can only be rotated (sigilctl key rotate ${name}); its older versions stay so the checkpoints they signed still verify (see docs/operations.md, the audit key is compromised)`,
      );
    }
    if (name === daemonKeys.trustRoot) {
      const see = '(see docs/operations.md, rotate the trusted-root key and the trusted-root key is compromised)';
      if (act === 'policy') {
        throw new SigilError(
          'FAILED_PRECONDITION',
          `key ${name} is reserved for the daemon's own use: it signs the trusted root, the anchor verifiers pin, and takes no policy: it is rotated only by hand (sigilctl key rotate ${name}) and each version must stay able to vouch for the next ${see}`,
        );
      }
      const current = keys.getKey(name).primaryVersion;
      if ((act === 'disable' || act === 'schedule-destroy') && version === current) {
        throw new SigilError(
          'FAILED_PRECONDITION',
          `key ${ref} is the current version of ${name}: it signs the trusted root, the anchor verifiers pin, so it cannot be ${PAST[act]}: rotate first (sigilctl key rotate ${name}), then ${act === 'disable' ? 'disable' : 'destroy'} ${ref} ${see}`,
        );
      }
      if ((act === 'schedule-destroy' || act === 'disable') && version !== null && daemonKeys.trustRootMissing?.().includes(version + 1)) {
        // Disabling as compromised stays allowed: a leaked key must stop signing even if the link stays missing.
        if (!(act === 'disable' && compromisedAct)) {
          throw new SigilError(
            'FAILED_PRECONDITION',
            `key ${ref} must still sign the transition statement that introduces ${name}@${version + 1}, which the next start of sigild makes; restart it first, or disable ${ref} as compromised ${see}`,
          );
        }
      }
      return ref;
    }
    if (name === daemonKeys.identityCa) {
      const ca = daemonKeys.identity ?? null;
      if (ca === null) {
        throw new SigilError('FAILED_PRECONDITION', `key ${name} is reserved for the daemon's own use: it is the identity ca's key, so it cannot be ${PAST[act]} through the admin api (see docs/security.md, daemon keys)`);
      }
      const see = '(see docs/operations.md, the identity ca key is compromised)';
      if (act === 'disable' && version === ca.currentVersion) {
        throw new SigilError(
          'FAILED_PRECONDITION',
          `key ${ref} is the identity ca's current generation, which issues every builder certificate: rotate first (sigilctl key rotate ${name}), then disable ${ref} ${see}`,
        );
      }
      if (act === 'schedule-destroy' && version !== null && ca.liveVersions().includes(version)) {
        const until = ca.windows().find((w) => w.version === version)?.liveUntil;
        throw new SigilError(
          'FAILED_PRECONDITION',
          `key ${ref} is identity ca generation ${version}, still trusted${until ? ` until ${until.toISOString()}` : ''}: builder certificates it issued may still be valid and its crl is signed with it; disable it first (sigilctl key disable ${ref})${until ? ' or wait until then' : ''} ${see}`,
        );
      }
      if (act === 'policy' && patch) {
        const oldest = Math.min(...ca.liveVersions());
        for (const [field, value] of [['min_sign_version', patch.minSignVersion], ['min_verify_version', patch.minVerifyVersion]] as const) {
          if (value !== undefined && value > oldest) {
            throw new SigilError(
              'FAILED_PRECONDITION',
              `${field} ${value} is above ${name}@${oldest}, an identity ca generation still trusted: the daemon signs its crl with it until its window ends or it is disabled (sigilctl key disable ${name}@${oldest}) ${see}`,
            );
          }
        }
      }
    }
    return ref;
  };
  /**
   * Runs the checks the service makes before handing an act to the lifecycle (daemon keys, field ranges): a
   * refusal there is an audit entry like any other (`refused`, with the reason), durable before the answer.
   */
  const checked = async <T>(who: Principal, act: LifecycleAct, key: string, fn: () => T): Promise<T> => {
    try {
      return fn();
    } catch (err) {
      await ctx.audit.record({
        who: who.subject,
        act: `key.${act}`,
        key: key.slice(0, 200),
        result: resultOf(err),
        reason: reasonOf(err),
        detail: { message: err instanceof SigilError ? err.message : 'internal error' },
      });
      throw err;
    }
  };
  return {
    createKey: unary(ctx, 'CreateKey', KEY_CHANGERS, async (req, who) => {
      const key = await audited(
        ctx.audit,
        { who: who.subject, act: 'key.create', key: req.name.slice(0, 200) },
        () => keys.createKey(req.name, algorithmFromPb(req.algorithm), req.backend || undefined),
        (k) => ({ key: `${k.name}@1`, detail: { algorithm: k.algorithm, backend: k.backend, uri: k.versions[0]!.uri } }),
      );
      return { key: keyToPb(key) };
    }),
    importKey: unary(ctx, 'ImportKey', KEY_CHANGERS, async (req, who) => {
      const key = await audited(
        ctx.audit,
        { who: who.subject, act: 'key.import', key: req.name.slice(0, 200), detail: { uri: req.uri.slice(0, 512) } },
        () => keys.importKey(req.name, req.uri, algorithmFromPb(req.algorithm), req.backend || undefined),
        (k) => ({ key: `${k.name}@1`, detail: { uri: k.versions[0]!.uri, algorithm: k.algorithm, backend: k.backend } }),
      );
      return { key: keyToPb(key) };
    }),
    getKey: unary(ctx, 'GetKey', KEY_READERS, (req) => ({ key: keyToPb(keys.getKey(req.name)) })),
    listKeys: unary(ctx, 'ListKeys', KEY_READERS, (req) => ({ keys: keys.listKeys(req.prefix).map(keyToPb) })),
    rotateKey: unary(ctx, 'RotateKey', KEY_CHANGERS, async (req, who) => {
      const { key, version, behind } = await lifecycle.rotate(actor(who), await checked(who, 'rotate', req.name, () => daemonKey(req.name, 'rotate')));
      return { key: keyToPb(key), newVersion: version, warning: behind ?? '' };
    }),
    disableKeyVersion: unary(ctx, 'DisableKeyVersion', KEY_CHANGERS, async (req, who) => {
      const ref = await checked(who, 'disable', req.key, () => {
        if (req.compromiseTime && !req.compromised) throw new SigilError('INVALID_ARGUMENT', 'compromise_time needs compromised');
        return daemonKey(req.key, 'disable', undefined, req.compromised);
      });
      return { key: keyToPb(await lifecycle.disable(actor(who), ref, { compromised: req.compromised, since: req.compromiseTime ?? null })) };
    }),
    enableKeyVersion: unary(ctx, 'EnableKeyVersion', KEY_CHANGERS, async (req, who) => ({
      key: keyToPb(await lifecycle.enable(actor(who), await checked(who, 'enable', req.key, () => daemonKey(req.key, 'enable')))),
    })),
    scheduleDestroyKeyVersion: unary(ctx, 'ScheduleDestroyKeyVersion', KEY_CHANGERS, async (req, who) => {
      const { ref, window } = await checked(who, 'schedule-destroy', req.key, () => ({
        window: req.windowSeconds === 0 ? null : seconds(req.windowSeconds, 'window_seconds'),
        ref: daemonKey(req.key, 'schedule-destroy'),
      }));
      const r = await lifecycle.scheduleDestroy(actor(who), ref, window);
      return { key: keyToPb(r.key), approval: r.approval ? approvalToPb(r.approval) : undefined };
    }),
    cancelDestroyKeyVersion: unary(ctx, 'CancelDestroyKeyVersion', KEY_CHANGERS, async (req, who) => ({
      key: keyToPb(await lifecycle.cancelDestroy(actor(who), await checked(who, 'cancel-destroy', req.key, () => daemonKey(req.key, 'cancel-destroy')))),
    })),
    listKeyVersions: unary(ctx, 'ListKeyVersions', KEY_READERS, (req) => {
      const k = keys.getKey(req.name);
      return { versions: k.versions.map(keyVersionToPb), primaryVersion: k.primaryVersion, policy: policyToPb(k.policy) };
    }),
    updateKeyPolicy: unary(ctx, 'UpdateKeyPolicy', KEY_CHANGERS, async (req, who) => {
      const { ref, patch } = await checked(who, 'policy', req.name, () => {
        const patch: PolicyPatch = {};
        if (req.minSignVersion !== undefined) patch.minSignVersion = req.minSignVersion;
        if (req.minVerifyVersion !== undefined) patch.minVerifyVersion = req.minVerifyVersion;
        if (req.autoRotatePeriodSeconds !== undefined) patch.autoRotatePeriodMs = req.autoRotatePeriodSeconds === 0 ? null : seconds(req.autoRotatePeriodSeconds, 'auto_rotate_period_seconds');
        if (req.destroyNeedsApproval !== undefined) patch.destroyNeedsApproval = req.destroyNeedsApproval;
        if (Object.keys(patch).length === 0) throw new SigilError('INVALID_ARGUMENT', 'set at least one policy field');
        return { ref: daemonKey(req.name, 'policy', patch), patch };
      });
      const r = await lifecycle.updatePolicy(actor(who), ref, patch);
      return { key: keyToPb(r.key), approval: r.approval ? approvalToPb(r.approval) : undefined };
    }),
    listApprovals: unary(ctx, 'ListApprovals', APPROVAL_READERS, (req) => ({
      approvals: lifecycle.listApprovals({ state: approvalStateFromPb(req.state), key: req.key || undefined }).map(approvalToPb),
    })),
    approveRequest: unary(ctx, 'ApproveRequest', APPROVERS, async (req, who) => {
      const r = await lifecycle.approve(actor(who), req.id);
      return { approval: approvalToPb(r.approval), key: keyToPb(r.key) };
    }),
    rejectRequest: unary(ctx, 'RejectRequest', APPROVERS, async (req, who) => ({ approval: approvalToPb(await lifecycle.reject(actor(who), req.id, req.reason)) })),
    listEnrollments: unary(ctx, 'ListEnrollments', ENROLLMENT_READERS, (req) => ({ enrollments: enrolled().list(req.ekHashPrefix).map(enrollmentToPb) })),
    forgetEnrollment: unary(ctx, 'ForgetEnrollment', ENROLLMENT_CHANGERS, async (req, who) => ({
      enrollment: enrollmentToPb(await enrolled().forget(req.ekHash, req.reason, who.subject)),
    })),
    archiveAuditLog: unary(ctx, 'ArchiveAuditLog', AUDIT_ARCHIVERS, async (req, who) => {
      if (archiver === null) throw new SigilError('NOT_IMPLEMENTED', 'this daemon does not archive its audit log');
      const r = await archiver.run(who.subject, req.before);
      return {
        segments: r.segments.map((s) => ({ start: s.start, end: s.end, file: s.file, sha256: s.sha256, checkpointSize: s.checkpoint, entryIndex: s.entry })),
        archivedEnd: r.archivedEnd,
        treeSize: r.size,
        nothing: r.nothing ?? '',
      };
    }),
  };
}
