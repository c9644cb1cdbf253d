import { chmod, mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { SigilError } from '../../errors.ts';
import { ALGORITHMS, type Algorithm } from '../signer.ts';
import { writeStateFile } from './state-file.ts';

/** One key sigil created: where it was persisted and the TPM name (nameAlg || H(public area)) it had. */
export interface KeyEntry {
  label: string;
  handle: number;
  /** Hex of the object's TPM name; a handle holding another name holds another key. */
  name: string;
  algorithm: Algorithm;
  createdAt: string;
  /** Hex of the key's authValue (32 random bytes); absent for keys made before sigil set one (empty authValue). */
  auth?: string;
  /** A change of an empty authValue under way (`sigild tpm rekey`); settled at the next open if a crash cut it. */
  rekey?: PendingRekey;
}

/**
 * An authValue change of a key sigil made, recorded before the TPM is touched. `prepared`: the new private
 * area is here and the old object may still be persistent at the handle; `evicted`: the old object is
 * gone for sure, so an object of the recorded name at the handle is the new one.
 */
export interface PendingRekey {
  /** Hex of the new authValue. */
  auth: string;
  /** Hex of the TPM2B_PRIVATE contents TPM2_ObjectChangeAuth returned (wrapped by the SRK; loadable only in this TPM). */
  private: string;
  /** Hex of the key's TPMT_PUBLIC: once the old object is evicted, the TPM no longer holds it. */
  public: string;
  step: 'prepared' | 'evicted';
  startedAt: string;
}

/**
 * The name of an object sigil did not create (a key imported by a URI without `;name=`, from before
 * names were recorded), taken from TPM2_ReadPublic at its first use and held to from then on.
 */
export interface PinnedName {
  handle: number;
  name: string;
  pinnedAt: string;
}

const FILE = 'keys.json';
const NAME = /^[0-9a-f]{4,132}$/;

const fileSchema = z.strictObject({
  version: z.literal(1),
  keys: z.array(
    z.strictObject({
      label: z.string().min(1),
      handle: z.number().int().min(0x81000000).max(0x817fffff),
      name: z.string().regex(NAME),
      algorithm: z.enum(ALGORITHMS as [string, ...string[]]),
      createdAt: z.string(),
      // Added after version 1 shipped; absent for keys made with an empty authValue.
      auth: z.string().regex(/^[0-9a-f]{2,64}$/).optional(),
      // Added after version 1 shipped; present only while an authValue change is under way.
      rekey: z
        .strictObject({
          auth: z.string().regex(/^[0-9a-f]{2,64}$/),
          private: z.string().regex(/^([0-9a-f]{2}){1,2048}$/),
          public: z.string().regex(/^([0-9a-f]{2}){1,2048}$/),
          step: z.enum(['prepared', 'evicted']),
          startedAt: z.string(),
        })
        .optional(),
    }),
  ),
  // Added after version 1 shipped; absent in older tables.
  pinned: z
    .array(z.strictObject({ handle: z.number().int().min(0x81000000).max(0x817fffff), name: z.string().regex(NAME), pinnedAt: z.string() }))
    .optional(),
});

/**
 * The label -> persistent handle table of one TPM backend, a JSON file in its state directory (mode
 * 0700, file 0600). Every change is written whole to a temporary file, synced and renamed over the old
 * one, so a crash leaves either the old table or the new one. One process owns a directory.
 */
export class KeyTable {
  readonly #dir: string;
  readonly #byLabel = new Map<string, KeyEntry>();
  readonly #pinned = new Map<number, PinnedName>();

  private constructor(dir: string) {
    this.#dir = dir;
  }

  /** Opens (creating if needed) the table in `dir`. */
  static async open(dir: string): Promise<KeyTable> {
    try {
      await mkdir(dir, { recursive: true, mode: 0o700 });
      await chmod(dir, 0o700);
    } catch (err) {
      throw new SigilError('CONFIG_INVALID', `tpm state directory ${dir} cannot be created`, { cause: err });
    }
    const t = new KeyTable(dir);
    let text: string | null = null;
    try {
      text = await readFile(join(dir, FILE), 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw new SigilError('BACKEND_ERROR', `tpm key table ${join(dir, FILE)} cannot be read`, { cause: err });
    }
    if (text !== null) {
      let parsed: z.infer<typeof fileSchema>;
      try {
        parsed = fileSchema.parse(JSON.parse(text));
      } catch (err) {
        throw new SigilError('BACKEND_ERROR', `tpm key table ${join(dir, FILE)} is corrupt`, { cause: err });
      }
      for (const e of parsed.keys) t.#byLabel.set(e.label, e as KeyEntry);
      for (const p of parsed.pinned ?? []) t.#pinned.set(p.handle, p);
    }
    return t;
  }

  /** The entry for `label`, if any. */
  get(label: string): KeyEntry | undefined {
    return this.#byLabel.get(label);
  }

  /** The entry whose handle is `handle`, if any. */
  byHandle(handle: number): KeyEntry | undefined {
    for (const e of this.#byLabel.values()) if (e.handle === handle) return e;
    return undefined;
  }

  /** Every entry, in the order they were recorded. */
  entries(): KeyEntry[] {
    return [...this.#byLabel.values()];
  }

  /** Every handle the table reserves, live or not. */
  handles(): Set<number> {
    return new Set([...this.#byLabel.values()].map((e) => e.handle));
  }

  /** Records (or replaces) an entry and makes it durable before returning. */
  async put(e: KeyEntry): Promise<void> {
    const before = this.#byLabel.get(e.label);
    this.#byLabel.set(e.label, e);
    await this.#persist(() => (before === undefined ? this.#byLabel.delete(e.label) : this.#byLabel.set(e.label, before)));
  }

  /** Drops the entry for `label` (no-op when absent) and makes that durable. */
  async delete(label: string): Promise<void> {
    const before = this.#byLabel.get(label);
    if (before === undefined) return;
    this.#byLabel.delete(label);
    await this.#persist(() => this.#byLabel.set(label, before));
  }

  /** The name pinned for `handle` (hex), if any. */
  pinnedName(handle: number): string | undefined {
    return this.#pinned.get(handle)?.name;
  }

  /** Pins `name` (hex) for `handle`, replacing any earlier pin, and makes that durable. */
  async pin(handle: number, name: string): Promise<void> {
    if (!NAME.test(name)) throw new SigilError('INVALID_ARGUMENT', 'a tpm object name is lower-case hex');
    const before = this.#pinned.get(handle);
    this.#pinned.set(handle, { handle, name, pinnedAt: new Date().toISOString() });
    await this.#persist(() => (before === undefined ? this.#pinned.delete(handle) : this.#pinned.set(handle, before)));
  }

  /** Drops the pin of `handle` (no-op when absent) and makes that durable. */
  async unpin(handle: number): Promise<void> {
    const before = this.#pinned.get(handle);
    if (before === undefined) return;
    this.#pinned.delete(handle);
    await this.#persist(() => this.#pinned.set(handle, before));
  }

  /** Writes the table after a change in memory; undoes the change when the write fails, so memory stays what the file holds. */
  async #persist(undo: () => unknown): Promise<void> {
    try {
      await this.#write();
    } catch (err) {
      undo();
      throw err;
    }
  }

  async #write(): Promise<void> {
    const pinned = [...this.#pinned.values()];
    const table = pinned.length > 0 ? { version: 1, keys: [...this.#byLabel.values()], pinned } : { version: 1, keys: [...this.#byLabel.values()] };
    try {
      await writeStateFile(this.#dir, FILE, JSON.stringify(table, null, 2) + '\n');
    } catch (err) {
      throw new SigilError('BACKEND_ERROR', `tpm key table ${join(this.#dir, FILE)} cannot be written`, { cause: err });
    }
  }
}
