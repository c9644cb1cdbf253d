import { createHash, createPublicKey, randomBytes, timingSafeEqual } from 'node:crypto';
import type { Clock } from '../clock.ts';
import { isSigilError, SigilError, type ErrorReason, type Refusal } from '../errors.ts';
import type { Logger } from '../log.ts';
import { TPM_RH } from '../tpm/constants.ts';
import { hierarchyQualifiedName, objectName, parsePublic, qualifiedNameOf, type ClockInfo, type PcrSelection, type TpmPublic } from '../tpm/structures.ts';
import { checkAk } from './ak.ts';
import { makeCredential } from './credential.ts';
import { trustEk, type TrustedEk } from './ek.ts';
import type { EnrollmentRecord, EnrollmentRecords } from './enrollment-records.ts';
import { checkEventLog, parseEventLog } from './eventlog.ts';
import { NonceStore } from './nonce.ts';
import type { AttestationPolicy } from './policy.ts';
import { verifyQuote } from './quote.ts';

export type { EnrollmentRecord, EnrollmentRecords };

/** What a successful enrollment or renewal proves about a builder. */
export interface Attestation {
  ekHash: string;
  /** Hex TPM name of the AK. */
  akName: string;
  /** The AK's TPMT_PUBLIC bytes. */
  akPublic: Buffer;
  policy: string;
  pcrSelection: PcrSelection;
  /** Hex PCR digest of the quote. */
  pcrDigest: string;
  clockInfo: ClockInfo;
}

/** Options of a Verifier. */
export interface VerifierOptions {
  /** The policies by name, looked up at every step: a config reload replaces the map's contents. */
  policies: ReadonlyMap<string, AttestationPolicy>;
  clock: Clock;
  /** Lifetime of an issued nonce (default 60 s). */
  nonceTtlMs?: number;
  /** Most challenges pending at once (default 10000). */
  maxPending?: number;
  records: EnrollmentRecords;
  log?: Logger;
  /** Why this EK (and AK) may not enroll or renew (it was revoked), or null; checked at every step. */
  refuse?: (ekHash: string, akName: string) => Refusal | null;
}

/** Input of `Verifier.begin`: the EK (certificate DER and/or TPMT_PUBLIC) and the AK TPMT_PUBLIC. */
export interface BeginRequest {
  policy: string;
  ekCert?: Uint8Array;
  ekPublic?: Uint8Array;
  akPublic: Uint8Array;
}

/** The challenge `begin` returns: the runner activates the credential and quotes over the nonce. */
export interface BeginResponse {
  nonce: Buffer;
  credentialBlob: Buffer;
  encryptedSecret: Buffer;
}

/** The evidence of a quote, common to `finish` and `renew`. */
export interface QuoteEvidence {
  nonce: Uint8Array;
  /** TPMS_ATTEST bytes. */
  quote: Uint8Array;
  /** TPMT_SIGNATURE bytes. */
  quoteSignature: Uint8Array;
  /** PCR values of the policy's bank, by index. */
  pcrValues: Map<number, Buffer>;
  /** TCG crypto-agile event log, when the policy checks one. */
  eventLog?: Uint8Array;
  /** DER SPKI of the runner's ephemeral identity key; the quote's extraData binds it. */
  identitySpki: Uint8Array;
}

/** Input of `Verifier.finish`. */
export interface FinishRequest extends QuoteEvidence {
  /** What TPM2_ActivateCredential released. */
  activatedSecret: Uint8Array;
}

type Pending =
  // at: the policy in force at the challenge; when a reload replaced it before the answer, the EK and AK are checked again.
  | { kind: 'enroll'; policy: string; at: AttestationPolicy; ekHash: string; ek: TpmPublic; ekCert: Buffer | null; ak: TpmPublic; secret: Buffer }
  // ek is null for an enrollment recorded before the EK public area was kept.
  | { kind: 'renew'; policy: string; ekHash: string; ek: TpmPublic | null; ak: TpmPublic };

const SECRET_BYTES = 32;
// A builder renewing while its EK has no record (an admin forgot it, e.g. after the TPM was cleared): sigil-agent
// enrolls afresh on the reason ENROLL_AGAIN (an older agent on the message's ending `enroll again`).
const NOT_ENROLLED = 'no enrollment for this ek (never made, or forgotten by an admin); enroll again';

