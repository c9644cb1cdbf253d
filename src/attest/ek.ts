import { createHash, X509Certificate, type KeyObject } from 'node:crypto';
import { SigilError } from '../errors.ts';
import type { EkRevocationCheck } from './ek-crl.ts';
import { TPM_ALG, TPMA_OBJECT } from '../tpm/constants.ts';
import { marshalPublic, parsePublic, spkiOf, type PublicArea, type TpmPublic } from '../tpm/structures.ts';
import { EK_TEMPLATE_H3, EK_TEMPLATE_L1, EK_TEMPLATE_L2 } from '../tpm/templates.ts';

/** The project's EK hash: lower-case hex SHA-256 of the EK's DER SubjectPublicKeyInfo. */
export function ekHash(spki: Uint8Array): string {
  return createHash('sha256').update(spki).digest('hex');
}

/** What a policy trusts EKs by. */
export interface EkTrustAnchors {
  /** CA certificates (roots and intermediates); each one is a trust anchor. */
  ekCas: readonly X509Certificate[];
  /** Allowlisted EK hashes. */
  ekHashes: ReadonlySet<string>;
  /** The EK CAs' CRLs, consulted for a certificate that chains (policy `ekCrlFiles`). */
  ekCrls?: EkRevocationCheck;
}

/** An EK the verifier trusts, with the public area MakeCredential encrypts to. */
export interface TrustedEk {
  ekHash: string;
  ekPublic: TpmPublic;
  /** What made it trusted. */
  via: 'certificate' | 'allowlist';
  /** Out-of-date CRLs consulted anyway (policy `ekCrlExpired: warn`), for the log. */
  warnings?: string[];
}

const MAX_CHAIN = 8;

function subjectOf(c: X509Certificate): string {
  return c.subject.replace(/\n/g, ', ') || `serial ${c.serialNumber}`;
}

function validAt(c: X509Certificate, now: Date): string | null {
  if (now < c.validFromDate) return `${subjectOf(c)} is not valid before ${c.validFromDate.toISOString()}`;
  if (now > c.validToDate) return `${subjectOf(c)} expired ${c.validToDate.toISOString()}`;
  return null;
}

/**
 * Walks from `leaf` up `cas` at time `now`: the path (leaf first, then each CA that issued the one below,
 * ending at the trust anchor) or why there is none. Each link is a CA of the bundle whose key verifies the
 * certificate below, every certificate on the path is valid at `now`, and every issuer carries
 * basicConstraints CA. The walk continues up the bundle to a self-signed root when the bundle has one.
 */
export function ekChain(leaf: X509Certificate, cas: readonly X509Certificate[], now: Date): { chain: X509Certificate[] } | { problem: string } {
  const bad = validAt(leaf, now);
  if (bad !== null) return { problem: bad };
  let cur = leaf;
  const chain = [leaf];
  const seen = new Set<X509Certificate>();
  for (let depth = 0; depth < MAX_CHAIN; depth++) {
    const issuers = cas.filter((c) => !seen.has(c) && cur.checkIssued(c));
    const issuer = issuers.find((c) => cur.verify(c.publicKey));
    if (issuer === undefined) {
      if (depth > 0) return { chain }; // cur is itself a CA of the bundle: a trust anchor
      return { problem: issuers.length > 0 ? `the signature of ${subjectOf(cur)} does not verify` : `no trusted ca issued ${subjectOf(cur)}` };
    }
    if (!issuer.ca) return { problem: `issuer ${subjectOf(issuer)} is not a ca` };
    const expired = validAt(issuer, now);
    if (expired !== null) return { problem: expired };
    chain.push(issuer);
    if (issuer.checkIssued(issuer) && issuer.verify(issuer.publicKey)) return { chain }; // self-signed root
    seen.add(issuer);
    cur = issuer;
  }
  return { problem: `chain longer than ${MAX_CHAIN}` };
}

/** Why `leaf` does not chain to one of `cas` at time `now` (see `ekChain`), or null when it does. */
export function chainProblem(leaf: X509Certificate, cas: readonly X509Certificate[], now: Date): string | null {
  const r = ekChain(leaf, cas, now);
  return 'problem' in r ? r.problem : null;
}

