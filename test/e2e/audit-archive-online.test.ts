// Archiving old audit entries while sigild runs (Admin/ArchiveAuditLog, `sigilctl audit archive`) on a real daemon
// (SoftHSM token, its own store and audit log): refused for a non-admin; archived while Sign calls keep flowing (none
// fails, every signature's entry is afterwards in a segment or in the live log); a second concurrent call refused;
// `sigilctl audit verify --archive DIR` passes; the daemon restarts on the pruned log (full check and fast start);
// refused, naming the setting, when audit.archiveDir is not configured.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { status as Status, type ServiceError } from '@grpc/grpc-js';
import { parse, stringify } from 'yaml';
import { rejectsWith } from '../helpers/assert.ts';
import { missingTools } from '../helpers/hw.ts';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.ts';
import { promised, rpc, type Clients } from '../../src/cli/client.ts';
import type { ArchiveAuditLogResponse } from '../../src/gen/sigil/v1/admin.ts';
import type { GetAuditKeyResponse } from '../../src/gen/sigil/v1/audit.ts';
import { Algorithm } from '../../src/gen/sigil/v1/signer.ts';
import { decodeEntry } from '../../src/audit/entry.ts';
import { parseSegment } from '../../src/audit/segment.ts';

const run = promisify(execFile);
const skip = missingTools('softhsm', 'softhsm2-util');
const SIGILCTL = new URL('../../bin/sigilctl.js', import.meta.url).pathname;
type Out = { code: number; stdout: string; stderr: string };
const ALIGN = 16;

