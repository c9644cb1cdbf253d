// `sigild audit archive` on a real daemon's files (SoftHSM token, its own store and audit log): refused while the
// daemon runs; with it stopped, segments written, verified and pruned; the daemon restarts on the pruned log (full
// check and fast start), serves proofs for kept entries and a clear error for archived ones; `sigilctl audit verify`
// with and without the segments; `sigilctl audit verify-archive` offline; and starts refused on tampered files.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { copyFile, cp, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { pino } from 'pino';
import { parse, stringify } from 'yaml';
import { missingTools } from '../helpers/hw.ts';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.ts';
import { connect, promised, rpc, type Clients } from '../../src/cli/client.ts';
import type { GetAuditKeyResponse, GetCheckpointResponse, GetInclusionProofResponse, ListEntriesResponse } from '../../src/gen/sigil/v1/audit.ts';
import { Algorithm } from '../../src/gen/sigil/v1/signer.ts';
import { parseConfig } from '../../src/config/load.ts';
import { startDaemon, type Daemon } from '../../src/main.ts';
import { decodeEntry } from '../../src/audit/entry.ts';
import { leafHash } from '../../src/audit/merkle.ts';
import { parseSegment } from '../../src/audit/segment.ts';

const run = promisify(execFile);
const skip = missingTools('softhsm', 'softhsm2-util');
const SIGILD = new URL('../../bin/sigild.js', import.meta.url).pathname;
const SIGILCTL = new URL('../../bin/sigilctl.js', import.meta.url).pathname;
type Out = { code: number; stdout: string; stderr: string };
const exec = (bin: string, args: string[], env: NodeJS.ProcessEnv = process.env): Promise<Out> =>
  run(process.execPath, [bin, ...args], { env }).then(
    (r) => ({ code: 0, stdout: r.stdout, stderr: r.stderr }),
    (e: Out) => ({ code: e.code, stdout: e.stdout, stderr: e.stderr }),
  );
const SIGNS = 40;

