import { createHash, createPublicKey, type KeyObject } from 'node:crypto';
import { TPM_ALG, TPM_ECC, TPM_ST } from './constants.ts';
import { Reader, TpmFormatError, Writer } from './marshal.ts';

// TPM 2.0 Part 2 structures sigil reads and writes. Every parser takes untrusted bytes and throws
// nothing but TpmFormatError.

/** One bank of a PCR selection (TPMS_PCR_SELECTION). */
export interface PcrSelection {
  /** TPM_ALG id of the bank. */
  hash: number;
  /** Ascending PCR indices, 0..23. */
  pcrs: number[];
}

/** RSA parameters of a TPMT_PUBLIC (TPMS_RSA_PARMS). */
export interface RsaDetail {
  scheme: number;
  /** Hash of the scheme; TPM_ALG_NULL when the scheme has none. */
  schemeHash: number;
  /** Algorithm of the symmetric definition (TPM_ALG_NULL for a non-storage key). */
  symmetric: number;
  /** Key bits and mode of `symmetric`, present when it is not TPM_ALG_NULL. */
  symKeyBits?: number;
  symMode?: number;
  keyBits: number;
  /** 0 means the default 65537. */
  exponent: number;
}

/** ECC parameters of a TPMT_PUBLIC (TPMS_ECC_PARMS). */
export interface EccDetail {
  scheme: number;
  /** Hash of the scheme; TPM_ALG_NULL when the scheme has none. */
  schemeHash: number;
  /** ECDAA commit count, present only for TPM_ALG_ECDAA. */
  schemeCount?: number;
  symmetric: number;
  symKeyBits?: number;
  symMode?: number;
  curve: number;
  kdf: number;
  /** Hash of `kdf`, present when it is not TPM_ALG_NULL. */
  kdfHash?: number;
}

/** A parsed TPMT_PUBLIC. */
export interface TpmPublic {
  type: number;
  nameAlg: number;
  objectAttributes: number;
  authPolicy: Buffer;
  /** Present when type === RSA. */
  rsa?: RsaDetail & { modulus: Buffer };
  /** Present when type === ECC. */
  ecc?: EccDetail & { x: Buffer; y: Buffer };
  /** Present when type === KEYEDHASH. */
  keyedHash?: { scheme: number; schemeHash: number; kdf: number; unique: Buffer };
  /** Present when type === SYMCIPHER. */
  symcipher?: { algorithm: number; keyBits: number; mode: number; unique: Buffer };
  /** The exact TPMT_PUBLIC bytes parsed (no size prefix). */
  raw: Buffer;
}

/** A public area to marshal: a TpmPublic without `raw`. */
export type PublicArea = Omit<TpmPublic, 'raw'>;

/** TPMS_CLOCK_INFO. */
export interface ClockInfo {
  clock: bigint;
  resetCount: number;
  restartCount: number;
  safe: boolean;
}

/** The type-specific part of a TPMS_ATTEST (TPMU_ATTEST). */
export type Attested =
  | { type: 0x8018; pcrSelect: PcrSelection[]; pcrDigest: Buffer }
  | { type: 0x8017; name: Buffer; qualifiedName: Buffer }
  | { type: 0x801a; objectName: Buffer; creationHash: Buffer }
  | { type: number; other: Buffer };

/** A parsed TPMS_ATTEST (TPM 2.0 Part 2, 10.12.12). */
export interface TpmsAttest {
  magic: number;
  type: number;
  qualifiedSigner: Buffer;
  extraData: Buffer;
  clockInfo: ClockInfo;
  firmwareVersion: bigint;
  attested: Attested;
  /** The exact TPMS_ATTEST bytes parsed. */
  raw: Buffer;
}

/** A parsed TPMT_SIGNATURE. */
export interface TpmSignature {
  sigAlg: number;
  /** Hash of the signature scheme; TPM_ALG_NULL for a NULL signature. */
  hash: number;
  rsa?: Buffer;
  ecc?: { r: Buffer; s: Buffer };
  /** Digest of an HMAC signature. */
  hmac?: Buffer;
}

