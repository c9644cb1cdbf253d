import { X509Certificate } from 'node:crypto';
import type { PeerCertificate } from 'node:tls';
import { SigilError, type Refusal } from '../errors.ts';
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
  /** The identity CA generation (CA key version) that issued it (builder certificates). */
  caVersion?: number;
}

/** The identity CA's generations as auth needs them; IdentityCa is one. */
export interface BuilderCas {
  /** Every generation, live or not, with its CA certificate: a builder certificate is matched by signature. */
  generations(): ReadonlyArray<{ version: number; certificate: X509Certificate }>;
  /** Why certificates of generation `version` are refused now (disabled, window ended), or null while it is live. */
  refusal(version: number): string | null;
}

/** Why a builder principal must be refused now (its certificate or TPM was revoked), or null. */
export type RevocationCheck = (p: Principal & { builder: BuilderIdentity; serial: string }) => Refusal | null;

/** What auth needs of a call: the verified peer certificate, or why there is none. */
export interface AuthCall {
  getAuthContext(): { sslPeerCertificate?: PeerCertificate | undefined; authorizationError?: string | undefined };
}

/** Who may sign builder certificates, and the clock that says when a certificate has expired. */
export interface AuthOptions {
  /** The identity CA certificate (DER) of a CA with one generation; without it (or `identityCas`) no certificate gets the builder role. */
  identityCa?: Buffer | undefined;
  /** The identity CA's generations: a builder certificate is checked against each, and refused once its generation is no longer live. */
  identityCas?: BuilderCas | undefined;
  clock?: Clock;
  /** Run on every call of a builder, after the principal cache: revocation takes effect on the next request. */
  revoked?: RevocationCheck | undefined;
}

type Matcher = (c: PeerCertificate, names: { dns: string[]; uri: string[]; subject: string; fingerprint: string }) => boolean;

// OpenSSL verify codes (as Node's authorizationError spells them) that deserve their own message.
const WHY: Readonly<Record<string, string>> = {
  CERT_NOT_YET_VALID: 'client certificate not yet valid',
};

const expired = (): SigilError => new SigilError('UNAUTHENTICATED', 'client certificate expired', { reason: 'CERTIFICATE_EXPIRED' });

/**
 * Maps verified client certificates to roles. The server hands over a peer certificate only when it
 * chained to a trusted CA (the socket is `authorized`); otherwise the call carries the reason.
 * Certificates signed by the identity CA get the builder role and nothing else; the admin and signer
 * patterns apply to the other (operator CA) certificates only.
 */
export class Authenticator {
  #rules: Array<{ role: OperatorRole; match: Matcher }>;
  // Principals by certificate fingerprint: the role decision is made once per certificate and role map
  // (a reload replaces the map and empties the cache, so no cached role outlives it).
  #cache = new Map<string, Principal>();
  #generation = 0;
  readonly #identityCas: BuilderCas | null;
  readonly #clock: Clock;
  readonly #revoked: RevocationCheck | null;

  constructor(roles: Partial<Record<OperatorRole, readonly string[]>>, opts: AuthOptions = {}) {
    this.#rules = compileRoles(roles);
    if (opts.identityCas) this.#identityCas = opts.identityCas;
    else if (opts.identityCa) {
      const certificate = new X509Certificate(opts.identityCa);
      this.#identityCas = { generations: () => [{ version: 1, certificate }], refusal: () => null };
    } else this.#identityCas = null;
    this.#clock = opts.clock ?? systemClock;
    this.#revoked = opts.revoked ?? null;
  }

  /**
   * Replaces the role map (a config reload): every call from now on, on open connections too, gets its roles
   * from the new map. Throws CONFIG_INVALID on a bad pattern and then changes nothing.
   */
  setRoles(roles: Partial<Record<OperatorRole, readonly string[]>>): void {
    const rules = compileRoles(roles);
    this.#rules = rules;
    this.#cache = new Map();
    this.#generation++;
  }

  /** Counts `setRoles` calls: a long-lived stream that took its principal earlier asks again when it moved. */
  get generation(): number {
    return this.#generation;
  }

  /** The principal of a call, or UNAUTHENTICATED when the call carries no trusted, valid client certificate. */
  principal(call: AuthCall): Principal {
    const ctx = call.getAuthContext();
    const cert = ctx.sslPeerCertificate;
    if (!cert) {
      const why = ctx.authorizationError;
      if (why === undefined) throw new SigilError('UNAUTHENTICATED', 'a client certificate issued by the operator ca or the identity ca is required');
      if (why === 'CERT_HAS_EXPIRED') throw expired();
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
    if (this.#clock.now().getTime() > p.notAfter) throw expired();
    // Not cached: a disabled or ended generation, and a revocation, must reach connections that are already open.
    if (p.caVersion !== undefined && this.#identityCas !== null) {
      const why = this.#identityCas.refusal(p.caVersion);
      if (why !== null) throw new SigilError('UNAUTHENTICATED', why);
    }
    if (p.builder !== undefined && this.#revoked !== null) {
      const why = this.#revoked(p as Principal & { builder: BuilderIdentity; serial: string });
      if (why !== null) throw new SigilError('UNAUTHENTICATED', why.message, { reason: why.reason });
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

  /**
   * The principal if it holds one of `roles`; PERMISSION_DENIED otherwise, naming `rolesText` when given (what
   * each role may do there) instead of the bare list.
   */
  require(call: AuthCall, roles: readonly Role[], rolesText?: string): Principal {
    const p = this.principal(call);
    for (const r of roles) if (p.roles.has(r)) return p;
    throw new SigilError('PERMISSION_DENIED', `${p.subject} lacks the role ${rolesText ?? roles.join(' or ')}`);
  }

  #evaluate(cert: PeerCertificate): Principal {
    const subject = subjectText(cert);
    const fingerprint = cert.fingerprint256.replaceAll(':', '').toLowerCase();
    const notAfter = Date.parse(cert.valid_to);
    const caVersion = this.#identityCaVersion(cert);
    if (caVersion !== null) {
      try {
        const serial = new X509Certificate(cert.raw).serialNumber.toLowerCase().replace(/^0+/, '');
        return { subject, fingerprint, notAfter, roles: new Set<Role>(['builder']), builder: parseBuilderExtensions(cert.raw), serial, caVersion };
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
   * The generation of the identity CA whose key signed this certificate, or null. The signature is checked,
   * not only the issuer name, so an operator-CA certificate that copies an identity CA's name or a builder's
   * SAN does not pass, and no builder certificate reaches the admin and signer patterns. Every generation is
   * tried, live or not: whether it is live is asked on every call.
   */
  #identityCaVersion(cert: PeerCertificate): number | null {
    if (this.#identityCas === null) return null;
    let x: X509Certificate;
    try {
      x = new X509Certificate(cert.raw);
    } catch {
      return null;
    }
    for (const g of this.#identityCas.generations()) {
      try {
        if (x.checkIssued(g.certificate) && x.verify(g.certificate.publicKey)) return g.version;
      } catch {
        // Not this generation.
      }
    }
    return null;
  }
}

function compileRoles(roles: Partial<Record<OperatorRole, readonly string[]>>): Array<{ role: OperatorRole; match: Matcher }> {
  const rules: Array<{ role: OperatorRole; match: Matcher }> = [];
  for (const role of Object.keys(roles) as OperatorRole[]) {
    for (const pattern of roles[role] ?? []) rules.push({ role, match: compile(pattern) });
  }
  return rules;
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
