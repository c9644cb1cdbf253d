import type { EnrollmentRecord } from '../store/store.ts';

/** What the verifier keeps per enrolled EK: the AK it trusts and the clock info of its last accepted quote. */
export type { EnrollmentRecord };

/** Storage of enrollment records, one per EK (the daemon backs it with SQLite). */
export interface EnrollmentRecords {
  get(ekHash: string): Promise<EnrollmentRecord | undefined>;
  put(rec: EnrollmentRecord): Promise<void>;
}

/** An in-memory EnrollmentRecords, for tests. */
export class MemoryEnrollmentRecords implements EnrollmentRecords {
  readonly #recs = new Map<string, EnrollmentRecord>();

  async get(ekHash: string): Promise<EnrollmentRecord | undefined> {
    const r = this.#recs.get(ekHash);
    return r === undefined ? undefined : { ...r, akPublic: Buffer.from(r.akPublic) };
  }

  async put(rec: EnrollmentRecord): Promise<void> {
    this.#recs.set(rec.ekHash, { ...rec, akPublic: Buffer.from(rec.akPublic) });
  }
}