/** A parsed TPMS_NV_PUBLIC. */
export interface NvPublic {
  nvIndex: number;
  nameAlg: number;
  attributes: number;
  authPolicy: Buffer;
  dataSize: number;
}

/** A parsed TPMT_TK_CREATION (or any TPMT_TK_* ticket: tag, hierarchy, digest). */
export interface Ticket {
  tag: number;
  hierarchy: number;
  digest: Buffer;
}

const HASHES = new Map<number, { name: 'sha1' | 'sha256' | 'sha384' | 'sha512'; size: number }>([
  [TPM_ALG.SHA1, { name: 'sha1', size: 20 }],
  [TPM_ALG.SHA256, { name: 'sha256', size: 32 }],
  [TPM_ALG.SHA384, { name: 'sha384', size: 48 }],
  [TPM_ALG.SHA512, { name: 'sha512', size: 64 }],
]);

// Digest sizes of every hash a TPMT_HA may carry, including ones node:crypto is not asked to compute.
const DIGEST_SIZES = new Map<number, number>([
  [TPM_ALG.SHA1, 20],
  [TPM_ALG.SHA256, 32],
  [TPM_ALG.SHA384, 48],
  [TPM_ALG.SHA512, 64],
  [TPM_ALG.SM3_256, 32],
  [TPM_ALG.SHA3_256, 32],
  [TPM_ALG.SHA3_384, 48],
  [TPM_ALG.SHA3_512, 64],
]);

/** The node:crypto hash name of a TPM hash algorithm; TpmFormatError for anything else. */
export function hashOf(alg: number): 'sha1' | 'sha256' | 'sha384' | 'sha512' {
  const h = HASHES.get(alg);
  if (h === undefined) throw new TpmFormatError(`unsupported hash algorithm 0x${hex4(alg)}`);
  return h.name;
}

/** Digest size in bytes of a TPM hash algorithm; TpmFormatError for an unknown one. */
export function digestSize(alg: number): number {
  const n = DIGEST_SIZES.get(alg);
  if (n === undefined) throw new TpmFormatError(`unknown hash algorithm 0x${hex4(alg)}`);
  return n;
}

function hex4(n: number): string {
  return n.toString(16).padStart(4, '0');
}

// ---- PCR selections (TPM 2.0 Part 2, 10.6.2 TPMS_PCR_SELECTION, 10.9.7 TPML_PCR_SELECTION) ----

const PCR_COUNT = 24;
const MAX_BANKS = 16;

/** Marshals a TPML_PCR_SELECTION; each bank gets a 3-byte bitmap (24 PCRs). */
export function marshalPcrSelections(s: PcrSelection[]): Buffer {
  const w = new Writer().u32(s.length);
  for (const sel of s) {
    const bits = Buffer.alloc(PCR_COUNT / 8);
    for (const p of sel.pcrs) {
      if (!Number.isInteger(p) || p < 0 || p >= PCR_COUNT) throw new TpmFormatError(`pcr index ${p} out of range`);
      bits[p >> 3]! |= 1 << (p & 7);
    }
    w.u16(sel.hash).u8(bits.length).bytes(bits);
  }
  return w.finish();
}

/** Reads a TPML_PCR_SELECTION from `r`. */
export function parsePcrSelections(r: Reader): PcrSelection[] {
  const count = r.u32();
  if (count > MAX_BANKS) throw new TpmFormatError(`pcr selection of ${count} banks`);
  const out: PcrSelection[] = [];
  for (let i = 0; i < count; i++) {
    const hash = r.u16();
    const size = r.u8();
    const bits = r.bytes(size);
    const pcrs: number[] = [];
    for (let byte = 0; byte < size; byte++) {
      for (let bit = 0; bit < 8; bit++) {
        if ((bits[byte]! & (1 << bit)) === 0) continue;
        const p = byte * 8 + bit;
        if (p >= PCR_COUNT) throw new TpmFormatError(`pcr index ${p} out of range`);
        pcrs.push(p);
      }
    }
    out.push({ hash, pcrs });
  }
  return out;
}

