/** What the verifier keeps per enrolled EK. */
export interface EnrollmentRecord {
  /** Lower-case hex SHA-256 of the EK SPKI. */
  ekHash: string;
  /** Hex name of the trusted AK. */
  akName: string;
  /** The AK's TPMT_PUBLIC bytes. */
  akPublic: Buffer;
  /** Name of the policy the builder enrolled under. */
  policy: string;
  /** TPMS_CLOCK_INFO of the latest accepted quote, for monotonicity. */
  resetCount: number;
  restartCount: number;
  clock: bigint;
  updatedAt: Date;
}

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
