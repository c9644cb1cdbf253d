// A re-imaged runner whose TPM was cleared (real swtpm, tpm2_clear: Clock, resetCount and restartCount back to
// zero, the EK unchanged) is refused at enrollment with a message naming the fix; admins list enrollments
// (sigilctl enrollment list/show), forget one (audited, written ahead), and the runner enrolls again and signs.
// Forgetting is admin only, changes nothing on bad input, and does not lift a revocation; sigil-agent, whose
// renewal is refused after a clear, reports the enrollment refusal and enrolls once the record is forgotten.
import 'reflect-metadata';
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { join } from 'node:path';
import { status as Status } from '@grpc/grpc-js';
import { rejectsWith } from '../helpers/assert.ts';
import { missingTools } from '../helpers/hw.ts';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.ts';
import { startSwtpm, swtpmEkHash, type Swtpm } from '../helpers/swtpm.ts';
import { verifyWithOpenssl } from '../helpers/verify.ts';
import { rpc } from '../../src/cli/client.ts';
import { AkUnavailableError, Attestor, builderClients, type AttestorOptions, type Identity } from '../../src/cli/agent/attestor.ts';
import { Agent, type AgentEvent } from '../../src/cli/agent/agent.ts';
import { SqliteStore } from '../../src/store/sqlite.ts';

const skip = missingTools('swtpm', 'swtpm_setup', 'tpm2_clear', 'tpm2_setclock', 'openssl', 'softhsm', 'softhsm2-util');
const PCRS = [0, 1, 2, 3, 4, 5, 6, 7];
const ZEROS = Object.fromEntries(PCRS.map((i) => [String(i), '00'.repeat(32)]));
const SIGILCTL = new URL('../../bin/sigilctl.js', import.meta.url).pathname;

interface EnrollmentJson {
  ekHash: string;
  akName: string;
  policy: string;
  resetCount: number;
  restartCount: number;
  clock: number;
  updateTime: string;
  ekCertificateKept: boolean;
  ekPublicKept: boolean;
  revoked: boolean;
}

