import { X509Certificate } from 'node:crypto';
import type { PeerCertificate } from 'node:tls';
import { SigilError } from '../errors.ts';
import { systemClock, type Clock } from '../clock.ts';
import { parseBuilderExtensions, type BuilderIdentity } from '../identity/builder-extensions.ts';
import { globToRegExp } from '../identity/glob.ts';

/**
 * The roles a client certificate can carry: `admin` manages keys and identities, `approver` confirms
 * another admin's destructive acts, `signer` signs, `builder` (identity CA certificates only) signs with
 * the keys granted to it, `auditor` reads the audit log.
 */
export type Role = 'admin' | 'approver' | 'signer' | 'builder' | 'auditor';

/** Every role, for tables and tests. */
export const ROLES: readonly Role[] = ['admin', 'approver', 'signer', 'builder', 'auditor'];

/** The roles that config maps from operator-CA certificates; `builder` comes only from the identity CA. */
export type OperatorRole = Exclude<Role, 'builder'>;

/** A client authenticated by its certificate. */
export interface Principal {
  /** The certificate subject as `CN=..,O=..`. */
  subject: string;
  /** SHA-256 fingerprint of the certificate, lower-case hex. */
  fingerprint: string;
  roles: ReadonlySet<Role>;
  /** The end of the certificate's validity, ms since the epoch: a connection may outlive it. */
  notAfter: number;
  /** What the identity CA certified, for a builder certificate. */
  builder?: BuilderIdentity;
  /** The certificate serial, lower-case hex without leading zeros (builder certificates). */
  serial?: string;
}

/** Why a builder principal must be refused now (its certificate or TPM was revoked), or null. */
export type RevocationCheck = (p: Principal & { builder: BuilderIdentity; serial: string }) => string | null;

/** What auth needs of a call: the verified peer certificate, or why there is none. */
export interface AuthCall {
  getAuthContext(): { sslPeerCertificate?: PeerCertificate | undefined; authorizationError?: string | undefined };
}

/** Who may sign builder certificates, and the clock that says when a certificate has expired. */
export interface AuthOptions {
  /** The identity CA certificate (DER); without it no certificate gets the builder role. */
  identityCa?: Buffer | undefined;
  clock?: Clock;
  /** Run on every call of a builder, after the principal cache: revocation takes effect on the next request. */
  revoked?: RevocationCheck | undefined;
}

type Matcher = (c: PeerCertificate, names: { dns: string[]; uri: string[]; subject: string; fingerprint: string }) => boolean;

// OpenSSL verify codes (as Node's authorizationError spells them) that deserve their own message.
const WHY: Readonly<Record<string, string>> = {
  CERT_HAS_EXPIRED: 'client certificate expired',
  CERT_NOT_YET_VALID: 'client certificate not yet valid',
};

/**
 * Maps verified client certificates to roles. The server hands over a peer certificate only when it
 * chained to a trusted CA (the socket is `authorized`); otherwise the call carries the reason.
 * Certificates signed by the identity CA get the builder role and nothing else; the admin and signer
 * patterns apply to the other (operator CA) certificates only.
 */
export class Authenticator {
  readonly #rules: Array<{ role: OperatorRole; match: Matcher }> = [];
  // Principals by certificate fingerprint: the role decision is made once per certificate.
  readonly #cache = new Map<string, Principal>();
  readonly #identityCa: X509Certificate | null;
  readonly #clock: Clock;
  readonly #revoked: RevocationCheck | null;

  constructor(roles: Partial<Record<OperatorRole, readonly string[]>>, opts: AuthOptions = {}) {
    for (const role of Object.keys(roles) as OperatorRole[]) {
      for (const pattern of roles[role] ?? []) this.#rules.push({ role, match: compile(pattern) });
    }
    this.#identityCa = opts.identityCa ? new X509Certificate(opts.identityCa) : null;
    this.#clock = opts.clock ?? systemClock;
    this.#revoked = opts.revoked ?? null;
  }

