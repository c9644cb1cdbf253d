import { constants, timingSafeEqual, verify } from 'node:crypto';
import { SigilError } from '../errors.ts';
import { TPM_ALG, TPM_ECC, TPM_GENERATED_VALUE, TPM_ST } from '../tpm/constants.ts';
import {
  digestSize,
  hashOf,
  parseAttest,
  parseSignature,
  pcrDigest,
  publicKeyOf,
  type ClockInfo,
  type PcrSelection,
  type TpmPublic,
  type TpmsAttest,
  type TpmSignature,
} from '../tpm/structures.ts';

/** What `verifyQuote` checks a quote against. */
export interface QuoteCheck {
  /** The AK's public area (already trusted). */
  akPublic: TpmPublic;
  /** TPMS_ATTEST bytes. */
  attest: Uint8Array;
  /** TPMT_SIGNATURE bytes. */
  signature: Uint8Array;
  /** What the quote's extraData must be (SHA-256(nonce || identity SPKI)). */
  expectedExtraData: Buffer;
  /** The exact selection the quote must cover. */
  selection: PcrSelection;
  /** Presented PCR values of the selection's bank, by index. */
  pcrValues: Map<number, Buffer>;
  /** The Qualified Name the quote's qualifiedSigner must equal, when the AK's parent is known. */
  qualifiedSigner?: Buffer;
}

/** A verified quote. */
export interface VerifiedQuote {
  clockInfo: ClockInfo;
  firmwareVersion: bigint;
  /** The quoted PCR digest. */
  pcrDigest: Buffer;
  attest: TpmsAttest;
}

const BANK_NAMES: Record<number, string> = {
  [TPM_ALG.SHA1]: 'sha1',
  [TPM_ALG.SHA256]: 'sha256',
  [TPM_ALG.SHA384]: 'sha384',
  [TPM_ALG.SHA512]: 'sha512',
};

/** `sha256:[0,1,2]`: a PCR selection as messages show it. */
export function formatSelection(s: PcrSelection[]): string {
  if (s.length === 0) return 'none';
  return s.map((b) => `${BANK_NAMES[b.hash] ?? `0x${b.hash.toString(16)}`}:[${b.pcrs.join(',')}]`).join(' ');
}

function deny(message: string): never {
  throw new SigilError('PERMISSION_DENIED', message);
}

const CURVE_BYTES: Record<number, number> = { [TPM_ECC.NIST_P256]: 32, [TPM_ECC.NIST_P384]: 48 };

function leftPad(b: Buffer, size: number): Buffer | undefined {
  if (b.length > size) return undefined;
  return Buffer.concat([Buffer.alloc(size - b.length), b]);
}

// The signature scheme is pinned to the AK's own: a restricted key signs only with its scheme, and
// accepting another would let a weaker hash or padding through.
function signatureVerifies(ak: TpmPublic, sig: TpmSignature, message: Buffer): boolean {
  const key = publicKeyOf(ak);
  if (ak.rsa !== undefined) {
    if (sig.sigAlg !== ak.rsa.scheme || sig.hash !== ak.rsa.schemeHash || sig.rsa === undefined) {
      deny(`quote signature scheme 0x${sig.sigAlg.toString(16)}/0x${sig.hash.toString(16)} is not the ak's 0x${ak.rsa.scheme.toString(16)}/0x${ak.rsa.schemeHash.toString(16)}`);
    }
    const hash = hashOf(sig.hash);
    if (sig.sigAlg === TPM_ALG.RSASSA) return verify(hash, message, { key, padding: constants.RSA_PKCS1_PADDING }, sig.rsa);
    if (sig.sigAlg === TPM_ALG.RSAPSS) {
      // TPM 2.0 Part 1, B.7: the TPM uses a salt as long as the digest.
      return verify(hash, message, { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: digestSize(sig.hash) }, sig.rsa);
    }
  } else if (ak.ecc !== undefined) {
    if (sig.sigAlg !== ak.ecc.scheme || sig.hash !== ak.ecc.schemeHash || sig.ecc === undefined) {
      deny(`quote signature scheme 0x${sig.sigAlg.toString(16)}/0x${sig.hash.toString(16)} is not the ak's 0x${ak.ecc.scheme.toString(16)}/0x${ak.ecc.schemeHash.toString(16)}`);
    }
    const size = CURVE_BYTES[ak.ecc.curve];
    if (sig.sigAlg === TPM_ALG.ECDSA && size !== undefined) {
      const r = leftPad(sig.ecc.r, size);
      const s = leftPad(sig.ecc.s, size);
      if (r === undefined || s === undefined) return false;
      return verify(hashOf(sig.hash), message, { key, dsaEncoding: 'ieee-p1363' }, Buffer.concat([r, s]));
    }
  }
  return deny('the ak has no signature scheme the verifier supports');
}

