import { createHash, hash } from 'node:crypto';
import { SigilError } from '../errors.ts';

// RFC 6962 2.1 / RFC 9162 2.1.1: SHA-256 with domain separation between leaves and interior nodes.
const LEAF_PREFIX = Buffer.from([0x00]);
const NODE_PREFIX = Buffer.from([0x01]);

/** The size in bytes of every hash in the tree. */
export const HASH_SIZE = 32;

/** The root of the empty tree: SHA-256 of the empty string (RFC 9162 2.1.1). */
export const EMPTY_ROOT: Buffer = createHash('sha256').digest();

/** The leaf hash of an entry: SHA-256(0x00 || data). */
export function leafHash(data: Uint8Array): Buffer {
  // One-shot hash of one buffer: about 40% less time than createHash/update/digest, which start-up checks
  // that re-hash every entry feel.
  return hash('sha256', Buffer.concat([LEAF_PREFIX, data]), 'buffer');
}

/** The hash of an interior node: SHA-256(0x01 || left || right). */
export function nodeHash(left: Uint8Array, right: Uint8Array): Buffer {
  return hash('sha256', Buffer.concat([NODE_PREFIX, left, right]), 'buffer');
}

/**
 * Reads the hash of the perfect subtree of height `level` whose leaves are
 * `[index * 2^level, (index + 1) * 2^level)`; level 0 is a leaf hash.
 */
export type PerfectReader = (level: number, index: number) => Buffer;

/** Largest power of two strictly below `n` (n >= 2): the split point k of RFC 9162 2.1.1. */
export function splitPoint(n: number): number {
  let k = 1;
  while (k * 2 < n) k *= 2;
  return k;
}

/**
 * The root of the leaves `[start, end)`, where `start` is aligned as every range of the RFC
 * recursion is: the range splits into perfect subtrees of decreasing size, folded from the right.
 */
export function rangeRoot(read: PerfectReader, start: number, end: number): Buffer {
  if (end <= start) return EMPTY_ROOT;
  const parts: Buffer[] = [];
  let at = start;
  let left = end - start;
  while (left > 0) {
    let level = 0;
    let size = 1;
    while (size * 2 <= left) {
      size *= 2;
      level++;
    }
    if (at % size !== 0) throw new SigilError('INTERNAL', `unaligned merkle range [${start}, ${end})`);
    parts.push(read(level, at / size));
    at += size;
    left -= size;
  }
  let h = parts[parts.length - 1]!;
  for (let i = parts.length - 2; i >= 0; i--) h = nodeHash(parts[i]!, h);
  return h;
}

/** The inclusion proof of leaf `index` in the tree of `size` leaves (RFC 9162 2.1.3.1, PATH). */
export function inclusionProof(read: PerfectReader, index: number, size: number): Buffer[] {
  checkCount(size, 'tree size');
  if (!Number.isSafeInteger(index) || index < 0 || index >= size) throw new SigilError('INVALID_ARGUMENT', `leaf index ${index} is outside a tree of size ${size}`);
  const out: Buffer[] = [];
  // Walk down iteratively: each step adds the sibling range, collected leaf-first at the end.
  let lo = 0;
  let hi = size;
  let m = index;
  const stack: Buffer[] = [];
  while (hi - lo > 1) {
    const k = splitPoint(hi - lo);
    if (m < k) {
      stack.push(rangeRoot(read, lo + k, hi));
      hi = lo + k;
    } else {
      stack.push(rangeRoot(read, lo, lo + k));
      lo += k;
      m -= k;
    }
  }
  for (let i = stack.length - 1; i >= 0; i--) out.push(stack[i]!);
  return out;
}

/** The consistency proof between the trees of `oldSize` and `newSize` leaves (RFC 9162 2.1.4.1, SUBPROOF). */
export function consistencyProof(read: PerfectReader, oldSize: number, newSize: number): Buffer[] {
  checkCount(oldSize, 'old size');
  checkCount(newSize, 'new size');
  if (oldSize > newSize) throw new SigilError('INVALID_ARGUMENT', `old size ${oldSize} is larger than new size ${newSize}`);
  if (oldSize === 0 || oldSize === newSize) return [];
  const stack: Buffer[] = [];
  let lo = 0;
  let hi = newSize;
  let m = oldSize;
  let whole = true;
  while (m !== hi - lo) {
    const k = splitPoint(hi - lo);
    if (m <= k) {
      stack.push(rangeRoot(read, lo + k, hi));
      hi = lo + k;
    } else {
      stack.push(rangeRoot(read, lo, lo + k));
      lo += k;
      m -= k;
      whole = false;
    }
  }
  const out: Buffer[] = whole ? [] : [rangeRoot(read, lo, hi)];
  for (let i = stack.length - 1; i >= 0; i--) out.push(stack[i]!);
  return out;
}

