// Rotating the identity CA key in a running daemon (real SoftHSM token, swtpm-attested builders, sigilctl
// processes, openssl as the verifier): builders holding a v1 certificate keep signing through the rotation,
// new enrollments get v2 certificates, v1 stays trusted until its window ends or it is disabled (on open
// connections and on new handshakes), each generation has its own CRL, the trusted root lists both with their
// windows, the acts that would break a live generation are refused and audited, and a restart keeps it all.
import 'reflect-metadata';
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, X509Certificate } from 'node:crypto';
import { execFile, spawnSync } from 'node:child_process';
import { promisify } from 'node:util';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { status as Status, type ServiceError } from '@grpc/grpc-js';
import { rejectsWith } from '../helpers/assert.ts';
import { missingTools } from '../helpers/hw.ts';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.ts';
import { builderConfig } from '../helpers/builder.ts';
import { startSwtpm, type Swtpm } from '../helpers/swtpm.ts';
import { rpc, type Clients } from '../../src/cli/client.ts';
import { Attestor, builderClients, type Identity } from '../../src/cli/agent/attestor.ts';
import type { TrustedRootDocument } from '../../src/revocation/trusted-root.ts';

const run = promisify(execFile);
const skip = missingTools('swtpm', 'swtpm_setup', 'openssl', 'softhsm', 'softhsm2-util');
const SIGILCTL = new URL('../../bin/sigilctl.js', import.meta.url).pathname;
const HOUR = 3_600_000;
const CA = 'sigil/identity-ca';

const clock = { offsetMs: 0, now: () => new Date(Date.now() + clock.offsetMs) };

function openssl(args: string[]): { code: number; out: string } {
  const r = spawnSync('openssl', args, { encoding: 'utf8' });
  return { code: r.status ?? -1, out: `${r.stdout}${r.stderr}` };
}

