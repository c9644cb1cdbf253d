import { createHash } from 'node:crypto';
import { SigilError } from '../errors.ts';

// DSSE v1.0: https://github.com/secure-systems-lab/dsse (envelope.md, protocol.md).

/** The payload type `sign --dsse` uses when none is given: an in-toto statement (SLSA provenance). */
export const DSSE_DEFAULT_PAYLOAD_TYPE = 'application/vnd.in-toto+json';

/** The largest envelope `verify --dsse` reads: provenance is small, and nothing unbounded is read into memory. */
export const MAX_ENVELOPE_BYTES = 64 * 1024 * 1024;

/**
 * The largest payload `sign --dsse` wraps: its envelope (the payload in base64, 4/3 of it, plus at most a few KiB
 * of payload type, keyid, signature and JSON) stays below MAX_ENVELOPE_BYTES, so `verify --dsse` reads every
 * envelope `sign --dsse` writes.
 */
export const MAX_PAYLOAD_BYTES = 47 * 1024 * 1024;

/** One signature of an envelope: `keyid` (sigil writes the key version, `name@N`) and the signature bytes. */
export interface DsseSignature {
  keyid: string;
  sig: Buffer;
}

/** A DSSE envelope with its base64 fields decoded. */
export interface DsseEnvelope {
  payloadType: string;
  payload: Buffer;
  signatures: DsseSignature[];
}

const STD_B64 = /^[A-Za-z0-9+/]*={0,2}$/;
const URL_B64 = /^[A-Za-z0-9_-]*={0,2}$/;

/** DSSE's pre-authentication encoding: `"DSSEv1" SP LEN(type) SP type SP LEN(body) SP body`, lengths in ASCII decimal bytes. */
export function pae(payloadType: string, payload: Buffer): Buffer {
  const type = Buffer.from(payloadType, 'utf8');
  return Buffer.concat([Buffer.from(`DSSEv1 ${type.length} `), type, Buffer.from(` ${payload.length} `), payload]);
}

/** What to send sigild to sign a PAE: its digest with the version's hash, or for Ed25519 (`hash` null) the PAE whole. */
export function paeSignInput(hash: 'sha256' | 'sha384' | null, p: Buffer): { digest: Buffer; message: undefined } | { digest: undefined; message: Buffer } {
  return hash ? { digest: createHash(hash).update(p).digest(), message: undefined } : { digest: undefined, message: p };
}

/** Checks a payload type given on the command line: non-empty printable text, at most 256 characters. */
export function checkPayloadType(t: string): string {
  if (t.length === 0 || t.length > 256 || /[\u0000-\u001f\u007f]/.test(t)) {
    throw new SigilError('INVALID_ARGUMENT', 'payload type must be 1 to 256 printable characters, e.g. application/vnd.in-toto+json');
  }
  return t;
}

/** The envelope as sigil writes it: JSON `{payload, payloadType, signatures: [{keyid, sig}]}`, standard base64, a final newline. */
export function envelopeJson(e: DsseEnvelope): Buffer {
  const doc = {
    payload: e.payload.toString('base64'),
    payloadType: e.payloadType,
    signatures: e.signatures.map((s) => ({ keyid: s.keyid, sig: s.sig.toString('base64') })),
  };
  return Buffer.from(`${JSON.stringify(doc, null, 2)}\n`);
}

function bad(why: string): never {
  throw new SigilError('INVALID_ARGUMENT', `dsse envelope: ${why}`);
}

/** Base64, standard or URL-safe, padded or not (DSSE accepts either), or an error naming `what`. */
function base64(v: unknown, what: string): Buffer {
  if (typeof v !== 'string') return bad(`${what} must be a base64 string`);
  if ((!STD_B64.test(v) && !URL_B64.test(v)) || v.replace(/=+$/, '').length % 4 === 1 || (v.includes('=') && v.length % 4 !== 0)) {
    return bad(`${what} is not valid base64`);
  }
  return Buffer.from(v, STD_B64.test(v) ? 'base64' : 'base64url');
}

/**
 * Parses an envelope's JSON bytes strictly enough to verify it: at most MAX_ENVELOPE_BYTES, a JSON object with
 * a base64 `payload`, a non-empty string `payloadType` and a non-empty `signatures` array of `{keyid?, sig}`.
 * Anything else is INVALID_ARGUMENT with what is wrong; nothing else is ever thrown.
 */
export function parseEnvelope(bytes: Uint8Array): DsseEnvelope {
  if (bytes.length > MAX_ENVELOPE_BYTES) bad(`larger than ${MAX_ENVELOPE_BYTES / 1048576} MiB`);
  let v: unknown;
  try {
    v = JSON.parse(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length).toString('utf8'));
  } catch {
    return bad('not json');
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return bad('not a json object');
  const o = v as Record<string, unknown>;
  const payload = base64(o.payload, 'payload');
  if (typeof o.payloadType !== 'string' || o.payloadType.length === 0) bad('payloadType must be a non-empty string');
  if (!Array.isArray(o.signatures) || o.signatures.length === 0) bad('signatures must be a non-empty array');
  const signatures = (o.signatures as unknown[]).map((s, i): DsseSignature => {
    if (typeof s !== 'object' || s === null || Array.isArray(s)) return bad(`signature ${i + 1} is not a json object`);
    const r = s as Record<string, unknown>;
    if (r.keyid !== undefined && typeof r.keyid !== 'string') bad(`signature ${i + 1}: keyid must be a string`);
    const sig = base64(r.sig, `signature ${i + 1}: sig`);
    if (sig.length === 0) bad(`signature ${i + 1}: sig is empty`);
    return { keyid: (r.keyid as string | undefined) ?? '', sig };
  });
  return { payloadType: o.payloadType as string, payload, signatures };
}
