import type { Command } from 'commander';
import { createHash, createPublicKey, type KeyObject } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promised, rpc, type Clients } from '../client.ts';
import type {
  GetAuditKeyResponse,
  GetCheckpointResponse,
  GetConsistencyProofResponse,
  GetInclusionProofResponse,
  ListEntriesResponse,
} from '../../gen/sigil/v1/audit.ts';
import { openCheckpointWith, verifyLog, type VerifyEntry, type VerifyKey } from '../../audit/verify.ts';
import { leafHash, verifyInclusion } from '../../audit/merkle.ts';
import { parseSegment, verifySegment } from '../../audit/segment.ts';
import { noteVerifier, parseCheckpoint, parseNote } from '../../audit/note.ts';
import { UsageError, type CliContext } from './context.ts';
import { fileErrorWords } from '../errors.ts';

const PAGE = 1000;

const call = {
  checkpoint: (c: Clients, treeSize = 0) => promised<GetCheckpointResponse>((md, cb) => c.audit.getCheckpoint({ treeSize }, md, cb)),
  entries: (c: Clients, from: number, count: number) => promised<ListEntriesResponse>((md, cb) => c.audit.listEntries({ from, count }, md, cb)),
  inclusion: (c: Clients, index: number, treeSize: number) => promised<GetInclusionProofResponse>((md, cb) => c.audit.getInclusionProof({ index, treeSize }, md, cb)),
  consistency: (c: Clients, oldSize: number, newSize: number) => promised<GetConsistencyProofResponse>((md, cb) => c.audit.getConsistencyProof({ oldSize, newSize }, md, cb)),
  key: (c: Clients) => promised<GetAuditKeyResponse>((md, cb) => c.audit.getAuditKey({}, md, cb)),
};

/** Every entry from `start` to `size`, a page at a time. */
async function* allEntries(c: Clients, start: number, size: number): AsyncGenerator<VerifyEntry> {
  for (let from = start; from < size; ) {
    const page = await call.entries(c, from, Math.min(PAGE, size - from));
    if (page.entries.length === 0) return;
    for (const e of page.entries) yield { index: e.index, data: e.data, leaf: e.leafHash };
    from = page.entries.at(-1)!.index + 1;
  }
}

function count(s: string, what: string): number {
  if (!/^\d{1,15}$/.test(s)) throw new UsageError(`${what} must be a non-negative integer`);
  return Number(s);
}

/**
 * A pinned audit public key (DER SPKI) read from a PEM file: a public key of a type checkpoints are signed
 * with (Ed25519, or ECDSA P-256 on a backend without Ed25519); a private key or another type is refused.
 */
function pinnedSpki(file: string): Buffer {
  let pem: string;
  try {
    pem = readFileSync(file, 'utf8');
  } catch (err) {
    throw new UsageError(`cannot read ${file} (--key): ${fileErrorWords(err)}`);
  }
  const what = `--key ${file}`;
  if (/-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----/.test(pem)) throw new UsageError(`${what} is a private key: pin an audit public key (sigilctl audit keys prints them); a client key goes before the command (sigilctl --key FILE audit ...)`);
  let key: KeyObject;
  try {
    key = createPublicKey(pem);
  } catch {
    throw new UsageError(`${what} is not a pem public key: pin an audit public key (sigilctl audit keys prints them)`);
  }
  const type = key.asymmetricKeyType;
  const curve = key.asymmetricKeyDetails?.namedCurve;
  if (type !== 'ed25519' && !(type === 'ec' && curve === 'prime256v1')) {
    throw new UsageError(`${what} is ${type === 'ec' ? `an ec ${curve ?? ''} key` : `an ${type ?? 'unknown'} key`}, not an audit public key (Ed25519, or ECDSA P-256): sigilctl audit keys prints them`);
  }
  return key.export({ format: 'der', type: 'spki' });
}

/**
 * The entries of the archived prefix read from the segment files in `dir` the server names (in order),
 * then the live entries: the verifier checks them all against the latest checkpoint, so a segment that is
 * not this log's, or an altered one, fails the whole verification.
 */
async function* withSegments(c: Clients, dir: string, segments: ListEntriesResponse['archivedSegments'], end: number, size: number): AsyncGenerator<VerifyEntry> {
  for (const s of segments) {
    let bytes: Buffer;
    try {
      bytes = readFileSync(join(dir, s.file));
    } catch (err) {
      throw new UsageError(`the archive segment ${s.file} (entries ${s.start} to ${s.end - 1}) is not in ${dir}: ${(err as NodeJS.ErrnoException).code ?? 'unreadable'}`);
    }
    if (createHash('sha256').update(bytes).digest('hex') !== s.sha256) process.stderr.write(`sigilctl: ${s.file} is not the file the daemon recorded (sha256 ${s.sha256}): checking its entries anyway\n`);
    let seg: ReturnType<typeof parseSegment>;
    try {
      seg = parseSegment(bytes);
    } catch (err) {
      throw new UsageError(`${join(dir, s.file)}: ${(err as Error).message}`);
    }
    for (let i = 0; i < seg.entries.length; i++) yield { index: seg.header.start + i, data: seg.entries[i]! };
  }
  yield* allEntries(c, end, size);
}