function sameSelection(a: PcrSelection[], want: PcrSelection): boolean {
  return a.length === 1 && a[0]!.hash === want.hash && a[0]!.pcrs.length === want.pcrs.length && a[0]!.pcrs.every((p, i) => p === want.pcrs[i]);
}

/**
 * Verifies a TPM2_Quote against a trusted AK: signature (scheme pinned to the AK's), magic
 * TPM_GENERATED, type ATTEST_QUOTE, qualifiedSigner (when the expected one is given), extraData, the
 * selection equal to the policy's, and the PCR digest recomputed from the presented values. Throws PERMISSION_DENIED naming the failed check,
 * INVALID_ARGUMENT for malformed bytes.
 */
export function verifyQuote(q: QuoteCheck): VerifiedQuote {
  const attest = parseAttest(q.attest);
  const sig = parseSignature(q.signature);
  let ok: boolean;
  try {
    ok = signatureVerifies(q.akPublic, sig, attest.raw);
  } catch (err) {
    if (err instanceof SigilError) throw err;
    ok = false; // node:crypto throws on some malformed signature encodings
  }
  if (!ok) deny('quote signature does not verify');
  if (attest.magic !== TPM_GENERATED_VALUE) deny('quote magic is not TPM_GENERATED');
  if (attest.type !== TPM_ST.ATTEST_QUOTE || !('pcrSelect' in attest.attested)) {
    deny(`attestation of type 0x${attest.type.toString(16)} is not a quote`);
  }
  if (q.qualifiedSigner !== undefined && !attest.qualifiedSigner.equals(q.qualifiedSigner)) {
    deny('quote qualifiedSigner is not the qualified name of the ak as a child of the enrolled ek');
  }
  const extra = attest.extraData;
  if (extra.length !== q.expectedExtraData.length || !timingSafeEqual(extra, q.expectedExtraData)) {
    deny('quote extraData does not bind the nonce and identity key');
  }
  const { pcrSelect, pcrDigest: quoted } = attest.attested;
  // NOTES: quoting an inactive bank yields an empty selection that a naive check would pass.
  if (!sameSelection(pcrSelect, q.selection)) {
    deny(`quote covers pcr selection ${formatSelection(pcrSelect)} but policy wants ${formatSelection([q.selection])}`);
  }
  const size = digestSize(q.selection.hash);
  for (const pcr of q.pcrValues.keys()) {
    if (!q.selection.pcrs.includes(pcr)) throw new SigilError('INVALID_ARGUMENT', `pcr value given for pcr ${pcr}, outside the quoted selection`);
  }
  const values = q.selection.pcrs.map((pcr) => {
    const v = q.pcrValues.get(pcr);
    if (v === undefined) throw new SigilError('INVALID_ARGUMENT', `no value given for quoted pcr ${pcr}`);
    if (v.length !== size) throw new SigilError('INVALID_ARGUMENT', `value of pcr ${pcr} is ${v.length} bytes, expected ${size}`);
    return v;
  });
  // The TPM hashes the PCR values with the signing scheme's hash (TPM 2.0 Part 3, 18.4 TPM2_Quote).
  const recomputed = pcrDigest(sig.hash, values);
  if (!recomputed.equals(quoted)) deny('pcr values do not match the quoted pcr digest');
  return { clockInfo: attest.clockInfo, firmwareVersion: attest.firmwareVersion, pcrDigest: quoted, attest };
}
