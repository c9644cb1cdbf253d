import { isSigilError, SigilError } from '../errors.ts';
import { decodeEntry } from './entry.ts';
import { CompactRange, leafHash, rangeTiles } from './merkle.ts';
import { MAX_NOTE_BYTES } from './note.ts';
import { openCheckpointWith, type VerifyKey } from './verify.ts';

/** The first line of every archive segment (docs/audit.md, "Archive segments"). */
export const SEGMENT_MAGIC = 'sigil-audit-segment v1';

// Bounds for untrusted bytes: a header line, one entry line, and the entries of one segment.
const MAX_HEADER_BYTES = 256 * 1024;
const MAX_ENTRY_BYTES = 1024 * 1024;
/** The most entries one segment may hold (the archive command writes far fewer per file). */
export const MAX_SEGMENT_ENTRIES = 2 ** 24;

/**
 * The header of a segment: which log and entries it holds, the signed checkpoint that covers them, and
 * the subtree hashes that place them in that checkpoint's tree.
 */
export interface SegmentHeader {
  /** The log's origin (checkpoint origin line and note key name). */
  origin: string;
  /** The segment holds entries `[start, end)`. */
  start: number;
  end: number;
  /** A signed checkpoint (note text) of a tree of at least `end` entries. */
  checkpoint: string;
  /** The frontier of the entries before `start`: one perfect subtree hash per set bit of `start`, largest first. */
  left: Buffer[];
  /** The aligned perfect subtrees covering `[end, checkpoint size)`, left to right (`rangeTiles`). */
  right: Buffer[];
}

/** A parsed segment: its header and its entries' canonical bytes, entry i at index `start + i`. */
export interface Segment {
  header: SegmentHeader;
  entries: Buffer[];
}

/** The outcome of checking a segment on its own. */
export interface SegmentReport {
  ok: boolean;
  start: number;
  end: number;
  /** The size and root (hex) of the checkpoint it carries; 0 and '' when that checkpoint did not verify. */
  checkpointSize: number;
  root: string;
  /** The trusted key that signed the checkpoint, or null. */
  signedBy: string | null;
  /** What did not verify. */
  failure: string | null;
}

/** The header lines of a segment (magic, then the header as one JSON line); the entries follow, one a line. */
export function encodeSegmentHeader(h: SegmentHeader): Buffer {
  const json = JSON.stringify({
    origin: h.origin,
    start: h.start,
    end: h.end,
    checkpoint: h.checkpoint,
    left: h.left.map((x) => x.toString('hex')),
    right: h.right.map((x) => x.toString('hex')),
  });
  return Buffer.from(`${SEGMENT_MAGIC}\n${json}\n`, 'utf8');
}

/** One entry line of a segment: the entry's canonical JSON (which never holds a raw newline) and a newline. */
export function encodeSegmentEntry(data: Uint8Array): Buffer {
  if (data.length === 0 || data.includes(0x0a)) throw new SigilError('INVALID_ARGUMENT', 'an audit entry for a segment must be non-empty and hold no newline');
  return Buffer.concat([data, Buffer.from([0x0a])]);
}

const bad = (what: string): SigilError => new SigilError('INVALID_ARGUMENT', `not an audit segment: ${what}`);

/**
 * Parses segment bytes, which are untrusted: the exact magic line, a header of known fields within
 * bounds, then exactly `end - start` non-empty entry lines and nothing after. Throws INVALID_ARGUMENT
 * naming what is wrong; checks no hash or signature (`verifySegment` does).
 */
