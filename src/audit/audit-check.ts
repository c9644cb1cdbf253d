import type { DatabaseSync } from 'node:sqlite';
import { CompactRange, leafHash, type CompletedSubtree } from './merkle.ts';

/** How many entries the full check reads per query: each page is its own read transaction, so a long check pins no WAL snapshot. */
const PAGE = 16384;

/** What the full check is told: the tree size it verifies up to, which subtree heights the log stores, and whom to tell about progress. */
export interface FullCheckOptions {
  /** Verify entries `[0, size)` and every checkpoint and stored subtree within them. */
  size: number;
  /** Subtrees of every `stride`-th height are stored in `nodes`; rows of other heights are never read, so never checked. */
  stride: number;
  /** Entries `[0, archivedEnd)` are archived: their data is gone (their leaf hashes stay); every later entry holds data. */
  archivedEnd?: number;
  /** Called after every page with the number of entries verified so far. */
  progress?: (verified: number) => void;
  /** Asked before every page: true ends the check early (it then returns `stopped`). */
  stopped?: () => boolean;
}

/** The outcome of a full check: clean, a finding (what does not match), or stopped before the end. */
export type FullCheckResult = { ok: true } | { ok: false; finding: string } | { ok: false; stopped: true };

/**
 * The full check of an audit log file up to `size`: re-hashes every entry's bytes against its stored leaf
 * hash, recomputes the tree from the leaf hashes in order, compares every stored checkpoint root at or below
 * `size`, checks that exactly the archived entries lack their data, and compares every stored subtree row
 * (the `nodes` cache) that lies within `size` with the subtree recomputed from the leaves. A missing
 * `nodes` row is no finding (readers recompute it); a row that disagrees is, since sigil writes each row
 * in the same transaction as the leaves below it.
 */
export function fullCheck(db: DatabaseSync, o: FullCheckOptions): FullCheckResult {
  const { min } = db.prepare('SELECT MIN(idx) AS min FROM entries').get() as { min: number | null };
  if (min !== null && min < 0) return { ok: false, finding: `entry ${min} has a negative index` };
  const cps = db.prepare('SELECT size, root FROM checkpoints WHERE size <= ? ORDER BY size').all(o.size) as Array<{ size: number; root: Uint8Array }>;
  const page = db.prepare('SELECT idx, data, leaf FROM entries WHERE idx >= ? AND idx < ? ORDER BY idx');
  const archivedEnd = o.archivedEnd ?? 0;
  const stored = db.prepare('SELECT idx, hash FROM nodes WHERE level = ? AND idx >= ? AND idx <= ? ORDER BY idx');
  const tree = new CompactRange();
  let want = 0;
  const checkpoints = (): string | null => {
    while (want < cps.length && cps[want]!.size === tree.size) {
      const cp = cps[want]!;
      if (!Buffer.from(cp.root).equals(tree.root())) return `the stored entries do not hash to the root of the checkpoint at size ${cp.size}`;
      want++;
    }
    return null;
  };
  let finding = checkpoints();
  if (finding) return { ok: false, finding };
  for (let start = 0; start < o.size; start += PAGE) {
    if (o.stopped?.()) return { ok: false, stopped: true };
    const end = Math.min(start + PAGE, o.size);
    // Completed subtrees of the stored heights, by height; within a page their indices are consecutive.
    const done = new Map<number, CompletedSubtree[]>();
    for (const row of page.iterate(start, end) as Iterable<{ idx: number; data: Uint8Array; leaf: Uint8Array }>) {
      if (row.idx !== tree.size) return { ok: false, finding: `entry ${tree.size} is missing` };
      if ((row.data.length === 0) !== (row.idx < archivedEnd)) {
        return { ok: false, finding: row.idx < archivedEnd ? `entry ${row.idx} is recorded as archived but still holds data` : `the data of entry ${row.idx} is gone but no archive record covers it` };
      }
      if (row.idx >= archivedEnd && !leafHash(row.data).equals(row.leaf)) return { ok: false, finding: `the bytes of entry ${row.idx} do not hash to its stored leaf hash` };
      tree.append(Buffer.from(row.leaf), (s) => {
        if (s.level % o.stride !== 0) return;
        let list = done.get(s.level);
        if (!list) done.set(s.level, (list = []));
        list.push(s);
      });
      finding = checkpoints();
      if (finding) return { ok: false, finding };
    }
    if (tree.size !== end) return { ok: false, finding: `entry ${tree.size} is missing` };
    for (const [level, list] of done) {
      const first = list[0]!.index;
      for (const row of stored.iterate(level, first, list.at(-1)!.index) as Iterable<{ idx: number; hash: Uint8Array }>) {
        if (!list[row.idx - first]!.hash.equals(row.hash)) {
          return { ok: false, finding: `the stored subtree hash at height ${level} index ${row.idx} does not match the entries below it` };
        }
      }
    }
    o.progress?.(end);
  }
  return { ok: true };
}
