import type { EnrollmentRecord } from '../store/store.ts';

/** What the verifier keeps per enrolled EK: the AK it trusts and the clock info of its last accepted quote. */
export type { EnrollmentRecord };

/** Storage of enrollment records, one per EK (the daemon backs it with SQLite). */
export interface EnrollmentRecords {
  get(ekHash: string): Promise<EnrollmentRecord | undefined>;
  put(rec: EnrollmentRecord): Promise<void>;
  /** A renewal's write: only while the EK's record is still the one it was judged against (same AK, written at `judged`); false (no change) otherwise. */
  update(rec: EnrollmentRecord, judged: Date): Promise<boolean>;
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

  async update(rec: EnrollmentRecord, judged: Date): Promise<boolean> {
    const cur = this.#recs.get(rec.ekHash);
    if (cur?.akName !== rec.akName || cur.updatedAt.getTime() !== judged.getTime()) return false;
    await this.put(rec);
    return true;
  }

  /** Deletes a record, as an admin's forget does. */
  delete(ekHash: string): void {
    this.#recs.delete(ekHash);
  }
}
