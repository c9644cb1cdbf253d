import { createPublicKey } from 'node:crypto';
import type { Logger } from '../log.ts';

/** The signature algorithms sigil offers; the names match the `Algorithm` enum of the contract. */
export type Algorithm = 'ECDSA_P256_SHA256' | 'ECDSA_P384_SHA384' | 'RSA_PKCS1_SHA256' | 'RSA_PSS_SHA256' | 'ED25519';

/** Every algorithm, in contract order. */
export const ALGORITHMS: readonly Algorithm[] = [
  'ECDSA_P256_SHA256',
  'ECDSA_P384_SHA384',
  'RSA_PKCS1_SHA256',
  'RSA_PSS_SHA256',
  'ED25519',
];

/** The kind of key pair an algorithm needs; a backend reports it for keys it did not create. */
export type KeyType = 'EC_P256' | 'EC_P384' | 'RSA' | 'ED25519';

/** Static facts about an algorithm: its key type, its hash and the digest length it signs. */
export interface AlgorithmInfo {
  keyType: KeyType;
  /** Node's name of the hash, or null for Ed25519 which signs the whole message. */
  hash: 'sha256' | 'sha384' | null;
  /** Bytes of digest the algorithm signs; 0 for Ed25519. */
  digestLength: number;
}

/** Algorithm facts, one row per algorithm. */
export const ALGORITHM_INFO: Readonly<Record<Algorithm, AlgorithmInfo>> = {
  ECDSA_P256_SHA256: { keyType: 'EC_P256', hash: 'sha256', digestLength: 32 },
  ECDSA_P384_SHA384: { keyType: 'EC_P384', hash: 'sha384', digestLength: 48 },
  RSA_PKCS1_SHA256: { keyType: 'RSA', hash: 'sha256', digestLength: 32 },
  RSA_PSS_SHA256: { keyType: 'RSA', hash: 'sha256', digestLength: 32 },
  ED25519: { keyType: 'ED25519', hash: null, digestLength: 0 },
};

/** What a backend needs to create a key. */
export interface KeySpec {
  /** A label for the backend object, derived from the key name and version (e.g. `release-ci-v1`). */
  label: string;
  algorithm: Algorithm;
}

/** A key the backend holds: its URI (RFC 7512 style) and public key. */
export interface BackendKey {
  uri: string;
  /** DER SubjectPublicKeyInfo. */
  spki: Buffer;
  keyType: KeyType;
}

/**
 * A handle that signs with one key version. `sign` takes the digest for ECDSA and RSA and the whole
 * message for Ed25519, and returns the signature in wire form: DER for ECDSA, raw for RSA and Ed25519.
 */
export interface KeySigner {
  readonly algorithm: Algorithm;
  /**
   * `signal`, honoured only by signers that say `dropsAbandoned`, is aborted once nobody waits for the
   * answer any more (the call's deadline passed): a request still queued then is dropped, not signed.
   */
  sign(input: Buffer, signal?: AbortSignal): Promise<Buffer>;
  /** True when `sign` queues requests (for a TPM session, say) and drops those whose signal was aborted. */
  readonly dropsAbandoned?: boolean;
}

/**
 * A signing backend: a tiny core that every backend implements. Extra powers (creating keys) are the
 * optional interfaces below, checked with the type guards.
 */
export interface Backend {
  /** The backend kind, e.g. `pkcs11`. */
  readonly kind: string;
  /** The algorithms this backend can sign with. */
  readonly algorithms: readonly Algorithm[];
  /** Looks a key up by URI and returns its canonical URI, public key and key type. KEY_NOT_FOUND if absent. */
  getKey(uri: string): Promise<BackendKey>;
  /**
   * Returns a signer for the key at `uri` used with `algorithm`; it may cache handles. `recorded` is what the
   * key version recorded when it was created or imported: a backend that checks its signatures (tpm, awskms,
   * gcpkms) checks them against that public key, else against the one it reads from the key itself.
   */
  signer(uri: string, algorithm: Algorithm, recorded?: RecordedKey): Promise<KeySigner>;
  /** Releases sessions and connections. */
  close(): Promise<void>;
}

/** What sigil recorded for a key version when it was created or imported. */
export interface RecordedKey {
  /** DER SubjectPublicKeyInfo, as served by GetPublicKey. */
  spki: Buffer;
}

/** A backend that can generate keys (non-extractable where the backend can enforce it). */
export interface KeyCreator {
  createKey(spec: KeySpec): Promise<BackendKey>;
}

/** True when the backend can create keys. */
export function canCreateKeys(b: Backend): b is Backend & KeyCreator {
  return typeof (b as Partial<KeyCreator>).createKey === 'function';
}

/**
 * A backend that can remove its keys and find them by label. Both are idempotent so a retry after a
 * crash is safe: destroying a key that is already gone succeeds, and a label that names nothing is null.
 */
export interface KeyDestroyer {
  /** Destroys the private key at `uri` and its public key object, and forgets any cached handle. */
  destroyKey(uri: string): Promise<void>;
  /** The URI of the key (or leftover public half) labelled exactly `label`, or null when there is none. */
  findKeyByLabel(label: string): Promise<string | null>;
}

/** True when the backend can destroy keys and find them by label. */
export function canDestroyKeys(b: Backend): b is Backend & KeyDestroyer {
  const d = b as Partial<KeyDestroyer>;
  return typeof d.destroyKey === 'function' && typeof d.findKeyByLabel === 'function';
}

