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
