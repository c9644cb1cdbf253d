import { constants, createDecipheriv, createECDH, createHmac, generateKeyPairSync, privateDecrypt, sign, timingSafeEqual, type KeyObject } from 'node:crypto';
import type { Credential } from '../../../src/attest/credential.ts';
import { kdfa, kdfe } from '../../../src/tpm/kdf.ts';
import { TPM_ALG, TPM_ECC, TPM_GENERATED_VALUE, TPM_ST, TPMA_OBJECT } from '../../../src/tpm/constants.ts';
import { Reader } from '../../../src/tpm/marshal.ts';
import {
  hashOf,
  marshalAttest,
  marshalSignature,
  marshalPublic,
  parsePublic,
  pcrDigest,
  type PcrSelection,
  type PublicArea,
  type TpmPublic,
} from '../../../src/tpm/structures.ts';

// Software stand-ins for TPM-made structures, so unit tests can hit each refusal with structures a TPM
// would never produce. The integration test runs the same flows against swtpm.

/** AK attributes a TPM gives `tpm2_createak` keys. */
export const AK_ATTRS =
  TPMA_OBJECT.fixedTPM | TPMA_OBJECT.fixedParent | TPMA_OBJECT.sensitiveDataOrigin | TPMA_OBJECT.userWithAuth | TPMA_OBJECT.restricted | TPMA_OBJECT.sign;

export interface SoftKey {
  key: KeyObject;
  pub: TpmPublic;
}

export type SoftAkKind = 'rsassa' | 'rsapss' | 'ecdsa';

/** A software AK and its TPMT_PUBLIC; `area` edits the public area before marshaling. */
export function softAk(kind: SoftAkKind = 'ecdsa', area: (a: PublicArea) => void = () => {}): SoftKey {
  let a: PublicArea;
  let key: KeyObject;
  if (kind === 'ecdsa') {
    const kp = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    key = kp.privateKey;
    const jwk = kp.publicKey.export({ format: 'jwk' });
    a = {
      type: TPM_ALG.ECC, nameAlg: TPM_ALG.SHA256, objectAttributes: AK_ATTRS, authPolicy: Buffer.alloc(0),
      ecc: { symmetric: TPM_ALG.NULL, scheme: TPM_ALG.ECDSA, schemeHash: TPM_ALG.SHA256, curve: TPM_ECC.NIST_P256, kdf: TPM_ALG.NULL,
        x: Buffer.from(jwk.x!, 'base64url'), y: Buffer.from(jwk.y!, 'base64url') },
    };
  } else {
    const kp = generateKeyPairSync('rsa', { modulusLength: 2048 });
    key = kp.privateKey;
    const jwk = kp.publicKey.export({ format: 'jwk' });
    a = {
      type: TPM_ALG.RSA, nameAlg: TPM_ALG.SHA256, objectAttributes: AK_ATTRS, authPolicy: Buffer.alloc(0),
      rsa: { symmetric: TPM_ALG.NULL, scheme: kind === 'rsassa' ? TPM_ALG.RSASSA : TPM_ALG.RSAPSS, schemeHash: TPM_ALG.SHA256, keyBits: 2048, exponent: 0,
        modulus: Buffer.from(jwk.n!, 'base64url') },
    };
  }
  area(a);
  return { key, pub: parsePublic(marshalPublic(a)) };
}

/** A software RSA-2048 (or ECC P-256/P-384) EK with the TCG default template's parameters. */
export function softEk(kind: 'rsa' | 'p256' | 'p384' = 'rsa'): SoftKey {
  const attrs = TPMA_OBJECT.fixedTPM | TPMA_OBJECT.fixedParent | TPMA_OBJECT.sensitiveDataOrigin | TPMA_OBJECT.adminWithPolicy | TPMA_OBJECT.restricted | TPMA_OBJECT.decrypt;
  if (kind === 'rsa') {
    const kp = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const jwk = kp.publicKey.export({ format: 'jwk' });
    const a: PublicArea = {
      type: TPM_ALG.RSA, nameAlg: TPM_ALG.SHA256, objectAttributes: attrs, authPolicy: Buffer.alloc(32),
      rsa: { symmetric: TPM_ALG.AES, symKeyBits: 128, symMode: TPM_ALG.CFB, scheme: TPM_ALG.NULL, schemeHash: TPM_ALG.NULL, keyBits: 2048, exponent: 0,
        modulus: Buffer.from(jwk.n!, 'base64url') },
    };
    return { key: kp.privateKey, pub: parsePublic(marshalPublic(a)) };
  }
  const high = kind === 'p384';
  const kp = generateKeyPairSync('ec', { namedCurve: high ? 'P-384' : 'P-256' });
  const jwk = kp.publicKey.export({ format: 'jwk' });
  const a: PublicArea = {
    type: TPM_ALG.ECC, nameAlg: high ? TPM_ALG.SHA384 : TPM_ALG.SHA256, objectAttributes: attrs, authPolicy: Buffer.alloc(high ? 48 : 32),
    ecc: { symmetric: TPM_ALG.AES, symKeyBits: high ? 256 : 128, symMode: TPM_ALG.CFB, scheme: TPM_ALG.NULL, schemeHash: TPM_ALG.NULL,
      curve: high ? TPM_ECC.NIST_P384 : TPM_ECC.NIST_P256, kdf: TPM_ALG.NULL, x: Buffer.from(jwk.x!, 'base64url'), y: Buffer.from(jwk.y!, 'base64url') },
  };
  return { key: kp.privateKey, pub: parsePublic(marshalPublic(a)) };
}

