import { SigilError } from '../errors.ts';
import type { AuditEvent, AuditResult } from './audit-sink.ts';

/** One audit log entry as stored and hashed: the event plus the time the log took it. */
export interface AuditEntry extends AuditEvent {
  /** ISO 8601 time (UTC, milliseconds) from the daemon's clock; never decreases along the log. */
  t: string;
}

const RESULTS: readonly AuditResult[] = ['ok', 'refused', 'failed', 'started'];
const ISO = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;

/** JSON with object keys sorted at every level (the detail object), so one value has one encoding. */
function canonical(v: unknown, depth = 0): string {
  if (depth > 16) throw new SigilError('INVALID_ARGUMENT', 'audit detail is nested too deeply');
  if (v === null || typeof v === 'boolean' || typeof v === 'string') return JSON.stringify(v);
  if (typeof v === 'number') {
    if (!Number.isFinite(v)) throw new SigilError('INVALID_ARGUMENT', 'audit detail numbers must be finite');
    return JSON.stringify(v);
  }
  if (Array.isArray(v)) return `[${v.map((x) => canonical(x, depth + 1)).join(',')}]`;
  if (typeof v === 'object') {
    const keys = Object.keys(v as object)
      .filter((k) => (v as Record<string, unknown>)[k] !== undefined)
      .sort();
    return `{${keys.map((k) => `${JSON.stringify(k)}:${canonical((v as Record<string, unknown>)[k], depth + 1)}`).join(',')}}`;
  }
  throw new SigilError('INVALID_ARGUMENT', `audit detail holds a ${typeof v}, which is not json`);
}

/**
 * The canonical bytes of an entry: a JSON object with keys in the fixed order t, who, act, key, digest,
 * result, reason, detail (absent fields left out; detail keys sorted). These bytes are the Merkle leaf data.
 */
export function encodeEntry(e: AuditEntry): Buffer {
  const parts = [`"t":${JSON.stringify(e.t)}`, `"who":${JSON.stringify(e.who)}`, `"act":${JSON.stringify(e.act)}`];
  if (e.key !== undefined) parts.push(`"key":${JSON.stringify(e.key)}`);
  if (e.digest !== undefined) parts.push(`"digest":${JSON.stringify(e.digest)}`);
  parts.push(`"result":${JSON.stringify(e.result)}`);
  if (e.reason !== undefined) parts.push(`"reason":${JSON.stringify(e.reason)}`);
  if (e.detail !== undefined) parts.push(`"detail":${canonical(e.detail)}`);
  return Buffer.from(`{${parts.join(',')}}`, 'utf8');
}

/**
 * Parses entry bytes from the log and checks they are the canonical encoding of a well-formed entry;
 * throws INVALID_ARGUMENT naming what is wrong.
 */
export function decodeEntry(bytes: Uint8Array): AuditEntry {
  let v: unknown;
  try {
    v = JSON.parse(Buffer.from(bytes).toString('utf8'));
  } catch {
    throw new SigilError('INVALID_ARGUMENT', 'entry is not json');
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new SigilError('INVALID_ARGUMENT', 'entry is not a json object');
  const o = v as Record<string, unknown>;
  const str = (k: string, required: boolean): string | undefined => {
    const x = o[k];
    if (x === undefined && !required) return undefined;
    if (typeof x !== 'string') throw new SigilError('INVALID_ARGUMENT', `entry field ${k} is not a string`);
    return x;
  };
  const t = str('t', true)!;
  if (!ISO.test(t) || Number.isNaN(Date.parse(t))) throw new SigilError('INVALID_ARGUMENT', 'entry time is not an iso 8601 utc time');
  const result = str('result', true) as AuditResult;
  if (!RESULTS.includes(result)) throw new SigilError('INVALID_ARGUMENT', `entry result ${JSON.stringify(result)} is unknown`);
  const detail = o.detail;
  if (detail !== undefined && (typeof detail !== 'object' || detail === null || Array.isArray(detail))) throw new SigilError('INVALID_ARGUMENT', 'entry detail is not an object');
  const known = new Set(['t', 'who', 'act', 'key', 'digest', 'result', 'reason', 'detail']);
  for (const k of Object.keys(o)) if (!known.has(k)) throw new SigilError('INVALID_ARGUMENT', `entry has an unknown field ${k}`);
  const e: AuditEntry = {
    t,
    who: str('who', true)!,
    act: str('act', true)!,
    key: str('key', false),
    digest: str('digest', false),
    result,
    reason: str('reason', false),
    detail: detail as Record<string, unknown> | undefined,
  };
  if (!encodeEntry(e).equals(Buffer.from(bytes))) throw new SigilError('INVALID_ARGUMENT', 'entry is not in canonical form');
  return e;
}
