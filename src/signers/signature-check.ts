import { constants, createHash, createPublicKey, publicDecrypt, timingSafeEqual, verify, type KeyObject } from 'node:crypto';
import { p256, p384 } from '@noble/curves/nist.js';
import { SigilError } from '../errors.ts';
import type { Logger } from '../log.ts';
import { ALGORITHM_INFO, type Algorithm, type KeySigner } from './signer.ts';

/** Checks one signature over `input` (the digest, or for Ed25519 the message) the way `KeySigner.sign` took it. */
export type SignatureVerifier = (input: Buffer, signature: Buffer) => boolean;

// DER DigestInfo prefixes (RFC 8017 section 9.2, note 1).
const DIGEST_INFO: Readonly<Record<'sha256' | 'sha384', Buffer>> = {
  sha256: Buffer.from('3031300d060960864801650304020105000420', 'hex'),
  sha384: Buffer.from('3041300d060960864801650304020205000430', 'hex'),
};

/**
 * A verifier for signatures by the key `spki` (DER SubjectPublicKeyInfo) with `algorithm`, over a digest a
 * backend signed as such. node:crypto hashes whatever it verifies, so over a digest: RSA by the public-key
 * operation and comparing the encoded message (RFC 8017 8.2.2, 9.1.2), ECDSA by SEC 1 4.1.4 on
 * @noble/curves points (below). Throws INVALID_ARGUMENT when the key does not fit the
 * algorithm.
 */
export function verifierFor(spki: Buffer, algorithm: Algorithm): SignatureVerifier {
  // Backends make a signer per request; an ECDSA verifier's table costs ~20 ms and ~0.5 MB once made, so the
  // verifiers of the keys last used are kept (least recently used dropped first). A key dropped and used again
  // starts without a table: ~1-2 ms a check until its table is made again, never the table's cost every time.
  const id = `${algorithm} ${spki.toString('base64')}`;
  const hit = VERIFIERS.get(id);
  if (hit !== undefined) {
    VERIFIERS.delete(id);
    VERIFIERS.set(id, hit);
    return hit;
  }
  const made = buildVerifier(spki, algorithm);
  VERIFIERS.set(id, made);
  if (VERIFIERS.size > MAX_VERIFIERS) VERIFIERS.delete(VERIFIERS.keys().next().value!);
  return made;
}

const MAX_VERIFIERS = 64;
// Checks of a key before its table of multiples is made.
const TABLE_AFTER = 8;
const VERIFIERS = new Map<string, SignatureVerifier>();

function buildVerifier(spki: Buffer, algorithm: Algorithm): SignatureVerifier {
  const info = ALGORITHM_INFO[algorithm];
  let key: KeyObject;
  try {
    key = createPublicKey({ key: spki, format: 'der', type: 'spki' });
  } catch (err) {
    throw new SigilError('INVALID_ARGUMENT', 'the recorded public key does not decode', { cause: err });
  }
  switch (algorithm) {
    case 'ED25519':
      if (key.asymmetricKeyType !== 'ed25519') break;
      return (input, signature) => verify(null, input, key, signature);
    case 'ECDSA_P256_SHA256':
    case 'ECDSA_P384_SHA384': {
      const curve = algorithm === 'ECDSA_P256_SHA256' ? p256 : p384;
      const jwk = key.export({ format: 'jwk' });
      if (key.asymmetricKeyType !== 'ec' || jwk.crv !== (algorithm === 'ECDSA_P256_SHA256' ? 'P-256' : 'P-384')) break;
      return ecdsaVerifier(curve, Buffer.concat([Buffer.of(4), Buffer.from(jwk.x!, 'base64url'), Buffer.from(jwk.y!, 'base64url')]));
    }
    case 'RSA_PKCS1_SHA256':
    case 'RSA_PSS_SHA256': {
      if (key.asymmetricKeyType !== 'rsa') break;
      const bits = key.asymmetricKeyDetails?.modulusLength ?? 0;
      const hash = info.hash!;
      return algorithm === 'RSA_PKCS1_SHA256' ? pkcs1Verifier(key, bits, hash) : pssVerifier(key, bits, hash);
    }
  }
  throw new SigilError('INVALID_ARGUMENT', `the recorded public key cannot verify ${algorithm}`);
}

