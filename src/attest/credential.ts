import { createCipheriv, createECDH, createHash, createHmac, constants, publicEncrypt, randomBytes } from 'node:crypto';
import { SigilError } from '../errors.ts';
import { TPM_ALG, TPM_ECC } from '../tpm/constants.ts';
import { kdfa, kdfe } from '../tpm/kdf.ts';
import { Writer } from '../tpm/marshal.ts';
import { hashOf, publicKeyOf, type TpmPublic } from '../tpm/structures.ts';

/** The outputs of TPM2_MakeCredential (TPM 2.0 Part 3, 12.6), without their TPM2B size prefixes. */
export interface Credential {
  /** TPM2B_ID_OBJECT contents: TPM2B_DIGEST integrityHMAC || encIdentity. */
  credentialBlob: Buffer;
  /** TPM2B_ENCRYPTED_SECRET contents: the seed encrypted to the EK. */
  encryptedSecret: Buffer;
}

function digestSize(hash: string): number {
  return createHash(hash).digest().length;
}

const CURVES: Record<number, { node: string; size: number }> = {
  [TPM_ECC.NIST_P256]: { node: 'prime256v1', size: 32 },
  [TPM_ECC.NIST_P384]: { node: 'secp384r1', size: 48 },
};

function leftPad(b: Buffer, size: number): Buffer {
  if (b.length > size) throw new SigilError('INVALID_ARGUMENT', 'ek point coordinate longer than the curve');
  return b.length === size ? b : Buffer.concat([Buffer.alloc(size - b.length), b]);
}

// Part 1, 24.4 (RSA) and C.6.4 / 24.5 (ECC): a fresh seed and the TPM2B_ENCRYPTED_SECRET carrying it.
function seedFor(ek: TpmPublic, hash: string): { seed: Buffer; encryptedSecret: Buffer } {
  if (ek.type === TPM_ALG.RSA && ek.rsa !== undefined) {
    const seed = randomBytes(digestSize(hash));
    const encryptedSecret = publicEncrypt(
      { key: publicKeyOf(ek), padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: hash, oaepLabel: Buffer.from('IDENTITY\0', 'latin1') },
      seed,
    );
    return { seed, encryptedSecret };
  }
  if (ek.type === TPM_ALG.ECC && ek.ecc !== undefined) {
    const curve = CURVES[ek.ecc.curve];
    if (curve === undefined) throw new SigilError('INVALID_ARGUMENT', `unsupported ek curve 0x${ek.ecc.curve.toString(16)}`);
    const ekX = leftPad(ek.ecc.x, curve.size);
    const ekY = leftPad(ek.ecc.y, curve.size);
    const eph = createECDH(curve.node);
    eph.generateKeys();
    let z: Buffer;
    try {
      z = eph.computeSecret(Buffer.concat([Buffer.from([4]), ekX, ekY]));
    } catch (err) {
      throw new SigilError('INVALID_ARGUMENT', 'ek point is not on its curve', { cause: err });
    }
    const point = eph.getPublicKey();
    const ephX = point.subarray(1, 1 + curve.size);
    const ephY = point.subarray(1 + curve.size);
    const seed = kdfe(hash, z, 'IDENTITY', ephX, ekX, digestSize(hash) * 8);
    // TPMS_ECC_POINT: TPM2B x, TPM2B y.
    return { seed, encryptedSecret: new Writer().sized(ephX).sized(ephY).finish() };
  }
  throw new SigilError('INVALID_ARGUMENT', 'the ek is neither an rsa nor an ecc key');
}

/**
 * TPM2_MakeCredential in software (TPM 2.0 Part 1, 24 Credential Protection; Part 3, 12.6): protects
 * `secret` so that only the TPM holding `ekPublic` releases it, and only to an object named `objectName`.
 */
export function makeCredential(ekPublic: TpmPublic, objectName: Buffer, secret: Buffer): Credential {
  const hash = hashOf(ekPublic.nameAlg);
  const size = digestSize(hash);
  if (secret.length === 0 || secret.length > size) throw new SigilError('INVALID_ARGUMENT', `credential secret must be 1 to ${size} bytes`);
  const detail = ekPublic.rsa ?? ekPublic.ecc;
  const keyBits = detail?.symKeyBits;
  if (detail?.symmetric !== TPM_ALG.AES || detail.symMode !== TPM_ALG.CFB || (keyBits !== 128 && keyBits !== 192 && keyBits !== 256)) {
    throw new SigilError('INVALID_ARGUMENT', 'the ek has no aes-cfb symmetric definition');
  }
  const { seed, encryptedSecret } = seedFor(ekPublic, hash);
  // Part 1, 24.4: symmetric key from the seed and the object's name; IV of zeros (Part 1, 22.3).
  const symKey = kdfa(hash, seed, 'STORAGE', objectName, Buffer.alloc(0), keyBits);
  const cipher = createCipheriv(`aes-${keyBits}-cfb`, symKey, Buffer.alloc(16));
  const encIdentity = Buffer.concat([cipher.update(new Writer().sized(secret).finish()), cipher.final()]);
  // Part 1, 24.5: HMAC key from the seed; outerHMAC over encIdentity || name.
  const hmacKey = kdfa(hash, seed, 'INTEGRITY', Buffer.alloc(0), Buffer.alloc(0), size * 8);
  const outerHmac = createHmac(hash, hmacKey).update(encIdentity).update(objectName).digest();
  return { credentialBlob: Buffer.concat([new Writer().sized(outerHmac).finish(), encIdentity]), encryptedSecret };
}

/** The file tpm2_makecredential writes and tpm2_activatecredential reads (tpm2-tools 5.x): magic, version 1, TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET. */
export function tpm2ToolsCredentialFile(c: Credential): Buffer {
  return new Writer().u32(0xbadcc0de).u32(1).sized(c.credentialBlob).sized(c.encryptedSecret).finish();
}
