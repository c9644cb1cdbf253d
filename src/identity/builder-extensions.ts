import { AsnConvert, OctetString } from '@peculiar/asn1-schema';
import { Certificate, Extension, SubjectAlternativeName, id_ce_subjectAltName } from '@peculiar/asn1-x509';
import { SigilError } from '../errors.ts';
import { TPM_ALG as ALG } from '../tpm/constants.ts';
import { DerReader, derOctets, derSequence, derUint, derUtf8 } from './der.ts';

/**
 * sigil's private OID arc: a UUID-derived OID (ITU-T X.667, 2.25.<uuid as integer>), so no
 * registration is needed and no one else uses it.
 */
export const SIGIL_ARC = '2.25.248766157912409681756892870336242483692';

/** The builder certificate extensions, all non-critical, under SIGIL_ARC. */
export const BUILDER_OIDS = {
  /** OCTET STRING: SHA-256 of the TPM's EK public key. */
  ekHash: `${SIGIL_ARC}.1`,
  /** OCTET STRING: the AK's TPM name (nameAlg || digest, TPM 2.0 Part 1, 16). */
  akName: `${SIGIL_ARC}.2`,
  /** SEQUENCE OF SEQUENCE { hashAlg INTEGER (TPM_ALG_ID), pcrs SEQUENCE OF INTEGER }, banks by hashAlg, pcrs ascending. */
  pcrSelection: `${SIGIL_ARC}.3`,
  /** OCTET STRING: the quoted PCR digest. */
  pcrDigest: `${SIGIL_ARC}.4`,
  /** UTF8String: the attestation policy that admitted the builder. */
  policy: `${SIGIL_ARC}.5`,
  /** SEQUENCE OF SEQUENCE { name UTF8String, value UTF8String }, sorted by name, names unique. */
  claims: `${SIGIL_ARC}.6`,
} as const;

// asn1js decodes sub-identifiers beyond 2^53 into its own `{hex}` spelling; learn how it spells ours.
const PARSED_OID = new Map(
  Object.values(BUILDER_OIDS).map((oid) => {
    const der = AsnConvert.serialize(new Extension({ extnID: oid, critical: false, extnValue: new OctetString(0) }));
    return [AsnConvert.parse(der, Extension).extnID, oid];
  }),
);

/** What the attestation proved about a builder, as carried in its certificate. */
export interface BuilderAttestation {
  /** SHA-256 of the EK public key, lower-case hex. */
  ekHash: string;
  /** The AK's TPM name, lower-case hex. */
  akName: string;
  /** Canonical `alg:pcr,pcr` banks joined by `+`, e.g. `sha256:0,1,2,3,4,5,6,7`. */
  pcrSelection: string;
  /** Lower-case hex. */
  pcrDigest: string;
  policy: string;
  /** CI claims the runner declared (repository, ref, run_id ...). */
  claims: Record<string, string>;
}

/** A builder as its certificate describes it: the attestation plus its SPIFFE id. */
export interface BuilderIdentity extends BuilderAttestation {
  /** The certificate's `spiffe://` URI SAN. */
  san: string;
}

// The PCR banks a selection may name, by their lower-case TPM_ALG_ID names.
const TPM_ALG: Readonly<Record<string, number>> = { sha1: ALG.SHA1, sha256: ALG.SHA256, sha384: ALG.SHA384, sha512: ALG.SHA512, sm3_256: ALG.SM3_256 };
const TPM_ALG_NAME = new Map(Object.entries(TPM_ALG).map(([k, v]) => [v, k]));
const MAX_PCR = 31;
const MAX_CLAIMS = 32;
const CLAIM_NAME = /^[a-z][a-z0-9_.-]{0,63}$/;
const CLAIM_VALUE = /^[\x20-\x7e]{1,256}$/;
const POLICY = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

function bad(msg: string): never {
  throw new SigilError('INVALID_ARGUMENT', msg);
}

