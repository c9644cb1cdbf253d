import type { PeerCertificate } from 'node:tls';
import { SigilError } from '../errors.ts';

/** The roles a client certificate can carry. */
export type Role = 'admin' | 'signer';

/** A client authenticated by its certificate. */
export interface Principal {
  /** The certificate subject as `CN=..,O=..`. */
  subject: string;
  /** SHA-256 fingerprint of the certificate, lower-case hex. */
  fingerprint: string;
  roles: ReadonlySet<Role>;
}

/** What auth needs of a call. */
export interface AuthCall {
  getAuthContext(): { sslPeerCertificate?: PeerCertificate | undefined };
}

type Matcher = (c: PeerCertificate, names: { dns: string[]; uri: string[]; subject: string; fingerprint: string }) => boolean;

/**
 * Maps verified client certificates to roles. The server only hands over a peer certificate that chained
 * to the configured client CA (the socket is `authorized`), so a missing or untrusted certificate
 * reaches here as none at all.
 */
export class Authenticator {
  readonly #rules: Array<{ role: Role; match: Matcher }> = [];
  // Principals by certificate fingerprint: the role decision is made once per certificate.
  readonly #cache = new Map<string, Principal>();

  constructor(roles: Record<Role, string[]>) {
    for (const role of Object.keys(roles) as Role[]) {
      for (const pattern of roles[role]) this.#rules.push({ role, match: compile(pattern) });
    }
  }

  /** The principal of a call, or UNAUTHENTICATED when the call carries no trusted client certificate. */
  principal(call: AuthCall): Principal {
    const cert = call.getAuthContext().sslPeerCertificate;
    if (!cert) throw new SigilError('UNAUTHENTICATED', 'a client certificate issued by the operator ca is required');
    const fp = cert.fingerprint256;
    let p = this.#cache.get(fp);
    if (p === undefined) {
      p = this.#evaluate(cert);
      if (this.#cache.size > 10_000) this.#cache.clear();
      this.#cache.set(fp, p);
    }
    return p;
  }

  /** The principal if it holds one of `roles`; PERMISSION_DENIED otherwise. */
  require(call: AuthCall, roles: readonly Role[]): Principal {
    const p = this.principal(call);
    for (const r of roles) if (p.roles.has(r)) return p;
    throw new SigilError('PERMISSION_DENIED', `${p.subject} lacks the role ${roles.join(' or ')}`);
  }

  #evaluate(cert: PeerCertificate): Principal {
    const subject = Object.entries(cert.subject ?? {})
      .map(([k, v]) => `${k}=${Array.isArray(v) ? v.join('+') : v}`)
      .join(',');
    const fingerprint = cert.fingerprint256.replaceAll(':', '').toLowerCase();
    const names = { dns: [] as string[], uri: [] as string[], subject, fingerprint };
    for (const part of (cert.subjectaltname ?? '').split(', ')) {
      if (part.startsWith('DNS:')) names.dns.push(part.slice(4));
      else if (part.startsWith('URI:')) names.uri.push(part.slice(4));
    }
    const roles = new Set<Role>();
    for (const rule of this.#rules) if (rule.match(cert, names)) roles.add(rule.role);
    return { subject, fingerprint, roles };
  }
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

function globToRegExp(glob: string): RegExp {
  const body = glob.split('*').map((s) => s.replace(/[.+?^${}()|[\]\\]/g, '\\$&')).join('.*');
  return new RegExp(`^${body}$`);
}