describe('forgetting the enrollment of a runner whose tpm was cleared', { skip: skip ?? false }, () => {
  let sw: Swtpm;
  let td: TestDaemon;
  let ekHash: string;

  const options = (lifetimeSeconds = 0): AttestorOptions => ({ addr: td.address, ca: td.ca, tpm: sw.tcti, policy: 'ci', ek: 'rsa', ak: 'ecc', claims: { repository: 'acme/widgets' }, lifetimeSeconds });
  /** Signs with a builder identity over mTLS and verifies the signature with openssl against the key's public key. */
  const signsWith = async (id: Identity): Promise<void> => {
    const c = builderClients(td.address, td.ca, id);
    try {
      const message = Buffer.from(`artifact ${id.spiffeId} ${id.notBefore.toISOString()}`);
      const r = await rpc.sign(c, { key: 'ci/provenance', digest: createHash('sha256').update(message).digest(), message: undefined });
      const pk = await rpc.getPublicKey(td.client('admin'), { key: r.keyVersion });
      assert.ok(verifyWithOpenssl(r.algorithm, pk.pem, message, r.signature), 'openssl verifies the signature made with the builder identity');
    } finally {
      c.close();
    }
  };
  /** TPM2_Clear through tpm2-tools, as re-imaging a runner may do (lockout auth empty on swtpm). */
  const clearTpm = async (): Promise<void> => {
    await promisify(execFile)('tpm2_clear', [], { env: { ...process.env, TPM2TOOLS_TCTI: sw.tcti } });
  };
  const ctl = async (args: string[], who: 'admin' | 'auditor' | 'signer'): Promise<{ stdout: string; stderr: string; code: number }> => {
    const env = { ...process.env, SIGIL_ADDR: td.address, SIGIL_CACERT: td.ca, SIGIL_CLIENT_CERT: td.ids[who].cert, SIGIL_CLIENT_KEY: td.ids[who].key };
    try {
      return { ...(await promisify(execFile)(process.execPath, [SIGILCTL, ...args], { env })), code: 0 };
    } catch (err) {
      const e = err as { stdout: string; stderr: string; code: number };
      return { stdout: e.stdout, stderr: e.stderr, code: e.code };
    }
  };
  const stored = () => {
    const store = new SqliteStore(join(td.dir, 'sigil.db'));
    try {
      return store.getEnrollment(ekHash);
    } finally {
      store.close();
    }
  };
  const refusedEnrollment = (why: RegExp) =>
    td.auditEntries().some((e) => e.act === 'enrollment' && e.result === 'refused' && e.reason === 'PERMISSION_DENIED' && why.test(String((e.detail as { why?: string }).why)));

  before(async () => {
    if (skip) return;
    sw = await startSwtpm();
    ekHash = await swtpmEkHash(sw);
    td = await startTestDaemon({
      extraConfig: {
        identity: { trustDomain: 'sigil.test' },
        authorization: { builders: [{ keys: ['ci/*'], identities: [{ san: 'spiffe://sigil.test/builder/tpm/*' }] }] },
        attestation: { policies: { ci: { ekCaFiles: [sw.ekCaFile], pcrs: { bank: 'sha256', select: PCRS }, golden: [ZEROS] } } },
      },
    });
    await rpc.createKey(td.client('admin'), { name: 'ci/provenance', algorithm: 1, backend: '' });
  });
  after(async () => {
    await td?.stop();
    await sw?.stop();
  });

  test('cleared: refused with the fix named; listed; forgotten (admin only, audited); enrolls again and signs', async () => {
    const a = new Attestor(options());
    const first = await a.enroll();
    await signsWith(first);
    const before = stored()!;
    assert.ok(before.resetCount > 0, `swtpm has been reset since its manufacture (resetCount ${before.resetCount})`);

    // sigilctl enrollment list / show: admins and auditors.
    const listed = await ctl(['enrollment', 'list', '--output', 'json'], 'auditor');
    assert.equal(listed.code, 0, listed.stderr);
    const rows = JSON.parse(listed.stdout) as EnrollmentJson[];
    assert.equal(rows.length, 1);
    assert.deepEqual(
      { ...rows[0]!, updateTime: undefined },
      { ekHash, akName: before.akName, policy: 'ci', resetCount: before.resetCount, restartCount: before.restartCount, clock: Number(before.clock), updateTime: undefined, ekCertificateKept: true, ekPublicKept: true, revoked: false },
    );
    assert.equal(rows[0]!.updateTime, before.updatedAt.toISOString());
    const text = await ctl(['enrollment', 'list'], 'auditor');
    assert.equal(text.code, 0, text.stderr);
    assert.equal(text.stdout, `${ekHash}  ak ${before.akName}  ci  reset ${before.resetCount} restart ${before.restartCount} clock ${before.clock}  ${before.updatedAt.toISOString()}\n`);
    const shown = await ctl(['enrollment', 'show', ekHash.slice(0, 12)], 'admin');
    assert.equal(shown.code, 0, shown.stderr);
    assert.match(shown.stdout, new RegExp(`^ek hash: +${ekHash}$`, 'm'));
    assert.match(shown.stdout, new RegExp(`^reset count: +${before.resetCount}$`, 'm'));
    assert.deepEqual((await rpc.listEnrollments(td.client('admin'), { ekHashPrefix: ekHash.slice(0, 6).toUpperCase() })).enrollments.map((e) => e.ekHash), [ekHash]);
    const otherPrefix = (ekHash[0] === '0' ? '1' : '0') + ekHash.slice(1, 6);
    assert.deepEqual((await rpc.listEnrollments(td.client('admin'), { ekHashPrefix: otherPrefix })).enrollments, []);
    await rejectsWith(rpc.listEnrollments(td.client('signer'), { ekHashPrefix: '' }), Status.PERMISSION_DENIED, /./);
    await rejectsWith(rpc.listEnrollments(td.client('admin'), { ekHashPrefix: 'xyz' }), Status.INVALID_ARGUMENT, /hex/);

    await clearTpm();
    const fix = `tpm resetCount went backwards (the tpm was cleared, or its state rolled back): if this runner was re-imaged, an admin can let it enroll again with sigilctl enrollment forget ${ekHash}`;
    await rejectsWith(new Attestor(options()).enroll(), Status.PERMISSION_DENIED, new RegExp(`^${fix.replace(/[()]/g, '\\$&')}$`));
    assert.ok(refusedEnrollment(/^tpm resetCount went backwards \(the tpm was cleared/), 'the refused enrollment is audited with its reason');
    // The cleared TPM no longer loads the AK it enrolled with: no renewal can even be quoted (sigil-agent then enrolls).
    await assert.rejects(a.renew(first), (e: unknown) => e instanceof AkUnavailableError && /^the tpm no longer loads the enrolled ak \(was it cleared\?\): .*TPM_RC_INTEGRITY.*; enroll again$/.test(e.message));
    assert.deepEqual(stored(), before, 'refusals record nothing');

    // Only admins forget; bad input is refused; nothing changes.
    const entries = td.auditEntries().length;
    await rejectsWith(rpc.forgetEnrollment(td.client('signer'), { ekHash, reason: 're-imaged' }), Status.PERMISSION_DENIED, /./);
    await rejectsWith(rpc.forgetEnrollment(td.client('auditor'), { ekHash, reason: 're-imaged' }), Status.PERMISSION_DENIED, /./);
    const signerCli = await ctl(['enrollment', 'forget', ekHash, '--reason', 're-imaged'], 'signer');
    assert.equal(signerCli.code, 1);
    assert.match(signerCli.stderr, /PERMISSION_DENIED/);
    assert.ok(td.auditEntries().slice(entries).every((e) => e.act === 'request.refused'), 'refused callers are audited as refused requests');
    await rejectsWith(rpc.forgetEnrollment(td.client('admin'), { ekHash: ekHash.slice(1), reason: 're-imaged' }), Status.INVALID_ARGUMENT, /ek hash must be 64 hex digits/);
    await rejectsWith(rpc.forgetEnrollment(td.client('admin'), { ekHash, reason: '' }), Status.INVALID_ARGUMENT, /reason is required/);
    await rejectsWith(rpc.forgetEnrollment(td.client('admin'), { ekHash, reason: 'two\nlines' }), Status.INVALID_ARGUMENT, /one line/);
    await rejectsWith(rpc.forgetEnrollment(td.client('admin'), { ekHash: '0'.repeat(64), reason: 're-imaged' }), Status.NOT_FOUND, /^no enrollment for ek 0{64}$/);
    assert.deepEqual(stored(), before, 'bad requests change nothing');

    // An admin forgets it with sigilctl: written ahead, then the outcome with what was forgotten.
    const forgot = await ctl(['enrollment', 'forget', ekHash.toUpperCase(), '--reason', 're-imaged', '--output', 'json'], 'admin');
    assert.equal(forgot.code, 0, forgot.stderr);
    assert.equal((JSON.parse(forgot.stdout) as { forgotten: EnrollmentJson }).forgotten.resetCount, before.resetCount);
    assert.equal(stored(), null, 'the record is gone');
    const log = td.auditEntries().filter((e) => e.act === 'enrollment.forget');
    const ok = log.find((e) => e.result === 'ok');
    assert.ok(ok, JSON.stringify(log));
    assert.equal(ok.who, 'CN=test-admin');
    assert.deepEqual(ok.detail, {
      ekHash,
      akName: before.akName,
      policy: 'ci',
      resetCount: before.resetCount,
      restartCount: before.restartCount,
      clock: before.clock.toString(),
      updatedAt: before.updatedAt.toISOString(),
      revoked: false,
      reason: 're-imaged',
      intent: (ok.detail as { intent: string }).intent,
    });
    const started = log.find((e) => e.result === 'started' && (e.detail as { intent?: string }).intent === (ok.detail as { intent: string }).intent);
    assert.ok(started, 'the intent was written ahead');
    assert.ok(log.indexOf(started) < log.indexOf(ok), 'the intent comes before the outcome');
    assert.ok(log.some((e) => e.result === 'refused' && e.reason === 'KEY_NOT_FOUND'), 'the unknown hash is audited as refused');
    assert.equal((await rpc.listEnrollments(td.client('admin'), { ekHashPrefix: ekHash.slice(0, 8) })).enrollments.length, 0);
    const empty = await ctl(['enrollment', 'show', ekHash], 'admin');
    assert.equal(empty.code, 1);
    assert.match(empty.stderr, /no enrollment for ek/);

    // A full enrollment again: a new certificate that signs, counters from the cleared TPM.
    const again = await new Attestor(options()).enroll();
    await signsWith(again);
    const after = stored()!;
    assert.equal(after.resetCount, 0, 'the counters of the cleared tpm are recorded');
    assert.equal(after.restartCount, 0);
    // The certificate issued before the forget stays valid until it expires (revocation is the tool to cut it off).
    await signsWith(first);
  });

  test('sigil-agent: its renewal refused after a clear, it reports the refused enrollment; once forgotten, it enrolls', async () => {
    const events: AgentEvent[] = [];
    const agent = new Agent(options(6), (e) => events.push(e));
    try {
      // The TPM's Clock set far ahead (TPM2_ClockSet, owner auth empty after the clear) and recorded at enrollment;
      // cleared again, Clock restarts at zero with safe YES (resetCount and restartCount were zero already).
      await promisify(execFile)('tpm2_setclock', ['1000000000'], { env: { ...process.env, TPM2TOOLS_TCTI: sw.tcti } });
      await agent.enroll();
      assert.ok(stored()!.clock >= 1_000_000_000n);
      await clearTpm();
      const waitFor = async (what: string, ok: () => boolean): Promise<void> => {
        for (let i = 0; i < 100 && !ok(); i++) await new Promise((r) => setTimeout(r, 100));
        assert.ok(ok(), `${what}: ${JSON.stringify(events)}`);
      };
      // Renewal at half-life (3 s) cannot load the AK; the agent tries an enrollment, refused with the fix named.
      await waitFor('refused enrollment reported', () => events.some((e) => e.event === 'renewal failed'));
      assert.deepEqual(events.slice(0, 3).map((e) => e.event), ['enrolled', 'renewal impossible, enrolling again', 'renewal failed']);
      assert.match(String(events[1]!.error), /^the tpm no longer loads the enrolled ak/);
      assert.match(String(events[2]!.error), new RegExp(`^PERMISSION_DENIED: tpm clock went backwards \\(the tpm was cleared, or its state rolled back\\): .* sigilctl enrollment forget ${ekHash}$`));
      assert.equal(events[2]!.reason, 'TPM_CLOCK_WENT_BACKWARDS');
      await rpc.forgetEnrollment(td.client('admin'), { ekHash, reason: 're-imaged' });
      // The next retry cannot load the AK either and enrolls; this time it is let in.
      await waitFor('enrolled again', () => events.filter((e) => e.event === 'enrolled').length === 2);
      await signsWith(agent.identity!);
    } finally {
      await agent.stop();
    }
  });

  test('a revoked builder stays revoked: listed as revoked, forgotten, still refused at enrollment', async () => {
    await rpc.revokeBuilder(td.client('admin'), { ekHash, reason: 'keyCompromise', akName: '' });
    const [row] = (await rpc.listEnrollments(td.client('auditor'), { ekHashPrefix: ekHash })).enrollments;
    assert.equal(row?.revoked, true);
    const r = await rpc.forgetEnrollment(td.client('admin'), { ekHash, reason: 're-imaged' });
    assert.equal(r.enrollment?.revoked, true);
    assert.equal(stored(), null);
    await rejectsWith(new Attestor(options()).enroll(), Status.PERMISSION_DENIED, /^builder tpm revoked$/, 'BUILDER_REVOKED');
    assert.equal(stored(), null, 'nothing was recorded');
  });
});