/** Recomputes the root from a leaf hash and its inclusion proof (RFC 9162 2.1.3.2); throws on a malformed proof. */
export function rootFromInclusionProof(index: number, size: number, leaf: Uint8Array, proof: readonly Uint8Array[]): Buffer {
  checkCount(size, 'tree size');
  if (!Number.isSafeInteger(index) || index < 0 || index >= size) throw new SigilError('INVALID_ARGUMENT', `leaf index ${index} is outside a tree of size ${size}`);
  checkHashes([leaf, ...proof]);
  let fn = index;
  let sn = size - 1;
  let r: Buffer = Buffer.from(leaf);
  for (const p of proof) {
    if (sn === 0) throw new SigilError('INVALID_ARGUMENT', 'inclusion proof is too long');
    if (fn % 2 === 1 || fn === sn) {
      r = nodeHash(p, r);
      if (fn % 2 === 0) {
        while (fn % 2 === 0 && fn !== 0) {
          fn = Math.floor(fn / 2);
          sn = Math.floor(sn / 2);
        }
      }
    } else {
      r = nodeHash(r, p);
    }
    fn = Math.floor(fn / 2);
    sn = Math.floor(sn / 2);
  }
  if (sn !== 0) throw new SigilError('INVALID_ARGUMENT', 'inclusion proof is too short');
  return r;
}

/** True when `proof` proves leaf `index` with hash `leaf` in the tree of `size` leaves with root `root`. */
export function verifyInclusion(index: number, size: number, leaf: Uint8Array, proof: readonly Uint8Array[], root: Uint8Array): boolean {
  try {
    return rootFromInclusionProof(index, size, leaf, proof).equals(root);
  } catch {
    return false;
  }
}

/** True when `proof` shows the tree (`oldSize`, `oldRoot`) is a prefix of (`newSize`, `newRoot`) (RFC 9162 2.1.4.2). */
export function verifyConsistency(oldSize: number, newSize: number, oldRoot: Uint8Array, newRoot: Uint8Array, proof: readonly Uint8Array[]): boolean {
  try {
    checkCount(oldSize, 'old size');
    checkCount(newSize, 'new size');
    checkHashes([oldRoot, newRoot, ...proof]);
  } catch {
    return false;
  }
  if (oldSize > newSize) return false;
  if (oldSize === newSize) return proof.length === 0 && Buffer.from(oldRoot).equals(newRoot);
  if (oldSize === 0) return proof.length === 0;
  if (proof.length === 0) return false;
  const path = isPowerOfTwo(oldSize) ? [oldRoot, ...proof] : [...proof];
  let fn = oldSize - 1;
  let sn = newSize - 1;
  while (fn % 2 === 1) {
    fn = Math.floor(fn / 2);
    sn = Math.floor(sn / 2);
  }
  let fr: Buffer = Buffer.from(path[0]!);
  let sr: Buffer = Buffer.from(path[0]!);
  for (let i = 1; i < path.length; i++) {
    const c = path[i]!;
    if (sn === 0) return false;
    if (fn % 2 === 1 || fn === sn) {
      fr = nodeHash(c, fr);
      sr = nodeHash(c, sr);
      if (fn % 2 === 0) {
        while (fn % 2 === 0 && fn !== 0) {
          fn = Math.floor(fn / 2);
          sn = Math.floor(sn / 2);
        }
      }
    } else {
      sr = nodeHash(sr, c);
    }
    fn = Math.floor(fn / 2);
    sn = Math.floor(sn / 2);
  }
  return sn === 0 && fr.equals(oldRoot) && sr.equals(newRoot);
}

/** A perfect subtree completed by an append: its height, its index at that height, its hash. */
export interface CompletedSubtree {
  level: number;
  index: number;
  hash: Buffer;
}

/**
 * The right frontier of a tree (a compact range from 0): one perfect subtree hash per set bit of the
 * size, largest first. Enough to append and to compute the root at the current size in O(log n).
 */
export class CompactRange {
  #size: number;
  readonly #hashes: Buffer[];

  constructor(size = 0, hashes: readonly Buffer[] = []) {
    checkCount(size, 'tree size');
    if (popcount(size) !== hashes.length) throw new SigilError('INTERNAL', `a compact range of size ${size} needs ${popcount(size)} hashes, got ${hashes.length}`);
    this.#size = size;
    this.#hashes = [...hashes];
  }

  /** The number of leaves appended so far. */
  get size(): number {
    return this.#size;
  }