/** The PCR digest a quote carries: H(values concatenated in selection order). */
export function pcrDigest(hashAlg: number, values: Buffer[]): Buffer {
  const h = createHash(hashOf(hashAlg));
  for (const v of values) h.update(v);
  return h.digest();
}

/** Reads a TPML_DIGEST (at most 8 digests). */
export function parseDigestList(r: Reader): Buffer[] {
  const count = r.u32();
  if (count > 8) throw new TpmFormatError(`digest list of ${count} entries`);
  const out: Buffer[] = [];
  for (let i = 0; i < count; i++) out.push(r.sized(64));
  return out;
}

/** Marshals a TPML_DIGEST. */
export function marshalDigestList(d: Buffer[]): Buffer {
  const w = new Writer().u32(d.length);
  for (const x of d) w.sized(x);
  return w.finish();
}

// ---- TPMT_PUBLIC (TPM 2.0 Part 2, 12.2.4) ----

// Schemes of TPMU_ASYM_SCHEME whose details carry a hash (everything but RSAES and NULL).
const ASYM_SCHEMES_WITH_HASH = new Set<number>([
  TPM_ALG.RSASSA,
  TPM_ALG.RSAPSS,
  TPM_ALG.OAEP,
  TPM_ALG.ECDSA,
  TPM_ALG.ECDH,
  TPM_ALG.ECDAA,
  TPM_ALG.SM2,
  TPM_ALG.ECSCHNORR,
  TPM_ALG.ECMQV,
]);
const KDF_SCHEMES = new Set<number>([TPM_ALG.MGF1, TPM_ALG.KDF1_SP800_56A, TPM_ALG.KDF2, TPM_ALG.KDF1_SP800_108]);
const SYM_OBJECT_ALGS = new Set<number>([TPM_ALG.AES, TPM_ALG.SM4, TPM_ALG.CAMELLIA]);

function readSymDef(r: Reader): { symmetric: number; symKeyBits?: number; symMode?: number } {
  const symmetric = r.u16();
  if (symmetric === TPM_ALG.NULL) return { symmetric };
  if (!SYM_OBJECT_ALGS.has(symmetric)) throw new TpmFormatError(`unknown symmetric algorithm 0x${hex4(symmetric)}`);
  return { symmetric, symKeyBits: r.u16(), symMode: r.u16() };
}

function writeSymDef(w: Writer, d: { symmetric: number; symKeyBits?: number; symMode?: number }): void {
  w.u16(d.symmetric);
  if (d.symmetric !== TPM_ALG.NULL) w.u16(d.symKeyBits ?? 0).u16(d.symMode ?? TPM_ALG.NULL);
}

function readAsymScheme(r: Reader): { scheme: number; schemeHash: number; schemeCount?: number } {
  const scheme = r.u16();
  if (scheme === TPM_ALG.NULL || scheme === TPM_ALG.RSAES) return { scheme, schemeHash: TPM_ALG.NULL };
  if (!ASYM_SCHEMES_WITH_HASH.has(scheme)) throw new TpmFormatError(`unknown key scheme 0x${hex4(scheme)}`);
  const schemeHash = r.u16();
  if (scheme === TPM_ALG.ECDAA) return { scheme, schemeHash, schemeCount: r.u16() };
  return { scheme, schemeHash };
}

function writeAsymScheme(w: Writer, d: { scheme: number; schemeHash: number; schemeCount?: number }): void {
  w.u16(d.scheme);
  if (d.scheme === TPM_ALG.NULL || d.scheme === TPM_ALG.RSAES) return;
  w.u16(d.schemeHash);
  if (d.scheme === TPM_ALG.ECDAA) w.u16(d.schemeCount ?? 0);
}

