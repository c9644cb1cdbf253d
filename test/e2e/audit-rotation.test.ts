// Rotating the audit checkpoint key in a running daemon (real SoftHSM token, real sigilctl processes): the
// rotation is audited, the next checkpoint is signed by v2 at once, a checkpoint an auditor saved under v1
// still proves consistency (with both versions pinned, and fails clearly with only v2), the trusted root lists
// one tlog per version with its window, tampering is still caught, and the other daemon keys stay refused.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { createHash, createPublicKey, verify as cryptoVerify } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { status as Status, type ServiceError } from '@grpc/grpc-js';
import { missingTools } from '../helpers/hw.ts';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.ts';
import { promised, rpc, type Clients } from '../../src/cli/client.ts';
import { Algorithm } from '../../src/gen/sigil/v1/signer.ts';
import type { GetAuditKeyResponse } from '../../src/gen/sigil/v1/audit.ts';
import type { TrustedRootDocument } from '../../src/revocation/trusted-root.ts';

const run = promisify(execFile);
const skip = missingTools('softhsm', 'softhsm2-util', 'openssl');
const SIGILCTL = new URL('../../bin/sigilctl.js', import.meta.url).pathname;

let tick = 0;
const clock = { now: () => new Date(Date.now() + ++tick) };

interface Report {
  ok: boolean;
  size: number;
  signedBy: string | null;
  savedSize: number | null;
  savedSignedBy: string | null;
  failure: { check: string; index?: number; message: string } | null;
}