  /** The frontier hashes, largest subtree first. */
  get hashes(): readonly Buffer[] {
    return this.#hashes;
  }

  /**
   * The frontier of the first `size` leaves read from `read`: one perfect subtree per set bit of `size`,
   * largest first, so O(log n) reads instead of appending every leaf.
   */
  static at(read: PerfectReader, size: number): CompactRange {
    checkCount(size, 'tree size');
    const hashes: Buffer[] = [];
    let at = 0;
    for (let level = Math.floor(Math.log2(Math.max(size, 1))); level >= 0; level--) {
      const width = 2 ** level;
      if (size - at < width) continue;
      hashes.push(read(level, at / width));
      at += width;
    }
    return new CompactRange(size, hashes);
  }

  /** A copy to append to speculatively (the original stays as it was if the copy is dropped). */
  clone(): CompactRange {
    return new CompactRange(this.#size, this.#hashes);
  }

  /** Appends a leaf hash; calls `completed` for every perfect subtree of height >= 1 the append completes. */
  append(leaf: Buffer, completed?: (s: CompletedSubtree) => void): void {
    let h = leaf;
    let level = 0;
    let index = this.#size;
    // Each trailing 1 bit of the old size is a subtree of equal height to merge with.
    while (index % 2 === 1) {
      h = nodeHash(this.#hashes.pop()!, h);
      level++;
      index = Math.floor(index / 2);
      completed?.({ level, index, hash: h });
    }
    this.#hashes.push(h);
    this.#size++;
  }

  /**
   * Appends a whole perfect subtree of height `level` (2^level leaves) by its hash; the current size must
   * be a multiple of 2^level (an aligned subtree, as in a compact range). `append` is the case level 0.
   */
  appendSubtree(level: number, hash: Buffer): void {
    const width = 2 ** level;
    if (!Number.isSafeInteger(width) || this.#size % width !== 0) throw new SigilError('INVALID_ARGUMENT', `a subtree of height ${level} does not start at ${this.#size}`);
    let h = hash;
    let index = this.#size / width;
    while (index % 2 === 1) {
      h = nodeHash(this.#hashes.pop()!, h);
      index = Math.floor(index / 2);
    }
    this.#hashes.push(h);
    this.#size += width;
  }

  /** The tree head at the current size. */
  root(): Buffer {
    if (this.#hashes.length === 0) return EMPTY_ROOT;
    let h = this.#hashes[this.#hashes.length - 1]!;
    for (let i = this.#hashes.length - 2; i >= 0; i--) h = nodeHash(this.#hashes[i]!, h);
    return h;
  }
}

/**
 * The aligned perfect subtrees that cover the leaves `[start, end)` exactly, left to right, each the
 * largest that starts where the previous one ended (a compact range): `[0, n)` gives the frontier of n.
 */
export function rangeTiles(start: number, end: number): Array<{ level: number; index: number }> {
  checkCount(start, 'range start');
  checkCount(end, 'range end');
  const out: Array<{ level: number; index: number }> = [];
  let at = start;
  while (at < end) {
    let level = 0;
    while ((at === 0 || at % 2 ** (level + 1) === 0) && at + 2 ** (level + 1) <= end) level++;
    out.push({ level, index: at / 2 ** level });
    at += 2 ** level;
  }
  return out;
}

/** Leaf hashes held in memory, for verifiers and tests: answers every perfect subtree by recomputing it. */
export function memoryReader(leaves: readonly Buffer[]): PerfectReader {
  const levels: Buffer[][] = [[...leaves]];
  return (level, index) => {
    for (let l = levels.length; l <= level; l++) {
      const below = levels[l - 1]!;
      const row: Buffer[] = [];
      for (let i = 0; i + 1 < below.length; i += 2) row.push(nodeHash(below[i]!, below[i + 1]!));
      levels.push(row);
    }
    const h = levels[level]![index];
    if (h === undefined) throw new SigilError('INTERNAL', `no subtree at level ${level} index ${index}`);
    return h;
  };
}

function popcount(n: number): number {
  let c = 0;
  for (let x = n; x > 0; x = Math.floor(x / 2)) c += x % 2;
  return c;
}

function isPowerOfTwo(n: number): boolean {
  return n > 0 && popcount(n) === 1;
}

function checkCount(n: number, what: string): void {
  if (!Number.isSafeInteger(n) || n < 0) throw new SigilError('INVALID_ARGUMENT', `${what} must be a non-negative integer`);
}

function checkHashes(hs: readonly Uint8Array[]): void {
  for (const h of hs) if (h.length !== HASH_SIZE) throw new SigilError('INVALID_ARGUMENT', `a merkle hash is ${HASH_SIZE} bytes, got ${h.length}`);
}