/** Every audit key version the server names, labelled `name@N` (a daemon before rotation sends only the current one). */
function serverKeys(k: GetAuditKeyResponse): VerifyKey[] {
  if (k.versions.length === 0) return [{ spki: k.spkiDer, label: k.keyVersion }];
  return k.versions.map((v) => ({ spki: v.spkiDer, label: v.keyVersion }));
}

/** `sigilctl audit tail|keys|checkpoint|verify|proof|verify-archive|archive`: read and verify the audit log (roles auditor or admin), verify archive segments (offline), archive old entries (admin). */
export function registerAuditCommands(program: Command, cli: CliContext): void {
  const audit = program.command('audit').description('read and verify the audit log');

  audit
    .command('tail')
    .description('print the last entries of the audit log: a line each (index, tab, entry); with -o json one compact json object per line (json lines): {"index":N,"entry":{...}}')
    .option('-n, --lines <n>', 'how many entries', '20')
    .option('--follow', 'keep printing new entries as they come (every second)')
    .action(async (o: { lines: string; follow?: boolean }) => {
      const c = cli.open();
      const n = count(o.lines, '-n');
      const head = await call.entries(c, 0, 0);
      // Archived entries are not served: the tail starts after them at the earliest.
      let next = Math.max(head.archivedEnd, head.treeSize - n);
      for (;;) {
        const page = await call.entries(c, next, PAGE);
        for (const e of page.entries) {
          const text = e.data.toString('utf8');
          // JSON lines, so `--follow` output can be read a line at a time.
          if (cli.json()) process.stdout.write(`${JSON.stringify({ index: e.index, entry: JSON.parse(text) as unknown })}\n`);
          else cli.out(null, `${e.index}\t${text}`);
          next = e.index + 1;
        }
        if (page.entries.length === PAGE) continue;
        if (!o.follow) return;
        await new Promise((r) => setTimeout(r, 1000));
      }
    });

  audit
    .command('keys')
    .description('list every audit key version with its window, note key id and public key (pin the ones you trust)')
    .action(async () => {
      const k = await call.key(cli.open());
      const versions = (k.versions.length > 0 ? k.versions : [{ keyVersion: k.keyVersion, spkiDer: k.spkiDer, pem: k.pem, noteKeyId: k.noteKeyId, verifierKey: k.verifierKey, createTime: undefined, supersedeTime: undefined, current: true }]).map((v) => ({
        keyVersion: v.keyVersion,
        current: v.current,
        created: v.createTime?.toISOString() ?? null,
        superseded: v.supersedeTime?.toISOString() ?? null,
        noteKeyId: v.noteKeyId.toString('hex'),
        verifierKey: v.verifierKey,
        pem: v.pem,
      }));
      cli.out(
        { noteKeyName: k.noteKeyName, versions },
        versions.map((v) => `${v.keyVersion}${v.current ? ' (current)' : ''}  created ${v.created ?? '?'}${v.superseded ? `  superseded ${v.superseded}` : ''}\n  ${v.verifierKey}\n${v.pem.trimEnd()}`).join('\n'),
      );
    });

  audit
    .command('checkpoint')
    .description('get the latest signed checkpoint (save it to verify against later)')
    .option('--out <file>', 'write the signed checkpoint note to this file')
    .action(async (o: { out?: string }) => {
      const c = cli.open();
      const cp = await call.checkpoint(c);
      if (o.out) writeFileSync(o.out, cp.note);
      cli.out(
        { treeSize: cp.treeSize, rootHash: cp.rootHash.toString('hex'), keyVersion: cp.keyVersion, note: cp.note, savedTo: o.out ?? null },
        o.out ? `checkpoint at size ${cp.treeSize} saved to ${o.out}` : cp.note.trimEnd(),
      );
    });

  audit
    .command('verify')
    .description('verify the whole audit log against its latest checkpoint and, with --checkpoint, that it still extends a saved one')
    .option('--checkpoint <file>', 'a checkpoint saved earlier (sigilctl audit checkpoint --out)')
    .option('--key <pem>', 'pin an audit key version (repeat it for every version you trust; otherwise every version is fetched from the server)', (v: string, all: string[]) => [...all, v], [] as string[])
    .option('--archive <dir>', 'the directory holding the archive segments of the archived prefix: verify it too (without it, the archived entries are not seen)')
    .action(async (o: { checkpoint?: string; key: string[]; archive?: string }) => {
      const c = cli.open();
      const k = await call.key(c);
      const server = serverKeys(k);
      let keys: VerifyKey[];
      let untrusted: Map<string, string> | undefined;
      let keySource: string;
      if (o.key.length > 0) {
        keys = o.key.map((file) => {
          const spki = pinnedSpki(file);
          const known = server.find((s) => spki.equals(s.spki));
          return { spki, label: known ? `${known.label} (pinned from ${file})` : `the key pinned from ${file}, none of the audit key versions sigild names` };
        });
        const ids = new Set(keys.map((x) => noteVerifier(k.noteKeyName, x.spki).keyId.toString('hex')));
        untrusted = new Map(server.map((s) => [noteVerifier(k.noteKeyName, s.spki).keyId.toString('hex'), s.label] as const).filter(([id]) => !ids.has(id)));
        keySource = `pinned from ${o.key.join(', ')}`;
      } else {
        keys = server;
        keySource = `fetched from the server (${server.map((s) => s.label).join(', ')}; not pinned: use --key to pin them)`;
        process.stderr.write(`sigilctl: the audit key versions were ${keySource}\n`);
      }
      let saved: { checkpoint: string; proof: Buffer[] } | undefined;
      let savedSize: number | null = null;
      if (o.checkpoint) {
        const text = readFileSync(o.checkpoint, 'utf8');
        try {
          savedSize = parseCheckpoint(parseNote(text).text).size;
        } catch (err) {
          throw new UsageError(`${o.checkpoint} is not a signed checkpoint: ${(err as Error).message}`);
        }
        saved = { checkpoint: text, proof: [] };
      }
      const latest = await call.checkpoint(c);
      if (saved && savedSize !== null && savedSize <= latest.treeSize) {
        saved.proof = (await call.consistency(c, savedSize, latest.treeSize)).hashes;
      }
      const head = await call.entries(c, 0, 0);
      const end = Math.min(head.archivedEnd, latest.treeSize);
      const segments = head.archivedSegments;
      const r = await verifyLog({
        entries: end === 0 ? allEntries(c, 0, latest.treeSize) : o.archive !== undefined ? withSegments(c, o.archive, segments, end, latest.treeSize) : allEntries(c, end, latest.treeSize),
        start: end > 0 && o.archive === undefined ? { size: end, frontier: head.archivedFrontier } : undefined,
        checkpoint: latest.note,
        keys,
        untrusted,
        origin: k.noteKeyName,
        saved,
      });
      const unseen = r.from > 0 ? `; entries 0 to ${r.from - 1} are archived in ${segments.length} segment${segments.length === 1 ? '' : 's'} and were not seen (give them with --archive DIR)` : '';
      const seenArchive = end > 0 && o.archive !== undefined ? `; entries 0 to ${end - 1} read from ${segments.length} archive segment${segments.length === 1 ? '' : 's'} in ${o.archive}` : '';
      const json = {
        ...r,
        archived: { end, segments: segments.map((x) => ({ start: x.start, end: x.end, file: x.file, sha256: x.sha256 })), seen: end === 0 || o.archive !== undefined },
        key: { version: k.keyVersion, source: o.key.length > 0 ? 'pinned' : 'server', verifierKey: k.verifierKey, pem: k.pem },
        keys: keys.map((x) => x.label),
      };
      if (r.ok) {
        const savedText = r.savedSize !== null ? `; consistent with the saved checkpoint at size ${r.savedSize} (signed by ${r.savedSignedBy})` : '';
        // Not a failure of the log: acts whose outcome it does not hold; read the current state for them.
        const open = r.openIntents.length === 0
          ? ''
          : `\n${r.openIntents.length} act${r.openIntents.length === 1 ? '' : 's'} written ahead with no outcome in the log (each may or may not have taken effect: check the current state, see docs/security.md):\n${r.openIntents
              .map((x) => `  entry ${x.index}  ${x.t}  ${x.who}  ${x.act}${x.key ? ` ${x.key}` : ''}  intent ${x.intent}`)
              .join('\n')}`;
        const what = r.from > 0 ? `entries ${r.from} to ${r.size - 1} of ${r.size}` : `${r.size} entries`;
        cli.out(json, `ok: ${what} verified against the checkpoint signed by ${r.signedBy} (root ${r.root})${savedText}${unseen}${seenArchive}; keys ${keySource}${open}`);
        return;
      }
      const f = r.failure!;
      cli.out(json, `FAILED (${f.check}${f.index !== undefined ? ` at entry ${f.index}` : ''}): ${f.message}`);
      process.exitCode = 1;
    });

  audit
    .command('archive')
    .description(
      'move the oldest entries, up to the latest signed checkpoint, into segment files in the directory sigild\'s config names (audit.archiveDir), ' +
        'while sigild runs (role admin); each segment is verified before the entries are pruned',
    )
    .option('--before <n>', 'archive only entries below this index (rounded down to audit.archiveAlign)')
    .action(async (o: { before?: string }) => {
      const before = o.before === undefined ? undefined : count(o.before, '--before');
      const r = await rpc.archiveAuditLog(cli.open(), before === undefined ? {} : { before });
      const segments = r.segments.map((s) => ({ file: s.file, start: s.start, end: s.end, sha256: s.sha256, checkpointSize: s.checkpointSize, entryIndex: s.entryIndex }));
      cli.out(
        { segments, archivedEnd: r.archivedEnd, treeSize: r.treeSize, nothing: r.nothing || null },
        r.segments.length === 0
          ? `nothing archived: ${r.nothing}`
          : [
              ...segments.map((s) => `archived entries ${s.start} to ${s.end - 1} in ${s.file} (sha256 ${s.sha256}, checkpoint at size ${s.checkpointSize}, audit.archive entry ${s.entryIndex})`),
              `entries below ${r.archivedEnd} are archived; the log holds ${r.treeSize}`,
            ].join('\n'),
      );
    });

  audit
    .command('verify-archive')
    .description('verify archive segment files offline (no daemon): each checkpoint signature, every entry, and that they hash to the checkpoint\'s root')
    .argument('<files...>', 'segment files (sigild audit archive --out)')
    .option('--key <pem>', 'a trusted audit key version (repeat it for every version that may have signed)', (v: string, all: string[]) => [...all, v], [] as string[])
    .option('--origin <origin>', 'the log the segments must be of (its checkpoint origin)')
    .action((files: string[], o: { key: string[]; origin?: string }) => {
      if (o.key.length === 0) throw new UsageError('--key is required: the audit public key (sigilctl audit keys) that signed the segments\' checkpoints');
      const keys = o.key.map((file) => ({ spki: pinnedSpki(file), label: `the key pinned from ${file}` }));
      const results = files.map((file) => {
        const bytes = readFileSync(file);
        const sha256 = createHash('sha256').update(bytes).digest('hex');
        try {
          return { file, sha256, ...verifySegment(parseSegment(bytes), keys, o.origin) };
        } catch (err) {
          return { file, sha256, ok: false, start: 0, end: 0, checkpointSize: 0, root: '', signedBy: null, failure: (err as Error).message };
        }
      });
      cli.out(
        results,
        results
          .map((r) => (r.ok ? `ok: ${r.file}: entries ${r.start} to ${r.end - 1}, checkpoint at size ${r.checkpointSize} (root ${r.root}) signed by ${r.signedBy}; sha256 ${r.sha256}` : `FAILED: ${r.file}: ${r.failure}`))
          .join('\n'),
      );
      if (results.some((r) => !r.ok)) process.exitCode = 1;
    });

  audit
    .command('proof')
    .description('get and check the inclusion proof of one entry')
    .requiredOption('--index <n>', 'the entry index')
    .option('--size <m>', 'the tree size (default: the latest checkpoint)')
    .action(async (o: { index: string; size?: string }) => {
      const c = cli.open();
      const index = count(o.index, '--index');
      const k = await call.key(c);
      const cp = o.size === undefined ? await call.checkpoint(c) : await call.checkpoint(c, count(o.size, '--size'));
      // An older checkpoint may be signed by an older audit key version: pick it by the note key id.
      const { checkpoint } = openCheckpointWith(cp.note, serverKeys(k), k.noteKeyName);
      const p = await call.inclusion(c, index, checkpoint.size);
      // An archived entry comes without its bytes: the proof is of its leaf hash, the bytes are in the segment.
      const archived = p.archivedSegment !== '';
      const ok = (archived ? p.data.length === 0 : leafHash(p.data).equals(p.leafHash)) && verifyInclusion(index, checkpoint.size, p.leafHash, p.hashes, checkpoint.root);
      const entry = archived ? null : (JSON.parse(p.data.toString('utf8')) as unknown);
      const json = { ok, index, treeSize: checkpoint.size, root: checkpoint.root.toString('hex'), leafHash: p.leafHash.toString('hex'), hashes: p.hashes.map((h) => h.toString('hex')), entry, archivedSegment: archived ? p.archivedSegment : null };
      const what = archived ? `entry ${index} (archived in segment ${p.archivedSegment}: proven by its leaf hash ${p.leafHash.toString('hex')})` : `entry ${index}`;
      cli.out(json, `${ok ? 'ok' : 'FAILED'}: ${what} ${ok ? 'is' : 'is not proven to be'} in the tree of size ${checkpoint.size} (root ${checkpoint.root.toString('hex')})\n${archived ? '' : `${p.data.toString('utf8')}\n`}${p.hashes.map((h) => `  ${h.toString('hex')}`).join('\n')}`);
      if (!ok) process.exitCode = 1;
    });
}