describe('audit key rotation end to end', { skip: skip ?? false }, () => {
  let td: TestDaemon;
  let saved: string;
  let savedSize: number;
  let v1Pem: string;
  let rootBefore: Buffer;
  let v2Pem: string;
  const admin = (): Clients => td.client('admin');
  const ctl = async (args: string[], who: 'auditor' | 'admin' = 'auditor'): Promise<{ stdout: string; stderr: string; code: number }> => {
    try {
      const r = await run(process.execPath, [SIGILCTL, ...args], {
        env: { ...process.env, SIGIL_ADDR: td.daemon.address, SIGIL_CACERT: td.ca, SIGIL_CLIENT_CERT: td.ids[who].cert, SIGIL_CLIENT_KEY: td.ids[who].key },
        maxBuffer: 16 * 1024 * 1024,
      });
      return { ...r, code: 0 };
    } catch (err) {
      const e = err as { stdout: string; stderr: string; code: number };
      return { stdout: e.stdout, stderr: e.stderr, code: e.code };
    }
  };
  const verify = async (...extra: string[]): Promise<{ code: number; stderr: string; stdout: string; report: Report }> => {
    const r = await ctl(['audit', 'verify', '-o', 'json', ...extra]);
    return { code: r.code, stderr: r.stderr, stdout: r.stdout, report: JSON.parse(r.stdout) as Report };
  };
  const signN = async (n: number, from = 0) => {
    for (let i = from; i < from + n; i++) await rpc.sign(td.client('signer'), { key: 'release/app', digest: createHash('sha256').update(`artifact ${i}`).digest() });
  };
  const auditKey = () => promised<GetAuditKeyResponse>((md, cb) => td.client('auditor').audit.getAuditKey({}, md, cb));
  const refused = (re: RegExp) => (e: ServiceError) => {
    assert.equal(e.code, Status.FAILED_PRECONDITION, e.details);
    assert.match(e.details, re);
    return true;
  };

  before(async () => {
    td = await startTestDaemon({ clock, extraConfig: { identity: { trustDomain: 'sigil.test' } } });
    await rpc.createKey(admin(), { name: 'release/app', algorithm: Algorithm.ECDSA_P256_SHA256, backend: '' });
    await signN(6);
    saved = join(td.dir, 'saved-v1.checkpoint');
    const cp = await ctl(['audit', 'checkpoint', '--out', saved, '-o', 'json']);
    assert.equal(cp.code, 0, cp.stderr);
    savedSize = (JSON.parse(cp.stdout) as { treeSize: number; keyVersion: string }).treeSize;
    assert.equal((JSON.parse(cp.stdout) as { keyVersion: string }).keyVersion, 'sigil/audit@1');
    rootBefore = (await rpc.getTrustedRoot(td.client('anonymous'), {})).json;
    v1Pem = join(td.dir, 'v1.pem');
    writeFileSync(v1Pem, (await auditKey()).pem);
  });
  after(async () => {
    await td?.stop();
  });

  test('every act but rotation on the audit key, policy and disabling the current version of the trusted-root key, and disabling the identity ca\'s current version, is refused and changes nothing', async () => {
    const names = ['sigil/audit', 'sigil/identity-ca', 'sigil/trust-root'];
    const before = await Promise.all(names.map(async (name) => (await rpc.getKey(admin(), { name })).key));
    const size = td.daemon.audit.size;
    const auditOnlyRotates = /reserved for the daemon's own use: it signs the audit log's checkpoints and can only be rotated \(sigilctl key rotate sigil\/audit\)/;
    await assert.rejects(rpc.disableKeyVersion(admin(), { key: 'sigil/audit@1', compromised: false, compromiseTime: undefined }), refused(auditOnlyRotates));
    await assert.rejects(rpc.disableKeyVersion(admin(), { key: 'sigil/audit@1', compromised: true, compromiseTime: undefined }), refused(auditOnlyRotates));
    await assert.rejects(rpc.scheduleDestroyKeyVersion(admin(), { key: 'sigil/audit@1', windowSeconds: 0 }), refused(auditOnlyRotates));
    await assert.rejects(rpc.updateKeyPolicy(admin(), { name: 'sigil/audit', autoRotatePeriodSeconds: 86_400 }), refused(auditOnlyRotates));
    await assert.rejects(rpc.disableKeyVersion(admin(), { key: 'sigil/identity-ca@1', compromised: false, compromiseTime: undefined }), refused(/is the identity ca's current generation, which issues every builder certificate: rotate first/));
    await assert.rejects(rpc.updateKeyPolicy(admin(), { name: 'sigil/trust-root', minSignVersion: 1 }), refused(/it signs the trusted root, the anchor verifiers pin, and takes no policy/));
    await assert.rejects(rpc.disableKeyVersion(admin(), { key: 'sigil/trust-root@1', compromised: true, compromiseTime: undefined }), refused(/is the current version of sigil\/trust-root.*cannot be disabled: rotate first/));
    // The CLI shows the same refusal.
    const cli = await ctl(['key', 'disable', 'sigil/audit@1'], 'admin');
    assert.notEqual(cli.code, 0);
    assert.match(cli.stderr, /FAILED_PRECONDITION.*can only be rotated/);
    const after = await Promise.all(names.map(async (name) => (await rpc.getKey(admin(), { name })).key));
    assert.deepEqual(after, before, 'no key changed');
    // Refused before the lifecycle: no act started (no intent), and each refusal is one entry of its own.
    const refusals = td.auditEntries().slice(size);
    assert.deepEqual(
      refusals.map((e) => [e.act, e.key, e.result, e.reason]),
      [
        ['key.disable', 'sigil/audit@1', 'refused', 'FAILED_PRECONDITION'],
        ['key.disable', 'sigil/audit@1', 'refused', 'FAILED_PRECONDITION'],
        ['key.schedule-destroy', 'sigil/audit@1', 'refused', 'FAILED_PRECONDITION'],
        ['key.policy', 'sigil/audit', 'refused', 'FAILED_PRECONDITION'],
        ['key.disable', 'sigil/identity-ca@1', 'refused', 'FAILED_PRECONDITION'],
        ['key.policy', 'sigil/trust-root', 'refused', 'FAILED_PRECONDITION'],
        ['key.disable', 'sigil/trust-root@1', 'refused', 'FAILED_PRECONDITION'],
        ['key.disable', 'sigil/audit@1', 'refused', 'FAILED_PRECONDITION'],
      ],
    );
    assert.ok(refusals.every((e) => e.who === refusals[0]!.who && /reserved for the daemon's own use|is the identity ca's current generation|is the current version of sigil\/trust-root/.test(String(e.detail?.message))));
  });

  test('sigilctl key rotate sigil/audit: v2 becomes primary, the rotation is audited and the log\'s latest checkpoint is signed by v2 at once', async () => {
    const r = await ctl(['key', 'rotate', 'sigil/audit', '-o', 'json'], 'admin');
    assert.equal(r.code, 0, r.stderr);
    const out = JSON.parse(r.stdout) as { newVersion: number; key: { primaryVersion: number; versions: Array<{ state: string }> } };
    assert.equal(out.newVersion, 2);
    assert.equal(out.key.primaryVersion, 2);
    assert.deepEqual(out.key.versions.map((v) => v.state), ['ENABLED', 'ENABLED'], 'v1 stays for verification');

    const log = td.daemon.audit;
    const entries = td.auditEntries();
    const done = entries.findLast((e) => e.act === 'key.rotate');
    assert.deepEqual([done?.key, done?.result, done?.who, (done?.detail as { previous?: string }).previous], ['sigil/audit@2', 'ok', 'CN=test-admin', 'sigil/audit@1']);
    // Signed as part of the rotation, over the entry that records it, before anyone asked.
    const cp = log.checkpointAt(log.size);
    assert.ok(cp, 'a checkpoint at the current size');
    assert.equal(cp.keyVersion, 'sigil/audit@2');
    assert.equal(entries.length, cp.size);

    const k = await auditKey();
    assert.equal(k.keyVersion, 'sigil/audit@2');
    assert.deepEqual(k.versions.map((v) => [v.keyVersion, v.current]), [['sigil/audit@1', false], ['sigil/audit@2', true]]);
    assert.equal(k.versions[0]!.supersedeTime?.getTime(), k.versions[1]!.createTime?.getTime());
    assert.equal(k.versions[1]!.supersedeTime, undefined);
    assert.notDeepEqual(k.versions[0]!.noteKeyId, k.versions[1]!.noteKeyId);
    assert.deepEqual(k.versions[1]!.noteKeyId, k.noteKeyId);
    // What the runbook tells auditors to run to pin the new version.
    const listed = await ctl(['audit', 'keys', '-o', 'json']);
    assert.equal(listed.code, 0, listed.stderr);
    const versions = (JSON.parse(listed.stdout) as { versions: Array<{ keyVersion: string; current: boolean; superseded: string | null; pem: string }> }).versions;
    assert.deepEqual(versions.map((v) => [v.keyVersion, v.current, v.superseded !== null]), [['sigil/audit@1', false, true], ['sigil/audit@2', true, false]]);
    v2Pem = join(td.dir, 'v2.pem');
    writeFileSync(v2Pem, versions[1]!.pem);
    assert.equal(versions[1]!.pem, k.pem);
    assert.equal(readFileSync(v1Pem, 'utf8'), k.versions[0]!.pem);

    // Signing goes on, with the daemon's keys still out of reach of signers.
    await signN(5, 100);
    await assert.rejects(rpc.sign(td.client('signer'), { key: 'sigil/audit', message: Buffer.from('forged checkpoint') }), (e: ServiceError) => e.code === Status.PERMISSION_DENIED);
    const next = await ctl(['audit', 'checkpoint', '-o', 'json']);
    assert.equal((JSON.parse(next.stdout) as { keyVersion: string }).keyVersion, 'sigil/audit@2');
  });

  test('verify: the latest checkpoint with v2, the checkpoint saved under v1 with v1, consistent across the rotation', async () => {
    const fetched = await verify('--checkpoint', saved);
    assert.equal(fetched.code, 0, fetched.stdout);
    assert.deepEqual([fetched.report.signedBy, fetched.report.savedSize, fetched.report.savedSignedBy], ['sigil/audit@2', savedSize, 'sigil/audit@1']);
    assert.match(fetched.stderr, /fetched from the server \(sigil\/audit@1, sigil\/audit@2/);

    const text = await ctl(['audit', 'verify', '--checkpoint', saved, '--key', v1Pem, '--key', v2Pem]);
    assert.equal(text.code, 0, text.stdout);
    assert.match(text.stdout, new RegExp(`^ok: \\d+ entries verified against the checkpoint signed by sigil/audit@2 \\(pinned from ${v2Pem}\\).*consistent with the saved checkpoint at size ${savedSize} \\(signed by sigil/audit@1 \\(pinned from ${v1Pem}\\)\\)`));

    const onlyV2 = await verify('--checkpoint', saved, '--key', v2Pem);
    assert.equal(onlyV2.code, 1);
    assert.equal(onlyV2.report.failure?.check, 'saved-checkpoint-signature');
    assert.match(onlyV2.report.failure!.message, /the saved checkpoint does not verify: it is signed by sigil\/audit@1 \(key id [0-9a-f]{8}\), which is not among the trusted keys .*pin that version with --key/);
    // Without the saved checkpoint, v2 alone verifies the log.
    const latestOnly = await verify('--key', v2Pem);
    assert.equal(latestOnly.code, 0, latestOnly.stdout);
    const onlyV1 = await verify('--key', v1Pem);
    assert.deepEqual([onlyV1.code, onlyV1.report.failure?.check], [1, 'checkpoint-signature']);
    assert.match(onlyV1.report.failure!.message, /signed by sigil\/audit@2/);
  });

  test('proof and tail keep working: an inclusion proof against the checkpoint v1 signed', async () => {
    const proof = await ctl(['audit', 'proof', '--index', '2', '--size', String(savedSize), '-o', 'json']);
    assert.equal(proof.code, 0, proof.stderr);
    assert.deepEqual([(JSON.parse(proof.stdout) as { ok: boolean; treeSize: number }).ok, (JSON.parse(proof.stdout) as { treeSize: number }).treeSize], [true, savedSize]);
    const latest = await ctl(['audit', 'proof', '--index', String(savedSize), '-o', 'json']);
    assert.equal((JSON.parse(latest.stdout) as { ok: boolean }).ok, true, latest.stderr);
    const tail = await ctl(['audit', 'tail', '-n', '400']);
    assert.equal(tail.code, 0, tail.stderr);
    const lines = tail.stdout.trim().split('\n').map((l) => JSON.parse(l.slice(l.indexOf('\t') + 1)) as { act: string; key?: string; result: string });
    assert.ok(lines.some((e) => e.act === 'key.rotate' && e.key === 'sigil/audit@2' && e.result === 'ok'), 'the rotation in the tail');
  });

  test('the trusted root lists one tlog per audit key version with its window, signed anew after the rotation', async () => {
    const k = await auditKey();
    const r = await rpc.getTrustedRoot(td.client('anonymous'), {});
    const doc = JSON.parse(r.json.toString()) as TrustedRootDocument;
    const iso = (d: Date | undefined) => d!.toISOString().replace(/\.000Z$/, 'Z');
    assert.deepEqual(
      doc.tlogs.map((l) => [l.publicKey.rawBytes, l.publicKey.validFor]),
      [
        [k.versions[0]!.spkiDer.toString('base64'), { start: iso(k.versions[0]!.createTime), end: iso(k.versions[1]!.createTime) }],
        [k.versions[1]!.spkiDer.toString('base64'), { start: iso(k.versions[1]!.createTime) }],
      ],
    );
    assert.ok(!doc.sigilKeyVersions.some((v) => v.keyName === 'sigil/audit'), 'the audit key is a log key, not a signing key');
    assert.equal((JSON.parse(rootBefore.toString()) as TrustedRootDocument).tlogs.length, 1, 'one tlog before the rotation');
    assert.ok(!r.json.equals(rootBefore));
    const pub = createPublicKey(r.publicKeyPem);
    assert.ok(cryptoVerify('sha256', r.json, pub, r.signature), 'the document the root key signed');
  });

  test('after the rotation a tampered entry is still detected, and the untouched log reopens under v2', async () => {
    await td.stopDaemon();
    const dbPath = join(td.dir, 'audit.db');
    const db = new DatabaseSync(dbPath);
    const at = td.daemon.audit.size - 3;
    const row = db.prepare('SELECT data FROM entries WHERE idx = ?').get(at) as { data: Uint8Array };
    const pristine = Buffer.from(row.data);
    const data = Buffer.from(pristine);
    data[data.indexOf('"act":"') + 7] ^= 0x01;
    db.prepare('UPDATE entries SET data = ? WHERE idx = ?').run(data, at);
    db.close();
    await assert.rejects(td.restart(), new RegExp(`audit log tampered: the bytes of entry ${at} do not hash to its stored leaf hash`));

    await td.stopDaemon();
    const fix = new DatabaseSync(dbPath);
    fix.prepare('UPDATE entries SET data = ? WHERE idx = ?').run(pristine, at);
    fix.close();
    await td.restart();
    const ok = await verify('--checkpoint', saved, '--key', v1Pem, '--key', v2Pem);
    assert.equal(ok.code, 0, ok.stdout);
    assert.equal((await auditKey()).keyVersion, 'sigil/audit@2');
  });
});