function readPublic(r: Reader): TpmPublic {
  const type = r.u16();
  const nameAlg = r.u16();
  const objectAttributes = r.u32();
  const authPolicy = r.sized(64);
  const base = { type, nameAlg, objectAttributes, authPolicy };
  switch (type) {
    case TPM_ALG.RSA: {
      const sym = readSymDef(r);
      const scheme = readAsymScheme(r);
      const keyBits = r.u16();
      const exponent = r.u32();
      const modulus = r.sized(512);
      return { ...base, rsa: { ...scheme, ...sym, keyBits, exponent, modulus }, raw: Buffer.alloc(0) };
    }
    case TPM_ALG.ECC: {
      const sym = readSymDef(r);
      const scheme = readAsymScheme(r);
      const curve = r.u16();
      const kdf = r.u16();
      let kdfHash: number | undefined;
      if (kdf !== TPM_ALG.NULL) {
        if (!KDF_SCHEMES.has(kdf)) throw new TpmFormatError(`unknown kdf 0x${hex4(kdf)}`);
        kdfHash = r.u16();
      }
      const x = r.sized(128);
      const y = r.sized(128);
      const ecc = { ...scheme, ...sym, curve, kdf, ...(kdfHash === undefined ? {} : { kdfHash }), x, y };
      return { ...base, ecc, raw: Buffer.alloc(0) };
    }
    case TPM_ALG.KEYEDHASH: {
      const scheme = r.u16();
      let schemeHash: number = TPM_ALG.NULL;
      let kdf: number = TPM_ALG.NULL;
      if (scheme === TPM_ALG.HMAC) schemeHash = r.u16();
      else if (scheme === TPM_ALG.XOR) {
        schemeHash = r.u16();
        kdf = r.u16();
      } else if (scheme !== TPM_ALG.NULL) throw new TpmFormatError(`unknown keyedhash scheme 0x${hex4(scheme)}`);
      const unique = r.sized(64);
      return { ...base, keyedHash: { scheme, schemeHash, kdf, unique }, raw: Buffer.alloc(0) };
    }
    case TPM_ALG.SYMCIPHER: {
      const sym = readSymDef(r);
      if (sym.symmetric === TPM_ALG.NULL) throw new TpmFormatError('symcipher object without an algorithm');
      const unique = r.sized(64);
      const symcipher = { algorithm: sym.symmetric, keyBits: sym.symKeyBits!, mode: sym.symMode!, unique };
      return { ...base, symcipher, raw: Buffer.alloc(0) };
    }
    default:
      throw new TpmFormatError(`unknown public area type 0x${hex4(type)}`);
  }
}

function readPublicWithRaw(r: Reader, b: Uint8Array): TpmPublic {
  const start = r.offset;
  const p = readPublic(r);
  p.raw = Buffer.from(b.subarray(start, r.offset));
  return p;
}

/** Parses a TPMT_PUBLIC occupying the whole buffer. */
export function parsePublic(b: Uint8Array): TpmPublic {
  const r = new Reader(b);
  const p = readPublicWithRaw(r, b);
  r.end();
  return p;
}

/** Parses a TPM2B_PUBLIC (u16 size, then TPMT_PUBLIC) occupying the whole buffer. */
export function parsePublic2B(b: Uint8Array): TpmPublic {
  const r = new Reader(b);
  const inner = r.sized();
  r.end();
  return parsePublic(inner);
}

/** Reads a TPM2B_PUBLIC from `r`. */
export function readPublic2B(r: Reader): TpmPublic {
  return parsePublic(r.sized());
}

