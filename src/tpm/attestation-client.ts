import { SigilError } from '../errors.ts';
import { EK_CERT_NV, TPM_RH, TPMA_OBJECT } from './constants.ts';
import { baseRc, TPM_RC, TpmError } from './rc.ts';
import { parseAttest, parsePublic, pcrDigest, type PcrSelection, type PublicArea, type TpmPublic } from './structures.ts';
import {
  AK_TEMPLATE_ECC,
  AK_TEMPLATE_RSA,
  EK_TEMPLATE_H3,
  EK_TEMPLATE_L1,
  EK_TEMPLATE_L2,
  templateBytes,
} from './templates.ts';
import type { Tpm } from './tpm.ts';

// The TPM side of enrollment and renewal, as sigil-agent drives it: EK, AK, credential activation and
// quotes. Keeps at most the EK and the AK loaded (swtpm has three transient slots).

/** A loaded endorsement key, with its certificate when the TPM holds one in NV. */
export interface Ek {
  handle: number;
  public: TpmPublic;
  /** DER certificate from NV, trimmed of padding after the DER. */
  cert?: Buffer;
  /** NV index the certificate came from (or would have). */
  certIndex: number;
}

/** A loaded attestation key and what it takes to load it again later. */
export interface Ak {
  handle: number;
  public: TpmPublic;
  name: Buffer;
  /** TPM2B_PRIVATE contents, wrapped by the EK; useless outside this TPM. */
  private: Buffer;
  /** TPMT_PUBLIC bytes (the project's wire form of an AK public). */
  publicBytes: Buffer;
}

/** A quote with the PCR values read right after it. */
export interface QuoteWithPcrs {
  attest: Buffer;
  signature: Buffer;
  /** PCR index -> digest in the quoted bank. */
  pcrValues: Map<number, Buffer>;
}

/** Length of the DER element at the start of `b` (tag, length, content), or undefined if it does not fit. */
export function derLength(b: Buffer): number | undefined {
  if (b.length < 2) return undefined;
  const first = b[1]!;
  let len: number;
  let hdr: number;
  if (first < 0x80) {
    len = first;
    hdr = 2;
  } else {
    const n = first & 0x7f;
    if (n === 0 || n > 4 || b.length < 2 + n) return undefined;
    len = 0;
    for (let i = 0; i < n; i++) len = len * 256 + b[2 + i]!;
    hdr = 2 + n;
  }
  return hdr + len <= b.length ? hdr + len : undefined;
}

// NV_ReadPublic of an undefined index answers TPM_RC_HANDLE: the TPM simply has no certificate there.
function isMissingIndex(err: unknown): boolean {
  return err instanceof TpmError && baseRc(err.rc) === TPM_RC.HANDLE;
}

async function readCert(tpm: Tpm, index: number): Promise<Buffer | undefined> {
  let raw: Buffer;
  try {
    raw = await tpm.nvRead(index);
  } catch (err) {
    if (isMissingIndex(err)) return undefined;
    throw err;
  }
  const n = derLength(raw);
  return n === undefined ? raw : raw.subarray(0, n);
}

async function nvExists(tpm: Tpm, index: number): Promise<boolean> {
  try {
    await tpm.nvReadPublic(index);
    return true;
  } catch (err) {
    if (isMissingIndex(err)) return false;
    throw err;
  }
}

/**
 * Creates the EK from its TCG template and reads its certificate from NV. `rsa`: template L-1 and
 * NV 0x01c00002. `ecc`: L-2 (P-256, NV 0x01c0000a) when that certificate exists, else H-3 (P-384,
 * NV 0x01c00016) when that one does (swtpm), else L-2 without a certificate.
 */
export async function readEk(tpm: Tpm, kind: 'rsa' | 'ecc'): Promise<Ek> {
  let template: PublicArea;
  let certIndex: number;
  if (kind === 'rsa') {
    template = EK_TEMPLATE_L1;
    certIndex = EK_CERT_NV.RSA2048;
  } else if (await nvExists(tpm, EK_CERT_NV.ECC_P256)) {
    template = EK_TEMPLATE_L2;
    certIndex = EK_CERT_NV.ECC_P256;
  } else if (await nvExists(tpm, EK_CERT_NV.ECC_P384)) {
    template = EK_TEMPLATE_H3;
    certIndex = EK_CERT_NV.ECC_P384;
  } else {
    template = EK_TEMPLATE_L2;
    certIndex = EK_CERT_NV.ECC_P256;
  }
  const cert = await readCert(tpm, certIndex);
  const ek = await tpm.createPrimary(TPM_RH.ENDORSEMENT, templateBytes(template));
  return cert === undefined ? { handle: ek.handle, public: ek.public, certIndex } : { handle: ek.handle, public: ek.public, cert, certIndex };
}