function hex(name: string, v: unknown, minBytes: number, maxBytes: number): string {
  if (typeof v !== 'string' || !/^(?:[0-9a-fA-F]{2})+$/.test(v) || v.length < minBytes * 2 || v.length > maxBytes * 2) {
    bad(minBytes === maxBytes ? `${name} must be ${minBytes} bytes of hex` : `${name} must be ${minBytes} to ${maxBytes} bytes of hex`);
  }
  return v.toLowerCase();
}

interface Bank {
  alg: number;
  pcrs: number[];
}

function parsePcrSelection(text: unknown): Bank[] {
  if (typeof text !== 'string' || text.length === 0 || text.length > 512) bad('pcrSelection is required, e.g. sha256:0,1,2,3,4,5,6,7');
  const banks: Bank[] = [];
  for (const part of text.split('+')) {
    const m = /^([a-z0-9_]+):(\d{1,2}(?:,\d{1,2})*)$/.exec(part);
    const alg = m ? TPM_ALG[m[1]!] : undefined;
    if (!m || alg === undefined) bad(`invalid pcrSelection bank ${JSON.stringify(part.slice(0, 40))}: expected alg:pcr,pcr with alg one of ${Object.keys(TPM_ALG).join(', ')}`);
    if (banks.some((b) => b.alg === alg)) bad(`pcrSelection names ${m[1]} twice`);
    const pcrs = m[2]!.split(',').map(Number).sort((a, b) => a - b);
    if (pcrs.some((p, i) => p > MAX_PCR || (i > 0 && pcrs[i - 1] === p))) bad(`pcrSelection ${m[1]} has a pcr above ${MAX_PCR} or twice`);
    banks.push({ alg, pcrs });
  }
  return banks.sort((a, b) => a.alg - b.alg);
}

function formatPcrSelection(banks: readonly Bank[]): string {
  return banks.map((b) => `${TPM_ALG_NAME.get(b.alg) ?? `alg${b.alg}`}:${b.pcrs.join(',')}`).join('+');
}

/** Checks and canonicalizes CI claims: names `[a-z][a-z0-9_.-]`, printable ASCII values, bounded sizes. */
export function checkClaims(claims: unknown): Record<string, string> {
  if (claims === null || typeof claims !== 'object' || Array.isArray(claims)) bad('claims must be a map of names to strings');
  const entries = Object.entries(claims as Record<string, unknown>);
  if (entries.length > MAX_CLAIMS) bad(`at most ${MAX_CLAIMS} claims, got ${entries.length}`);
  const out: Record<string, string> = {};
  for (const [k, v] of entries.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
    if (!CLAIM_NAME.test(k)) bad(`invalid claim name ${JSON.stringify(k.slice(0, 70))}: use 1 to 64 of a-z 0-9 _ . -, starting with a letter`);
    if (typeof v !== 'string' || !CLAIM_VALUE.test(v)) bad(`invalid value of claim ${k}: 1 to 256 printable ascii characters`);
    out[k] = v;
  }
  return out;
}

/** Checks and canonicalizes what an attestation hands the identity CA; INVALID_ARGUMENT on any bad field. */
export function checkAttestation(a: BuilderAttestation): BuilderAttestation {
  if (typeof a.policy !== 'string' || !POLICY.test(a.policy)) bad('policy must be 1 to 64 of A-Z a-z 0-9 . _ -, starting with a letter or digit');
  return {
    ekHash: hex('ekHash', a.ekHash, 32, 32),
    akName: hex('akName', a.akName, 2, 66),
    pcrSelection: formatPcrSelection(parsePcrSelection(a.pcrSelection)),
    pcrDigest: hex('pcrDigest', a.pcrDigest, 20, 64),
    policy: a.policy,
    claims: checkClaims(a.claims),
  };
}