/** TPM2_ActivateCredential in software (TPM 2.0 Part 1, 24): the secret, or throws 'integrity'. */
export function softActivate(ek: SoftKey, name: Buffer, cred: Credential): Buffer {
  const hash = hashOf(ek.pub.nameAlg);
  let seed: Buffer;
  if (ek.pub.rsa !== undefined) {
    seed = privateDecrypt({ key: ek.key, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: hash, oaepLabel: Buffer.from('IDENTITY\0') }, cred.encryptedSecret);
  } else {
    const r = new Reader(cred.encryptedSecret);
    const x = r.sized();
    const y = r.sized();
    r.end();
    const ecdh = createECDH(ek.pub.ecc!.curve === TPM_ECC.NIST_P384 ? 'secp384r1' : 'prime256v1');
    ecdh.setPrivateKey(Buffer.from(ek.key.export({ format: 'jwk' }).d!, 'base64url'));
    const z = ecdh.computeSecret(Buffer.concat([Buffer.from([4]), x, y]));
    seed = kdfe(hash, z, 'IDENTITY', x, ek.pub.ecc!.x, seedBits(hash));
  }
  const r = new Reader(cred.credentialBlob);
  const hmac = r.sized();
  const encIdentity = r.bytes(r.remaining);
  const hmacKey = kdfa(hash, seed, 'INTEGRITY', Buffer.alloc(0), Buffer.alloc(0), hmac.length * 8);
  const want = createHmac(hash, hmacKey).update(encIdentity).update(name).digest();
  if (want.length !== hmac.length || !timingSafeEqual(want, hmac)) throw new Error('integrity');
  const bits = (ek.pub.rsa ?? ek.pub.ecc)!.symKeyBits!;
  const symKey = kdfa(hash, seed, 'STORAGE', name, Buffer.alloc(0), bits);
  const d = createDecipheriv(`aes-${bits}-cfb`, symKey, Buffer.alloc(16));
  const plain = Buffer.concat([d.update(encIdentity), d.final()]);
  return new Reader(plain).sized();
}

function seedBits(hash: string): number {
  return ({ sha1: 20, sha256: 32, sha384: 48, sha512: 64 } as Record<string, number>)[hash]! * 8;
}

/** Fields of a software quote; anything left out is what a genuine quote would carry. */
export interface SoftQuote {
  extraData: Buffer;
  selection: PcrSelection[];
  values: Buffer[];
  type?: number;
  magic?: number;
  resetCount?: number;
  restartCount?: number;
  /** Signature hash and algorithm overrides. */
  sigAlg?: number;
  sigHash?: number;
  /** Overrides the PCR digest. */
  digest?: Buffer;
  /** TPMS_ATTEST.qualifiedSigner (default: 34 bytes no verifier would expect). */
  qualifiedSigner?: Buffer;
  /** TPMS_CLOCK_INFO clock and safe (default 123456, YES). */
  clock?: bigint;
  safe?: boolean;
}

/** A TPMS_ATTEST of a quote signed by a software AK, as TPMT_SIGNATURE bytes. */
export function softQuote(ak: SoftKey, q: SoftQuote): { attest: Buffer; signature: Buffer } {
  const type = q.type ?? TPM_ST.ATTEST_QUOTE;
  const attested =
    type === TPM_ST.ATTEST_QUOTE
      ? { type: TPM_ST.ATTEST_QUOTE, pcrSelect: q.selection, pcrDigest: q.digest ?? pcrDigest(TPM_ALG.SHA256, q.values) }
      : type === TPM_ST.ATTEST_CERTIFY
        ? { type: TPM_ST.ATTEST_CERTIFY, name: Buffer.alloc(34, 1), qualifiedName: Buffer.alloc(34, 2) }
        : { type, other: Buffer.alloc(0) };
  const attest = marshalAttest({
    magic: q.magic ?? TPM_GENERATED_VALUE,
    type,
    qualifiedSigner: q.qualifiedSigner ?? Buffer.alloc(34, 7),
    extraData: q.extraData,
    clockInfo: { clock: q.clock ?? 123456n, resetCount: q.resetCount ?? 3, restartCount: q.restartCount ?? 0, safe: q.safe ?? true },
    firmwareVersion: 0x2020n,
    attested: attested as Parameters<typeof marshalAttest>[0]['attested'],
  });
  return { attest, signature: softSign(ak, attest, q.sigAlg, q.sigHash) };
}

/** A TPMT_SIGNATURE by `ak` over `message` with the AK's scheme (or the overrides). */
export function softSign(ak: SoftKey, message: Buffer, sigAlg?: number, sigHash?: number): Buffer {
  const scheme = ak.pub.rsa?.scheme ?? ak.pub.ecc!.scheme;
  const alg = sigAlg ?? scheme;
  const hashAlg = sigHash ?? TPM_ALG.SHA256;
  const hash = hashOf(hashAlg);
  if (alg === TPM_ALG.RSASSA) return marshalSignature({ sigAlg: alg, hash: hashAlg, rsa: sign(hash, message, { key: ak.key, padding: constants.RSA_PKCS1_PADDING }) });
  if (alg === TPM_ALG.RSAPSS) {
    return marshalSignature({ sigAlg: alg, hash: hashAlg, rsa: sign(hash, message, { key: ak.key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: constants.RSA_PSS_SALTLEN_DIGEST }) });
  }
  const rs = sign(hash, message, { key: ak.key, dsaEncoding: 'ieee-p1363' });
  // Strip leading zeros like a TPM may, so the verifier's padding is exercised.
  const strip = (b: Buffer) => b.subarray(Math.min(b.findIndex((x) => x !== 0), b.length - 1));
  return marshalSignature({ sigAlg: alg, hash: hashAlg, ecc: { r: strip(rs.subarray(0, 32)), s: strip(rs.subarray(32)) } });
}
