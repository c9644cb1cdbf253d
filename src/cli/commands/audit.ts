import type { Command } from 'commander';
import { createPublicKey } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { promised, type Clients } from '../client.ts';
import type {
  GetAuditKeyResponse,
  GetCheckpointResponse,
  GetConsistencyProofResponse,
  GetInclusionProofResponse,
  ListEntriesResponse,
} from '../../gen/sigil/v1/audit.ts';
import { openCheckpointWith, verifyLog, type VerifyEntry, type VerifyKey } from '../../audit/verify.ts';
import { leafHash, verifyInclusion } from '../../audit/merkle.ts';
import { noteVerifier, parseCheckpoint, parseNote } from '../../audit/note.ts';
import { UsageError, type CliContext } from './context.ts';

const PAGE = 1000;

const call = {
  checkpoint: (c: Clients, treeSize = 0) => promised<GetCheckpointResponse>((md, cb) => c.audit.getCheckpoint({ treeSize }, md, cb)),
  entries: (c: Clients, from: number, count: number) => promised<ListEntriesResponse>((md, cb) => c.audit.listEntries({ from, count }, md, cb)),
  inclusion: (c: Clients, index: number, treeSize: number) => promised<GetInclusionProofResponse>((md, cb) => c.audit.getInclusionProof({ index, treeSize }, md, cb)),
  consistency: (c: Clients, oldSize: number, newSize: number) => promised<GetConsistencyProofResponse>((md, cb) => c.audit.getConsistencyProof({ oldSize, newSize }, md, cb)),
  key: (c: Clients) => promised<GetAuditKeyResponse>((md, cb) => c.audit.getAuditKey({}, md, cb)),
};

/** Every entry from 0 to `size`, a page at a time. */
async function* allEntries(c: Clients, size: number): AsyncGenerator<VerifyEntry> {
  for (let from = 0; from < size; ) {
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

/** A pinned audit public key (DER SPKI) read from a PEM file. */
function pinnedSpki(file: string): Buffer {
  try {
    return createPublicKey(readFileSync(file)).export({ format: 'der', type: 'spki' });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw err;
    throw new UsageError(`${file} is not a public key (pem)`);
  }
}

/** Every audit key version the server names, labelled `name@N` (a daemon before rotation sends only the current one). */
function serverKeys(k: GetAuditKeyResponse): VerifyKey[] {
  if (k.versions.length === 0) return [{ spki: k.spkiDer, label: k.keyVersion }];
  return k.versions.map((v) => ({ spki: v.spkiDer, label: v.keyVersion }));
}

/** `sigilctl audit tail|keys|checkpoint|verify|proof`: read and verify the audit log (roles auditor or admin). */
export function registerAuditCommands(program: Command, cli: CliContext): void {
  const audit = program.command('audit').description('read and verify the audit log');

  audit
    .command('tail')
    .description('print the last entries of the audit log')
    .option('-n, --lines <n>', 'how many entries', '20')
    .option('--follow', 'keep printing new entries as they come (every second)')
    .action(async (o: { lines: string; follow?: boolean }) => {
      const c = cli.open();
      const n = count(o.lines, '-n');
      let next = Math.max(0, (await call.entries(c, 0, 0)).treeSize - n);
      for (;;) {
        const page = await call.entries(c, next, PAGE);
        for (const e of page.entries) {
          const text = e.data.toString('utf8');
          cli.out({ index: e.index, entry: JSON.parse(text) as unknown }, `${e.index}\t${text}`);
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
    .action(async (o: { checkpoint?: string; key: string[] }) => {
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
          return { spki, label: known ? `${known.label} (pinned from ${file})` : `the key pinned from ${file}` };
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
      const r = await verifyLog({ entries: allEntries(c, latest.treeSize), checkpoint: latest.note, keys, untrusted, origin: k.noteKeyName, saved });
      const json = {
        ...r,
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
        cli.out(json, `ok: ${r.size} entries verified against the checkpoint signed by ${r.signedBy} (root ${r.root})${savedText}; keys ${keySource}${open}`);
        return;
      }
      const f = r.failure!;
      cli.out(json, `FAILED (${f.check}${f.index !== undefined ? ` at entry ${f.index}` : ''}): ${f.message}`);
      process.exitCode = 1;
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
      const ok = leafHash(p.data).equals(p.leafHash) && verifyInclusion(index, checkpoint.size, p.leafHash, p.hashes, checkpoint.root);
      const json = { ok, index, treeSize: checkpoint.size, root: checkpoint.root.toString('hex'), leafHash: p.leafHash.toString('hex'), hashes: p.hashes.map((h) => h.toString('hex')), entry: JSON.parse(p.data.toString('utf8')) as unknown };
      cli.out(json, `${ok ? 'ok' : 'FAILED'}: entry ${index} ${ok ? 'is' : 'is not proven to be'} in the tree of size ${checkpoint.size} (root ${checkpoint.root.toString('hex')})\n${p.data.toString('utf8')}\n${p.hashes.map((h) => `  ${h.toString('hex')}`).join('\n')}`);
      if (!ok) process.exitCode = 1;
    });
}
