import type { RevocationServer, RevokedBuilder as PbBuilder, RevokedIdentity as PbIdentity } from '../gen/sigil/v1/revocation.ts';
import type { Role } from './auth.ts';
import type { RevokedBuilderRecord, RevokedIdentityRecord } from '../store/store.ts';
import type { Revocations } from '../revocation/revocations.ts';
import type { TrustedRootPublisher } from '../revocation/trusted-root-publisher.ts';
import { SigilError } from '../errors.ts';
import { unary, type RpcContext } from './rpc.ts';

/** Who may revoke identities and builders. */
export const REVOKE_ROLES: readonly Role[] = ['admin'];
/** Who may list revocations. */
export const LIST_REVOCATIONS_ROLES: readonly Role[] = ['admin', 'auditor'];
/** GetCrl and GetTrustedRoot need no client certificate (`null` in `unary`). */
export const PUBLIC_REVOCATION_RPCS: readonly string[] = ['GetCrl', 'GetTrustedRoot'];

/** What the Revocation service needs. */
export interface RevocationDeps {
  revocations: Revocations;
  /** The trusted-root publisher; GetTrustedRoot answers NOT_IMPLEMENTED without it. */
  trustedRoot: TrustedRootPublisher | null;
}

/** The `sigil.v1.Revocation` service: revocation acts (admin), lists (admin, auditor), CRL and trusted root (open). */
export function revocationService(ctx: RpcContext, d: RevocationDeps): RevocationServer {
  return {
    revokeIdentity: unary(ctx, 'RevokeIdentity', REVOKE_ROLES, async (req, who) => ({
      revoked: identityOf(await d.revocations.revokeIdentity(req.serial, req.reason, who.subject)),
    })),
    revokeBuilder: unary(ctx, 'RevokeBuilder', REVOKE_ROLES, async (req, who) => ({
      revoked: builderOf(await d.revocations.revokeBuilder(req.ekHash, req.reason, who.subject, req.akName)),
    })),
    listRevocations: unary(ctx, 'ListRevocations', LIST_REVOCATIONS_ROLES, () => {
      const l = d.revocations.list();
      return { identities: l.identities.map(identityOf), builders: l.builders.map(builderOf) };
    }),
    getCrl: unary(ctx, 'GetCrl', null, async (req) => {
      const c = await d.revocations.crl(req.caVersion === 0 ? undefined : req.caVersion);
      return { der: c.der, pem: c.pem, number: c.number, thisUpdate: c.thisUpdate, nextUpdate: c.nextUpdate, caVersion: c.caVersion };
    }),
    getTrustedRoot: unary(ctx, 'GetTrustedRoot', null, async () => {
      if (!d.trustedRoot) throw new SigilError('NOT_IMPLEMENTED', 'this daemon publishes no trusted root');
      const r = await d.trustedRoot.current();
      const chain = d.trustedRoot.chain();
      return {
        json: r.json,
        signature: r.signature,
        publicKeyPem: r.publicKeyPem,
        keyVersion: r.keyVersion,
        rootKeyTransitions: chain.transitions.map((t) => ({ version: t.version, statement: t.statement, previousSignature: t.previousSignature, signature: t.signature })),
        compromisedRootKeys: chain.compromised.map((c) => ({ version: c.version, publicKey: c.spki })),
        sigstoreJson: r.sigstore.json,
        sigstoreSignature: r.sigstore.signature,
      };
    }),
  };
}

function identityOf(r: RevokedIdentityRecord): PbIdentity {
  return { serial: r.serial, reason: r.reason, revokeTime: r.revokedAt, revokedBy: r.revokedBy, notAfter: r.notAfter ?? undefined, ekHash: r.ekHash ?? '' };
}

function builderOf(r: RevokedBuilderRecord): PbBuilder {
  return { ekHash: r.ekHash, akName: r.akName ?? '', reason: r.reason, revokeTime: r.revokedAt, revokedBy: r.revokedBy };
}