// The AK is a child of the EK, so it lives in the endorsement hierarchy: quotes by keys outside the
// endorsement and platform hierarchies carry obfuscated resetCount/restartCount/firmwareVersion
// (TPM 2.0 Part 1, 36.7 "Clock and time"; Part 2, 10.11.1 TPMS_CLOCK_INFO), which would defeat the
// verifier's monotonicity check. tpm2_createak makes the same choice.
function parentAuthOf(ek: Pick<Ek, 'public'>): 'password' | 'endorsement-policy' {
  return ek.public.objectAttributes & TPMA_OBJECT.userWithAuth ? 'password' : 'endorsement-policy';
}

/** Creates an AK under the (loaded) EK and loads it; EK and AK stay loaded. */
export async function createAk(tpm: Tpm, alg: 'ecc' | 'rsa', ek: Pick<Ek, 'handle' | 'public'>): Promise<Ak> {
  const parentAuth = parentAuthOf(ek);
  const created = await tpm.create(ek.handle, templateBytes(alg === 'ecc' ? AK_TEMPLATE_ECC : AK_TEMPLATE_RSA), { parentAuth });
  const { handle, name } = await tpm.load(ek.handle, created.private, created.public, { parentAuth });
  return { handle, public: created.public, name, private: created.private, publicBytes: created.public.raw };
}

/** Loads a saved AK again (for renewal) under the loaded EK it was created under. */
export async function loadAk(tpm: Tpm, saved: { private: Buffer; publicBytes: Buffer }, ek: Pick<Ek, 'handle' | 'public'>): Promise<Ak> {
  const pub = parsePublic(saved.publicBytes);
  const { handle, name } = await tpm.load(ek.handle, saved.private, pub, { parentAuth: parentAuthOf(ek) });
  return { handle, public: pub, name, private: saved.private, publicBytes: pub.raw };
}

/**
 * TPM2_ActivateCredential of a credential the verifier made for this EK and AK name. The EK's user
 * role takes a PolicySecret(TPM_RH_ENDORSEMENT) session, or its password when the template sets
 * userWithAuth (the high-range templates).
 */
export async function activate(
  tpm: Tpm,
  ek: Pick<Ek, 'handle' | 'public'>,
  ak: Pick<Ak, 'handle'>,
  credentialBlob: Buffer,
  encryptedSecret: Buffer,
): Promise<Buffer> {
  const ekAuth = ek.public.objectAttributes & TPMA_OBJECT.userWithAuth ? 'password' : 'policy';
  return tpm.activateCredential(ak.handle, ek.handle, credentialBlob, encryptedSecret, { ekAuth });
}

function akHash(ak: Pick<Ak, 'public'>): number {
  const h = ak.public.rsa?.schemeHash ?? ak.public.ecc?.schemeHash;
  if (h === undefined) throw new SigilError('INVALID_ARGUMENT', 'ak is not an rsa or ecc signing key');
  return h;
}

/**
 * Quotes the selected PCRs (one bank) with the AK and reads their values right after. The PCR update
 * counter is read before and after: if it moved, or the values do not hash to the quoted digest,
 * the pair is taken once more; a second mismatch is an error.
 */
export async function quoteWithPcrs(tpm: Tpm, ak: Pick<Ak, 'handle' | 'public'>, qualifyingData: Buffer, selection: PcrSelection[]): Promise<QuoteWithPcrs> {
  if (selection.length !== 1) throw new SigilError('INVALID_ARGUMENT', 'a quote covers exactly one pcr bank');
  const sel = { hash: selection[0]!.hash, pcrs: [...new Set(selection[0]!.pcrs)].sort((a, b) => a - b) };
  const hash = akHash(ak);
  for (let attempt = 0; attempt < 2; attempt++) {
    const before = await tpm.pcrReadAll([sel]);
    const q = await tpm.quote(ak.handle, qualifyingData, [sel]);
    const after = await tpm.pcrReadAll([sel]);
    const values = after.banks.get(sel.hash)!;
    const attested = parseAttest(q.attest).attested;
    const quoted = 'pcrDigest' in attested ? attested.pcrDigest : undefined;
    const digest = pcrDigest(hash, sel.pcrs.map((p) => values.get(p)!));
    if (before.updateCounter === after.updateCounter && quoted !== undefined && quoted.equals(digest)) {
      return { attest: q.attest, signature: q.signature, pcrValues: values };
    }
  }
  throw new SigilError('BACKEND_ERROR', 'pcrs kept changing while quoting');
}
