import { TPM_ALG, TPM_ECC, TPMA_OBJECT } from '../../tpm/constants.ts';
import type { PublicArea } from '../../tpm/structures.ts';
import type { KeyType } from '../signer.ts';

/**
 * Attributes of every key sigil creates in a TPM: generated inside and bound to this TPM and its parent
 * (non-extractable by construction), signing only, unrestricted so it signs outside digests, used with
 * its authValue (userWithAuth; the backend sets 32 random bytes). noDA: a random 256-bit authValue
 * cannot be guessed, and without it another TPM user could set off a dictionary-attack lockout with
 * wrong guesses and stop sigil's signing.
 */
export const SIGNING_KEY_ATTRIBUTES =
  TPMA_OBJECT.fixedTPM | TPMA_OBJECT.fixedParent | TPMA_OBJECT.sensitiveDataOrigin | TPMA_OBJECT.userWithAuth | TPMA_OBJECT.noDA | TPMA_OBJECT.sign;

const EMPTY = Buffer.alloc(0);

// Scheme TPM_ALG_NULL: the scheme is picked per TPM2_Sign (RSASSA or RSAPSS for one RSA key).
function eccTemplate(curve: number): PublicArea {
  return {
    type: TPM_ALG.ECC,
    nameAlg: TPM_ALG.SHA256,
    objectAttributes: SIGNING_KEY_ATTRIBUTES,
    authPolicy: EMPTY,
    ecc: { symmetric: TPM_ALG.NULL, scheme: TPM_ALG.NULL, schemeHash: TPM_ALG.NULL, curve, kdf: TPM_ALG.NULL, x: EMPTY, y: EMPTY },
  };
}

/** The TPMT_PUBLIC template of a signing key of `keyType`, or null for a type the TPM backend does not make. */
export function signingKeyTemplate(keyType: KeyType): PublicArea | null {
  switch (keyType) {
    case 'EC_P256':
      return eccTemplate(TPM_ECC.NIST_P256);
    case 'EC_P384':
      return eccTemplate(TPM_ECC.NIST_P384);
    case 'RSA':
      return {
        type: TPM_ALG.RSA,
        nameAlg: TPM_ALG.SHA256,
        objectAttributes: SIGNING_KEY_ATTRIBUTES,
        authPolicy: EMPTY,
        rsa: { symmetric: TPM_ALG.NULL, scheme: TPM_ALG.NULL, schemeHash: TPM_ALG.NULL, keyBits: 2048, exponent: 0, modulus: EMPTY },
      };
    case 'ED25519':
      return null;
  }
}
