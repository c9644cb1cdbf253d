// EK trust is applied again at every renewal (real SoftHSM token, swtpm-attested builders, sigild restarted on
// the same store with a changed config): a runner whose EK CA was removed, or whose EK hash was taken off the
// allowlist, is refused PERMISSION_DENIED with the reason, and the refusal is in the audit log; a runner still
// trusted renews; an enrollment an older sigild recorded is told to enroll again, which sigil-agent does.
import 'reflect-metadata';
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse, stringify } from 'yaml';
import { status as Status } from '@grpc/grpc-js';
import { signAsBuilder } from '../helpers/builder.ts';
import { rejectsWith } from '../helpers/assert.ts';
import { missingTools } from '../helpers/hw.ts';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.ts';
import { startSwtpm, swtpmEkHash, type Swtpm } from '../helpers/swtpm.ts';
import { createDevCa } from '../../src/dev/pki.ts';
import { rpc } from '../../src/cli/client.ts';
import { Attestor, type AttestorOptions, type Identity } from '../../src/cli/agent/attestor.ts';
import { Agent, type AgentEvent } from '../../src/cli/agent/agent.ts';
import type { AuditEntry } from '../../src/audit/entry.ts';
import { SqliteStore } from '../../src/store/sqlite.ts';

const skip = missingTools('swtpm', 'swtpm_setup', 'openssl', 'softhsm', 'softhsm2-util');
const PCRS = [0, 1, 2, 3, 4, 5, 6, 7];
const ZEROS = Object.fromEntries(PCRS.map((i) => [String(i), '00'.repeat(32)]));