// The EK public area of a runner that sent only its certificate. RSA 2048, P-256 and P-384 keys get the TCG
// EK Credential Profile default templates exactly (L-1, L-2, H-3: the ones sigil-agent and tpm2_createek use),
// so the EK's name, and with it the quote's qualifiedSigner, can be checked; other keys get the parts
// MakeCredential needs (their name is a guess: such a runner must send its EK public area).
function defaultEkPublic(key: KeyObject): TpmPublic {
  const jwk = key.export({ format: 'jwk' });
  if (jwk.kty === 'RSA' && jwk.n !== undefined && jwk.e === 'AQAB' && Buffer.from(jwk.n, 'base64url').length === 256) {
    return parsePublic(marshalPublic({ ...EK_TEMPLATE_L1, rsa: { ...EK_TEMPLATE_L1.rsa!, modulus: Buffer.from(jwk.n, 'base64url') } }));
  }
  if (jwk.kty === 'EC' && (jwk.crv === 'P-256' || jwk.crv === 'P-384') && jwk.x !== undefined && jwk.y !== undefined) {
    const t = jwk.crv === 'P-256' ? EK_TEMPLATE_L2 : EK_TEMPLATE_H3;
    return parsePublic(marshalPublic({ ...t, ecc: { ...t.ecc!, x: Buffer.from(jwk.x, 'base64url'), y: Buffer.from(jwk.y, 'base64url') } }));
  }
  const attrs = TPMA_OBJECT.fixedTPM | TPMA_OBJECT.fixedParent | TPMA_OBJECT.sensitiveDataOrigin | TPMA_OBJECT.adminWithPolicy | TPMA_OBJECT.restricted | TPMA_OBJECT.decrypt;
  let area: PublicArea;
  if (jwk.kty === 'RSA' && jwk.n !== undefined && jwk.e !== undefined) {
    const modulus = Buffer.from(jwk.n, 'base64url');
    const high = modulus.length > 256;
    const e = Buffer.from(jwk.e, 'base64url');
    const exponent = e.length <= 4 ? e.readUIntBE(0, e.length) : -1;
    if (exponent < 0) throw new SigilError('INVALID_ARGUMENT', 'ek certificate rsa exponent is too large');
    area = {
      type: TPM_ALG.RSA,
      nameAlg: high ? TPM_ALG.SHA384 : TPM_ALG.SHA256,
      objectAttributes: attrs,
      authPolicy: Buffer.alloc(0),
      rsa: {
        symmetric: TPM_ALG.AES, symKeyBits: high ? 256 : 128, symMode: TPM_ALG.CFB, scheme: TPM_ALG.NULL, schemeHash: TPM_ALG.NULL,
        keyBits: modulus.length * 8, exponent: exponent === 65537 ? 0 : exponent, modulus,
      },
    };
  } else {
    throw new SigilError('INVALID_ARGUMENT', 'ek certificate key is not rsa or ecc p-256/p-384; send the ek public area too');
  }
  return parsePublic(marshalPublic(area));
}

function parseEkPublic(b: Uint8Array): TpmPublic {
  const p = parsePublic(b);
  if (p.type !== TPM_ALG.RSA && p.type !== TPM_ALG.ECC) throw new SigilError('INVALID_ARGUMENT', 'ek public area is not an rsa or ecc key');
  return p;
}

/**
 * Decides whether the EK is trusted under `anchors` at `now`: an EK certificate chaining to a CA of
 * the bundle (and carrying the same key as the EK public area when both are sent), otherwise the
 * EK hash on the allowlist. A certificate that chains is then looked up in the CAs' CRLs (`anchors.ekCrls`).
 * Throws PERMISSION_DENIED `untrusted ek certificate: ...`, `ek not on the allowlist` or `ek certificate revoked
 * by its ca (...)`, INVALID_ARGUMENT for malformed input, and what the CRL check throws when its files cannot be used.
 */
export function trustEk(input: { ekCert?: Uint8Array; ekPublic?: Uint8Array }, anchors: EkTrustAnchors, now: Date): TrustedEk {
  if (!input.ekCert?.length && !input.ekPublic?.length) throw new SigilError('INVALID_ARGUMENT', 'give an ek certificate or an ek public area');
  const pub = input.ekPublic?.length ? parseEkPublic(input.ekPublic) : undefined;
  const pubSpki = pub !== undefined ? spkiOf(pub) : undefined;
  let certProblem: string | undefined;
  let spki: Buffer;
  let ekPublic: TpmPublic;
  if (input.ekCert?.length) {
    let cert: X509Certificate;
    try {
      cert = new X509Certificate(Buffer.from(input.ekCert));
      // Node parses the SubjectPublicKeyInfo only when asked: a malformed key fails here, not above.
      spki = cert.publicKey.export({ type: 'spki', format: 'der' });
    } catch (err) {
      throw new SigilError('INVALID_ARGUMENT', 'ek certificate does not parse', { cause: err });
    }
    if (pubSpki !== undefined && !pubSpki.equals(spki)) throw new SigilError('PERMISSION_DENIED', 'ek certificate and ek public area carry different keys');
    ekPublic = pub ?? defaultEkPublic(cert.publicKey);
    const walk = anchors.ekCas.length === 0 ? { problem: 'the policy trusts no ek ca' } : ekChain(cert, anchors.ekCas, now);
    if ('chain' in walk) {
      const verdict = anchors.ekCrls?.check(walk.chain, now) ?? { revoked: null, warnings: [] };
      // A CA's revocation is news the allowlist predates: it is refused even when the EK hash is listed.
      if (verdict.revoked !== null) throw new SigilError('PERMISSION_DENIED', verdict.revoked);
      return { ekHash: ekHash(spki), ekPublic, via: 'certificate', ...(verdict.warnings.length > 0 ? { warnings: verdict.warnings } : {}) };
    }
    certProblem = walk.problem;
  } else {
    spki = pubSpki!;
    ekPublic = pub!;
  }
  const hash = ekHash(spki);
  if (anchors.ekHashes.has(hash)) return { ekHash: hash, ekPublic, via: 'allowlist' };
  if (certProblem !== undefined) {
    throw new SigilError('PERMISSION_DENIED', `untrusted ek certificate: ${certProblem}${anchors.ekHashes.size > 0 ? '; ek not on the allowlist' : ''}`);
  }
  throw new SigilError('PERMISSION_DENIED', 'ek not on the allowlist');
}