/** The DER values of the builder extensions for a checked attestation, by OID. */
export function encodeBuilderExtensions(a: BuilderAttestation): Array<{ oid: string; value: Buffer }> {
  const banks = parsePcrSelection(a.pcrSelection);
  return [
    { oid: BUILDER_OIDS.ekHash, value: derOctets(Buffer.from(a.ekHash, 'hex')) },
    { oid: BUILDER_OIDS.akName, value: derOctets(Buffer.from(a.akName, 'hex')) },
    { oid: BUILDER_OIDS.pcrSelection, value: derSequence(banks.map((b) => derSequence([derUint(b.alg), derSequence(b.pcrs.map(derUint))]))) },
    { oid: BUILDER_OIDS.pcrDigest, value: derOctets(Buffer.from(a.pcrDigest, 'hex')) },
    { oid: BUILDER_OIDS.policy, value: derUtf8(a.policy) },
    { oid: BUILDER_OIDS.claims, value: derSequence(Object.entries(a.claims).map(([k, v]) => derSequence([derUtf8(k), derUtf8(v)]))) },
  ];
}

function decodeBanks(value: Buffer): string {
  const r = new DerReader(value, 'pcr selection extension');
  const seq = r.sequence();
  r.end();
  const banks: Bank[] = [];
  while (!seq.done) {
    const b = seq.sequence();
    const alg = b.uint();
    const list = b.sequence();
    b.end();
    const pcrs: number[] = [];
    while (!list.done) pcrs.push(list.uint());
    banks.push({ alg, pcrs });
  }
  return banks.length === 0 ? bad('malformed pcr selection extension: no banks') : formatPcrSelection(banks);
}

function decodeClaims(value: Buffer): Record<string, string> {
  const r = new DerReader(value, 'claims extension');
  const seq = r.sequence();
  r.end();
  const out: Record<string, string> = {};
  while (!seq.done) {
    const c = seq.sequence();
    const k = c.utf8();
    const v = c.utf8();
    c.end();
    if (Object.hasOwn(out, k)) bad(`malformed claims extension: claim ${k} twice`);
    out[k] = v;
  }
  return checkClaims(out);
}

function single(value: Buffer, what: string, read: (r: DerReader) => Buffer | string): string {
  const r = new DerReader(value, what);
  const v = read(r);
  r.end();
  return typeof v === 'string' ? v : v.toString('hex');
}

/**
 * Reads the builder identity of a DER certificate: its `spiffe://` URI SAN and the builder extensions.
 * INVALID_ARGUMENT when one is missing or malformed. Says nothing about who signed the certificate.
 */
export function parseBuilderExtensions(certDer: Buffer | Uint8Array): BuilderIdentity {
  let cert: Certificate;
  try {
    cert = AsnConvert.parse(certDer, Certificate);
  } catch (err) {
    throw new SigilError('INVALID_ARGUMENT', 'not a der x.509 certificate', { cause: err });
  }
  const found = new Map<string, Buffer>();
  for (const ext of cert.tbsCertificate.extensions ?? []) {
    const oid = PARSED_OID.get(ext.extnID) ?? ext.extnID;
    if (found.has(oid)) bad(`certificate has extension ${oid} twice`);
    found.set(oid, Buffer.from(ext.extnValue.buffer, ext.extnValue.byteOffset, ext.extnValue.byteLength));
  }
  const need = (oid: string, name: string): Buffer => found.get(oid) ?? bad(`certificate lacks the builder ${name} extension`);
  const sanDer = need(id_ce_subjectAltName, 'subject alternative name');
  const uris = AsnConvert.parse(sanDer, SubjectAlternativeName)
    .map((g) => g.uniformResourceIdentifier)
    .filter((u): u is string => u !== undefined && u.startsWith('spiffe://'));
  if (uris.length !== 1) bad('certificate must carry exactly one spiffe:// uri san');
  return {
    san: uris[0]!,
    ekHash: single(need(BUILDER_OIDS.ekHash, 'ek hash'), 'ek hash extension', (r) => r.octets()),
    akName: single(need(BUILDER_OIDS.akName, 'ak name'), 'ak name extension', (r) => r.octets()),
    pcrSelection: decodeBanks(need(BUILDER_OIDS.pcrSelection, 'pcr selection')),
    pcrDigest: single(need(BUILDER_OIDS.pcrDigest, 'pcr digest'), 'pcr digest extension', (r) => r.octets()),
    policy: single(need(BUILDER_OIDS.policy, 'policy'), 'policy extension', (r) => r.utf8()),
    claims: decodeClaims(need(BUILDER_OIDS.claims, 'claims')),
  };
}