/**
 * A backend whose keys have an enabled state of their own (cloud KMS): sigil mirrors its disable and enable
 * acts there, so a key sigil has retired cannot be used by going to the backend directly. Idempotent.
 */
export interface KeyEnabler {
  setKeyEnabled(uri: string, enabled: boolean): Promise<void>;
}

/** True when the backend keeps an enabled state of its own for keys. */
export function canEnableKeys(b: Backend): b is Backend & KeyEnabler {
  return typeof (b as Partial<KeyEnabler>).setKeyEnabled === 'function';
}

/** What every backend module gets when it is opened. */
export interface BackendContext {
  /** The configured name of this backend instance, e.g. `softhsm`. */
  name: string;
  log: Logger;
  /** True in production mode: a backend that is for tests and dev only must refuse to open. */
  production: boolean;
  /** Called for each signature the backend refused because it did not verify under the key's recorded public key. */
  onSignatureMismatch?: (() => void) | undefined;
}

/** The shape of a backend module loaded by `registry.ts`: `open` validates nothing itself, the config schema did. */
export interface BackendModule<C> {
  open(config: C, ctx: BackendContext): Promise<Backend>;
}

/** The key type of a public key in DER SubjectPublicKeyInfo form, or null for one sigil does not sign with. */
export function keyTypeOfSpki(spki: Buffer): KeyType | null {
  const k = createPublicKey({ key: spki, format: 'der', type: 'spki' });
  switch (k.asymmetricKeyType) {
    case 'rsa':
      return 'RSA';
    case 'ed25519':
      return 'ED25519';
    case 'ec':
      if (k.asymmetricKeyDetails?.namedCurve === 'prime256v1') return 'EC_P256';
      if (k.asymmetricKeyDetails?.namedCurve === 'secp384r1') return 'EC_P384';
      return null;
    default:
      return null;
  }
}

/**
 * Encodes a raw ECDSA signature r||s (as PKCS#11 returns it) as a DER ECDSA-Sig-Value
 * (RFC 3279 section 2.2.3), the one form sigil sends.
 */
export function ecdsaRawToDer(raw: Uint8Array): Buffer {
  if (raw.length === 0 || raw.length % 2 !== 0) throw new RangeError('raw ECDSA signature must be r||s of equal halves');
  const half = raw.length / 2;
  // One allocation per signature (this runs for every ECDSA signature): find each integer's minimal
  // form first, then write the SEQUENCE in place.
  const r0 = firstSignificant(raw, 0, half);
  const s0 = firstSignificant(raw, half, raw.length);
  const rPad = raw[r0]! & 0x80 ? 1 : 0;
  const sPad = raw[s0]! & 0x80 ? 1 : 0;
  const rLen = rPad + half - r0;
  const sLen = sPad + raw.length - s0;
  const body = 4 + rLen + sLen;
  // Up to P-521 the body stays below 256 bytes, so the length takes one or two bytes.
  const head = body < 0x80 ? 2 : 3;
  const out = Buffer.allocUnsafe(head + body);
  let at = 0;
  out[at++] = 0x30;
  if (head === 3) out[at++] = 0x81;
  out[at++] = body;
  at = writeDerInteger(out, at, raw, r0, half, rPad, rLen);
  writeDerInteger(out, at, raw, s0, raw.length, sPad, sLen);
  return out;
}

/** The index of the first byte of `raw[from, to)` that is not a leading zero (the last byte at least). */
function firstSignificant(raw: Uint8Array, from: number, to: number): number {
  let i = from;
  while (i < to - 1 && raw[i] === 0) i++;
  return i;
}

function writeDerInteger(out: Buffer, at: number, raw: Uint8Array, from: number, to: number, pad: number, len: number): number {
  out[at++] = 0x02;
  out[at++] = len;
  if (pad) out[at++] = 0;
  out.set(raw.subarray(from, to), at);
  return at + to - from;
}

/**
 * True when `sig` is exactly one DER ECDSA-Sig-Value (RFC 3279 section 2.2.3): a SEQUENCE of two
 * minimally encoded, positive, non-zero INTEGERs of at most `orderBytes` bytes each, nothing trailing.
 */
export function isDerEcdsaSignature(sig: Uint8Array, orderBytes: number): boolean {
  if (sig.length < 8 || sig[0] !== 0x30) return false;
  let off: number;
  let bodyLen: number;
  if (sig[1]! < 0x80) {
    bodyLen = sig[1]!;
    off = 2;
  } else if (sig[1] === 0x81 && sig[2]! >= 0x80) {
    bodyLen = sig[2]!;
    off = 3;
  } else {
    return false;
  }
  if (off + bodyLen !== sig.length) return false;
  for (let i = 0; i < 2; i++) {
    if (off + 2 > sig.length || sig[off] !== 0x02) return false;
    const len = sig[off + 1]!;
    if (len === 0 || len >= 0x80 || off + 2 + len > sig.length) return false;
    const v = sig.subarray(off + 2, off + 2 + len);
    if ((v[0]! & 0x80) !== 0) return false;
    if (len > 1 && v[0] === 0 && (v[1]! & 0x80) === 0) return false;
    const magnitude = v[0] === 0 ? len - 1 : len;
    if (magnitude > orderBytes || magnitude === 0) return false;
    off += 2 + len;
  }
  return off === sig.length;
}