describe('identity ca key rotation end to end', { skip: skip ?? false }, () => {
  let sw: Swtpm;
  let td: TestDaemon;
  /** Builder clients (the helper closes the ones it made). */
  const opened: Clients[] = [];
  let v1Builder: Identity;
  let v1Client: Clients;
  let v1ToRevoke: Identity;
  let v1RevokedClient: Clients;
  let v2Builder: Identity;
  let v2Client: Clients;
  let v1CaFile: string;
  let v2CaFile: string;
  let rotatedAt: Date;

  const addr = (): string => td.daemon.address;
  const own = (c: Clients): Clients => {
    opened.push(c);
    return c;
  };
  const client = (who: 'admin' | 'anonymous' | 'auditor'): Clients => td.client(who);
  const builder = (id: Identity): Clients => own(builderClients(addr(), td.ca, id));
  const agent = (lifetimeSeconds = 0): Attestor =>
    new Attestor({ addr: addr(), ca: td.ca, tpm: sw.tcti, policy: 'ci', ek: 'rsa', ak: 'ecc', claims: { repository: 'acme/widgets' }, lifetimeSeconds });
  const sign = (c: Clients, i = 0) => rpc.sign(c, { key: 'ci/provenance', digest: createHash('sha256').update(`artifact ${i}`).digest(), message: undefined });
  const ctl = async (args: string[], who: 'admin' | 'auditor' | null = 'admin'): Promise<{ stdout: string; stderr: string; code: number }> => {
    const env = { ...process.env, SIGIL_ADDR: addr(), SIGIL_CACERT: td.ca, ...(who ? { SIGIL_CLIENT_CERT: td.ids[who].cert, SIGIL_CLIENT_KEY: td.ids[who].key } : {}) };
    try {
      return { ...(await run(process.execPath, [SIGILCTL, ...args], { env, maxBuffer: 16 * 1024 * 1024 })), code: 0 };
    } catch (err) {
      const e = err as { stdout: string; stderr: string; code: number };
      return { stdout: e.stdout, stderr: e.stderr, code: e.code };
    }
  };
  const file = (name: string, text: string | Buffer): string => {
    const p = join(td.dir, name);
    writeFileSync(p, text);
    return p;
  };
  const verifyCert = (caFile: string, cert: string, crl?: string) =>
    openssl(['verify', ...(crl ? ['-crl_check', '-CRLfile', crl] : []), '-CAfile', caFile, cert]);
  const trustedRoot = async (): Promise<TrustedRootDocument> => JSON.parse((await rpc.getTrustedRoot(client('anonymous'), {})).json.toString()) as TrustedRootDocument;
  const http = (path: string) => fetch(`http://${td.daemon.metricsAddress}${path}`);
  const restart = async (): Promise<void> => {
    for (const c of opened.splice(0)) c.close();
    await td.restart();
  };

  before(async () => {
    if (skip) return;
    sw = await startSwtpm();
    td = await startTestDaemon({
      clock,
      extraConfig: builderConfig(sw.ekCaFile, { lifetime: '15m', maxLifetime: '1h' }),
    });
    await rpc.createKey(td.client('admin'), { name: 'ci/provenance', algorithm: 1, backend: '' });
    v1Builder = await agent().enroll();
    v1ToRevoke = await agent().enroll();
    v1Client = builder(v1Builder);
    v1RevokedClient = builder(v1ToRevoke);
    await sign(v1Client);
    await sign(v1RevokedClient);
    v1CaFile = file('v1-ca.pem', v1Builder.caCertificatePem);
    assert.equal(new X509Certificate(v1Builder.caCertificatePem).subject, 'CN=sigil identity CA', 'generation 1 keeps the name deployments trust');
  });
  after(async () => {
    for (const c of opened) c.close();
    await td?.stop();
    await sw?.stop();
  });

  test('sigilctl key rotate sigil/identity-ca while a v1 builder signs: no request fails, the new ca certificate is made and audited before the answer', async () => {
    let stop = false;
    let signed = 0;
    const failures: unknown[] = [];
    const loop = (async () => {
      while (!stop) {
        try {
          await sign(v1Client, signed);
          signed++;
        } catch (err) {
          failures.push(err);
        }
      }
    })();
    // Let the loop get going, so the rotation lands in the middle of it.
    while (signed < 5) await new Promise((r) => setTimeout(r, 5));
    const size = td.daemon.audit.size;
    const r = await ctl(['key', 'rotate', CA, '-o', 'json']);
    const atAnswer = signed;
    // And a few more after the answer, on the same connection.
    while (signed < atAnswer + 5 && failures.length === 0) await new Promise((r) => setTimeout(r, 5));
    stop = true;
    await loop;
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(failures, [], 'no builder request failed during the rotation');
    const out = JSON.parse(r.stdout) as { newVersion: number; key: { primaryVersion: number } };
    assert.deepEqual([out.newVersion, out.key.primaryVersion], [2, 2]);

    // Before the RPC answered: the new generation issues, and its certificate is stored and audited.
    const ca = td.daemon.identity!;
    assert.equal(ca.keyVersion, `${CA}@2`);
    const v2Der = ca.caCertificateDer();
    assert.equal(new X509Certificate(v2Der).subject, 'CN=sigil identity CA 2');
    const entries = td.auditEntries().slice(size);
    const rotate = entries.find((e) => e.act === 'key.rotate' && e.result === 'ok');
    const created = entries.find((e) => e.act === 'identity.ca.create');
    assert.deepEqual([rotate?.key, rotate?.who], [`${CA}@2`, 'CN=test-admin']);
    assert.ok(created, 'identity.ca.create recorded');
    assert.equal(created.key, `${CA}@2`);
    assert.equal(created.result, 'ok');
    const d = created.detail as { fingerprint: string; notAfter: string; version: number; subject: string };
    assert.equal(d.fingerprint, createHash('sha256').update(v2Der).digest('hex'));
    assert.equal(d.notAfter, new Date(new X509Certificate(v2Der).validTo).toISOString());
    assert.deepEqual([d.version, d.subject], [2, 'sigil identity CA 2']);
    assert.ok(entries.indexOf(created) > entries.indexOf(rotate!), 'the certificate follows the rotation it belongs to');
    rotatedAt = ca.windows().find((w) => w.version === 1)!.rotatedAt!;
    assert.ok(rotatedAt.getTime() <= Date.now() && rotatedAt.getTime() > Date.now() - 60_000);
    v2CaFile = file('v2-ca.pem', ca.caCertificatePem());
  });

  test('a new enrollment gets a v2 certificate: openssl accepts it with the v2 ca and rejects it with the v1 ca; v1 builders still sign, also on a new handshake', async () => {
    // A long-lived v2 certificate (the longest lifetime), for the end of v1's window later on.
    await new Promise((r) => setTimeout(r, Math.max(0, rotatedAt.getTime() + 2500 - Date.now())));
    v2Builder = await agent(3600).enroll();
    assert.equal(v2Builder.caCertificatePem, readFileSync(v2CaFile, 'utf8'), 'the agent gets the ca of the generation that issued it');
    const cert = file('v2-builder.pem', v2Builder.certificatePem);
    const ok = verifyCert(v2CaFile, cert);
    assert.equal(ok.code, 0, ok.out);
    const bad = verifyCert(v1CaFile, cert);
    assert.notEqual(bad.code, 0, 'the v1 ca does not verify a v2 certificate');
    assert.match(bad.out, /unable to get local issuer certificate|unable to get issuer certificate/);
    assert.equal(verifyCert(v1CaFile, file('v1-builder.pem', v1Builder.certificatePem)).code, 0);
    assert.notEqual(verifyCert(v2CaFile, join(td.dir, 'v1-builder.pem')).code, 0);
    const issued = td.auditEntries().findLast((e) => e.act === 'identity.issue');
    assert.equal(issued?.key, `${CA}@2`);

    v2Client = builder(v2Builder);
    await sign(v2Client);
    await sign(v1Client);
    // A new TLS connection with the v1 certificate: v1 is still in the trust store.
    await sign(builder(v1Builder));
  });

  test('each generation has its own crl: a v1 certificate revoked after the rotation is on v1\'s crl (openssl -crl_check), not on v2\'s, and its builder is refused on its next request', async () => {
    const serial = new X509Certificate(v1ToRevoke.certificatePem).serialNumber;
    const canonical = serial.toLowerCase().replace(/^0+/, '');
    await rpc.revokeIdentity(client('admin'), { serial, reason: 'keyCompromise' });
    await rejectsWith(sign(v1RevokedClient), Status.UNAUTHENTICATED, /^builder identity revoked$/);
    await sign(v1Client);

    const anon = client('anonymous');
    const v1Crl = await rpc.getCrl(anon, { caVersion: 1 });
    const v2Crl = await rpc.getCrl(anon, { caVersion: 0 });
    assert.deepEqual([v1Crl.caVersion, v2Crl.caVersion], [1, 2]);
    const v1CrlFile = file('v1-crl.pem', v1Crl.pem);
    const v2CrlFile = file('v2-crl.pem', v2Crl.pem);
    const revoked = verifyCert(v1CaFile, file('v1-revoked.pem', v1ToRevoke.certificatePem), v1CrlFile);
    assert.notEqual(revoked.code, 0);
    assert.match(revoked.out, /certificate revoked/);
    const kept = verifyCert(v1CaFile, join(td.dir, 'v1-builder.pem'), v1CrlFile);
    assert.equal(kept.code, 0, kept.out);
    const v2ok = verifyCert(v2CaFile, join(td.dir, 'v2-builder.pem'), v2CrlFile);
    assert.equal(v2ok.code, 0, v2ok.out);
    const v1Text = openssl(['crl', '-in', v1CrlFile, '-noout', '-text', '-CAfile', v1CaFile]);
    const v2Text = openssl(['crl', '-in', v2CrlFile, '-noout', '-text', '-CAfile', v2CaFile]);
    assert.match(v1Text.out, /verify OK/);
    assert.match(v1Text.out, /Issuer: CN *= *sigil identity CA\n/);
    assert.match(v1Text.out.toLowerCase(), new RegExp(`serial number: 0*${canonical}`));
    assert.match(v2Text.out, /verify OK/);
    assert.match(v2Text.out, /Issuer: CN *= *sigil identity CA 2/);
    assert.match(v2Text.out, /No Revoked Certificates/);

    // Plain HTTP: /crl stays the current generation's, ?version=N selects one.
    assert.ok(Buffer.from(await (await http('/crl?version=1')).arrayBuffer()).equals(v1Crl.der));
    assert.equal(await (await http('/crl.pem?version=1')).text(), v1Crl.pem);
    assert.equal(await (await http('/crl.pem')).text(), v2Crl.pem);
    assert.equal((await http('/crl?version=7')).status, 404);
    assert.equal((await http('/crl?version=x')).status, 400);
    await rejectsWith(rpc.getCrl(anon, { caVersion: 7 }), Status.NOT_FOUND, /no generation 7/);
    // sigilctl crl get --ca-version.
    const got = await ctl(['crl', 'get', '--ca-version', '1', '--out', join(td.dir, 'cli-v1.crl'), '--der', '-o', 'json'], null);
    assert.equal(got.code, 0, got.stderr);
    assert.equal((JSON.parse(got.stdout) as { caVersion: number }).caVersion, 1);
    assert.ok(readFileSync(join(td.dir, 'cli-v1.crl')).equals(v1Crl.der));
    const badFlag = await ctl(['crl', 'get', '--ca-version', 'two'], null);
    assert.notEqual(badFlag.code, 0);
    assert.match(badFlag.stderr, /--ca-version takes a version number >= 1/);
  });

  test('the acts that would break a live generation are refused, audited, and change nothing', async () => {
    const admin = client('admin');
    const before = (await rpc.getKey(admin, { name: CA })).key;
    const size = td.daemon.audit.size;
    const refused = (re: RegExp) => (e: ServiceError) => {
      assert.equal(e.code, Status.FAILED_PRECONDITION, e.details);
      assert.match(e.details, re);
      return true;
    };
    await assert.rejects(rpc.disableKeyVersion(admin, { key: `${CA}@2`, compromised: false, compromiseTime: undefined }), refused(/is the identity ca's current generation.*rotate first/));
    await assert.rejects(rpc.disableKeyVersion(admin, { key: `${CA}@2`, compromised: true, compromiseTime: undefined }), refused(/is the identity ca's current generation/));
    await assert.rejects(rpc.scheduleDestroyKeyVersion(admin, { key: `${CA}@1`, windowSeconds: 0 }), refused(/identity ca generation 1, still trusted until .*disable it first/));
    await assert.rejects(rpc.updateKeyPolicy(admin, { name: CA, minSignVersion: 2 }), refused(/min_sign_version 2 is above sigil\/identity-ca@1, an identity ca generation still trusted/));
    await assert.rejects(rpc.updateKeyPolicy(admin, { name: CA, minVerifyVersion: 2 }), refused(/min_verify_version 2 is above/));
    const cli = await ctl(['key', 'schedule-destroy', `${CA}@1`]);
    assert.notEqual(cli.code, 0);
    assert.match(cli.stderr, /FAILED_PRECONDITION.*still trusted/);
    assert.deepEqual((await rpc.getKey(admin, { name: CA })).key, before, 'nothing changed');
    assert.deepEqual(
      td.auditEntries().slice(size).map((e) => [e.act, e.key, e.result, e.reason]),
      [
        ['key.disable', `${CA}@2`, 'refused', 'FAILED_PRECONDITION'],
        ['key.disable', `${CA}@2`, 'refused', 'FAILED_PRECONDITION'],
        ['key.schedule-destroy', `${CA}@1`, 'refused', 'FAILED_PRECONDITION'],
        ['key.policy', CA, 'refused', 'FAILED_PRECONDITION'],
        ['key.policy', CA, 'refused', 'FAILED_PRECONDITION'],
        ['key.schedule-destroy', `${CA}@1`, 'refused', 'FAILED_PRECONDITION'],
      ],
    );
    // A harmless policy change goes through.
    await rpc.updateKeyPolicy(admin, { name: CA, destroyNeedsApproval: true });
  });

  test('the trusted root lists one certificate authority per generation, v1 closing at rotation + max lifetime', async () => {
    const doc = await trustedRoot();
    const iso = (d: Date) => d.toISOString().replace(/\.000Z$/, 'Z');
    assert.deepEqual(
      doc.certificateAuthorities.map((a) => [a.subject.commonName, a.certChain.certificates[0]!.rawBytes, a.validFor.end]),
      [
        ['sigil identity CA', new X509Certificate(readFileSync(v1CaFile)).raw.toString('base64'), iso(new Date(rotatedAt.getTime() + HOUR))],
        ['sigil identity CA 2', new X509Certificate(readFileSync(v2CaFile)).raw.toString('base64'), undefined],
      ],
    );
    assert.ok(!doc.sigilKeyVersions.some((k) => k.keyName === CA), 'the ca key is no signing key');
  });

  test('a restart keeps both generations, their windows and the ca that issues', async () => {
    await restart();
    const ca = td.daemon.identity!;
    assert.equal(ca.keyVersion, `${CA}@2`);
    assert.deepEqual(ca.liveVersions(), [1, 2]);
    assert.equal(ca.windows()[0]!.rotatedAt!.getTime(), rotatedAt.getTime());
    v1Client = builder(v1Builder);
    v2Client = builder(v2Builder);
    await sign(v1Client);
    await sign(v2Client);
    await rejectsWith(sign(builder(v1ToRevoke)), Status.UNAUTHENTICATED, /^builder identity revoked$/);
    const v1Crl = await rpc.getCrl(client('anonymous'), { caVersion: 1 });
    const revoked = verifyCert(v1CaFile, join(td.dir, 'v1-revoked.pem'), file('v1-crl-after.pem', v1Crl.pem));
    assert.match(revoked.out, /certificate revoked/);
    assert.equal((await trustedRoot()).certificateAuthorities.length, 2);
    // A new enrollment after the restart is still v2.
    const again = await agent().enroll();
    assert.equal(again.caCertificatePem, readFileSync(v2CaFile, 'utf8'));
  });

  test('sigilctl key disable sigil/identity-ca@1 takes v1 out at once (open connection, new handshake, crl); enable brings it back', async () => {
    const d = await ctl(['key', 'disable', `${CA}@1`]);
    assert.equal(d.code, 0, d.stderr);
    // The connection opened before: refused on its next request.
    await rejectsWith(sign(v1Client), Status.UNAUTHENTICATED, /identity ca generation 1, which is disabled/);
    // A new handshake: v1 is no longer in the trust store.
    await rejectsWith(sign(builder(v1Builder)), Status.UNAUTHENTICATED, /client certificate not trusted/);
    await sign(v2Client);
    await sign(builder(v2Builder));
    await rejectsWith(rpc.getCrl(client('anonymous'), { caVersion: 1 }), Status.FAILED_PRECONDITION, /generation 1 is no longer trusted/);
    assert.equal((await http('/crl?version=1')).status, 404);
    const disabledAt = td.daemon.keys.getKey(CA).versions[0]!.disabledAt!;
    const closed = (await trustedRoot()).certificateAuthorities[0]!.validFor.end;
    assert.equal(closed, disabledAt.toISOString().replace(/\.000Z$/, 'Z'), 'v1 closes when it was disabled');
    assert.ok(td.auditEntries().some((e) => e.act === 'request.refused' && /which is disabled/.test(String((e.detail as { why?: string }).why))), 'the refusal is audited');

    const e = await ctl(['key', 'enable', `${CA}@1`]);
    assert.equal(e.code, 0, e.stderr);
    await sign(v1Client);
    await sign(builder(v1Builder));
    assert.equal((await rpc.getCrl(client('anonymous'), { caVersion: 1 })).caVersion, 1);
    assert.equal((await trustedRoot()).certificateAuthorities[0]!.validFor.end, new Date(rotatedAt.getTime() + HOUR).toISOString().replace(/\.000Z$/, 'Z'));
  });

  test('when v1\'s window ends (rotation + max lifetime) v1 is refused everywhere, v2 goes on, and the refusals lift', async () => {
    // Just past v1's window; the long-lived v2 certificate, issued seconds after the rotation, is still valid.
    clock.offsetMs = rotatedAt.getTime() + HOUR + 200 - Date.now();
    // The daemon's timer targets the wall clock; the moved clock needs the reload the timer would do.
    td.daemon.identity!.refresh();
    assert.deepEqual(td.daemon.identity!.liveVersions(), [2]);
    await rejectsWith(sign(v1Client), Status.UNAUTHENTICATED, /client certificate expired|no longer trusted/);
    await rejectsWith(sign(builder(v1Builder)), Status.UNAUTHENTICATED, /client certificate not trusted/);
    await sign(v2Client);
    await sign(builder(v2Builder));
    await rejectsWith(rpc.getCrl(client('anonymous'), { caVersion: 1 }), Status.FAILED_PRECONDITION, /no longer trusted/);
    // v1 no longer signs anything that matters: raising the min versions and destroying it are allowed now.
    const admin = client('admin');
    await rpc.updateKeyPolicy(admin, { name: CA, minSignVersion: 2 });
    const destroy = await rpc.scheduleDestroyKeyVersion(admin, { key: `${CA}@1`, windowSeconds: 0 });
    assert.ok(destroy.approval, 'the policy set above asks for an approval');
  });

  test('sigilctl audit verify passes over everything above', async () => {
    const v = await ctl(['audit', 'verify', '-o', 'json'], 'auditor');
    assert.equal(v.code, 0, v.stdout + v.stderr);
    assert.equal((JSON.parse(v.stdout) as { ok: boolean }).ok, true);
  });
});