  /** The principal of a call, or UNAUTHENTICATED when the call carries no trusted, valid client certificate. */
  principal(call: AuthCall): Principal {
    const ctx = call.getAuthContext();
    const cert = ctx.sslPeerCertificate;
    if (!cert) {
      const why = ctx.authorizationError;
      if (why === undefined) throw new SigilError('UNAUTHENTICATED', 'a client certificate issued by the operator ca or the identity ca is required');
      throw new SigilError('UNAUTHENTICATED', WHY[why] ?? `client certificate not trusted (${why.toLowerCase()})`);
    }
    const fp = cert.fingerprint256;
    let p = this.#cache.get(fp);
    if (p === undefined) {
      p = this.#evaluate(cert);
      if (this.#cache.size > 10_000) this.#cache.clear();
      this.#cache.set(fp, p);
    }
    // TLS checked the validity at the handshake; a long-lived connection may outlast the certificate.
    if (this.#clock.now().getTime() > p.notAfter) throw new SigilError('UNAUTHENTICATED', 'client certificate expired');
    // Not cached: a revocation must reach connections that are already open.
    if (p.builder !== undefined && this.#revoked !== null) {
      const why = this.#revoked(p as Principal & { builder: BuilderIdentity; serial: string });
      if (why !== null) throw new SigilError('UNAUTHENTICATED', why);
    }
    return p;
  }

  /**
   * Who a call claims to be, for the audit entry of a refusal: the subject of its verified certificate
   * (whether or not it is expired, revoked or without a role), or null without one. Never throws.
   */
  subjectOf(call: AuthCall): string | null {
    const cert = call.getAuthContext().sslPeerCertificate;
    return cert ? subjectText(cert) : null;
  }

  /** The principal if it holds one of `roles`; PERMISSION_DENIED otherwise. */
  require(call: AuthCall, roles: readonly Role[]): Principal {
    const p = this.principal(call);
    for (const r of roles) if (p.roles.has(r)) return p;
    throw new SigilError('PERMISSION_DENIED', `${p.subject} lacks the role ${roles.join(' or ')}`);
  }

  #evaluate(cert: PeerCertificate): Principal {
    const subject = subjectText(cert);
    const fingerprint = cert.fingerprint256.replaceAll(':', '').toLowerCase();
    const notAfter = Date.parse(cert.valid_to);
    if (this.#issuedByIdentityCa(cert)) {
      try {
        const serial = new X509Certificate(cert.raw).serialNumber.toLowerCase().replace(/^0+/, '');
        return { subject, fingerprint, notAfter, roles: new Set<Role>(['builder']), builder: parseBuilderExtensions(cert.raw), serial };
      } catch {
        // Only sigil issues from this CA, so this cannot happen short of a bug: no role at all.
        return { subject, fingerprint, notAfter, roles: new Set<Role>() };
      }
    }
    const names = { dns: [] as string[], uri: [] as string[], subject, fingerprint };
    for (const part of (cert.subjectaltname ?? '').split(', ')) {
      if (part.startsWith('DNS:')) names.dns.push(part.slice(4));
      else if (part.startsWith('URI:')) names.uri.push(part.slice(4));
    }
    const roles = new Set<Role>();
    for (const rule of this.#rules) if (rule.match(cert, names)) roles.add(rule.role);
    return { subject, fingerprint, notAfter, roles };
  }

  /**
   * True when the identity CA's key signed this certificate. The signature is checked, not the issuer
   * name, so an operator-CA certificate that copies the identity CA's name or a builder's SAN does not
   * pass, and no builder certificate reaches the admin and signer patterns.
   */
  #issuedByIdentityCa(cert: PeerCertificate): boolean {
    const ca = this.#identityCa;
    if (ca === null) return false;
    try {
      const x = new X509Certificate(cert.raw);
      return x.checkIssued(ca) && x.verify(ca.publicKey);
    } catch {
      return false;
    }
  }
}

/** A certificate subject as `CN=..,O=..`. */
function subjectText(cert: PeerCertificate): string {
  return Object.entries(cert.subject ?? {})
    .map(([k, v]) => `${k}=${Array.isArray(v) ? v.join('+') : v}`)
    .join(',');
}

function compile(pattern: string): Matcher {
  const colon = pattern.indexOf(':');
  const kind = pattern.slice(0, colon);
  const glob = globToRegExp(pattern.slice(colon + 1));
  switch (kind) {
    case 'cn':
      return (c) => {
        const cn = c.subject?.CN;
        return (Array.isArray(cn) ? cn : cn === undefined ? [] : [cn]).some((v) => glob.test(v));
      };
    case 'subject':
      return (_c, n) => glob.test(n.subject);
    case 'dns':
      return (_c, n) => n.dns.some((v) => glob.test(v));
    case 'uri':
      return (_c, n) => n.uri.some((v) => glob.test(v));
    case 'fingerprint':
      return (_c, n) => glob.test(n.fingerprint);
    default:
      throw new SigilError('CONFIG_INVALID', `unknown principal pattern kind ${kind}`);
  }
}
