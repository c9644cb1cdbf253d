import { isDeepStrictEqual } from 'node:util';
import type { Config } from './schema.ts';

/**
 * The parts of the config a running sigild applies at a reload (SIGHUP): pure in-memory policy that the next
 * call reads, and the TLS files (read again at every reload, so a certificate renewed in place is taken without
 * a path change; the daemon compares their contents). Everything else (listen addresses, store, backends, audit,
 * identity, key windows, limits, the nonce lifetime, whether attestation is on, the log level) needs a restart.
 */
export const RELOADABLE: readonly string[] = ['auth.roles', 'authorization.builders', 'attestation.policies', 'tls'];

/** What a reload would do: the reloadable paths that changed, the other changed paths it ignores, and the config then in force. */
export interface ReloadPlan {
  /** Reloadable key paths whose value changed (applied). */
  applied: string[];
  /** Key paths that changed but need a restart (not applied), most specific first found. */
  ignored: string[];
  /** The running config with the reloadable parts of `next` put in: what the daemon runs with after the reload. */
  effective: Config;
}

/**
 * Compares the running config with a newly validated one. Only `RELOADABLE` parts are taken from `next`;
 * `attestation.policies` only when attestation was on at start and still is (turning it on or off needs a restart).
 */
export function planReload(current: Config, next: Config): ReloadPlan {
  const applied: string[] = [];
  const effective = structuredClone(current);
  const take = (path: string, from: unknown, to: unknown, put: () => void): void => {
    if (isDeepStrictEqual(from, to)) return;
    applied.push(path);
    put();
  };
  take('auth.roles', current.auth.roles, next.auth.roles, () => (effective.auth.roles = structuredClone(next.auth.roles)));
  take('authorization.builders', current.authorization.builders, next.authorization.builders, () => (effective.authorization.builders = structuredClone(next.authorization.builders)));
  if (current.attestation && next.attestation && effective.attestation) {
    const a = effective.attestation;
    take('attestation.policies', current.attestation.policies, next.attestation.policies, () => (a.policies = structuredClone(next.attestation!.policies)));
  }
  // The TLS files' paths are taken as they are; whether what they hold changed is for the daemon to see.
  effective.tls = structuredClone(next.tls);
  const ignored: string[] = [];
  diffPaths(effective, next, [], ignored);
  return { applied, ignored, effective };
}

/** Pushes the dotted path of every leaf (or every added or removed subtree) where `a` and `b` differ. */
function diffPaths(a: unknown, b: unknown, path: string[], out: string[]): void {
  if (isDeepStrictEqual(a, b)) return;
  if (isPlainObject(a) && isPlainObject(b)) {
    const keys = new Set([...Object.keys(a), ...Object.keys(b)]);
    for (const k of [...keys].sort()) diffPaths(a[k], b[k], [...path, k], out);
    return;
  }
  out.push(path.join('.') || '(top)');
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