export function parseSegment(bytes: Uint8Array): Segment {
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const m = buf.indexOf(0x0a);
  if (m < 0 || buf.subarray(0, m).toString('latin1') !== SEGMENT_MAGIC) throw bad(`the first line is not ${SEGMENT_MAGIC}`);
  const h = buf.indexOf(0x0a, m + 1);
  if (h < 0 || h - m - 1 > MAX_HEADER_BYTES) throw bad('the header line is missing or too long');
  let v: unknown;
  try {
    v = JSON.parse(buf.subarray(m + 1, h).toString('utf8'));
  } catch {
    throw bad('the header is not json');
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw bad('the header is not a json object');
  const o = v as Record<string, unknown>;
  const known = ['origin', 'start', 'end', 'checkpoint', 'left', 'right'];
  for (const k of Object.keys(o)) if (!known.includes(k)) throw bad(`the header has an unknown field ${k}`);
  const int = (k: string): number => {
    const x = o[k];
    if (typeof x !== 'number' || !Number.isSafeInteger(x) || x < 0) throw bad(`header field ${k} is not a non-negative integer`);
    return x;
  };
  const str = (k: string, max: number): string => {
    const x = o[k];
    if (typeof x !== 'string' || x.length === 0 || x.length > max) throw bad(`header field ${k} is not a string of 1 to ${max} characters`);
    return x;
  };
  const hashes = (k: string): Buffer[] => {
    const x = o[k];
    // At most one hash per bit of a safe integer size.
    if (!Array.isArray(x) || x.length > 53) throw bad(`header field ${k} is not a list of at most 53 hashes`);
    return x.map((y) => {
      if (typeof y !== 'string' || !/^[0-9a-f]{64}$/.test(y)) throw bad(`header field ${k} holds something other than a hex sha-256 hash`);
      return Buffer.from(y, 'hex');
    });
  };
  const start = int('start');
  const end = int('end');
  if (end <= start || end - start > MAX_SEGMENT_ENTRIES) throw bad(`the range [${start}, ${end}) is empty or holds more than ${MAX_SEGMENT_ENTRIES} entries`);
  const header: SegmentHeader = { origin: str('origin', 255), start, end, checkpoint: str('checkpoint', MAX_NOTE_BYTES), left: hashes('left'), right: hashes('right') };
  const entries: Buffer[] = [];
  let at = h + 1;
  while (at < buf.length) {
    if (entries.length === end - start) throw bad(`bytes follow the last of its ${end - start} entries`);
    const nl = buf.indexOf(0x0a, at);
    if (nl < 0) throw bad(`entry ${start + entries.length} has no end of line`);
    if (nl === at || nl - at > MAX_ENTRY_BYTES) throw bad(`entry ${start + entries.length} is empty or longer than ${MAX_ENTRY_BYTES} bytes`);
    entries.push(buf.subarray(at, nl));
    at = nl + 1;
  }
  if (entries.length !== end - start) throw bad(`it holds ${entries.length} entries, the header says ${end - start}`);
  return { header, entries };
}

/**
 * Checks a segment offline with the trusted audit key versions: the checkpoint's signature (and, when
 * given, that it is of the log `origin`), every entry in canonical form and in time order, and that the
 * entries' leaf hashes, with the recorded subtrees before and after them, hash to the checkpoint's root
 * (so each entry sits at its index in the signed tree).
 */
export function verifySegment(seg: Segment, keys: readonly VerifyKey[], origin?: string): SegmentReport {
  const steps = verifySteps(seg, keys, origin);
  for (;;) {
    const r = steps.next();
    if (r.done === true) return r.value;
  }
}

/**
 * `verifySegment` for a daemon that serves meanwhile: the same checks, handing the event loop back every
 * 4,096 entries (a segment of 262,144 entries is seconds of work).
 */
export async function verifySegmentAsync(seg: Segment, keys: readonly VerifyKey[], origin?: string): Promise<SegmentReport> {
  const steps = verifySteps(seg, keys, origin);
  for (;;) {
    const r = steps.next();
    if (r.done === true) return r.value;
    await new Promise((resolve) => setImmediate(resolve));
  }
}

/** The checks of `verifySegment`, pausing (yield) every 4,096 entries. */
function* verifySteps(seg: Segment, keys: readonly VerifyKey[], origin?: string): Generator<void, SegmentReport> {
  const { header: h } = seg;
  const report: SegmentReport = { ok: false, start: h.start, end: h.end, checkpointSize: 0, root: '', signedBy: null, failure: null };
  const fail = (failure: string): SegmentReport => ({ ...report, failure });
  if (origin !== undefined && h.origin !== origin) return fail(`it is a segment of the log ${h.origin}, not of ${origin}`);
  let size: number;
  let root: Buffer;
  try {
    const opened = openCheckpointWith(h.checkpoint, keys, h.origin);
    ({ size, root } = opened.checkpoint);
    report.signedBy = opened.key.label;
  } catch (err) {
    return fail(`its checkpoint does not verify: ${isSigilError(err) ? err.message : 'malformed'}`);
  }
  report.checkpointSize = size;
  report.root = root.toString('hex');
  if (h.end > size) return fail(`it holds entries up to ${h.end} but its checkpoint covers only ${size}`);
  const tiles = rangeTiles(h.end, size);
  if (h.right.length !== tiles.length) return fail(`it records ${h.right.length} subtrees after its entries, the checkpoint's tree needs ${tiles.length}`);
  let tree: CompactRange;
  try {
    tree = new CompactRange(h.start, h.left);
  } catch {
    return fail(`it records ${h.left.length} subtrees before its entries, a tree of ${h.start} entries has another number`);
  }
  let lastT = '';
  for (let i = 0; i < seg.entries.length; i++) {
    const data = seg.entries[i]!;
    let t: string;
    try {
      t = decodeEntry(data).t;
    } catch (err) {
      return fail(`entry ${h.start + i} is altered: ${isSigilError(err) ? err.message : 'malformed'}`);
    }
    if (t < lastT) return fail(`entry ${h.start + i} is older than the entry before it`);
    lastT = t;
    tree.append(leafHash(data));
    if (i % 4096 === 4095) yield;
  }
  for (let i = 0; i < tiles.length; i++) tree.appendSubtree(tiles[i]!.level, h.right[i]!);
  if (tree.size !== size || !tree.root().equals(root)) return fail(`its entries do not hash to the root of its checkpoint at size ${size}: an entry was changed, removed or added`);
  return { ...report, ok: true };
}