/**
 * The Qualified Name a quote by `ak` carries in qualifiedSigner when the AK is a child of `ek`, a primary
 * object of the endorsement hierarchy (TPM 2.0 Part 1, 16 "Names"): nameAlg(AK) || H(QN(EK) || Name(AK)) with
 * QN(EK) = nameAlg(EK) || H(TPM_RH_ENDORSEMENT || Name(EK)). sigil-agent and tpm2_createak both make the AK so.
 */
export function akQualifiedName(ek: TpmPublic, ak: TpmPublic): Buffer {
  return qualifiedNameOf(qualifiedNameOf(hierarchyQualifiedName(TPM_RH.ENDORSEMENT), ek), ak);
}

function deny(message: string, reason?: ErrorReason, metadata?: Record<string, string>): never {
  throw new SigilError('PERMISSION_DENIED', message, { ...(reason !== undefined ? { reason } : {}), ...(metadata !== undefined ? { metadata } : {}) });
}

/**
 * The enrollment verifier (DESIGN "Enrollment and builder identity"): `begin` trusts the EK, checks
 * the AK and returns a credential plus nonce; `finish` checks the activated secret and a quote bound
 * to the nonce and the identity key, then records the builder. `renewChallenge`/`renew` repeat the
 * quote for an enrolled builder. Nothing is recorded until every check passed.
 */
export class Verifier {
  readonly #policies: ReadonlyMap<string, AttestationPolicy>;
  readonly #clock: Clock;
  readonly #records: EnrollmentRecords;
  readonly #nonces: NonceStore<Pending>;
  readonly #log: Logger | undefined;
  readonly #refuse: (ekHash: string, akName: string) => Refusal | null;

  constructor(opts: VerifierOptions) {
    this.#refuse = opts.refuse ?? (() => null);
    this.#policies = opts.policies;
    this.#clock = opts.clock;
    this.#records = opts.records;
    this.#log = opts.log;
    this.#nonces = new NonceStore<Pending>({ clock: opts.clock, ttlMs: opts.nonceTtlMs ?? 60_000, ...(opts.maxPending !== undefined ? { maxPending: opts.maxPending } : {}) });
  }

