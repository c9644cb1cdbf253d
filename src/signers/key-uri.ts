import { SigilError } from '../errors.ts';

/**
 * A parsed key URI in the style of RFC 7512: `scheme:attr=value;attr=value`, values percent-encoded
 * (`pkcs11:token=sigil;object=release-v1;id=%01%a2`). Schemes whose identifiers are paths
 * (`gcpkms:projects/...`) keep the path in `path` instead.
 */
export interface KeyUri {
  scheme: string;
  /** Attributes in order of appearance, values percent-decoded to bytes. */
  attrs: Map<string, Buffer>;
  /** The raw text after the scheme when it is not an attribute list. */
  path: string | null;
}

const SCHEME = /^[a-z][a-z0-9+.-]*$/;
const ATTR_NAME = /^[a-z][a-z0-9-]*$/;
// RFC 3986 unreserved characters plus the few RFC 7512 allows unescaped in path attribute values.
const VALUE_CHARS = /^(?:[A-Za-z0-9\-._~:[\]@!$&'()*+,=/]|%[0-9A-Fa-f]{2})*$/;

/** Parses a key URI; INVALID_ARGUMENT with the reason when it is malformed. */
export function parseKeyUri(uri: string): KeyUri {
  const bad = (why: string): SigilError => new SigilError('INVALID_ARGUMENT', `invalid key uri: ${why}`);
  if (uri.length === 0 || uri.length > 2048) throw bad('length must be 1 to 2048 characters');
  const colon = uri.indexOf(':');
  if (colon <= 0) throw bad('missing scheme');
  const scheme = uri.slice(0, colon);
  if (!SCHEME.test(scheme)) throw bad('malformed scheme');
  const rest = uri.slice(colon + 1);
  if (rest.length === 0) throw bad('empty after scheme');
  const attrs = new Map<string, Buffer>();
  if (!rest.includes('=') || /^[a-z]+\//.test(rest)) return { scheme, attrs, path: rest };
  // Query attributes (after `?`, RFC 7512 section 2.3) such as pin-source are refused: sigil takes secrets from config files.
  if (rest.includes('?')) throw bad('query attributes are not accepted');
  for (const part of rest.split(';')) {
    const eq = part.indexOf('=');
    if (eq <= 0) throw bad(`attribute without a value: ${JSON.stringify(part.slice(0, 40))}`);
    const name = part.slice(0, eq);
    const value = part.slice(eq + 1);
    if (!ATTR_NAME.test(name)) throw bad(`malformed attribute name ${JSON.stringify(name.slice(0, 40))}`);
    if (attrs.has(name)) throw bad(`attribute ${name} given twice`);
    if (!VALUE_CHARS.test(value)) throw bad(`attribute ${name} has characters that must be percent-encoded`);
    attrs.set(name, percentDecode(value));
  }
  return { scheme, attrs, path: null };
}

/** Formats a key URI with attributes in the given order, percent-encoding what needs it. */
export function formatKeyUri(scheme: string, attrs: ReadonlyArray<readonly [string, string | Uint8Array]>): string {
  // Text is encoded only where it must be; binary values (ids) are encoded whole, as RFC 7512 examples do.
  const parts = attrs.map(([name, value]) => `${name}=${typeof value === 'string' ? percentEncode(Buffer.from(value, 'utf8')) : hexEncode(value)}`);
  return `${scheme}:${parts.join(';')}`;
}

/** Reads an attribute as UTF-8 text, or undefined when absent. */
export function attrText(uri: KeyUri, name: string): string | undefined {
  const v = uri.attrs.get(name);
  return v === undefined ? undefined : v.toString('utf8');
}

function percentDecode(value: string): Buffer {
  const out: number[] = [];
  for (let i = 0; i < value.length; i++) {
    const c = value.charCodeAt(i);
    if (c === 0x25) {
      out.push(parseInt(value.slice(i + 1, i + 3), 16));
      i += 2;
    } else {
      out.push(c);
    }
  }
  return Buffer.from(out);
}

const PLAIN = /[A-Za-z0-9\-._~]/;

function hexEncode(bytes: Uint8Array): string {
  let s = '';
  for (const b of bytes) s += `%${b.toString(16).padStart(2, '0')}`;
  return s;
}

function percentEncode(bytes: Uint8Array): string {
  let s = '';
  for (const b of bytes) {
    const ch = String.fromCharCode(b);
    s += b < 0x80 && PLAIN.test(ch) ? ch : `%${b.toString(16).padStart(2, '0')}`;
  }
  return s;
}
