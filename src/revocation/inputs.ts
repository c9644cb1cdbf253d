import { SigilError } from '../errors.ts';

/** RFC 5280, 5.3.1 CRLReason values a revocation may give (certificateHold and the CA/AA ones are not sigil's to use). */
export const REVOCATION_REASONS = {
  unspecified: 0,
  keyCompromise: 1,
  affiliationChanged: 3,
  superseded: 4,
  cessationOfOperation: 5,
  privilegeWithdrawn: 9,
} as const;

/** A reason a builder or identity was revoked, named as RFC 5280's CRLReason spells it. */
export type RevocationReason = keyof typeof REVOCATION_REASONS;

const MAX_SERIAL_DIGITS = 40; // RFC 5280, 4.1.2.2: at most 20 octets.

/**
 * A certificate serial as an operator may write it (hex, any case, optional `0x` prefix, colons as openssl
 * prints them) to its canonical form: lower-case hex without leading zeros. INVALID_ARGUMENT otherwise.
 */
export function parseSerial(input: string): string {
  if (typeof input !== 'string' || input.length === 0) throw new SigilError('INVALID_ARGUMENT', 'serial is required');
  if (input.length > 3 * MAX_SERIAL_DIGITS) throw new SigilError('INVALID_ARGUMENT', 'serial is too long');
  let s = input.trim().toLowerCase();
  if (s.startsWith('0x')) s = s.slice(2);
  s = s.replaceAll(':', '');
  if (!/^[0-9a-f]+$/.test(s)) throw new SigilError('INVALID_ARGUMENT', 'serial must be hexadecimal');
  s = s.replace(/^0+/, '');
  if (s.length === 0) throw new SigilError('INVALID_ARGUMENT', 'serial must be positive');
  if (s.length > MAX_SERIAL_DIGITS) throw new SigilError('INVALID_ARGUMENT', 'serial is longer than 20 octets');
  return s;
}

/** An EK hash (SHA-256 of the EK public key): 64 hex digits, returned lower-case. INVALID_ARGUMENT otherwise. */
export function parseEkHash(input: string): string {
  if (typeof input !== 'string' || !/^[0-9a-fA-F]{64}$/.test(input)) throw new SigilError('INVALID_ARGUMENT', 'ek hash must be 64 hex digits (sha-256 of the ek public key)');
  return input.toLowerCase();
}

/**
 * An AK's TPM name (TPM 2.0 Part 1, 16: nameAlg || digest) in hex, returned lower-case; empty means none.
 * INVALID_ARGUMENT otherwise.
 */
export function parseAkName(input: string): string | null {
  if (input === '') return null;
  // A 2-byte nameAlg and a SHA-256, SHA-384 or SHA-512 digest.
  if (typeof input !== 'string' || !/^[0-9a-fA-F]{4}(?:[0-9a-fA-F]{64}|[0-9a-fA-F]{96}|[0-9a-fA-F]{128})$/.test(input)) {
    throw new SigilError('INVALID_ARGUMENT', 'ak name must be hex: a 2-byte hash algorithm and its digest');
  }
  return input.toLowerCase();
}

/** A reason name (empty means `unspecified`); INVALID_ARGUMENT for anything not in REVOCATION_REASONS. */
export function parseReason(input: string): RevocationReason {
  if (input === '') return 'unspecified';
  if (!Object.hasOwn(REVOCATION_REASONS, input)) {
    throw new SigilError('INVALID_ARGUMENT', `unknown revocation reason ${JSON.stringify(input.slice(0, 64))}: one of ${Object.keys(REVOCATION_REASONS).join(', ')}`);
  }
  return input as RevocationReason;
}