/** Marshals a TPMT_PUBLIC (no size prefix). */
export function marshalPublic(p: PublicArea): Buffer {
  const w = new Writer().u16(p.type).u16(p.nameAlg).u32(p.objectAttributes).sized(p.authPolicy);
  if (p.type === TPM_ALG.RSA && p.rsa !== undefined) {
    writeSymDef(w, p.rsa);
    writeAsymScheme(w, p.rsa);
    w.u16(p.rsa.keyBits).u32(p.rsa.exponent).sized(p.rsa.modulus);
  } else if (p.type === TPM_ALG.ECC && p.ecc !== undefined) {
    writeSymDef(w, p.ecc);
    writeAsymScheme(w, p.ecc);
    w.u16(p.ecc.curve).u16(p.ecc.kdf);
    if (p.ecc.kdf !== TPM_ALG.NULL) w.u16(p.ecc.kdfHash ?? TPM_ALG.NULL);
    w.sized(p.ecc.x).sized(p.ecc.y);
  } else if (p.type === TPM_ALG.KEYEDHASH && p.keyedHash !== undefined) {
    const k = p.keyedHash;
    w.u16(k.scheme);
    if (k.scheme === TPM_ALG.HMAC) w.u16(k.schemeHash);
    else if (k.scheme === TPM_ALG.XOR) w.u16(k.schemeHash).u16(k.kdf);
    w.sized(k.unique);
  } else if (p.type === TPM_ALG.SYMCIPHER && p.symcipher !== undefined) {
    const s = p.symcipher;
    w.u16(s.algorithm).u16(s.keyBits).u16(s.mode).sized(s.unique);
  } else {
    throw new TpmFormatError(`public area of type 0x${hex4(p.type)} lacks its parameters`);
  }
  return w.finish();
}

/** Marshals a TPM2B_PUBLIC. */
export function marshalPublic2B(p: PublicArea): Buffer {
  return new Writer().sized(marshalPublic(p)).finish();
}

/** The TPM name of an object: nameAlg (u16) || H_nameAlg(TPMT_PUBLIC bytes). */
export function objectName(p: TpmPublic): Buffer {
  return nameOf(p.nameAlg, p.raw);
}

/** nameAlg (u16) || H_nameAlg(bytes): the name of an object or NV index from its marshaled public area. */
export function nameOf(nameAlg: number, publicBytes: Uint8Array): Buffer {
  const alg = Buffer.alloc(2);
  alg.writeUInt16BE(nameAlg);
  return Buffer.concat([alg, createHash(hashOf(nameAlg)).update(publicBytes).digest()]);
}

/**
 * The Qualified Name of a hierarchy (TPM 2.0 Part 1, 16 "Names": the QN of a hierarchy is its handle), the
 * parent QN of a primary object such as the EK.
 */
export function hierarchyQualifiedName(handle: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(handle);
  return b;
}

/**
 * The Qualified Name of an object under a parent with Qualified Name `parentQn` (TPM 2.0 Part 1, 16 "Names"):
 * QN(B) = nameAlg(B) || H_nameAlg(B)(QN(parent) || Name(B)). The TPM puts the signer's QN in TPMS_ATTEST.qualifiedSigner.
 */
export function qualifiedNameOf(parentQn: Uint8Array, p: TpmPublic): Buffer {
  return nameOf(p.nameAlg, Buffer.concat([parentQn, objectName(p)]));
}

const CURVES = new Map<number, { crv: string; size: number }>([
  [TPM_ECC.NIST_P256, { crv: 'P-256', size: 32 }],
  [TPM_ECC.NIST_P384, { crv: 'P-384', size: 48 }],
  [TPM_ECC.NIST_P521, { crv: 'P-521', size: 66 }],
]);

function leftPad(b: Buffer, size: number): Buffer {
  if (b.length > size) throw new TpmFormatError(`coordinate of ${b.length} bytes for a ${size}-byte curve`);
  return b.length === size ? b : Buffer.concat([Buffer.alloc(size - b.length), b]);
}

