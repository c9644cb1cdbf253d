import { createHash, createHmac, timingSafeEqual } from 'node:crypto';
import { SigilError } from '../errors.ts';
import { TPM_ALG } from './constants.ts';
import { kdfa } from './kdf.ts';
import { Reader, Writer } from './marshal.ts';

// HMAC authorization sessions (TPM 2.0 Part 1, 19.6): the command HMAC covers cpHash, which holds the
// Name of every handle the command names, so a command authorized for one object fails on another.

/**
 * A started HMAC session (TPM_SE_HMAC, SHA-256) and its rolling state: `nonceTPM` is replaced by the
 * TPM's new nonce after every successful command (Part 1, 19.6.2), so one command at a time may use it.
 */
export interface HmacSession {
  /** Session handle (TPM_HT_HMAC_SESSION, 0x02xxxxxx). */
  readonly handle: number;
  /** Part 1, 19.6.8: empty for an unbound, unsalted session, else KDFa(..., "ATH", ...). */
  readonly sessionKey: Buffer;
  /** True when the session was started with AES-128-CFB as its symmetric algorithm, so it can encrypt a command's first parameter. */
  readonly aesCfb?: boolean;
  /** The TPM's latest nonce: nonceOlder in the next command's HMAC. */
  nonceTPM: Buffer;
}

/** One entry of a response authorization area (TPMS_AUTH_RESPONSE, Part 2, 10.13.4). */
export interface AuthResponse {
  nonce: Buffer;
  attributes: number;
  hmac: Buffer;
}

/** A response HMAC that does not verify: the answer did not come from the TPM the session was made with, or was altered. */
export class ResponseHmacError extends SigilError {
  constructor(command: string) {
    super('BACKEND_ERROR', `${command}: the tpm's response hmac does not verify (altered or foreign response)`);
    this.name = 'ResponseHmacError';
  }
}

const SHA256_SIZE = 32;

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0);
  return b;
}

/**
 * The session key of a SHA-256 session (Part 1, 19.6.8): empty when neither bound nor salted, else
 * KDFa(bind.authValue || salt, "ATH", nonceTPM, nonceCaller, 256).
 */
export function sessionKeyOf(bound: boolean, bindAuth: Buffer, salt: Buffer, nonceTPM: Buffer, nonceCaller: Buffer): Buffer {
  if (!bound && salt.length === 0) return Buffer.alloc(0);
  return kdfa('sha256', Buffer.concat([bound ? trimAuth(bindAuth) : Buffer.alloc(0), salt]), 'ATH', nonceTPM, nonceCaller, SHA256_SIZE * 8);
}

/** An authValue without its trailing zero octets, as it enters an HMAC or encryption key (Part 1, 19.6.4.3). */
export function trimAuth(auth: Buffer): Buffer {
  let n = auth.length;
  while (n > 0 && auth[n - 1] === 0) n--;
  return auth.subarray(0, n);
}

/** cpHash = SHA-256(commandCode || Name(handle 1) || ... || parameters) (Part 1, 18.7). */
export function cpHash(commandCode: number, names: readonly Buffer[], parameters: Buffer): Buffer {
  const h = createHash('sha256').update(u32(commandCode));
  for (const n of names) h.update(n);
  return h.update(parameters).digest();
}

/** rpHash = SHA-256(responseCode || commandCode || parameters) (Part 1, 18.8); responseCode is 0 on success. */
export function rpHash(responseCode: number, commandCode: number, parameters: Buffer): Buffer {
  return createHash('sha256').update(u32(responseCode)).update(u32(commandCode)).update(parameters).digest();
}

/**
 * A session HMAC (Part 1, 19.6.5): HMAC-SHA-256(sessionKey || authValue, pHash || nonceNewer ||
 * nonceOlder || sessionAttributes). For a command nonceNewer is nonceCaller and nonceOlder nonceTPM;
 * for a response the other way round. The authValue is that of the entity the session authorizes.
 */
export function sessionHmac(sessionKey: Buffer, authValue: Buffer, pHash: Buffer, nonceNewer: Buffer, nonceOlder: Buffer, attributes: number): Buffer {
  return createHmac('sha256', Buffer.concat([sessionKey, trimAuth(authValue)]))
    .update(pHash)
    .update(nonceNewer)
    .update(nonceOlder)
    .update(Buffer.of(attributes & 0xff))
    .digest();
}

/** Whether a response HMAC equals the expected one, in constant time. */
export function hmacEquals(got: Buffer, want: Buffer): boolean {
  return got.length === want.length && timingSafeEqual(got, want);
}

/**
 * Parses a response authorization area: exactly `count` TPMS_AUTH_RESPONSE entries filling `bytes`
 * (nonce and hmac at most a SHA-512 digest each). TpmFormatError (from the reader) on anything else.
 */
export function parseAuthResponses(bytes: Buffer, count: number): AuthResponse[] {
  const r = new Reader(bytes);
  const out: AuthResponse[] = [];
  for (let i = 0; i < count; i++) {
    const nonce = r.sized(64);
    const attributes = r.u8();
    const hmac = r.sized(64);
    out.push({ nonce, attributes, hmac });
  }
  r.end();
  return out;
}

/** Marshals the response authorization area `parseAuthResponses` reads (for tests and fakes). */
export function marshalAuthResponses(entries: readonly AuthResponse[]): Buffer {
  const w = new Writer();
  for (const e of entries) w.sized(e.nonce).u8(e.attributes).sized(e.hmac);
  return w.finish();
}

/** The hash algorithm every session sigil starts uses. */
export const SESSION_HASH = TPM_ALG.SHA256;
