import {
  Algorithm as PbAlgorithm,
  KeyVersionState as PbState,
  type Key as PbKey,
  type KeyPolicy as PbKeyPolicy,
  type KeyVersion as PbKeyVersion,
} from '../gen/sigil/v1/signer.ts';
import { ApprovalState as PbApprovalState, type Approval as PbApproval } from '../gen/sigil/v1/admin.ts';
import { SigilError } from '../errors.ts';
import type { Algorithm } from '../signers/signer.ts';
import type { ApprovalRecord, ApprovalState, KeyPolicy, KeyRecord, KeyVersionRecord, KeyVersionState } from '../store/store.ts';

const TO_PB = {
  ECDSA_P256_SHA256: PbAlgorithm.ECDSA_P256_SHA256,
  ECDSA_P384_SHA384: PbAlgorithm.ECDSA_P384_SHA384,
  RSA_PKCS1_SHA256: PbAlgorithm.RSA_PKCS1_SHA256,
  RSA_PSS_SHA256: PbAlgorithm.RSA_PSS_SHA256,
  ED25519: PbAlgorithm.ED25519,
} as const satisfies Record<Algorithm, PbAlgorithm>;

const FROM_PB = new Map<number, Algorithm>(Object.entries(TO_PB).map(([k, v]) => [v, k as Algorithm]));

const STATE_TO_PB = {
  PENDING: PbState.PENDING,
  ENABLED: PbState.ENABLED,
  DISABLED: PbState.DISABLED,
  DESTROY_SCHEDULED: PbState.DESTROY_SCHEDULED,
  DESTROYING: PbState.DESTROYING,
  DESTROYED: PbState.DESTROYED,
} as const satisfies Record<KeyVersionState, PbState>;

const APPROVAL_TO_PB = {
  PENDING: PbApprovalState.PENDING,
  APPROVED: PbApprovalState.APPROVED,
  REJECTED: PbApprovalState.REJECTED,
  EXPIRED: PbApprovalState.EXPIRED,
  CANCELLED: PbApprovalState.CANCELLED,
} as const satisfies Record<ApprovalState, PbApprovalState>;

const APPROVAL_FROM_PB = new Map<number, ApprovalState>(Object.entries(APPROVAL_TO_PB).map(([k, v]) => [v, k as ApprovalState]));

/** Domain algorithm to the contract's enum. */
export function algorithmToPb(a: Algorithm): PbAlgorithm {
  return TO_PB[a];
}

/** The contract's enum to a domain algorithm; null for UNSPECIFIED, INVALID_ARGUMENT for unknown values. */
export function algorithmFromPb(a: number): Algorithm | null {
  if (a === PbAlgorithm.UNSPECIFIED) return null;
  const alg = FROM_PB.get(a);
  if (!alg) throw new SigilError('INVALID_ARGUMENT', `unknown algorithm ${a}`);
  return alg;
}

/** A stored key to its contract form. */
export function keyToPb(k: KeyRecord): PbKey {
  return {
    name: k.name,
    algorithm: TO_PB[k.algorithm],
    backend: k.backend,
    primaryVersion: k.primaryVersion,
    createTime: k.createdAt,
    versions: k.versions.map(keyVersionToPb),
    policy: policyToPb(k.policy),
    nextRotationTime: k.nextRotationAt ?? undefined,
  };
}

/** A stored key version to its contract form. */
export function keyVersionToPb(v: KeyVersionRecord): PbKeyVersion {
  return {
    version: v.version,
    uri: v.uri,
    state: STATE_TO_PB[v.state],
    createTime: v.createdAt,
    generated: v.generated,
    disableTime: v.disabledAt ?? undefined,
    revokeTime: v.revokedAt ?? undefined,
    destroyTime: v.destroyAt ?? undefined,
    destroyedTime: v.destroyedAt ?? undefined,
  };
}

/** A key policy to its contract form (periods in whole seconds, 0 for none). */
export function policyToPb(p: KeyPolicy): PbKeyPolicy {
  return {
    minSignVersion: p.minSignVersion,
    minVerifyVersion: p.minVerifyVersion,
    autoRotatePeriodSeconds: p.autoRotatePeriodMs === null ? 0 : Math.round(p.autoRotatePeriodMs / 1000),
    destroyNeedsApproval: p.destroyNeedsApproval,
  };
}

/** An approval to its contract form. */
export function approvalToPb(a: ApprovalRecord): PbApproval {
  return {
    id: a.id,
    kind: a.kind,
    key: a.version === null ? a.key : `${a.key}@${a.version}`,
    requestedBy: a.requestedBy.subject,
    requestedByFingerprint: a.requestedBy.fingerprint,
    requestTime: a.requestedAt,
    expireTime: a.expiresAt,
    state: APPROVAL_TO_PB[a.state],
    decidedBy: a.decidedBy?.subject ?? '',
    decideTime: a.decidedAt ?? undefined,
    reason: a.reason ?? '',
    payloadJson: JSON.stringify(a.payload),
  };
}

/** The contract's approval state to the domain's; undefined for UNSPECIFIED (any state). */
export function approvalStateFromPb(s: number): ApprovalState | undefined {
  if (s === PbApprovalState.UNSPECIFIED) return undefined;
  const st = APPROVAL_FROM_PB.get(s);
  if (!st) throw new SigilError('INVALID_ARGUMENT', `unknown approval state ${s}`);
  return st;
}