/** The node:crypto public key of an RSA or ECC public area; TpmFormatError if it is not a valid key. */
export function publicKeyOf(p: TpmPublic): KeyObject {
  if (p.type === TPM_ALG.RSA && p.rsa !== undefined) {
    const { modulus, exponent } = p.rsa;
    if (modulus.length === 0) throw new TpmFormatError('rsa public area without a modulus');
    const e = Buffer.alloc(4);
    e.writeUInt32BE(exponent === 0 ? 65537 : exponent);
    const eTrim = e.subarray(e.findIndex((x) => x !== 0));
    return keyFromJwk({ kty: 'RSA', n: modulus.toString('base64url'), e: eTrim.toString('base64url') });
  }
  if (p.type === TPM_ALG.ECC && p.ecc !== undefined) {
    const c = CURVES.get(p.ecc.curve);
    if (c === undefined) throw new TpmFormatError(`unsupported curve 0x${hex4(p.ecc.curve)}`);
    return keyFromJwk({
      kty: 'EC',
      crv: c.crv,
      x: leftPad(p.ecc.x, c.size).toString('base64url'),
      y: leftPad(p.ecc.y, c.size).toString('base64url'),
    });
  }
  throw new TpmFormatError(`public area of type 0x${hex4(p.type)} is not an asymmetric key`);
}

function keyFromJwk(jwk: Record<string, string>): KeyObject {
  try {
    return createPublicKey({ key: jwk, format: 'jwk' });
  } catch (err) {
    throw new TpmFormatError(`invalid public key (${(err as Error).message})`);
  }
}

/** DER SubjectPublicKeyInfo of an RSA or ECC public area (its SHA-256 is the project's EK hash). */
export function spkiOf(p: TpmPublic): Buffer {
  return publicKeyOf(p).export({ type: 'spki', format: 'der' });
}

// ---- TPMS_ATTEST (TPM 2.0 Part 2, 10.12) ----

const ATTEST_TYPES = new Set<number>([
  TPM_ST.ATTEST_NV,
  TPM_ST.ATTEST_COMMAND_AUDIT,
  TPM_ST.ATTEST_SESSION_AUDIT,
  TPM_ST.ATTEST_CERTIFY,
  TPM_ST.ATTEST_QUOTE,
  TPM_ST.ATTEST_TIME,
  TPM_ST.ATTEST_CREATION,
  TPM_ST.ATTEST_NV_DIGEST,
]);

/** Parses a TPMS_ATTEST (the contents of a TPM2B_ATTEST) occupying the whole buffer. */
export function parseAttest(b: Uint8Array): TpmsAttest {
  const r = new Reader(b);
  const magic = r.u32();
  const type = r.u16();
  if (!ATTEST_TYPES.has(type)) throw new TpmFormatError(`unknown attestation type 0x${hex4(type)}`);
  const qualifiedSigner = r.sized(66);
  const extraData = r.sized(64);
  const clock = r.u64();
  const resetCount = r.u32();
  const restartCount = r.u32();
  const safeByte = r.u8();
  if (safeByte > 1) throw new TpmFormatError(`clock safe flag ${safeByte}`);
  const firmwareVersion = r.u64();
  let attested: Attested;
  if (type === TPM_ST.ATTEST_QUOTE) {
    const pcrSelect = parsePcrSelections(r);
    attested = { type, pcrSelect, pcrDigest: r.sized(64) };
  } else if (type === TPM_ST.ATTEST_CERTIFY) {
    attested = { type, name: r.sized(66), qualifiedName: r.sized(66) };
  } else if (type === TPM_ST.ATTEST_CREATION) {
    attested = { type, objectName: r.sized(66), creationHash: r.sized(64) };
  } else {
    attested = { type, other: r.bytes(r.remaining) };
  }
  r.end();
  return {
    magic,
    type,
    qualifiedSigner,
    extraData,
    clockInfo: { clock, resetCount, restartCount, safe: safeByte === 1 },
    firmwareVersion,
    attested,
    raw: Buffer.from(b),
  };
}

/** Marshals a TPMS_ATTEST; tests use it to build attestations the TPM never signed. */
export function marshalAttest(a: Omit<TpmsAttest, 'raw'>): Buffer {
  const w = new Writer()
    .u32(a.magic)
    .u16(a.type)
    .sized(a.qualifiedSigner)
    .sized(a.extraData)
    .u64(a.clockInfo.clock)
    .u32(a.clockInfo.resetCount)
    .u32(a.clockInfo.restartCount)
    .u8(a.clockInfo.safe ? 1 : 0)
    .u64(a.firmwareVersion);
  const at = a.attested;
  if ('pcrSelect' in at) w.bytes(marshalPcrSelections(at.pcrSelect)).sized(at.pcrDigest);
  else if ('qualifiedName' in at) w.sized(at.name).sized(at.qualifiedName);
  else if ('creationHash' in at) w.sized(at.objectName).sized(at.creationHash);
  else w.bytes(at.other);
  return w.finish();
}