type Curve = typeof p256 | typeof p384;

/**
 * ECDSA over a digest (SEC 1 4.1.4): with u1 = e/s and u2 = r/s (mod n), valid when x(u1·G + u2·Q) mod n = r,
 * on @noble/curves points (the design's library for ECDSA over a precomputed digest; node:crypto hashes what it
 * verifies) with a table of Q's multiples: ~0.5 ms of CPU for P-256, ~1.2 ms for P-384.
 */
function ecdsaVerifier(curve: Curve, point: Buffer): SignatureVerifier {
  curve.Point.fromBytes(point); // throws for a point off the curve
  return tableVerifier(curve, point);
}

/** The leftmost nBits of the digest as an integer (SEC 1 4.1.4 step 3; equal lengths for the pairs sigil offers). */
function bits2int(input: Buffer, nBits: number): bigint {
  const e = BigInt(`0x${input.length === 0 ? '0' : input.toString('hex')}`);
  return input.length * 8 > nBits ? e >> BigInt(input.length * 8 - nBits) : e;
}

/** r and s of a DER signature when both are in [1, n - 1], else null. */
function rs(curve: Curve, signature: Buffer): { r: bigint; s: bigint } | null {
  try {
    const { r, s } = curve.Signature.fromBytes(signature, 'der');
    const n = curve.Point.Fn.ORDER;
    return r > 0n && r < n && s > 0n && s < n ? { r, s } : null;
  } catch {
    return null;
  }
}

/**
 * ECDSA on noble points. After a key's first few checks, Q's windowed multiples are computed once (~20-30 ms, a
 * few hundred KB) so each later check costs about half of noble's verify; a key used rarely never pays for them.
 */
function tableVerifier(curve: Curve, point: Buffer): SignatureVerifier {
  const Fn = curve.Point.Fn;
  const q = curve.Point.fromBytes(point);
  let uses = 0;
  return (input, signature) => {
    if (++uses === TABLE_AFTER) q.precompute(6, false);
    const sig = rs(curve, signature);
    if (sig === null) return false;
    const w = Fn.inv(sig.s);
    const R = curve.Point.BASE.multiplyUnsafe(Fn.mul(Fn.create(bits2int(input, Fn.BITS)), w)).add(q.multiplyUnsafe(Fn.mul(sig.r, w)));
    return !R.is0() && Fn.create(R.toAffine().x) === sig.r;
  };
}

/** The public-key operation on a signature of the modulus' size: the encoded message, or null. */
function rsaOpen(key: KeyObject, bits: number, signature: Buffer): Buffer | null {
  const k = Math.ceil(bits / 8);
  if (signature.length !== k) return null;
  try {
    return publicDecrypt({ key, padding: constants.RSA_NO_PADDING }, signature);
  } catch {
    // A signature not below the modulus.
    return null;
  }
}

/** RSASSA-PKCS1-v1_5 (RFC 8017 8.2.2): the opened signature must equal EMSA-PKCS1-v1_5(digest). */
function pkcs1Verifier(key: KeyObject, bits: number, hash: 'sha256' | 'sha384'): SignatureVerifier {
  const k = Math.ceil(bits / 8);
  const prefix = DIGEST_INFO[hash];
  return (input, signature) => {
    const em = rsaOpen(key, bits, signature);
    const t = prefix.length + input.length;
    if (em === null || em.length !== k || k < t + 11) return false;
    const want = Buffer.alloc(k, 0xff);
    want[0] = 0;
    want[1] = 1;
    want[k - t - 1] = 0;
    prefix.copy(want, k - t);
    input.copy(want, k - input.length);
    return timingSafeEqual(em, want);
  };
}

