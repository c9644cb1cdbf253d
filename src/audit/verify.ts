import { isSigilError } from '../errors.ts';
import { decodeEntry } from './entry.ts';
import { CompactRange, leafHash, verifyConsistency } from './merkle.ts';
import { noteVerifier, openCheckpoint, type Checkpoint } from './note.ts';

/** One entry as the server hands it out: its index, its bytes and (optionally) the leaf hash it stores. */
export interface VerifyEntry {
  index: number;
  data: Uint8Array;
  leaf?: Uint8Array | undefined;
}

/** What the verifier checks: every entry, the latest checkpoint, the audit key and, optionally, a saved checkpoint. */
export interface VerifyInput {
  /** All entries from index 0, in order (more than the checkpoint's size is fine: the rest is ignored). */
  entries: AsyncIterable<VerifyEntry> | Iterable<VerifyEntry>;
  /** The latest signed checkpoint (note text). */
  checkpoint: string;
  /** The audit public key (DER SPKI) and its note key name (the log's origin). */
  spki: Uint8Array;
  origin: string;
  /** A checkpoint an auditor saved earlier, and the server's consistency proof from its size to the latest. */
  saved?: { checkpoint: string; proof: readonly Uint8Array[] } | undefined;
}

/** The names of the checks, stable for scripts. */
export type VerifyCheck =
  | 'checkpoint-signature'
  | 'saved-checkpoint-signature'
  | 'entry-missing'
  | 'entry-malformed'
  | 'entry-modified'
  | 'entry-reordered'
  | 'root-mismatch'
  | 'truncated'
  | 'rewritten'
  | 'consistency';

/** The first thing that failed: which check, where (entry index, when one can be named) and why. */
export interface VerifyFailure {
  check: VerifyCheck;
  index?: number;
  message: string;
}

/** The outcome: the checkpoint verified against, and the failure if any. */
export interface VerifyReport {
  ok: boolean;
  size: number;
  root: string;
  savedSize: number | null;
  failure: VerifyFailure | null;
}

function open(note: string, input: VerifyInput): Checkpoint {
  return openCheckpoint(note, noteVerifier(input.origin, input.spki), input.origin);
}

/**
 * Verifies a whole audit log: checkpoint signatures, each entry's bytes (canonical form, stored leaf hash,
 * time order), the root over all entries and, with a saved checkpoint, that the log still extends it (the
 * prefix root recomputed from the entries, and the server's consistency proof).
 */
export async function verifyLog(input: VerifyInput): Promise<VerifyReport> {
  let latest: Checkpoint;
  try {
    latest = open(input.checkpoint, input);
  } catch (err) {
    return fail(0, '', null, { check: 'checkpoint-signature', message: `the latest checkpoint does not verify: ${why(err)}` });
  }
  const report = (failure: VerifyFailure | null): VerifyReport => ({
    ok: failure === null,
    size: latest.size,
    root: latest.root.toString('hex'),
    savedSize: saved?.size ?? null,
    failure,
  });
  let saved: Checkpoint | null = null;
  if (input.saved) {
    try {
      saved = open(input.saved.checkpoint, input);
    } catch (err) {
      return report({ check: 'saved-checkpoint-signature', message: `the saved checkpoint does not verify: ${why(err)}` });
    }
    if (saved.size > latest.size) {
      return report({
        check: 'truncated',
        index: latest.size,
        message: `the log has ${latest.size} entries, fewer than the ${saved.size} of the saved checkpoint: truncated since it was saved`,
      });
    }
  }

  const tree = new CompactRange();
  let lastT = '';
  const atSaved = (): VerifyFailure | null => {
    if (saved === null || tree.size !== saved.size || tree.root().equals(saved.root)) return null;
    return {
      check: 'rewritten',
      index: saved.size - 1,
      message: `entries 0 to ${saved.size - 1} no longer hash to the saved checkpoint's root: the log was rewritten before index ${saved.size}`,
    };
  };
  const early = atSaved();
  if (early) return report(early);
  for await (const e of input.entries) {
    if (tree.size >= latest.size) break;
    const i = tree.size;
    if (e.index !== i) return report({ check: 'entry-missing', index: i, message: `entry ${i} is missing (the next entry has index ${e.index})` });
    let t: string;
    try {
      t = decodeEntry(e.data).t;
    } catch (err) {
      return report({ check: 'entry-malformed', index: i, message: `entry ${i} is altered: ${why(err)}` });
    }
    const leaf = leafHash(e.data);
    if (e.leaf !== undefined && !leaf.equals(e.leaf)) return report({ check: 'entry-modified', index: i, message: `entry ${i} was modified: its bytes do not match its leaf hash` });
    if (t < lastT) return report({ check: 'entry-reordered', index: i, message: `entry ${i} is older than entry ${i - 1}: entries were reordered` });
    lastT = t;
    tree.append(leaf);
    const f = atSaved();
    if (f) return report(f);
  }
  if (tree.size < latest.size) {
    return report({ check: 'entry-missing', index: tree.size, message: `the log returned ${tree.size} entries but the checkpoint covers ${latest.size}: entries from ${tree.size} are missing` });
  }
  if (!tree.root().equals(latest.root)) {
    return report({ check: 'root-mismatch', message: `the ${latest.size} entries do not hash to the checkpoint's root: an entry was changed, removed or reordered` });
  }
  if (saved && input.saved && !verifyConsistency(saved.size, latest.size, saved.root, latest.root, input.saved.proof)) {
    return report({ check: 'consistency', message: `the consistency proof from size ${saved.size} to ${latest.size} does not verify` });
  }
  return report(null);
}

function fail(size: number, root: string, savedSize: number | null, failure: VerifyFailure): VerifyReport {
  return { ok: false, size, root, savedSize, failure };
}

function why(err: unknown): string {
  return isSigilError(err) ? err.message : 'malformed';
}
