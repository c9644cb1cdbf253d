import { SigilError } from '../errors.ts';
import { parseKeyRef } from '../keys/names.ts';
import type { BuilderIdentity } from './builder-extensions.ts';
import { globToRegExp } from './glob.ts';

/** One configured grant: the keys it covers and the builder identities it grants them to. */
export interface BuilderRule {
  /** Key-name globs. */
  keys: readonly string[];
  identities: ReadonlyArray<{
    /** A glob over the builder's SPIFFE id. */
    san: string;
    /** When set, the certificate's attestation policy must equal it. */
    policy?: string | undefined;
    /** When set, each named claim must be present and match its glob. */
    claims?: Readonly<Record<string, string>> | undefined;
  }>;
}

interface CompiledRule {
  keys: RegExp[];
  identities: Array<{ san: RegExp; policy: string | undefined; claims: Array<[string, RegExp]> }>;
}

// Bounds of the decision cache: builders come and go with their short-lived certificates.
const MAX_CERTS = 10_000;
const MAX_KEYS_PER_CERT = 1024;

/**
 * Per-key authorization of builders: a builder may use a key when some rule lists the key and an
 * identity that matches the builder's SPIFFE id, policy and claims. Decisions are cached per
 * (certificate fingerprint, key reference), so a builder's repeated requests cost one map lookup.
 */
export class BuilderPolicy {
  readonly #rules: CompiledRule[];
  readonly #decisions = new Map<string, Map<string, SigilError | null>>();

  constructor(rules: readonly BuilderRule[]) {
    this.#rules = rules.map((r) => ({
      keys: r.keys.map(globToRegExp),
      identities: r.identities.map((i) => ({
        san: globToRegExp(i.san),
        policy: i.policy,
        claims: Object.entries(i.claims ?? {}).map(([k, v]) => [k, globToRegExp(v)] as [string, RegExp]),
      })),
    }));
  }

  /** Throws PERMISSION_DENIED (or INVALID_ARGUMENT for a malformed reference) unless `who` may use the key `ref`. */
  check(fingerprint: string, who: BuilderIdentity, ref: string): void {
    let perCert = this.#decisions.get(fingerprint);
    let denied = perCert?.get(ref);
    if (denied === undefined) {
      const { name } = parseKeyRef(ref);
      denied = this.allows(who, name) ? null : new SigilError('PERMISSION_DENIED', `builder ${who.san} may not use key ${name}`);
      if (perCert === undefined) {
        if (this.#decisions.size >= MAX_CERTS) this.#decisions.clear();
        this.#decisions.set(fingerprint, (perCert = new Map()));
      }
      if (perCert.size >= MAX_KEYS_PER_CERT) perCert.clear();
      perCert.set(ref, denied);
    }
    if (denied !== null) throw denied;
  }

  /** True when some rule grants the key `name` to `who`; uncached. */
  allows(who: BuilderIdentity, name: string): boolean {
    for (const rule of this.#rules) {
      if (!rule.keys.some((k) => k.test(name))) continue;
      for (const id of rule.identities) {
        if (!id.san.test(who.san)) continue;
        if (id.policy !== undefined && id.policy !== who.policy) continue;
        if (id.claims.every(([k, glob]) => Object.hasOwn(who.claims, k) && glob.test(who.claims[k]!))) return true;
      }
    }
    return false;
  }
}
