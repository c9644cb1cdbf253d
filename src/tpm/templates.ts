import { TPM_ALG, TPM_ECC, TPMA_OBJECT } from './constants.ts';
import { marshalPublic, type PublicArea } from './structures.ts';

// Key templates. EK templates: TCG EK Credential Profile for TPM Family 2.0, version 2.3, B.3.3
// (L-1, L-2, low range) and B.3.4 (H-3, high range). SRK: TCG TPM v2.0 Provisioning Guidance, 7.5.1.

const EMPTY = Buffer.alloc(0);

/** PolicySecret(TPM_RH_ENDORSEMENT) with SHA-256: the authPolicy of the low-range EK templates (EK profile B.3.2 PolicyA). */
export const EK_POLICY_SHA256 = Buffer.from('837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa', 'hex');

/** PolicyB (PolicyOR of PolicyA and the NV-based admin policy) with SHA-384: the authPolicy of H-3 (EK profile B.3.2). */
export const EK_POLICY_B_SHA384 = Buffer.from(
  'b26e7d28d11a50bc53d882bcf5fd3a1a074148bb35d3b4e4cb1c0ad9bde419cacb47ba09699646150f9fc000f3f80e12',
  'hex',
);

const EK_ATTRS_LOW =
  TPMA_OBJECT.fixedTPM | TPMA_OBJECT.fixedParent | TPMA_OBJECT.sensitiveDataOrigin | TPMA_OBJECT.adminWithPolicy | TPMA_OBJECT.restricted | TPMA_OBJECT.decrypt;

// The high-range templates also set userWithAuth: the user role of the EK takes an (empty) password.
const EK_ATTRS_HIGH = EK_ATTRS_LOW | TPMA_OBJECT.userWithAuth;

/** EK template L-1: RSA 2048, AES-128-CFB storage key, unique = 256 zero bytes; its cert sits at NV 0x01c00002. */
export const EK_TEMPLATE_L1: PublicArea = {
  type: TPM_ALG.RSA,
  nameAlg: TPM_ALG.SHA256,
  objectAttributes: EK_ATTRS_LOW,
  authPolicy: EK_POLICY_SHA256,
  rsa: {
    symmetric: TPM_ALG.AES,
    symKeyBits: 128,
    symMode: TPM_ALG.CFB,
    scheme: TPM_ALG.NULL,
    schemeHash: TPM_ALG.NULL,
    keyBits: 2048,
    exponent: 0,
    modulus: Buffer.alloc(256),
  },
};

/** EK template L-2: ECC NIST P-256, AES-128-CFB, unique = two 32-byte zero coordinates; cert at NV 0x01c0000a. */
export const EK_TEMPLATE_L2: PublicArea = {
  type: TPM_ALG.ECC,
  nameAlg: TPM_ALG.SHA256,
  objectAttributes: EK_ATTRS_LOW,
  authPolicy: EK_POLICY_SHA256,
  ecc: {
    symmetric: TPM_ALG.AES,
    symKeyBits: 128,
    symMode: TPM_ALG.CFB,
    scheme: TPM_ALG.NULL,
    schemeHash: TPM_ALG.NULL,
    curve: TPM_ECC.NIST_P256,
    kdf: TPM_ALG.NULL,
    x: Buffer.alloc(32),
    y: Buffer.alloc(32),
  },
};

/** EK template H-3: ECC NIST P-384, SHA-384 name, AES-256-CFB, empty unique; cert at NV 0x01c00016 (swtpm's ECC EK). */
export const EK_TEMPLATE_H3: PublicArea = {
  type: TPM_ALG.ECC,
  nameAlg: TPM_ALG.SHA384,
  objectAttributes: EK_ATTRS_HIGH,
  authPolicy: EK_POLICY_B_SHA384,
  ecc: {
    symmetric: TPM_ALG.AES,
    symKeyBits: 256,
    symMode: TPM_ALG.CFB,
    scheme: TPM_ALG.NULL,
    schemeHash: TPM_ALG.NULL,
    curve: TPM_ECC.NIST_P384,
    kdf: TPM_ALG.NULL,
    x: EMPTY,
    y: EMPTY,
  },
};

/** SRK template: ECC P-256 restricted decryption (storage) key, AES-128-CFB, noDA, userWithAuth. */
export const SRK_TEMPLATE_ECC: PublicArea = {
  type: TPM_ALG.ECC,
  nameAlg: TPM_ALG.SHA256,
  objectAttributes:
    TPMA_OBJECT.fixedTPM |
    TPMA_OBJECT.fixedParent |
    TPMA_OBJECT.sensitiveDataOrigin |
    TPMA_OBJECT.userWithAuth |
    TPMA_OBJECT.noDA |
    TPMA_OBJECT.restricted |
    TPMA_OBJECT.decrypt,
  authPolicy: EMPTY,
  ecc: {
    symmetric: TPM_ALG.AES,
    symKeyBits: 128,
    symMode: TPM_ALG.CFB,
    scheme: TPM_ALG.NULL,
    schemeHash: TPM_ALG.NULL,
    curve: TPM_ECC.NIST_P256,
    kdf: TPM_ALG.NULL,
    x: Buffer.alloc(32),
    y: Buffer.alloc(32),
  },
};

/** Attributes of an attestation key: restricted signing, never leaves the TPM, password for the user role. */
export const AK_ATTRIBUTES =
  TPMA_OBJECT.fixedTPM | TPMA_OBJECT.fixedParent | TPMA_OBJECT.sensitiveDataOrigin | TPMA_OBJECT.userWithAuth | TPMA_OBJECT.restricted | TPMA_OBJECT.sign;

/** AK template: RSA 2048, RSASSA-PKCS1-v1_5 with SHA-256. */
export const AK_TEMPLATE_RSA: PublicArea = {
  type: TPM_ALG.RSA,
  nameAlg: TPM_ALG.SHA256,
  objectAttributes: AK_ATTRIBUTES,
  authPolicy: EMPTY,
  rsa: {
    symmetric: TPM_ALG.NULL,
    scheme: TPM_ALG.RSASSA,
    schemeHash: TPM_ALG.SHA256,
    keyBits: 2048,
    exponent: 0,
    modulus: EMPTY,
  },
};

/** AK template: ECC NIST P-256, ECDSA with SHA-256. */
export const AK_TEMPLATE_ECC: PublicArea = {
  type: TPM_ALG.ECC,
  nameAlg: TPM_ALG.SHA256,
  objectAttributes: AK_ATTRIBUTES,
  authPolicy: EMPTY,
  ecc: {
    symmetric: TPM_ALG.NULL,
    scheme: TPM_ALG.ECDSA,
    schemeHash: TPM_ALG.SHA256,
    curve: TPM_ECC.NIST_P256,
    kdf: TPM_ALG.NULL,
    x: EMPTY,
    y: EMPTY,
  },
};

/** TPMT_PUBLIC bytes of a template, as `Tpm.createPrimary` and `Tpm.create` take them. */
export function templateBytes(t: PublicArea): Buffer {
  return marshalPublic(t);
}