  /** The policy in force now; `known` says the name was valid earlier (a reload may have removed it since). */
  #policy(name: string, known = true): AttestationPolicy {
    const p = this.#policies.get(name);
    if (p === undefined) throw new SigilError('FAILED_PRECONDITION', known ? `attestation policy ${name} is no longer configured` : `no attestation policy ${name}`);
    return p;
  }

  /** Step 1 of enrollment: trust the EK, check the AK, return a credential for the AK and a nonce. */
  async begin(req: BeginRequest): Promise<BeginResponse> {
    const policy = this.#policy(req.policy, false);
    const ek = trustEk({ ...(req.ekCert ? { ekCert: req.ekCert } : {}), ...(req.ekPublic ? { ekPublic: req.ekPublic } : {}) }, policy, this.#clock.now());
    this.#warn(ek, policy);
    const ak = parsePublic(req.akPublic);
    checkAk(ak, policy.akAlgorithms);
    this.#checkRevoked(ek.ekHash, objectName(ak).toString('hex'));
    const secret = randomBytes(SECRET_BYTES);
    const cred = makeCredential(ek.ekPublic, objectName(ak), secret);
    const ekCert = req.ekCert?.length ? Buffer.from(req.ekCert) : null;
    const nonce = this.#nonces.issue({ kind: 'enroll', policy: policy.name, at: policy, ekHash: ek.ekHash, ek: ek.ekPublic, ekCert, ak, secret });
    this.#log?.debug({ ekHash: ek.ekHash, akName: objectName(ak).toString('hex'), policy: policy.name, ekTrust: ek.via }, 'enrollment begun');
    return { nonce, ...cred };
  }

  /** Step 2 of enrollment: the activated secret and a quote bound to the nonce and identity key. */
  async finish(req: FinishRequest): Promise<Attestation> {
    const p = this.#nonces.take(req.nonce);
    if (p.kind !== 'enroll') throw new SigilError('FAILED_PRECONDITION', 'unknown or already used nonce');
    const got = Buffer.from(req.activatedSecret);
    if (got.length !== p.secret.length || !timingSafeEqual(got, p.secret)) deny('activated secret does not match the credential');
    // The answer is judged by the policy in force now: a reload between challenge and answer applies to it whole.
    const now = this.#policy(p.policy);
    if (now !== p.at) {
      trustEk({ ...(p.ekCert !== null ? { ekCert: p.ekCert } : {}), ekPublic: p.ek.raw }, now, this.#clock.now());
      checkAk(p.ak, now.akAlgorithms);
    }
    return this.#accept(p, req, undefined);
  }

  /** A renewal challenge for a builder that enrolled with this EK and AK. */
  async renewChallenge(req: { ekHash: string; akName: string }): Promise<Buffer> {
    const rec = await this.#records.get(req.ekHash);
    if (rec === undefined) deny(NOT_ENROLLED, 'ENROLL_AGAIN');
    if (rec.akName !== req.akName.toLowerCase()) deny('no enrollment for this ek and ak');
    this.#checkRevoked(rec.ekHash, rec.akName);
    const policy = this.#policy(rec.policy);
    // The policy may have changed since enrollment; the EK and the AK must still pass it.
    const ek = this.#recheckEk(rec, policy);
    const ak = parsePublic(rec.akPublic);
    checkAk(ak, policy.akAlgorithms);
    return this.#nonces.issue({ kind: 'renew', policy: policy.name, ekHash: rec.ekHash, ek, ak });
  }

  /** Renewal: a fresh quote over the challenge nonce with the enrolled AK. */
  async renew(req: QuoteEvidence): Promise<Attestation> {
    const p = this.#nonces.take(req.nonce);
    if (p.kind !== 'renew') throw new SigilError('FAILED_PRECONDITION', 'unknown or already used nonce');
    const rec = await this.#records.get(p.ekHash);
    if (rec === undefined) deny(NOT_ENROLLED, 'ENROLL_AGAIN');
    if (rec.akName !== objectName(p.ak).toString('hex')) deny('no enrollment for this ek and ak');
    // Again at the answer: an EK certificate (or a CA of its chain) may have expired since the challenge.
    this.#recheckEk(rec, this.#policy(p.policy));
    return this.#accept(p, req, rec);
  }

  /**
   * Applies the policy's current EK trust to the EK the builder proved at enrollment: the kept certificate
   * chains to a CA the policy trusts now, at the verifier's time, or the EK hash is on the allowlist now.
   * Returns the kept EK public area (null for an enrollment recorded before it was kept, which only the
   * allowlist can vouch for). Throws PERMISSION_DENIED `ek no longer trusted: ...`.
   */
  #recheckEk(rec: EnrollmentRecord, policy: AttestationPolicy): TpmPublic | null {
    if (rec.ekPublic === null) {
      if (policy.ekHashes.has(rec.ekHash)) return null;
      if (policy.ekHashes.size > 0 && policy.ekCas.length === 0) deny('ek no longer trusted: ek not on the allowlist');
      deny('ek trust cannot be re-checked: this enrollment was recorded before sigild kept ek certificates; enroll again', 'ENROLL_AGAIN');
    }
    let ek: TrustedEk;
    try {
      ek = trustEk({ ...(rec.ekCertificate !== null ? { ekCert: rec.ekCertificate } : {}), ekPublic: rec.ekPublic }, policy, this.#clock.now());
    } catch (err) {
      if (isSigilError(err, 'PERMISSION_DENIED')) deny(`ek no longer trusted: ${err.message}`);
      // The EK CRLs cannot be used now (an unusable file, or one out of date): not the record's fault.
      if (isSigilError(err) && err.code !== 'INVALID_ARGUMENT') throw err;
      throw new SigilError('INTERNAL', 'the enrollment record holds an ek that does not parse', { cause: err });
    }
    if (ek.ekHash !== rec.ekHash) throw new SigilError('INTERNAL', 'the enrollment record holds an ek of another hash');
    this.#warn(ek, policy);
    return ek.ekPublic;
  }

  #warn(ek: TrustedEk, policy: AttestationPolicy): void {
    for (const w of ek.warnings ?? []) this.#log?.warn({ ekHash: ek.ekHash, policy: policy.name }, w);
  }

  #checkRevoked(ekHash: string, akName: string): void {
    const why = this.#refuse(ekHash, akName);
    if (why !== null) deny(why.message, why.reason);
  }

  async #accept(p: Pending, ev: QuoteEvidence, known: EnrollmentRecord | undefined): Promise<Attestation> {
    // Revoked between the challenge and the answer: refused before anything is recorded.
    this.#checkRevoked(p.ekHash, objectName(p.ak).toString('hex'));
    const policy = this.#policy(p.policy);
    const spki = Buffer.from(ev.identitySpki);
    try {
      createPublicKey({ key: spki, format: 'der', type: 'spki' });
    } catch (err) {
      throw new SigilError('INVALID_ARGUMENT', 'identity key is not a der subjectpublickeyinfo', { cause: err });
    }
    const selection: PcrSelection = { hash: policy.pcrs.hashAlg, pcrs: policy.pcrs.select };
    const q = verifyQuote({
      akPublic: p.ak,
      attest: ev.quote,
      signature: ev.quoteSignature,
      expectedExtraData: createHash('sha256').update(ev.nonce).update(spki).digest(),
      selection,
      pcrValues: ev.pcrValues,
      ...(p.ek !== null ? { qualifiedSigner: akQualifiedName(p.ek, p.ak) } : {}),
    });
    if (policy.golden !== undefined) {
      const ok = policy.golden.some((set) => [...set].every(([pcr, v]) => ev.pcrValues.get(pcr)?.equals(v) === true));
      if (!ok) {
        const differ = policy.pcrs.select.filter((pcr) => policy.golden!.every((set) => !set.get(pcr)!.equals(ev.pcrValues.get(pcr)!)));
        deny(`pcr values match none of the policy's golden sets${differ.length ? ` (pcr ${differ.join(', ')} match no set)` : ''}`);
      }
    }
    if (policy.eventLog !== undefined) {
      if (ev.eventLog === undefined || ev.eventLog.length === 0) deny(`policy ${policy.name} requires an event log`);
      const log = parseEventLog(ev.eventLog);
      checkEventLog(log, { bank: policy.pcrs.hashAlg, selection: policy.pcrs.select, quoted: ev.pcrValues, rules: policy.eventLog.rules });
    }
    const c = q.clockInfo;
    const prev = known ?? (await this.#records.get(p.ekHash));
    if (prev !== undefined) {
      // TPM2_Clear sets Clock, resetCount and restartCount to zero (TPM 2.0 Part 1, "Clock" and Part 3,
      // TPM2_Clear) while the EK, made from the endorsement seed, stays: a re-imaged runner whose TPM was cleared
      // fails here for ever unless an admin forgets its record. A renewal keeps the short message (sigil-agent
      // then enrolls, and that refusal says what to do).
      const backwards = (what: string): never =>
        deny(
          p.kind === 'enroll'
            ? `tpm ${what} went backwards (the tpm was cleared, or its state rolled back): if this runner was re-imaged, an admin can let it enroll again with sigilctl enrollment forget ${p.ekHash}`
            : `tpm ${what} went backwards`,
          'TPM_CLOCK_WENT_BACKWARDS',
          { counter: what, ek_hash: p.ekHash },
        );
      if (c.resetCount < prev.resetCount) backwards('resetCount');
      if (c.resetCount === prev.resetCount && c.restartCount < prev.restartCount) backwards('restartCount');
      // TPM 2.0 Part 2, 10.11.1: safe YES says no Clock value above this one was ever reported; a lower Clock
      // than one already seen, so reported, means a rolled-back TPM state (safe NO allows it, after a power loss).
      if (c.safe && c.clock < prev.clock) backwards('clock');
    }
    const akName = objectName(p.ak).toString('hex');
    const rec: EnrollmentRecord = {
      ekHash: p.ekHash,
      akName,
      akPublic: p.ak.raw,
      policy: policy.name,
      resetCount: c.resetCount,
      restartCount: c.restartCount,
      clock: c.clock,
      updatedAt: this.#clock.now(),
      // A renewal keeps what enrollment proved; only a new enrollment replaces it.
      ekCertificate: p.kind === 'enroll' ? p.ekCert : (known?.ekCertificate ?? null),
      ekPublic: p.kind === 'enroll' ? p.ek.raw : (known?.ekPublic ?? null),
    };
    // A renewal only updates the record it was judged against: one an admin forgot meanwhile stays forgotten.
    if (p.kind === 'enroll') await this.#records.put(rec);
    else if (prev === undefined || !(await this.#records.update(rec, prev.updatedAt))) deny(NOT_ENROLLED, 'ENROLL_AGAIN');
    this.#log?.info({ ekHash: p.ekHash, akName, policy: policy.name, kind: p.kind, resetCount: c.resetCount, restartCount: c.restartCount }, p.kind === 'enroll' ? 'builder enrolled' : 'builder attestation renewed');
    return {
      ekHash: p.ekHash,
      akName,
      akPublic: p.ak.raw,
      policy: policy.name,
      pcrSelection: selection,
      pcrDigest: q.pcrDigest.toString('hex'),
      clockInfo: c,
    };
  }
}