describe('ek trust re-checked at renewal', { skip: skip ?? false }, () => {
  let sw: Swtpm;
  let td: TestDaemon;
  let ekHash: string;
  let otherCaFile: string;

  // The daemon's port changes at each restart: the agent reads it at each call.
  const options = (policy: string, lifetimeSeconds = 0): AttestorOptions => {
    const o: AttestorOptions = { addr: '', ca: '', tpm: sw.tcti, policy, ek: 'rsa', ak: 'ecc', claims: { repository: 'acme/widgets' }, lifetimeSeconds };
    Object.defineProperty(o, 'addr', { get: () => td.daemon.address, enumerable: true });
    Object.defineProperty(o, 'ca', { get: () => td.ca, enumerable: true });
    return o;
  };
  const agent = (policy: string): Attestor => new Attestor(options(policy));
  const sign = async (id: Identity): Promise<void> => void (await signAsBuilder(td, id));
  /** Restarts sigild on the same store, token and files, with `edit` applied to its attestation policies. */
  const restartWith = async (edit: (policies: Record<string, Record<string, unknown>>) => void): Promise<void> => {
    const cfg = parse(readFileSync(td.configFile, 'utf8')) as { attestation: { policies: Record<string, Record<string, unknown>> } };
    edit(cfg.attestation.policies);
    writeFileSync(td.configFile, stringify(cfg));
    await td.restart();
  };
  const refusedRenewal = (why: RegExp): AuditEntry | undefined =>
    td.auditEntries().find((e) => e.act === 'renewal' && e.result === 'refused' && e.reason === 'PERMISSION_DENIED' && (e.detail as { ekHash?: string }).ekHash === ekHash && why.test(String((e.detail as { why?: string }).why)));

  before(async () => {
    if (skip) return;
    sw = await startSwtpm();
    ekHash = await swtpmEkHash(sw);
    const base = { pcrs: { bank: 'sha256', select: PCRS }, golden: [ZEROS] };
    td = await startTestDaemon({
      extraConfig: {
        identity: { trustDomain: 'sigil.test' },
        authorization: { builders: [{ keys: ['ci/*'], identities: [{ san: 'spiffe://sigil.test/builder/tpm/*' }] }] },
        attestation: { policies: { ci: { ...base, ekCaFiles: [sw.ekCaFile] }, listed: { ...base, ekHashes: [ekHash] } } },
      },
    });
    otherCaFile = join(td.dir, 'other-ek-ca.pem');
    writeFileSync(otherCaFile, (await createDevCa('not the ek ca')).cert);
    await rpc.createKey(td.client('admin'), { name: 'ci/provenance', algorithm: 1, backend: '' });
  });
  after(async () => {
    await td?.stop();
    await sw?.stop();
  });

  test('trusted by its ek ca: renews; the ca removed from the config: renewal refused with the reason, and audited', async () => {
    const a = agent('ci');
    const id = await a.enroll();
    const renewed = await a.renew(id);
    await sign(renewed);
    // Enrollment kept the certificate the runner presented, for renewals to check again.
    const store = new SqliteStore(join(td.dir, 'sigil.db'));
    try {
      const rec = store.getEnrollment(ekHash)!;
      assert.ok(rec.ekCertificate !== null && rec.ekCertificate.length > 0, 'the ek certificate is kept');
      assert.ok(rec.ekPublic !== null, 'the ek public area is kept');
    } finally {
      store.close();
    }

    await restartWith((p) => void (p.ci!.ekCaFiles = [otherCaFile]));
    // The identity itself is still valid: only the renewal applies the EK policy.
    await sign(renewed);
    await rejectsWith(a.renew(renewed), Status.PERMISSION_DENIED, /^ek no longer trusted: untrusted ek certificate: no trusted ca issued /);
    assert.ok(refusedRenewal(/^ek no longer trusted: untrusted ek certificate/), 'the refused renewal is in the audit log');

    // The operator trusts the CA again: the same runner renews.
    await restartWith((p) => void (p.ci!.ekCaFiles = [sw.ekCaFile]));
    await sign(await a.renew(renewed));
  });

  test('allowlisted by ek hash: renews; the hash removed: renewal refused with the reason, and audited', async () => {
    const a = agent('listed');
    const id = await a.enroll();
    const renewed = await a.renew(id);
    await sign(renewed);
    await restartWith((p) => void (p.listed!.ekHashes = ['ab'.repeat(32)]));
    // sigil-agent presents its EK certificate too, which this policy does not trust either.
    await rejectsWith(a.renew(renewed), Status.PERMISSION_DENIED, /^ek no longer trusted: untrusted ek certificate: the policy trusts no ek ca; ek not on the allowlist$/);
    assert.ok(refusedRenewal(/^ek no longer trusted: .*ek not on the allowlist$/), 'the refused renewal is in the audit log');
  });

  test('an enrollment recorded before the ek certificate was kept: refused at renewal under a ca-only policy, told to enroll again', async () => {
    await restartWith((p) => void (p.listed!.ekHashes = [ekHash]));
    const a = agent('ci');
    const id = await a.enroll();
    // What migration 10 leaves in a row written by an older sigild.
    await td.stopDaemon();
    const store = new SqliteStore(join(td.dir, 'sigil.db'));
    try {
      store.putEnrollment({ ...store.getEnrollment(ekHash)!, ekCertificate: null, ekPublic: null });
    } finally {
      store.close();
    }
    await td.restart();
    await rejectsWith(a.renew(id), Status.PERMISSION_DENIED, /^ek trust cannot be re-checked: .*; enroll again$/, 'ENROLL_AGAIN');
    assert.ok(refusedRenewal(/enroll again/), 'the refused renewal is in the audit log');
    // Enrolling again keeps the certificate, and renewals work again.
    const again = await a.enroll();
    await sign(await a.renew(again));
  });

  test('sigil-agent enrolls again by itself when its renewal is refused with enroll again', async () => {
    const events: AgentEvent[] = [];
    const agent = new Agent(options('ci', 4), (e) => events.push(e));
    try {
      await agent.enroll();
      const store = new SqliteStore(join(td.dir, 'sigil.db'));
      try {
        store.putEnrollment({ ...store.getEnrollment(ekHash)!, ekCertificate: null, ekPublic: null });
        // Renewal at half-life (2 s) is refused; the agent enrolls afresh, which keeps the certificate again.
        for (const end = Date.now() + 15_000; events.filter((e) => e.event === 'enrolled').length < 2; ) {
          if (Date.now() > end) assert.fail(`no second enrollment within 15 s: ${JSON.stringify(events)}`);
          await new Promise((r) => setTimeout(r, 100));
        }
        assert.deepEqual(events.slice(0, 3).map((e) => e.event), ['enrolled', 'renewal refused, enrolling again', 'enrolled'], JSON.stringify(events));
        assert.equal(events[1]!.reason, 'ENROLL_AGAIN', 'decided by the reason sigild sent');
        assert.ok(store.getEnrollment(ekHash)!.ekCertificate !== null);
      } finally {
        store.close();
      }
      await sign(agent.identity!);
    } finally {
      await agent.stop();
    }
  });

  test('sigil-agent enrolls again by itself once sigild is back after an outage longer than its identity', async () => {
    const events: AgentEvent[] = [];
    const agent = new Agent(options('ci', 3), (e) => events.push(e));
    const until = async (what: string, ms: number): Promise<void> => {
      for (const end = Date.now() + ms; !events.some((e) => e.event === what); ) {
        if (Date.now() > end) assert.fail(`no ${what} event within ${ms} ms: ${JSON.stringify(events)}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    };
    try {
      const first = await agent.enroll();
      await td.stopDaemon();
      await until('identity expired, enrolling again', 8000);
      await until('enrollment failed', 5000);
      assert.ok(events.some((e) => e.event === 'renewal failed'), 'renewal was tried while the identity lasted');
      await td.restart();
      events.length = 0;
      await until('enrolled', 70_000);
      assert.notEqual(agent.identity!.certificatePem, first.certificatePem);
      assert.ok(agent.identity!.notAfter.getTime() > Date.now());
      await sign(agent.identity!);
    } finally {
      await agent.stop();
    }
  });

  // Last: it revokes this file's TPM for good.
  test('sigil-agent of a revoked builder stops enrolling once its identity expired, instead of retrying for ever', async () => {
    const events: AgentEvent[] = [];
    const agent = new Agent(options('ci', 3), (e) => events.push(e));
    try {
      await agent.enroll();
      await rpc.revokeBuilder(td.client('admin'), { ekHash, reason: 'keyCompromise', akName: '' });
      for (const end = Date.now() + 15_000; !events.some((e) => e.event === 'enrollment refused for good, the agent stops enrolling'); ) {
        if (Date.now() > end) assert.fail(`the agent did not stop within 15 s: ${JSON.stringify(events)}`);
        await new Promise((r) => setTimeout(r, 100));
      }
      const seen = events.length;
      await new Promise((r) => setTimeout(r, 2500));
      assert.equal(events.length, seen, `nothing after it: ${JSON.stringify(events.slice(seen))}`);
      assert.ok(!events.some((e) => e.event === 'enrollment failed'), 'no retry was scheduled');
      assert.equal(events.find((e) => e.event === 'enrollment refused for good, the agent stops enrolling')!.reason, 'BUILDER_REVOKED');
    } finally {
      await agent.stop();
    }
  });
});
