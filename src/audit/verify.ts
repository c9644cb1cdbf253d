import { isSigilError, SigilError } from '../errors.ts';
import { decodeEntry, type AuditEntry } from './entry.ts';
import { CompactRange, leafHash, verifyConsistency } from './merkle.ts';
import { noteVerifier, openCheckpoint, parseNote, type Checkpoint, type NoteVerifier } from './note.ts';

/** One entry as the server hands it out: its index, its bytes and (optionally) the leaf hash it stores. */
export interface VerifyEntry {
  index: number;
  data: Uint8Array;
  leaf?: Uint8Array | undefined;
}

/** A trusted audit key version: its public key and how reports name it (`sigil/audit@2`, or a pinned file). */
export interface VerifyKey {
  /** DER SubjectPublicKeyInfo. */
  spki: Uint8Array;
  label: string;
}

/** What the verifier checks: every entry, the latest checkpoint, the trusted audit keys and, optionally, a saved checkpoint. */
export interface VerifyInput {
  /** All entries from index 0 (or from `start.size`), in order (more than the checkpoint's size is fine: the rest is ignored). */
  entries: AsyncIterable<VerifyEntry> | Iterable<VerifyEntry>;
  /**
   * Where the entries start when the log's prefix was archived and its segments are not at hand: the
   * archived prefix's size and frontier (one perfect subtree hash per set bit, largest first). The entries
   * after it are then proven to sit at their indices in the signed tree; the prefix itself is not seen.
   */
  start?: { size: number; frontier: readonly Uint8Array[] } | undefined;
  /** The latest signed checkpoint (note text). */
  checkpoint: string;
  /**
   * The trusted audit key versions: each checkpoint is verified with the one whose note key id its
   * signature line carries (a rotation leaves older checkpoints under older versions).
   */
  keys?: readonly VerifyKey[] | undefined;
  /** One trusted key, as `keys` with a single entry (labelled `audit key`); used when `keys` is absent. */
  spki?: Uint8Array | undefined;
  /** The note key name: the log's origin. */
  origin: string;
  /**
   * Names of key ids the verifier knows but does not trust (the server's versions that were not pinned),
   * hex key id -> label: a checkpoint signed by one of them fails with that name in the message.
   */
  untrusted?: ReadonlyMap<string, string> | undefined;
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

/** The outcome: the checkpoint verified against, the key versions that signed it and the saved one, and the failure if any. */
export interface VerifyReport {
  ok: boolean;
  size: number;
  /** The first entry the verifier saw: 0, or the archived prefix's size when it started from its frontier. */
  from: number;
  root: string;
  /** The label of the key that signed the latest checkpoint; null when it did not verify. */
  signedBy: string | null;
  savedSize: number | null;
  /** The label of the key that signed the saved checkpoint; null without one or when it did not verify. */
  savedSignedBy: string | null;
  failure: VerifyFailure | null;
  /**
   * Acts written ahead (`started`) with no later entry of the same `detail.intent` in the verified log: each
   * may or may not have taken effect (docs/security.md). Empty when the log did not verify to its end.
   */
  openIntents: OpenIntent[];
}

/** An intent entry with no outcome: where it is and what it was about to do. */
export interface OpenIntent {
  index: number;
  t: string;
  who: string;
  act: string;
  key: string | undefined;
  intent: string;
}

/** A checkpoint verified with one of several trusted keys, and that key. */
export interface OpenedCheckpoint {
  checkpoint: Checkpoint;
  key: VerifyKey;
}

/**
 * Verifies a signed checkpoint of `origin` with whichever trusted key signed it, picked by the note key id
 * of its signature lines (C2SP signed-note). FAILED_PRECONDITION when no trusted key signed it (naming the
 * key when `untrusted` knows its id) or a trusted key's signature does not verify; INVALID_ARGUMENT for a
 * malformed note.
 */
export function openCheckpointWith(note: string, keys: readonly VerifyKey[], origin: string, untrusted?: ReadonlyMap<string, string>): OpenedCheckpoint {
  if (keys.length === 0) throw new SigilError('INVALID_ARGUMENT', 'no audit key to verify with');
  const verifiers: Array<{ key: VerifyKey; v: NoteVerifier }> = keys.map((key) => ({ key, v: noteVerifier(origin, key.spki) }));
  const lines = parseNote(note).signatures.filter((s) => s.name === origin);
  if (lines.length === 0) throw new SigilError('FAILED_PRECONDITION', `it carries no signature by ${origin}`);
  for (const line of lines) {
    const m = verifiers.find((x) => x.v.keyId.equals(line.keyId));
    if (m) return { checkpoint: openCheckpoint(note, m.v, origin), key: m.key };
  }
  const ids = lines.map((l) => {
    const hex = l.keyId.toString('hex');
    const name = untrusted?.get(hex);
    return name ? `${name} (key id ${hex})` : `key id ${hex}`;
  });
  throw new SigilError('FAILED_PRECONDITION', `it is signed by ${ids.join(', ')}, which is not among the trusted keys (${keys.map((k) => k.label).join(', ')}): pin that version with --key if you trust it`);
}

/**
 * Verifies a whole audit log: checkpoint signatures, each entry's bytes (canonical form, stored leaf hash,
 * time order), the root over all entries and, with a saved checkpoint, that the log still extends it (the
 * prefix root recomputed from the entries, and the server's consistency proof).
 */
export async function verifyLog(input: VerifyInput): Promise<VerifyReport> {
  const keys: readonly VerifyKey[] = input.keys ?? (input.spki ? [{ spki: input.spki, label: 'audit key' }] : []);
  const open = (note: string): OpenedCheckpoint => openCheckpointWith(note, keys, input.origin, input.untrusted);
  let latest: Checkpoint;
  let signedBy: string;
  try {
    ({ checkpoint: latest, key: { label: signedBy } } = open(input.checkpoint));
  } catch (err) {
    return { ok: false, size: 0, from: input.start?.size ?? 0, root: '', signedBy: null, savedSize: null, savedSignedBy: null, failure: { check: 'checkpoint-signature', message: `the latest checkpoint does not verify: ${why(err)}` }, openIntents: [] };
  }
  const from = input.start?.size ?? 0;
  let saved: Checkpoint | null = null;
  let savedSignedBy: string | null = null;
  // Intent id -> its `started` entry, until an entry with the same intent (its outcome) comes.
  const pending = new Map<string, OpenIntent>();
  const report = (failure: VerifyFailure | null): VerifyReport => ({
    ok: failure === null,
    size: latest.size,
    from,
    root: latest.root.toString('hex'),
    signedBy,
    savedSize: saved?.size ?? null,
    savedSignedBy,
    failure,
    openIntents: failure === null ? [...pending.values()] : [],
  });
  if (input.saved) {
    try {
      ({ checkpoint: saved, key: { label: savedSignedBy } } = open(input.saved.checkpoint));
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

  let tree: CompactRange;
  try {
    tree = new CompactRange(from, (input.start?.frontier ?? []).map((h) => Buffer.from(h)));
  } catch {
    return report({ check: 'root-mismatch', message: `the archived prefix of ${from} entries needs other subtree hashes than the ${input.start?.frontier.length ?? 0} given` });
  }
  if (from > latest.size) return report({ check: 'entry-missing', index: latest.size, message: `the archived prefix of ${from} entries is longer than the checkpoint's ${latest.size}` });
  let lastT = '';
  const atSaved = (): VerifyFailure | null => {
    // A saved checkpoint inside an unseen archived prefix is checked by the consistency proof only.
    if (saved === null || saved.size < from || tree.size !== saved.size || tree.root().equals(saved.root)) return null;
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
    let entry: AuditEntry;
    try {
      entry = decodeEntry(e.data);
    } catch (err) {
      return report({ check: 'entry-malformed', index: i, message: `entry ${i} is altered: ${why(err)}` });
    }
    const t = entry.t;
    const intent = (entry.detail as { intent?: unknown } | undefined)?.intent;
    if (typeof intent === 'string') {
      if (entry.result === 'started') pending.set(intent, { index: i, t, who: entry.who, act: entry.act, key: entry.key, intent });
      else pending.delete(intent);
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

function why(err: unknown): string {
  return isSigilError(err) ? err.message : 'malformed';
}
