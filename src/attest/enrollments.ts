import { SigilError } from '../errors.ts';
import { audited } from '../audit/audited.ts';
import type { AuditSink } from '../audit/audit-sink.ts';
import type { Logger } from '../log.ts';
import type { EnrollmentRecord, Store } from '../store/store.ts';
import { parseEkHash } from '../revocation/inputs.ts';

/** An enrolled TPM as admins see it: its record and whether the builder (its EK, or its enrolled AK) is revoked. */
export interface EnrollmentView {
  record: EnrollmentRecord;
  revoked: boolean;
}

/** What Enrollments needs. */
export interface EnrollmentsOptions {
  store: Pick<Store, 'getEnrollment' | 'listEnrollments' | 'deleteEnrollment'>;
  sink: AuditSink;
  /** True when this EK, or this AK of it, is revoked (Revocations.isBuilderRevoked). */
  isRevoked(ekHash: string, akName: string): boolean;
  log?: Logger;
}

const MAX_REASON = 200;

/**
 * The admin view of the enrollment records (docs/attestation.md, "State"): list them, and forget one so that
 * a runner whose TPM was cleared (counters back at zero) can enroll afresh. Forgetting is an audited act,
 * written ahead; it revokes nothing and lifts no revocation.
 */
export class Enrollments {
  readonly #o: EnrollmentsOptions;

  constructor(o: EnrollmentsOptions) {
    this.#o = o;
  }

  /** Enrollments whose EK hash starts with `prefix` (hex, any case; empty for all), sorted by EK hash. */
  list(prefix: string): EnrollmentView[] {
    if (typeof prefix !== 'string' || !/^[0-9a-fA-F]{0,64}$/.test(prefix)) throw new SigilError('INVALID_ARGUMENT', 'ek hash prefix must be at most 64 hex digits');
    return this.#o.store.listEnrollments(prefix.toLowerCase()).map((record) => ({ record, revoked: this.#o.isRevoked(record.ekHash, record.akName) }));
  }

  /** One enrollment by EK hash; INVALID_ARGUMENT for a malformed hash, KEY_NOT_FOUND when that EK has none. */
  get(ekHashInput: string): EnrollmentView {
    const ekHash = parseEkHash(ekHashInput);
    const record = this.#o.store.getEnrollment(ekHash);
    if (record === null) throw new SigilError('KEY_NOT_FOUND', `no enrollment for ek ${ekHash}`);
    return { record, revoked: this.#o.isRevoked(record.ekHash, record.akName) };
  }

  /**
   * Deletes the enrollment record of an EK, so its next enrollment is judged as a first one (full attestation,
   * no counters to compare with). Certificates issued before stay valid until they expire or are revoked.
   * Audited as `enrollment.forget` with what was forgotten (AK, counters) and the reason; the intent is
   * durable before the record goes. INVALID_ARGUMENT for a malformed hash or reason, KEY_NOT_FOUND when
   * the EK has no enrollment.
   */
  async forget(ekHashInput: string, reasonInput: string, who: string): Promise<EnrollmentView> {
    const attempted = { ekHash: String(ekHashInput).slice(0, 80), reason: String(reasonInput).slice(0, MAX_REASON) };
    return audited(
      this.#o.sink,
      { who, act: 'enrollment.forget', detail: attempted },
      () => {
        const ekHash = parseEkHash(ekHashInput);
        const reason = parseForgetReason(reasonInput);
        const view = this.get(ekHash);
        if (!this.#o.store.deleteEnrollment(ekHash)) throw new SigilError('KEY_NOT_FOUND', `no enrollment for ek ${ekHash}`);
        const r = view.record;
        this.#o.log?.info({ ekHash, akName: r.akName, policy: r.policy, resetCount: r.resetCount, restartCount: r.restartCount, clock: r.clock.toString(), reason, who }, 'enrollment forgotten');
        return { ...view, reason };
      },
      (v) => ({
        detail: {
          ekHash: v.record.ekHash,
          akName: v.record.akName,
          policy: v.record.policy,
          resetCount: v.record.resetCount,
          restartCount: v.record.restartCount,
          clock: v.record.clock.toString(),
          updatedAt: v.record.updatedAt.toISOString(),
          revoked: v.revoked,
          reason: v.reason,
        },
      }),
    );
  }
}

/** Why an enrollment is forgotten: free text an operator writes (e.g. `re-imaged`), required, one line. */
function parseForgetReason(input: string): string {
  if (typeof input !== 'string' || input.trim() === '') throw new SigilError('INVALID_ARGUMENT', 'a reason is required (e.g. "re-imaged")');
  if (input.length > MAX_REASON) throw new SigilError('INVALID_ARGUMENT', `reason is longer than ${MAX_REASON} characters`);
  // Control characters would let a reason forge lines in logs and listings.
  if (/[\u0000-\u001f\u007f]/.test(input)) throw new SigilError('INVALID_ARGUMENT', 'reason must be one line of printable text');
  return input.trim();
}
