import { SigilError } from '../../errors.ts';
import { parseKeyUri } from '../key-uri.ts';

/** A parsed `awskms:` key URI: the key reference as AWS KMS takes it, the region and an optional endpoint. */
export interface AwsKmsKeyRef {
  /** A key id, multi-region key id, key ARN, alias name (`alias/...`) or alias ARN. */
  keyId: string;
  region: string;
  /** Canonical endpoint origin (`https://kms.example:8443`), or null for the region's default endpoint. */
  endpoint: string | null;
}

/** What kind of key reference a `key-id` value is. */
export type KeyIdKind = 'id' | 'arn' | 'alias' | 'alias-arn';

/** AWS region names such as `us-east-1`, `us-gov-west-1`, `eu-central-2`. */
export const REGION = /^[a-z]{2}(?:-[a-z]+)+-\d{1,2}$/;
const KEY_UUID = '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}';
const MRK = 'mrk-[0-9a-f]{32}';
const KEY_ID = new RegExp(`^(?:${KEY_UUID}|${MRK})$`);
// AWS alias names: `alias/` then letters, digits, `/`, `_`, `-`; 256 characters at most in all.
const ALIAS_NAME = /^alias\/[A-Za-z0-9/_-]+$/;
const ARN = /^arn:(aws[a-z-]*):kms:([a-z0-9-]+):(\d{12}):(key|alias)\/(.+)$/;
const ATTRS = new Set(['key-id', 'region', 'endpoint']);
// Left plain when formatting; everything else is percent-encoded (a subset of what parseKeyUri accepts plain).
const PLAIN = /^[A-Za-z0-9\-._~:/@]$/;

/** The kind of a key reference, or null when AWS KMS would not take it as one. */
export function keyIdKind(keyId: string): KeyIdKind | null {
  if (KEY_ID.test(keyId)) return 'id';
  if (keyId.length <= 256 && ALIAS_NAME.test(keyId)) return 'alias';
  const m = ARN.exec(keyId);
  if (m === null || !REGION.test(m[2]!)) return null;
  if (m[4] === 'key') return KEY_ID.test(m[5]!) ? 'arn' : null;
  const alias = `alias/${m[5]}`;
  return alias.length <= 256 && ALIAS_NAME.test(alias) ? 'alias-arn' : null;
}

/** The region inside an ARN key reference, or null for ids and alias names. */
export function arnRegion(keyId: string): string | null {
  return ARN.exec(keyId)?.[2] ?? null;
}

/**
 * The canonical form of an endpoint URL (its origin: scheme, lower-case host, port unless default),
 * or null when it is not a plain http(s) origin: no credentials, path, query or fragment.
 */
export function canonicalEndpoint(text: string): string | null {
  if (text.length > 512) return null;
  let u: URL;
  try {
    u = new URL(text);
  } catch {
    return null;
  }
  if (u.protocol !== 'https:' && u.protocol !== 'http:') return null;
  if (u.username !== '' || u.password !== '' || u.search !== '' || u.hash !== '' || u.pathname !== '/') return null;
  if (u.hostname === '') return null;
  // `new URL` tolerates a trailing `?` or `#` with nothing after it; refuse those too.
  if (/[?#]/.test(text)) return null;
  return u.origin;
}

/**
 * Parses `awskms:key-id=<ref>;region=<region>[;endpoint=<url>]` (attributes in any order, values
 * percent-encoded where needed). Anything malformed is INVALID_ARGUMENT with the reason.
 */
export function parseAwsKmsUri(uri: string): AwsKmsKeyRef {
  const parsed = parseKeyUri(uri);
  const bad = (why: string): SigilError => new SigilError('INVALID_ARGUMENT', `invalid awskms key uri: ${why}`);
  if (parsed.scheme !== 'awskms') throw new SigilError('INVALID_ARGUMENT', `not an awskms key uri: scheme ${parsed.scheme}`);
  if (parsed.path !== null) throw bad('expected key-id=<ref>;region=<region>');
  for (const name of parsed.attrs.keys()) {
    if (!ATTRS.has(name)) throw bad(`attribute ${name} is not supported`);
  }
  const text = (name: string): string | undefined => {
    const v = parsed.attrs.get(name);
    if (v === undefined) return undefined;
    const s = v.toString('utf8');
    if (!Buffer.from(s, 'utf8').equals(v)) throw bad(`attribute ${name} is not valid utf-8`);
    return s;
  };
  const keyId = text('key-id');
  const region = text('region');
  const endpointText = text('endpoint');
  if (keyId === undefined) throw bad('key-id is missing');
  if (region === undefined) throw bad('region is missing');
  if (!REGION.test(region)) throw bad('region is not an aws region name');
  if (keyIdKind(keyId) === null) throw bad('key-id is not a key id, key arn, alias name or alias arn');
  const inArn = arnRegion(keyId);
  if (inArn !== null && inArn !== region) throw bad(`key-id is an arn in region ${inArn} but region is ${region}`);
  let endpoint: string | null = null;
  if (endpointText !== undefined) {
    endpoint = canonicalEndpoint(endpointText);
    if (endpoint === null) throw bad('endpoint must be an http or https origin without path, query or credentials');
  }
  return { keyId, region, endpoint };
}

/** Formats a key reference as its canonical URI: key-id, region, then endpoint when there is one. */
export function formatAwsKmsUri(ref: AwsKmsKeyRef): string {
  const parts = [`key-id=${encode(ref.keyId)}`, `region=${encode(ref.region)}`];
  if (ref.endpoint !== null) parts.push(`endpoint=${encode(ref.endpoint)}`);
  return `awskms:${parts.join(';')}`;
}

function encode(value: string): string {
  let s = '';
  for (const b of Buffer.from(value, 'utf8')) {
    const ch = String.fromCharCode(b);
    s += b < 0x80 && PLAIN.test(ch) ? ch : `%${b.toString(16).padStart(2, '0')}`;
  }
  return s;
}