describe('sigild audit archive, and a daemon on the pruned log', { skip: skip ?? false }, () => {
  let td: TestDaemon;
  let daemon: Daemon | null = null;
  const clients: Clients[] = [];
  let segDir: string;
  let pem: string;
  let saved: string;
  let checkpointSize: number;
  const digest = (s: string) => createHash('sha256').update(s).digest();
  const q = {
    entries: (c: Clients, from: number, count: number) => promised<ListEntriesResponse>((md, cb) => c.audit.listEntries({ from, count }, md, cb)),
    inclusion: (c: Clients, index: number) => promised<GetInclusionProofResponse>((md, cb) => c.audit.getInclusionProof({ index, treeSize: 0 }, md, cb)),
    checkpoint: (c: Clients) => promised<GetCheckpointResponse>((md, cb) => c.audit.getCheckpoint({ treeSize: 0 }, md, cb)),
  };
  /** Starts the daemon again on the test daemon's files, with `audit` settings merged into its config. */
  const restart = async (audit: Record<string, unknown> = {}): Promise<Daemon> => {
    await daemon?.stop();
    daemon = null;
    const cfg = parse(await readFile(td.configFile, 'utf8')) as Record<string, unknown> & { audit?: Record<string, unknown> };
    cfg.audit = { ...cfg.audit, ...audit };
    daemon = await startDaemon(parseConfig(stringify(cfg), td.configFile), { log: pino({ level: 'silent' }) });
    return daemon;
  };
  const client = (who: 'auditor' | 'signer'): Clients => {
    const c = connect({ addr: daemon!.address, ca: td.ca, cert: td.ids[who].cert, key: td.ids[who].key });
    clients.push(c);
    return c;
  };
  const sigilctl = (args: string[]) =>
    exec(SIGILCTL, args, { ...process.env, SIGIL_ADDR: daemon?.address ?? '127.0.0.1:1', SIGIL_CACERT: td.ca, SIGIL_CLIENT_CERT: td.ids.auditor.cert, SIGIL_CLIENT_KEY: td.ids.auditor.key });
  const archive = (extra: string[] = []) => exec(SIGILD, ['audit', 'archive', '--config', td.configFile, '--out', segDir, '--align', '16', '--segment-max', '16', ...extra]);

  before(async () => {
    td = await startTestDaemon();
    daemon = td.daemon;
    segDir = join(td.dir, 'segments');
    await rpc.createKey(td.client('admin'), { name: 'rel/app', algorithm: Algorithm.ECDSA_P256_SHA256, backend: '' });
    for (let i = 0; i < SIGNS; i++) await rpc.sign(td.client('signer'), { key: 'rel/app', digest: digest(`sign ${i}`) });
    const auditor = td.client('auditor');
    const k = await promised<GetAuditKeyResponse>((md, cb) => auditor.audit.getAuditKey({}, md, cb));
    pem = join(td.dir, 'audit.pem');
    await writeFile(pem, k.pem);
    const c = await q.checkpoint(auditor);
    checkpointSize = c.treeSize;
    saved = join(td.dir, 'saved-checkpoint');
    await writeFile(saved, c.note);
  });
  after(async () => {
    for (const c of clients) c.close();
    await daemon?.stop();
    await td?.stop();
  });

  test('refuses while the daemon holds its files, changing nothing', async () => {
    const r = await archive();
    assert.equal(r.code, 1, r.stdout);
    // The daemon runs in this process: the refusal names its pid.
    assert.equal(r.stderr, `sigild: the store ${join(td.dir, 'sigil.db')} is in use by another sigild (pid ${process.pid}): stop it first\n`);
    assert.equal((await readdir(td.dir)).includes('segments'), false);
    assert.equal(td.daemon.audit.archivedEnd, 0);
  });

  test('with the daemon stopped: whole aligned segments up to the latest checkpoint written, verified and pruned, the act in the log', async () => {
    const size = td.daemon.audit.size;
    await td.daemon.stop();
    daemon = null;
    const end = Math.floor(checkpointSize / 16) * 16;
    assert.ok(end >= 32, `checkpoint ${checkpointSize}`);
    const r = await archive(['--vacuum']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /\naudit file vacuumed: \d+ bytes\n$/);
    const files = (await readdir(segDir)).sort();
    assert.equal(files.length, end / 16);
    assert.equal(files[0], 'audit-000000000000000-000000000000016.segment');
    assert.match(r.stdout, new RegExp(`^archived ${end / 16} segments into ${segDir}, each verified before its entries were pruned:\n  audit-000000000000000-000000000000016\\.segment  entries 0 to 15  checkpoint ${checkpointSize}  \\d+ bytes  sha256 [0-9a-f]{64}\n`));
    assert.match(r.stdout, new RegExp(`the log holds ${size + 2 * files.length} entries; entries below ${end} are archived`));
    // Run again: nothing left to archive below the same checkpoint.
    const again = await archive();
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stdout, new RegExp(`^nothing archived: entries below ${end} are archived already`));
    // The file: data gone below `end`, leaf hashes kept, one record per segment with its hash.
    const db = new DatabaseSync(join(td.dir, 'audit.db'), { readOnly: true });
    try {
      assert.deepEqual({ ...db.prepare('SELECT COUNT(*) AS n, SUM(length(leaf)) AS l FROM entries WHERE length(data) = 0').get() }, { n: end, l: end * 32 });
      const rows = db.prepare('SELECT start, end, file, sha256 FROM archives ORDER BY start').all() as Array<{ start: number; end: number; file: string; sha256: string }>;
      assert.deepEqual(rows.map((x) => x.file), files);
      for (const x of rows) assert.equal(createHash('sha256').update(await readFile(join(segDir, x.file))).digest('hex'), x.sha256);
      const acts = (db.prepare('SELECT data FROM entries WHERE idx >= ?').all(size) as Array<{ data: Uint8Array }>).map((x) => decodeEntry(x.data));
      const who = acts[0]?.who ?? '';
      assert.match(who, /^local:.+/);
      assert.deepEqual(acts.map((a) => [a.who, a.act, a.result, (a.detail as { start: number }).start]), rows.flatMap((x) => [[who, 'audit.archive', 'started', x.start], [who, 'audit.archive', 'ok', x.start]]));
    } finally {
      db.close();
    }
  });

  test('sigilctl audit verify-archive checks segments offline with the audit key: ranges and checkpoint, exit 1 on a changed entry', async () => {
    const files = (await readdir(segDir)).sort().map((f) => join(segDir, f));
    const ok = await sigilctl(['audit', 'verify-archive', ...files, '--key', pem]);
    assert.equal(ok.code, 0, ok.stderr + ok.stdout);
    assert.match(ok.stdout, new RegExp(`^ok: ${files[0]}: entries 0 to 15, checkpoint at size ${checkpointSize} \\(root [0-9a-f]{64}\\) signed by the key pinned from ${pem}; sha256 [0-9a-f]{64}\nok: ${files[1]}: entries 16 to 31,`));
    const bad = join(td.dir, 'bad.segment');
    const text = await readFile(files[1]!, 'utf8');
    const line = text.split('\n')[5]!;
    await writeFile(bad, text.replace(line, line.replace('"result":"ok"', '"result":"refused"')));
    const r = await sigilctl(['audit', 'verify-archive', files[0]!, bad, '--key', pem]);
    assert.equal(r.code, 1);
    assert.match(r.stdout, new RegExp(`^ok: ${files[0]}.*\nFAILED: ${bad}: its entries do not hash to the root of its checkpoint at size ${checkpointSize}`));
    const none = await sigilctl(['audit', 'verify-archive', files[0]!]);
    assert.equal(none.code, 2);
  });

  for (const mode of ['full check at start', 'fast start'] as const) {
    test(`the daemon restarts on the pruned log (${mode}): proofs for kept entries, a clear error for archived ones, verify with and without the segments`, async () => {
      const d = await restart(mode === 'fast start' ? { fullCheckAtStartMax: 1 } : {});
      assert.equal((await d.audit.fullCheckDone()).state, 'clean');
      const end = d.audit.archivedEnd;
      const auditor = client('auditor');
      await assert.rejects(q.entries(auditor, 3, 10), (err: { code: number; details: string }) => err.code === 9 && /^entry 3 is archived in segment audit-000000000000000-000000000000016\.segment \(entries 0 to 15, sha256 [0-9a-f]{64}\)$/.test(err.details));
      // The leaf hashes stay: an archived entry's inclusion proof still checks, naming its segment instead of its bytes.
      const p = await q.inclusion(auditor, end - 1);
      assert.deepEqual([p.data.length, p.archivedSegment], [0, `audit-${String(end - 16).padStart(15, '0')}-${String(end).padStart(15, '0')}.segment`]);
      const seg = parseSegment(await readFile(join(segDir, p.archivedSegment)));
      assert.ok(leafHash(seg.entries[15]!).equals(p.leafHash), 'the proven leaf hash is that of the entry in the segment');
      const archivedProof = await sigilctl(['audit', 'proof', '--index', '3']);
      assert.equal(archivedProof.code, 0, archivedProof.stderr);
      assert.match(archivedProof.stdout, /^ok: entry 3 \(archived in segment audit-000000000000000-000000000000016\.segment: proven by its leaf hash [0-9a-f]{64}\) is in the tree of size \d+/);
      const head = await q.entries(auditor, 0, 0);
      assert.equal(head.archivedEnd, end);
      assert.equal(head.archivedSegments.length, end / 16);
      await rpc.sign(client('signer'), { key: 'rel/app', digest: digest(`after archive ${mode}`) });
      const proof = await sigilctl(['audit', 'proof', '--index', String(end)]);
      assert.equal(proof.code, 0, proof.stderr);
      assert.match(proof.stdout, new RegExp(`^ok: entry ${end} is in the tree of size`));
      const tail = await sigilctl(['audit', 'tail', '-n', '100000']);
      assert.equal(tail.code, 0, tail.stderr);
      assert.match(tail.stdout, new RegExp(`^${end}\t`));

      const without = await sigilctl(['audit', 'verify', '--key', pem, '--checkpoint', saved]);
      assert.equal(without.code, 0, without.stderr + without.stdout);
      assert.match(without.stdout, new RegExp(`^ok: entries ${end} to \\d+ of \\d+ verified against the checkpoint signed by .*; consistent with the saved checkpoint at size ${checkpointSize} .*; entries 0 to ${end - 1} are archived in ${end / 16} segments and were not seen \\(give them with --archive DIR\\)`));
      const withArchive = await sigilctl(['audit', 'verify', '--key', pem, '--checkpoint', saved, '--archive', segDir]);
      assert.equal(withArchive.code, 0, withArchive.stderr + withArchive.stdout);
      assert.match(withArchive.stdout, new RegExp(`^ok: \\d+ entries verified .*; entries 0 to ${end - 1} read from ${end / 16} archive segments in ${segDir}`));
      // A segment directory with one entry changed fails the whole verification.
      const badDir = join(td.dir, `bad-segments-${mode.replaceAll(' ', '-')}`);
      await cp(segDir, badDir, { recursive: true });
      const f = join(badDir, 'audit-000000000000016-000000000000032.segment');
      await writeFile(f, (await readFile(f, 'utf8')).replace(/"digest":"([0-9a-f])/, (_m, c: string) => `"digest":"${c === '0' ? '1' : '0'}`));
      const bad = await sigilctl(['audit', 'verify', '--key', pem, '--archive', badDir]);
      assert.equal(bad.code, 1);
      assert.match(bad.stdout, /^FAILED \(root-mismatch\)/);
    });
  }

  test('a start on tampered files is refused: data deleted without an archive record, an archive record with a wrong range', async () => {
    await daemon?.stop();
    daemon = null;
    const file = join(td.dir, 'audit.db');
    const keep = join(td.dir, 'audit.db.keep');
    await copyFile(file, keep);
    const tamper = async (sql: string, finding: RegExp) => {
      const db = new DatabaseSync(file);
      db.exec(sql);
      db.close();
      await assert.rejects(restart(), (err: Error) => finding.test(err.message));
      await copyFile(keep, file);
    };
    const end = (() => {
      const db = new DatabaseSync(file, { readOnly: true });
      const e = (db.prepare('SELECT MAX(end) AS e FROM archives').get() as { e: number }).e;
      db.close();
      return e;
    })();
    await tamper(`UPDATE entries SET data = X'' WHERE idx >= ${end} AND idx < ${end + 4}`, new RegExp(`audit log tampered: the data of entry ${end} is gone but no archive record covers it`));
    await tamper(`UPDATE archives SET end = ${end - 8} WHERE end = ${end}`, /audit log tampered: the archive record of \[\d+, \d+\) does not match the audit\.archive entry \d+/);
    await tamper('DELETE FROM archives', /audit log tampered: the data of entry 0 is gone but no archive record covers it/);
    // The untouched file starts.
    const d = await restart();
    assert.equal(d.audit.archivedEnd, end);
  });
});
