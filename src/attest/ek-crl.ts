// @peculiar/x509 uses tsyringe, which needs the reflect polyfill loaded first.
import 'reflect-metadata';
import { constants, createHash, verify, type KeyObject, type X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import * as x509 from '@peculiar/x509';
import { SigilError } from '../errors.ts';

/** What a policy does with an EK CA's CRL whose nextUpdate has passed: refuse the EKs it speaks for, or only warn. */
export type EkCrlExpired = 'refuse' | 'warn';

/** A CRL file read, parsed and matched to the CA of the policy that signed it. */
export interface EkCrl {
  file: string;
  /** The CA certificate of the policy whose key verifies the CRL's signature. */
  issuer: X509Certificate;
  thisUpdate: Date;
  nextUpdate: Date | undefined;
  /** Revoked serials (lower-case hex, no leading zeros) and their reason names. */
  revoked: ReadonlyMap<string, string>;
}

/** The outcome of consulting the CRLs for an EK certificate's chain. */
export interface EkCrlVerdict {
  /** Why the chain is revoked (`ek certificate revoked by its ca (serial ..., reason ...)`), or null. */
  revoked: string | null;
  /** Out-of-date CRLs that were consulted anyway (policy `ekCrlExpired: warn`), for the log. */
  warnings: string[];
}

/** What `trustEk` consults for a chain that verified: throws when the CRLs cannot be used. */
export interface EkRevocationCheck {
  check(chain: readonly X509Certificate[], now: Date): EkCrlVerdict;
}

// RFC 5280 5.3.1 CRLReason; 7 is not used.
const REASONS = ['unspecified', 'keyCompromise', 'cACompromise', 'affiliationChanged', 'superseded', 'cessationOfOperation', 'certificateHold', 'unused', 'removeFromCRL', 'privilegeWithdrawn', 'aACompromise'];
// SHA-1 stays accepted for older vendor CRLs: a forged CRL can only take trust away, never give it.
const HASHES: Record<string, string> = { 'SHA-1': 'sha1', 'SHA-256': 'sha256', 'SHA-384': 'sha384', 'SHA-512': 'sha512' };

const normSerial = (hex: string): string => hex.toLowerCase().replace(/^0+(?=.)/, '');
const subjectOf = (c: X509Certificate): string => c.subject.replace(/\n/g, ', ') || `serial ${c.serialNumber}`;

// RFC 5280 7.1 compares names after normalising case, spaces and string types: the DER, or else its text, lower-cased.
const nameText = (n: x509.Name): string => n.toString().toLowerCase().replace(/\s+/g, ' ');

function sameName(c: X509Certificate, der: Buffer, text: string): boolean {
  const subject = new x509.X509Certificate(c.raw).subjectName;
  return Buffer.from(subject.toArrayBuffer()).equals(der) || nameText(subject) === text;
}

// The parsed ASN.1 the library keeps (protected in its types): the signed bytes exactly as the file holds them,
// and both algorithm identifiers. Should a library update drop them, every CRL fails to verify: refused, not skipped.
interface CrlAsn {
  tbsCertListRaw?: ArrayBuffer;
  signatureAlgorithm: { isEqual(o: unknown): boolean };
  tbsCertList: { signature: unknown };
}
const asnOf = (crl: x509.X509Crl): CrlAsn => (crl as unknown as { asn: CrlAsn }).asn;

function signatureVerifies(crl: x509.X509Crl, key: KeyObject): boolean {
  const alg = crl.signatureAlgorithm as { name: string; hash?: { name: string }; saltLength?: number };
  const raw = asnOf(crl).tbsCertListRaw;
  if (raw === undefined) return false;
  const tbs = Buffer.from(raw);
  const sig = Buffer.from(crl.signature);
  const hash = alg.hash !== undefined ? HASHES[alg.hash.name] : undefined;
  try {
    switch (alg.name) {
      case 'ECDSA':
        return hash !== undefined && key.asymmetricKeyType === 'ec' && verify(hash, tbs, { key, dsaEncoding: 'der' }, sig);
      case 'RSASSA-PKCS1-v1_5':
        return hash !== undefined && key.asymmetricKeyType === 'rsa' && verify(hash, tbs, key, sig);
      case 'RSA-PSS':
        return hash !== undefined && verify(hash, tbs, { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: alg.saltLength ?? constants.RSA_PSS_SALTLEN_AUTO }, sig);
      case 'Ed25519':
      case 'EdDSA':
        return (key.asymmetricKeyType === 'ed25519' || key.asymmetricKeyType === 'ed448') && verify(null, tbs, key, sig);
      default:
        return false;
    }
  } catch {
    return false;
  }
}

/**
 * Parses a CRL file of untrusted content: one DER CRL, or PEM holding one or more `X509 CRL` blocks (a bundle,
 * e.g. the root's CRL and an intermediate's), and finds for each the CA of `cas` that signed it: its issuer name
 * must equal the CA's subject and the signature must verify with that CA's key. Returns every CRL, or one problem
 * (lower-case, naming the file) when any block cannot be used: a file is used whole or not at all.
 */
export function parseEkCrl(file: string, data: Buffer, cas: readonly X509Certificate[]): EkCrl[] | string {
  const text = data.toString('latin1');
  if (!text.includes('-----BEGIN')) {
    const one = parseOneCrl(file, data, cas);
    return typeof one === 'string' ? one : [one];
  }
  const blocks = [...text.matchAll(/-----BEGIN ([A-Z0-9 ]+)-----([\s\S]*?)-----END \1-----/g)];
  if (!blocks.some((b) => b[1] === 'X509 CRL')) return `${file} holds no pem x509 crl`;
  // A block cut short (no end line) matches nothing above: without this, the CRLs before it would be used alone.
  if ((text.match(/-----BEGIN /g)?.length ?? 0) !== blocks.length) return `${file} holds a pem block without its end line (cut short?)`;
  const other = blocks.find((b) => b[1] !== 'X509 CRL');
  if (other !== undefined) return `${file} holds a pem ${other[1]!.toLowerCase()} besides its crls: give crls only`;
  const out: EkCrl[] = [];
  for (const [i, b] of blocks.entries()) {
    const one = parseOneCrl(blocks.length > 1 ? `${file} (crl ${i + 1} of ${blocks.length})` : file, Buffer.from(b[2]!.replace(/\s+/g, ''), 'base64'), cas);
    if (typeof one === 'string') return one;
    out.push({ ...one, file });
  }
  return out;
}

/** One DER CRL of `file`, checked as `parseEkCrl` says. */
function parseOneCrl(file: string, der: Buffer, cas: readonly X509Certificate[]): EkCrl | string {
  let crl: x509.X509Crl;
  let issuerDer: Buffer;
  let issuerText: string;
  let revoked: Map<string, string>;
  let thisUpdate: Date;
  let nextUpdate: Date | undefined;
  try {
    crl = new x509.X509Crl(der);
    issuerDer = Buffer.from(crl.issuerName.toArrayBuffer());
    issuerText = nameText(crl.issuerName);
    thisUpdate = crl.thisUpdate;
    nextUpdate = crl.nextUpdate;
    if (!asnOf(crl).signatureAlgorithm.isEqual(asnOf(crl).tbsCertList.signature)) return `${file}: the crl names two different signature algorithms`;
    // CRL extensions this check understands (RFC 5280 5.2): authority key identifier, CRL number. Any other one
    // marked critical (delta CRL indicator, issuing distribution point) changes what the CRL covers: it is refused.
    const critical = crl.extensions.find((e) => e.critical && e.type !== '2.5.29.35' && e.type !== '2.5.29.20');
    if (critical !== undefined) {
      return `${file}: the crl has a critical extension ${critical.type} this check does not support (delta and partitioned crls are not supported; give a full crl)`;
    }
    revoked = new Map();
    for (const e of crl.entries) {
      // An indirect CRL's certificateIssuer entry extension (critical) would say the entry is another CA's.
      if (e.extensions.some((x) => x.critical)) return `${file}: entry ${e.serialNumber} has a critical extension this check does not support (indirect crls are not supported)`;
      const r = e.reason;
      revoked.set(normSerial(e.serialNumber), r === undefined ? 'not given' : (REASONS[r] ?? `code ${r}`));
    }
  } catch {
    return `${file} is not a der or pem x509 crl`;
  }
  const named = cas.filter((c) => sameName(c, issuerDer, issuerText));
  if (named.length === 0) return `${file} is issued by ${crl.issuer}, which is not one of the policy's ek cas`;
  const issuer = named.find((c) => signatureVerifies(crl, c.publicKey));
  if (issuer === undefined) return `${file}: the crl signature does not verify with the key of ek ca ${subjectOf(named[0]!)}`;
  return { file, issuer, thisUpdate, nextUpdate, revoked };
}

/** Options of EkCrls. */
export interface EkCrlsOptions {
  /** CRL files (absolute paths), read at each check. */
  files: readonly string[];
  /** The policy's EK CAs: each CRL must be signed by one of them. */
  cas: readonly X509Certificate[];
  expired: EkCrlExpired;
  readFile?: (path: string) => Buffer;
}

/**
 * The EK CA CRLs of one attestation policy (`ekCrlFiles`): every file is read again at each check, so an
 * operator drops in a new CRL without a restart; a file's parse and signature check are cached by content hash.
 */
export class EkCrls implements EkRevocationCheck {
  readonly #files: readonly string[];
  readonly #cas: readonly X509Certificate[];
  readonly #expired: EkCrlExpired;
  readonly #read: (path: string) => Buffer;
  #cache = new Map<string, { digest: string; crl: EkCrl[] | string }>();

  constructor(opts: EkCrlsOptions) {
    this.#files = opts.files;
    this.#cas = opts.cas;
    this.#expired = opts.expired;
    this.#read = opts.readFile ?? ((p) => readFileSync(p));
  }

  /** Reads every file; returns the CRLs and one problem line per unreadable, unparseable or unverified file. */
  load(): { crls: EkCrl[]; problems: string[] } {
    const crls: EkCrl[] = [];
    const problems: string[] = [];
    const next = new Map<string, { digest: string; crl: EkCrl[] | string }>();
    for (const file of this.#files) {
      let data: Buffer;
      try {
        data = this.#read(file);
      } catch (err) {
        problems.push(`cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? 'error'}`);
        continue;
      }
      const digest = createHash('sha256').update(data).digest('hex');
      const known = this.#cache.get(file);
      const crl = known !== undefined && known.digest === digest ? known.crl : parseEkCrl(file, data, this.#cas);
      next.set(file, { digest, crl });
      if (typeof crl === 'string') problems.push(crl);
      else crls.push(...crl);
    }
    this.#cache = next;
    return { crls, problems };
  }

  /**
   * Consults the CRLs for `chain` (the EK certificate first, then the CAs that issued each one): a certificate
   * whose issuer has a CRL here must not be listed in it. Only CAs with a CRL given are checked. Throws INTERNAL
   * (the problems as its cause, for the log) when a file cannot be used, and FAILED_PRECONDITION when the newest
   * CRL of a CA on the chain is past its nextUpdate and the policy refuses then.
   */
  check(chain: readonly X509Certificate[], now: Date): EkCrlVerdict {
    const { crls, problems } = this.load();
    if (problems.length > 0) {
      throw new SigilError('INTERNAL', 'the ek crl files cannot be used', { cause: new SigilError('CONFIG_INVALID', `ekCrlFiles: ${problems.join('; ')}`) });
    }
    const warnings: string[] = [];
    for (let i = 0; i + 1 < chain.length; i++) {
      const cert = chain[i]!;
      const ca = chain[i + 1]!;
      const mine = crls.filter((c) => c.issuer === ca || c.issuer.raw.equals(ca.raw));
      if (mine.length === 0) continue;
      const serial = normSerial(cert.serialNumber);
      for (const crl of mine) {
        const reason = crl.revoked.get(serial);
        if (reason !== undefined) {
          const what = i === 0 ? 'ek certificate' : `ek ca ${subjectOf(cert)}`;
          return { revoked: `${what} revoked by its ca (serial ${cert.serialNumber.toUpperCase()}, reason ${reason})`, warnings };
        }
      }
      const newest = mine.reduce((a, b) => (b.thisUpdate > a.thisUpdate ? b : a));
      if (newest.nextUpdate !== undefined && now > newest.nextUpdate) {
        const stale = `the ek crl of ${subjectOf(ca)} is out of date (next update was ${newest.nextUpdate.toISOString()})`;
        // The caller may be any runner: the message names the CA, not the daemon's file.
        if (this.#expired === 'refuse') throw new SigilError('FAILED_PRECONDITION', `${stale}: the operator must refresh the policy's ekCrlFiles`);
        warnings.push(`${stale}: refresh ${newest.file}`);
      }
    }
    return { revoked: null, warnings };
  }
}