/** MGF1 (RFC 8017 B.2.1) with `hash`. */
function mgf1(hash: string, seed: Buffer, length: number): Buffer {
  const out: Buffer[] = [];
  const c = Buffer.alloc(4);
  for (let i = 0, have = 0; have < length; i++) {
    c.writeUInt32BE(i);
    const block = createHash(hash).update(seed).update(c).digest();
    out.push(block);
    have += block.length;
  }
  return Buffer.concat(out).subarray(0, length);
}

/**
 * RSASSA-PSS (RFC 8017 9.1.2) with MGF1 of the same hash and a salt as long as the digest, the one
 * parameter set the TPM and both KMS sign with and the one verifiers of RSA_PSS_SHA256 are told to expect.
 */
function pssVerifier(key: KeyObject, bits: number, hash: 'sha256' | 'sha384'): SignatureVerifier {
  const k = Math.ceil(bits / 8);
  const emBits = bits - 1;
  const emLen = Math.ceil(emBits / 8);
  const topBits = 8 * emLen - emBits;
  return (input, signature) => {
    const hLen = input.length;
    const sLen = hLen;
    const opened = rsaOpen(key, bits, signature);
    if (opened === null || opened.length !== k || emLen < hLen + sLen + 2) return false;
    // emLen is k - 1 when the modulus' bit length is 1 mod 8: the leading byte is then zero.
    if (emLen < k && opened[0] !== 0) return false;
    const em = opened.subarray(k - emLen);
    if (em[emLen - 1] !== 0xbc) return false;
    const maskedDb = em.subarray(0, emLen - hLen - 1);
    const h = em.subarray(emLen - hLen - 1, emLen - 1);
    if (topBits > 0 && (maskedDb[0]! >> (8 - topBits)) !== 0) return false;
    const db = mgf1(hash, h, maskedDb.length);
    for (let i = 0; i < db.length; i++) db[i]! ^= maskedDb[i]!;
    if (topBits > 0) db[0]! &= 0xff >> topBits;
    const ps = emLen - hLen - sLen - 2;
    for (let i = 0; i < ps; i++) if (db[i] !== 0) return false;
    if (db[ps] !== 1) return false;
    const salt = db.subarray(ps + 1);
    const h2 = createHash(hash).update(Buffer.alloc(8)).update(input).update(salt).digest();
    return timingSafeEqual(h, h2);
  };
}

/** Who checks: for the log line and the metric when a signature fails its check. */
export interface SignatureCheckContext {
  /** How the error names the key, e.g. `tpm:handle=0x81000010`. */
  uri: string;
  /** The backend kind, e.g. `tpm`, for the message. */
  kind: string;
  log: Logger;
  /** Called once per refused signature (sigild counts them in `sigil_backend_signature_mismatches_total`). */
  onMismatch?: (() => void) | undefined;
}

/**
 * Wraps a backend's signer so that no signature leaves the backend unless it verifies under `spki`, the
 * public key the key version recorded when it was created or imported: a TPM fault, a KMS answering with
 * another key, or the wrong object behind a handle is refused with BACKEND_ERROR, logged and counted.
 */
export function checkedSigner(signer: KeySigner, spki: Buffer, ctx: SignatureCheckContext): KeySigner {
  const ok = verifierFor(spki, signer.algorithm);
  const sign = async (input: Buffer, signal?: AbortSignal): Promise<Buffer> => {
    const signature = await signer.sign(input, signal);
    if (ok(input, signature)) return signature;
    ctx.onMismatch?.();
    ctx.log.error({ uri: ctx.uri, algorithm: signer.algorithm }, 'signature from the backend does not verify under the recorded public key; refused');
    throw new SigilError('BACKEND_ERROR', `${ctx.kind} signature with ${ctx.uri} does not verify under the key version's recorded public key; refused`);
  };
  return signer.dropsAbandoned === true ? { algorithm: signer.algorithm, dropsAbandoned: true, sign } : { algorithm: signer.algorithm, sign };
}
