import { createCipheriv, createDecipheriv, createECDH } from 'node:crypto';
import { SigilError } from '../errors.ts';
import { TPM_ALG, TPM_ECC } from './constants.ts';
import { trimAuth } from './hmac-session.ts';
import { kdfa, kdfe } from './kdf.ts';
import { Reader, TpmFormatError, Writer } from './marshal.ts';
import type { TpmPublic } from './structures.ts';

// Salted sessions and CFB parameter encryption (TPM 2.0 Part 1, 19.6.13 "Salted session", Annex C.6.1
// "ECC secret sharing for encrypted salt", 21.3 "CFB mode parameter encryption").

/** The salt of a session and what StartAuthSession carries for it: the TPMS_ECC_POINT of the ephemeral key. */
export interface EccSalt {
  /** The salt both sides derive (256 bits for a SHA-256 tpmKey). */
  salt: Buffer;
  /** TPMS_ECC_POINT bytes: the contents of StartAuthSession's TPM2B_ENCRYPTED_SECRET. */
  encryptedSalt: Buffer;
}

/** AES-128 key and IV of one parameter encryption. */
export interface CfbKey {
  key: Buffer;
  iv: Buffer;
}

const P256 = 32;

/**
 * Makes the salt of a session whose tpmKey is the NIST P-256 key `tpmKey` with SHA-256 nameAlg (the
 * standard SRK), Annex C.6.1: an ephemeral key pair (de, Qe), Z = x(de * Qs), salt = KDFe(SHA-256, Z,
 * "SECRET", x(Qe), x(Qs), 256). Only the holder of the tpmKey's private key derives the same salt from
 * Qe. `ephemeral` (a private scalar) is for known-answer tests only.
 */
export function eccSalt(tpmKey: TpmPublic, ephemeral?: Buffer): EccSalt {
  const ecc = tpmKey.ecc;
  if (tpmKey.type !== TPM_ALG.ECC || ecc === undefined || ecc.curve !== TPM_ECC.NIST_P256 || tpmKey.nameAlg !== TPM_ALG.SHA256) {
    throw new SigilError('INVALID_ARGUMENT', 'a session salt needs a nist p-256 tpm key with a sha-256 name');
  }
  if (ecc.x.length > P256 || ecc.y.length > P256) throw new SigilError('INVALID_ARGUMENT', 'tpm key point coordinates longer than p-256');
  const qsx = leftPad(ecc.x);
  const qsy = leftPad(ecc.y);
  const ecdh = createECDH('prime256v1');
  if (ephemeral === undefined) ecdh.generateKeys();
  else ecdh.setPrivateKey(ephemeral);
  let z: Buffer;
  try {
    // computeSecret returns x(de * Qs), already the curve's size; it throws for a point off the curve.
    z = ecdh.computeSecret(Buffer.concat([Buffer.of(4), qsx, qsy]));
  } catch (err) {
    throw new SigilError('INVALID_ARGUMENT', 'tpm key point is not on p-256', { cause: err });
  }
  const qe = ecdh.getPublicKey();
  const qex = qe.subarray(1, 1 + P256);
  const qey = qe.subarray(1 + P256);
  const salt = kdfe('sha256', z, 'SECRET', qex, qsx, 256);
  return { salt, encryptedSalt: new Writer().sized(qex).sized(qey).finish() };
}

/**
 * Key and IV of CFB parameter encryption (Part 1, 21.3): KDFa(SHA-256, sessionKey || authValue, "CFB",
 * nonceNewer, nonceOlder, 128 + 128). For a command nonceNewer is nonceCaller; `authValue` is that of the
 * entity the session authorizes (empty when it authorizes none).
 */
export function cfbKey(sessionKey: Buffer, authValue: Buffer, nonceNewer: Buffer, nonceOlder: Buffer): CfbKey {
  const bits = kdfa('sha256', Buffer.concat([sessionKey, trimAuth(authValue)]), 'CFB', nonceNewer, nonceOlder, 256);
  return { key: bits.subarray(0, 16), iv: bits.subarray(16) };
}

/**
 * Encrypts (or, with `decrypt`, decrypts) the buffer of the TPM2B that opens `params`, AES-128-CFB,
 * leaving its size field and everything after it as they are (Part 1, 21.1: only the first parameter's
 * data is encrypted). TpmFormatError when `params` does not open with a whole TPM2B.
 */
export function cryptFirstParameter(params: Buffer, k: CfbKey, decrypt = false): Buffer {
  const r = new Reader(params);
  const size = r.u16();
  if (size > r.remaining) throw new TpmFormatError(`first parameter of ${size} bytes, ${r.remaining} left`);
  const data = params.subarray(2, 2 + size);
  const c = decrypt ? createDecipheriv('aes-128-cfb', k.key, k.iv) : createCipheriv('aes-128-cfb', k.key, k.iv);
  const out = Buffer.concat([c.update(data), c.final()]);
  return Buffer.concat([params.subarray(0, 2), out, params.subarray(2 + size)]);
}

function leftPad(b: Buffer): Buffer {
  return b.length === P256 ? b : Buffer.concat([Buffer.alloc(P256 - b.length), b]);
}
