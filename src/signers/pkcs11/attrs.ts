import { createPublicKey } from 'node:crypto';
import type { KeyType } from '../signer.ts';

/** CKK_EC_EDWARDS (PKCS#11 v3.0 section 2.3.5); pkcs11js has no constant for it. */
export const CKK_EC_EDWARDS = 0x40;
/** CKM_EC_EDWARDS_KEY_PAIR_GEN (PKCS#11 v3.0 section 2.3.6). */
export const CKM_EC_EDWARDS_KEY_PAIR_GEN = 0x1055;
/** CKM_EDDSA (PKCS#11 v3.0 section 2.3.14). */
export const CKM_EDDSA = 0x1057;

/** DER of the named-curve OIDs that go in CKA_EC_PARAMS. */
export const EC_PARAMS = {
  EC_P256: Buffer.from('06082a8648ce3d030107', 'hex'), // prime256v1
  EC_P384: Buffer.from('06052b81040022', 'hex'), // secp384r1
  ED25519: Buffer.from('06032b6570', 'hex'), // id-Ed25519 (RFC 8410)
} as const;

// PKCS#11 v3.0 also lets Edwards keys name their curve by PrintableString "edwards25519".
const ED25519_PRINTABLE = Buffer.from('130c656477617264733235353139', 'hex');

/** Bytes of one coordinate for the curves sigil signs with. */
const COORD = { EC_P256: 32, EC_P384: 48 } as const;

/** The key type named by CKA_EC_PARAMS of an EC or Edwards key, or null for a curve sigil does not use. */
export function keyTypeOfEcParams(params: Buffer): KeyType | null {
  if (params.equals(EC_PARAMS.EC_P256)) return 'EC_P256';
  if (params.equals(EC_PARAMS.EC_P384)) return 'EC_P384';
  if (params.equals(EC_PARAMS.ED25519) || params.equals(ED25519_PRINTABLE)) return 'ED25519';
  return null;
}

/**
 * The raw point of CKA_EC_POINT. PKCS#11 specifies a DER OCTET STRING around it; some modules store
 * the bare point, told apart by its exact length (`raw` bytes).
 */
export function unwrapEcPoint(value: Buffer, raw: number): Buffer | null {
  if (value.length === raw) return value;
  if (value[0] !== 0x04) return null;
  let len = value[1]!;
  let off = 2;
  if (len === 0x81) {
    len = value[2]!;
    off = 3;
  } else if (len > 0x7f) {
    return null;
  }
  return off + len === value.length && len === raw ? value.subarray(off) : null;
}

/** DER SubjectPublicKeyInfo of an EC (uncompressed point) or Ed25519 public key from CKA_EC_POINT; null if malformed. */
export function spkiFromEcPoint(keyType: KeyType, ecPoint: Buffer): Buffer | null {
  try {
    if (keyType === 'ED25519') {
      const x = unwrapEcPoint(ecPoint, 32);
      if (x === null) return null;
      return exportSpki({ kty: 'OKP', crv: 'Ed25519', x: x.toString('base64url') });
    }
    if (keyType !== 'EC_P256' && keyType !== 'EC_P384') return null;
    const n = COORD[keyType];
    const p = unwrapEcPoint(ecPoint, 2 * n + 1);
    if (p === null || p[0] !== 0x04) return null;
    return exportSpki({
      kty: 'EC',
      crv: keyType === 'EC_P256' ? 'P-256' : 'P-384',
      x: p.subarray(1, 1 + n).toString('base64url'),
      y: p.subarray(1 + n).toString('base64url'),
    });
  } catch {
    // Node rejects points that are not on the curve.
    return null;
  }
}

/** DER SubjectPublicKeyInfo of an RSA public key from CKA_MODULUS and CKA_PUBLIC_EXPONENT; null if malformed. */
export function spkiFromRsa(modulus: Buffer, exponent: Buffer): Buffer | null {
  try {
    return exportSpki({ kty: 'RSA', n: stripZeros(modulus).toString('base64url'), e: stripZeros(exponent).toString('base64url') });
  } catch {
    return null;
  }
}

function exportSpki(jwk: Record<string, string>): Buffer {
  return createPublicKey({ key: jwk, format: 'jwk' }).export({ format: 'der', type: 'spki' });
}

function stripZeros(b: Buffer): Buffer {
  let i = 0;
  while (i < b.length - 1 && b[i] === 0) i++;
  return b.subarray(i);
}

/** CK_BBOOL attribute value as a boolean. */
export function bool(v: Buffer | undefined): boolean {
  return v !== undefined && v.length > 0 && v[0] !== 0;
}

/** CK_ULONG attribute value as a number (little-endian, as SoftHSM and every x86/arm module store it). */
export function ulong(v: Buffer): number {
  return v.length >= 4 ? v.readUInt32LE(0) : v.length > 0 ? v[0]! : -1;
}
