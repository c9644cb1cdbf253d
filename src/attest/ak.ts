import { SigilError } from '../errors.ts';
import { TPM_ALG, TPM_ECC, TPMA_OBJECT } from '../tpm/constants.ts';
import { publicKeyOf, type TpmPublic } from '../tpm/structures.ts';

/** AK key types a policy may accept. */
export type AkAlgorithm = 'rsa' | 'ecc';

const REQUIRED: [keyof typeof TPMA_OBJECT, string][] = [
  ['restricted', 'restricted'],
  ['sign', 'a signing key'],
  ['fixedTPM', 'fixedTPM'],
  ['fixedParent', 'fixedParent'],
  ['sensitiveDataOrigin', 'sensitiveDataOrigin'],
];

function deny(message: string): never {
  throw new SigilError('PERMISSION_DENIED', message);
}

/**
 * Checks an AK public area: restricted signing key that never left the TPM that made it (fixedTPM,
 * fixedParent, sensitiveDataOrigin), no decrypt, nameAlg SHA-256, and either RSA >= 2048 bits with
 * RSASSA or RSAPSS over SHA-256, or ECC P-256 with ECDSA over SHA-256. Throws PERMISSION_DENIED naming
 * the first attribute that fails.
 */
export function checkAk(ak: TpmPublic, allowed: ReadonlySet<AkAlgorithm> = new Set(['rsa', 'ecc'])): void {
  for (const [attr, what] of REQUIRED) {
    if ((ak.objectAttributes & TPMA_OBJECT[attr]) === 0) deny(`ak is not ${what}`);
  }
  if ((ak.objectAttributes & TPMA_OBJECT.decrypt) !== 0) deny('ak is a decryption key');
  if (ak.nameAlg !== TPM_ALG.SHA256) deny(`ak name algorithm 0x${ak.nameAlg.toString(16)} is not sha256`);
  if (ak.type === TPM_ALG.RSA && ak.rsa !== undefined) {
    if (!allowed.has('rsa')) deny('the policy does not accept rsa aks');
    const { scheme, schemeHash, keyBits, modulus, symmetric } = ak.rsa;
    if (keyBits < 2048) deny(`ak rsa key of ${keyBits} bits is shorter than 2048`);
    if (modulus.length * 8 !== keyBits) deny('ak rsa modulus does not have the declared key size');
    if (scheme !== TPM_ALG.RSASSA && scheme !== TPM_ALG.RSAPSS) deny('ak rsa scheme is neither rsassa nor rsapss');
    if (schemeHash !== TPM_ALG.SHA256) deny('ak signature hash is not sha256');
    if (symmetric !== TPM_ALG.NULL) deny('ak has a symmetric definition');
  } else if (ak.type === TPM_ALG.ECC && ak.ecc !== undefined) {
    if (!allowed.has('ecc')) deny('the policy does not accept ecc aks');
    const { scheme, schemeHash, curve, symmetric } = ak.ecc;
    if (curve !== TPM_ECC.NIST_P256) deny('ak curve is not nist p-256');
    if (scheme !== TPM_ALG.ECDSA) deny('ak ecc scheme is not ecdsa');
    if (schemeHash !== TPM_ALG.SHA256) deny('ak signature hash is not sha256');
    if (symmetric !== TPM_ALG.NULL) deny('ak has a symmetric definition');
  } else {
    deny('ak is neither an rsa nor an ecc key');
  }
  try {
    publicKeyOf(ak);
  } catch (err) {
    throw new SigilError('PERMISSION_DENIED', 'ak public key is not a valid key', { cause: err });
  }
}