describe('archiving the audit log while sigild runs', { skip: skip ?? false }, () => {
  let td: TestDaemon;
  const segRoot = mkdtempSync(join(tmpdir(), 'sigil-online-segments-'));
  const segDir = join(segRoot, 'segments');
  let pem: string;
  const digest = (s: string) => createHash('sha256').update(s).digest();
  const archive = (c: Clients, before?: number) => promised<ArchiveAuditLogResponse>((md, cb) => c.admin.archiveAuditLog(before === undefined ? {} : { before }, md, cb));
  const sigilctl = (who: 'admin' | 'auditor', args: string[]): Promise<Out> =>
    run(process.execPath, [SIGILCTL, ...args], {
      env: { ...process.env, SIGIL_ADDR: td.daemon.address, SIGIL_CACERT: td.ca, SIGIL_CLIENT_CERT: td.ids[who].cert, SIGIL_CLIENT_KEY: td.ids[who].key },
    }).then(
      (r) => ({ code: 0, stdout: r.stdout, stderr: r.stderr }),
      (e: Out) => ({ code: e.code, stdout: e.stdout, stderr: e.stderr }),
    );
  /** Every entry of the log: the archived prefix from the segment files, the rest from the daemon. */
  const allEntries = async () => {
    const out: Array<{ act: string; digest?: string; result: string }> = [];
    for (const f of (await readdir(segDir)).filter((n) => n.endsWith('.segment')).sort()) {
      for (const e of parseSegment(await readFile(join(segDir, f))).entries) out.push(decodeEntry(e) as never);
    }
    assert.equal(out.length, td.daemon.audit.archivedEnd, 'the segments hold exactly the archived prefix');
    for (let at = out.length; at < td.daemon.audit.size; ) {
      const page = td.daemon.audit.entries(at, td.daemon.audit.size - at);
      for (const e of page) out.push(decodeEntry(e.data) as never);
      at += page.length;
    }
    return out;
  };
  const restartWith = async (audit: Record<string, unknown>) => {
    const cfg = parse(await readFile(td.configFile, 'utf8')) as Record<string, unknown> & { audit?: Record<string, unknown> };
    cfg.audit = { ...cfg.audit, ...audit };
    for (const [k, v] of Object.entries(cfg.audit)) if (v === undefined) delete cfg.audit[k];
    await writeFile(td.configFile, stringify(cfg));
    return td.restart();
  };

  before(async () => {
    td = await startTestDaemon({ extraConfig: { audit: { archiveDir: segDir, archiveAlign: ALIGN, archiveSegmentMax: ALIGN } } });
    await rpc.createKey(td.client('admin'), { name: 'rel/app', algorithm: Algorithm.ECDSA_P256_SHA256, backend: '' });
    for (let i = 0; i < 40; i++) await rpc.sign(td.client('signer'), { key: 'rel/app', digest: digest(`before ${i}`) });
    const k = await promised<GetAuditKeyResponse>((md, cb) => td.client('auditor').audit.getAuditKey({}, md, cb));
    pem = join(td.dir, 'audit.pem');
    await writeFile(pem, k.pem);
  });
  after(async () => {
    await td?.stop();
    rmSync(segRoot, { recursive: true, force: true });
  });

  test('refused for a non-admin: PERMISSION_DENIED, nothing archived, no directory made', async () => {
    await rejectsWith(archive(td.client('auditor')), Status.PERMISSION_DENIED, /lacks the role admin/);
    await rejectsWith(archive(td.client('signer')), Status.PERMISSION_DENIED, /lacks the role admin/);
    const r = await sigilctl('auditor', ['audit', 'archive']);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /lacks the role admin/);
    assert.equal(td.daemon.audit.archivedEnd, 0);
    assert.equal(existsSync(segDir), false);
  });

  test('archived while signatures flow: no Sign fails, every signature is in the log afterwards, verify --archive passes', async () => {
    const signed: string[] = [];
    const failures: unknown[] = [];
    let stop = false;
    const signer = td.client('signer');
    const loop = async (w: number) => {
      for (let i = 0; !stop; i++) {
        const d = digest(`during ${w} ${i}`);
        try {
          await rpc.sign(signer, { key: 'rel/app', digest: d });
          signed.push(d.toString('hex'));
        } catch (err) {
          failures.push(err);
        }
      }
    };
    const loops = [0, 1, 2, 3].map(loop);
    // Let the loops run a little first, so the archive starts with signatures in flight.
    while (signed.length < 20) await new Promise((r) => setTimeout(r, 5));
    const r = await sigilctl('admin', ['-o', 'json', 'audit', 'archive']);
    const afterRun = signed.length;
    while (signed.length < afterRun + 20) await new Promise((res) => setTimeout(res, 5));
    stop = true;
    await Promise.all(loops);
    assert.equal(r.code, 0, r.stderr + r.stdout);
    assert.deepEqual(failures, []);
    const out = JSON.parse(r.stdout) as { segments: Array<{ file: string; start: number; end: number; sha256: string; entryIndex: number }>; archivedEnd: number };
    assert.ok(out.archivedEnd >= 48, `archived up to ${out.archivedEnd}`);
    assert.equal(out.archivedEnd % ALIGN, 0);
    assert.equal(out.segments.length, out.archivedEnd / ALIGN);
    assert.equal(td.daemon.audit.archivedEnd, out.archivedEnd);
    assert.deepEqual((await readdir(segDir)).sort(), out.segments.map((s) => s.file));
    assert.equal((await stat(segDir)).mode & 0o777, 0o700);
    for (const s of out.segments) assert.equal(createHash('sha256').update(await readFile(join(segDir, s.file))).digest('hex'), s.sha256);

    const entries = await allEntries();
    const ok = new Set(entries.filter((e) => e.act === 'sign' && e.result === 'ok').map((e) => e.digest));
    for (let i = 0; i < 40; i++) assert.ok(ok.has(digest(`before ${i}`).toString('hex')), `sign before ${i}`);
    for (const d of signed) assert.ok(ok.has(d), `sign ${d} during the archive is in the log`);
    // Each segment: its intent (started) and outcome (ok), written ahead by the admin.
    const archiveActs = entries.filter((e) => e.act === 'audit.archive');
    assert.equal(archiveActs.filter((e) => e.result === 'started').length, out.segments.length);
    assert.equal(archiveActs.filter((e) => e.result === 'ok').length, out.segments.length);

    const verify = await sigilctl('auditor', ['audit', 'verify', '--key', pem, '--archive', segDir]);
    assert.equal(verify.code, 0, verify.stderr + verify.stdout);
    assert.match(verify.stdout, new RegExp(`^ok: \\d+ entries verified .*; entries 0 to ${out.archivedEnd - 1} read from ${out.segments.length} archive segments in ${segDir}`));
  });

  test('a second call while one runs is refused with FAILED_PRECONDITION (not queued); the first completes', async () => {
    const signer = td.client('signer');
    for (let i = 0; i < 6 * ALIGN; i++) await rpc.sign(signer, { key: 'rel/app', digest: digest(`more ${i}`) });
    const before = td.daemon.audit.archivedEnd;
    const admin = td.client('admin');
    const [a, b] = await Promise.allSettled([archive(admin), archive(td.client('admin2'))]);
    const results = [a, b];
    const done = results.filter((x) => x.status === 'fulfilled');
    const refused = results.filter((x): x is PromiseRejectedResult => x.status === 'rejected');
    assert.equal(done.length, 1, 'exactly one ran');
    assert.equal(refused.length, 1, 'exactly one was refused');
    assert.equal((refused[0]!.reason as ServiceError).code, Status.FAILED_PRECONDITION);
    assert.match((refused[0]!.reason as ServiceError).details, /an audit archive is already running/);
    assert.ok(td.daemon.audit.archivedEnd > before);
    assert.equal(td.daemon.audit.archivedEnd, (done[0] as PromiseFulfilledResult<ArchiveAuditLogResponse>).value.archivedEnd);
    const refusedEntry = (await allEntries()).find((e) => e.act === 'audit.archive' && e.result === 'refused');
    assert.ok(refusedEntry, 'the refusal is audited');
  });

  for (const mode of ['full check at start', 'fast start'] as const) {
    test(`the daemon restarts on the log archived online (${mode}) and keeps appending`, async () => {
      const end = td.daemon.audit.archivedEnd;
      const d = await restartWith({ fullCheckAtStartMax: mode === 'fast start' ? 1 : undefined });
      assert.equal((await d.audit.fullCheckDone()).state, 'clean');
      assert.equal(d.audit.archivedEnd, end);
      await rpc.sign(td.client('signer'), { key: 'rel/app', digest: digest(`after restart ${mode}`) });
      const verify = await sigilctl('auditor', ['audit', 'verify', '--key', pem, '--archive', segDir]);
      assert.equal(verify.code, 0, verify.stderr + verify.stdout);
    });
  }

  test('refused when audit.archiveDir is not configured: FAILED_PRECONDITION naming the setting, nothing changed', async () => {
    const segments = (await readdir(segDir)).length;
    await restartWith({ archiveDir: undefined });
    const end = td.daemon.audit.archivedEnd;
    for (let i = 0; i < 2 * ALIGN; i++) await rpc.sign(td.client('signer'), { key: 'rel/app', digest: digest(`unconfigured ${i}`) });
    await rejectsWith(archive(td.client('admin')), Status.FAILED_PRECONDITION, /audit\.archiveDir is not configured/);
    const r = await sigilctl('admin', ['audit', 'archive', '--before', '100000']);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /audit\.archiveDir is not configured/);
    assert.equal(td.daemon.audit.archivedEnd, end);
    assert.equal((await readdir(segDir)).length, segments);
  });
});
