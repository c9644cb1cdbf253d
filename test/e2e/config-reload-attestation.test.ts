// A config reload of attestation policies and builder rules on a real daemon (SoftHSM, swtpm-attested builders,
// no restart): new golden PCR values apply to the next enrollment and renewal, a builder rule taken away refuses
// the builder's next signature, and a removed policy refuses its builders' renewals with the reason.
import 'reflect-metadata';
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { parse, stringify } from 'yaml';
import { status as Status } from '@grpc/grpc-js';
import { signAsBuilder } from '../helpers/builder.ts';
import { rejectsWith } from '../helpers/assert.ts';
import { createDevCa } from '../../src/dev/pki.ts';
import { missingTools } from '../helpers/hw.ts';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.ts';
import { startSwtpm, type Swtpm } from '../helpers/swtpm.ts';
import { rpc } from '../../src/cli/client.ts';
import { Attestor, type Identity } from '../../src/cli/agent/attestor.ts';

const skip = missingTools('swtpm', 'swtpm_setup', 'openssl', 'softhsm', 'softhsm2-util');
const PCRS = [0, 1, 2, 3, 4, 5, 6, 7];
// swtpm's PCRs 0-7 are all zero after startup.
const ZEROS = Object.fromEntries(PCRS.map((i) => [String(i), '00'.repeat(32)]));
const NEW_FIRMWARE = Object.fromEntries(PCRS.map((i) => [String(i), 'ab'.repeat(32)]));

interface Cfg {
  authorization: { builders: unknown[] };
  attestation: { policies: Record<string, { golden: Array<Record<string, string>> } & Record<string, unknown>> };
}

describe('config reload: attestation policies and builder rules', { skip: skip ?? false }, () => {
  let sw: Swtpm;
  let td: TestDaemon;
  const RULE = { keys: ['ci/*'], identities: [{ san: 'spiffe://sigil.test/builder/tpm/*' }] };

  const agent = (policy: string): Attestor =>
    new Attestor({ addr: td.daemon.address, ca: td.ca, tpm: sw.tcti, policy, ek: 'rsa', ak: 'ecc', claims: { repository: 'acme/widgets' }, lifetimeSeconds: 0 });
  const sign = async (id: Identity): Promise<void> => void (await signAsBuilder(td, id));
  const reloadWith = async (edit: (cfg: Cfg) => void): Promise<Awaited<ReturnType<TestDaemon['daemon']['reload']>>> => {
    const cfg = parse(readFileSync(td.configFile, 'utf8')) as Cfg;
    edit(cfg);
    writeFileSync(td.configFile, stringify(cfg));
    return td.daemon.reload();
  };

  before(async () => {
    if (skip) return;
    sw = await startSwtpm();
    const base = { pcrs: { bank: 'sha256', select: PCRS }, ekCaFiles: [sw.ekCaFile] };
    td = await startTestDaemon({
      extraConfig: {
        identity: { trustDomain: 'sigil.test' },
        authorization: { builders: [RULE] },
        attestation: { policies: { ci: { ...base, golden: [ZEROS] }, spare: { ...base, golden: [ZEROS] } } },
      },
    });
    await rpc.createKey(td.client('admin'), { name: 'ci/provenance', algorithm: 1, backend: '' });
  });
  after(async () => {
    await td?.stop();
    await sw?.stop();
  });

  test('new golden values apply to the next enrollment and renewal; the old ones again let the runner in', async () => {
    const a = agent('ci');
    const id = await a.enroll();
    await sign(id);

    const out = await reloadWith((c) => void (c.attestation.policies.ci!.golden = [NEW_FIRMWARE]));
    assert.deepEqual([out.result, out.applied, out.ignored], ['ok', ['attestation.policies'], []]);
    const golden = /^pcr values match none of the policy's golden sets/;
    await rejectsWith(agent('ci').enroll(), Status.PERMISSION_DENIED, golden);
    await rejectsWith(a.renew(id), Status.PERMISSION_DENIED, golden);
    await reloadWith((c) => void (c.attestation.policies.ci!.golden = [NEW_FIRMWARE, ZEROS]));
    await sign(await a.renew(id));
    // Back to the new values only: the other policy, unchanged, still enrolls this TPM.
    await reloadWith((c) => void (c.attestation.policies.ci!.golden = [NEW_FIRMWARE]));
    await rejectsWith(agent('ci').enroll(), Status.PERMISSION_DENIED, golden);
    await sign(await agent('spare').enroll());
    await reloadWith((c) => void (c.attestation.policies.ci!.golden = [ZEROS]));
    const e = td.auditEntries().filter((x) => x.act === 'config.reload').at(-1)!;
    assert.deepEqual((e.detail as { applied: string[] }).applied, ['attestation.policies']);
  });

  test('an ek ca bundle edited in place (same path) applies at the reload: a removed ca refuses the next enrollment', async () => {
    const saved = readFileSync(sw.ekCaFile);
    try {
      writeFileSync(sw.ekCaFile, (await createDevCa('not the tpm vendor')).cert);
      const out = await td.daemon.reload();
      assert.deepEqual([out.result, out.applied], ['ok', ['attestation.policies.ci.ekCaFiles', 'attestation.policies.spare.ekCaFiles']]);
      await rejectsWith(agent('ci').enroll(), Status.PERMISSION_DENIED, /ek/);
    } finally {
      writeFileSync(sw.ekCaFile, saved);
    }
    const back = await td.daemon.reload();
    assert.deepEqual(back.applied, ['attestation.policies.ci.ekCaFiles', 'attestation.policies.spare.ekCaFiles']);
    await sign(await agent('ci').enroll());
  });

  test('a builder rule taken away refuses the next signature; given back, it signs again', async () => {
    const id = await agent('ci').enroll();
    await sign(id);
    const out = await reloadWith((c) => void (c.authorization.builders = []));
    assert.deepEqual(out.applied, ['authorization.builders']);
    await rejectsWith(sign(id), Status.PERMISSION_DENIED, /^builder spiffe:\/\/sigil\.test\/builder\/tpm\/[0-9a-f]{64} may not use key ci\/provenance$/);
    await reloadWith((c) => void (c.authorization.builders = [RULE]));
    await sign(id);
  });

  test('a policy removed: its builders renewals are refused with the reason; enrollment under it names the policies left', async () => {
    const a = agent('ci');
    const id = await a.enroll();
    const out = await reloadWith((c) => void delete c.attestation.policies.ci);
    assert.deepEqual(out.applied, ['attestation.policies']);
    await rejectsWith(a.renew(id), Status.FAILED_PRECONDITION, /^attestation policy ci is no longer configured: its builders cannot renew \(enroll under a configured policy\)$/);
    assert.ok(
      td.auditEntries().some((e) => e.act === 'renewal' && e.result === 'refused' && /^attestation policy ci is no longer configured/.test(String((e.detail as { why?: string }).why))),
      'the refused renewal is audited',
    );
    await rejectsWith(agent('ci').enroll(), Status.INVALID_ARGUMENT, /^no attestation policy ci: this daemon has spare$/);
    // Its identity stays valid until it expires (revoke it to cut it off at once).
    await sign(id);
  });
});