// ---- TPMT_SIGNATURE (TPM 2.0 Part 2, 11.3.4) ----

const ECC_SIG_ALGS = new Set<number>([TPM_ALG.ECDSA, TPM_ALG.ECDAA, TPM_ALG.SM2, TPM_ALG.ECSCHNORR]);

function readSignature(r: Reader): TpmSignature {
  const sigAlg = r.u16();
  if (sigAlg === TPM_ALG.NULL) return { sigAlg, hash: TPM_ALG.NULL };
  if (sigAlg === TPM_ALG.RSASSA || sigAlg === TPM_ALG.RSAPSS) return { sigAlg, hash: r.u16(), rsa: r.sized(512) };
  if (ECC_SIG_ALGS.has(sigAlg)) {
    const hash = r.u16();
    return { sigAlg, hash, ecc: { r: r.sized(128), s: r.sized(128) } };
  }
  if (sigAlg === TPM_ALG.HMAC) {
    const hash = r.u16();
    return { sigAlg, hash, hmac: r.bytes(digestSize(hash)) };
  }
  throw new TpmFormatError(`unknown signature algorithm 0x${hex4(sigAlg)}`);
}

/** Parses a TPMT_SIGNATURE occupying the whole buffer. */
export function parseSignature(b: Uint8Array): TpmSignature {
  const r = new Reader(b);
  const s = readSignature(r);
  r.end();
  return s;
}

/** Reads a TPMT_SIGNATURE from `r`. */
export function readSignatureFrom(r: Reader): TpmSignature {
  return readSignature(r);
}

/** Marshals a TPMT_SIGNATURE. */
export function marshalSignature(s: TpmSignature): Buffer {
  const w = new Writer().u16(s.sigAlg);
  if (s.sigAlg === TPM_ALG.NULL) return w.finish();
  w.u16(s.hash);
  if (s.rsa !== undefined) w.sized(s.rsa);
  else if (s.ecc !== undefined) w.sized(s.ecc.r).sized(s.ecc.s);
  else if (s.hmac !== undefined) w.bytes(s.hmac);
  else throw new TpmFormatError(`signature 0x${hex4(s.sigAlg)} without a value`);
  return w.finish();
}

// ---- NV and tickets ----

/** Parses a TPMS_NV_PUBLIC occupying the whole buffer (the contents of a TPM2B_NV_PUBLIC). */
export function parseNvPublic(b: Uint8Array): NvPublic {
  const r = new Reader(b);
  const nv = { nvIndex: r.u32(), nameAlg: r.u16(), attributes: r.u32(), authPolicy: r.sized(64), dataSize: r.u16() };
  r.end();
  return nv;
}

/** Marshals a TPMS_NV_PUBLIC (its hash under nameAlg is the index's name). */
export function marshalNvPublic(nv: NvPublic): Buffer {
  return new Writer().u32(nv.nvIndex).u16(nv.nameAlg).u32(nv.attributes).sized(nv.authPolicy).u16(nv.dataSize).finish();
}

/** Reads a ticket (TPMT_TK_CREATION, TPMT_TK_VERIFIED, ...): tag u16, hierarchy u32, TPM2B_DIGEST. */
export function readTicket(r: Reader): Ticket {
  return { tag: r.u16(), hierarchy: r.u32(), digest: r.sized(64) };
}

/** Marshals a ticket. */
export function marshalTicket(t: Ticket): Buffer {
  return new Writer().u16(t.tag).u32(t.hierarchy).sized(t.digest).finish();
}
