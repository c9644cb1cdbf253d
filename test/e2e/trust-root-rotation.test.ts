// Rotating the trusted-root key in a running daemon (real SoftHSM token, real sigilctl processes, openssl as
// the independent verifier): each rotation makes a key transition statement signed by the previous version
// and the new one, the trusted root is signed by the new version before the rotation answers, a verifier
// pinned to v1 follows the chain to the current key, a tampered statement fails with nothing written, the
// chain survives a restart and a missing statement is made at the next start, a compromised version cuts
// the chain (verifiers pinned at or before it must re-pin), and the acts still refused are refused and audited.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import { promisify } from 'node:util';
import { createPublicKey } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { status as Status, type ServiceError } from '@grpc/grpc-js';
import { missingTools } from '../helpers/hw.ts';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.ts';
import { rpc, type Clients } from '../../src/cli/client.ts';
import { Algorithm } from '../../src/gen/sigil/v1/signer.ts';
import type { GetTrustedRootResponse } from '../../src/gen/sigil/v1/revocation.ts';
import type { TransitionStatement } from '../../src/revocation/root-key-chain.ts';

const run = promisify(execFile);
const skip = missingTools('softhsm', 'softhsm2-util', 'openssl');
const SIGILCTL = new URL('../../bin/sigilctl.js', import.meta.url).pathname;
const ROOT = 'sigil/trust-root';

function openssl(args: string[]): { code: number; out: string } {
  const r = spawnSync('openssl', args, { encoding: 'utf8' });
  return { code: r.status ?? -1, out: `${r.stdout}${r.stderr}` };
}

type Statement = TransitionStatement;

describe('trusted-root key rotation end to end', { skip: skip ?? false }, () => {
  let td: TestDaemon;
  let v1Pem: string;
  const clients = (who: 'admin' | 'anonymous'): Clients => td.client(who);
  const root = (): Promise<GetTrustedRootResponse> => rpc.getTrustedRoot(clients('anonymous'), {});
  const ctl = async (args: string[], who: 'auditor' | 'admin' | 'none' = 'none'): Promise<{ stdout: string; stderr: string; code: number }> => {
    const env: NodeJS.ProcessEnv = { ...process.env, SIGIL_ADDR: td.daemon.address, SIGIL_CACERT: td.ca };
    if (who !== 'none') Object.assign(env, { SIGIL_CLIENT_CERT: td.ids[who].cert, SIGIL_CLIENT_KEY: td.ids[who].key });
    try {
      const r = await run(process.execPath, [SIGILCTL, ...args], { env, maxBuffer: 16 * 1024 * 1024 });
      return { ...r, code: 0 };
    } catch (err) {
      const e = err as { stdout: string; stderr: string; code: number };
      return { stdout: e.stdout, stderr: e.stderr, code: e.code };
    }
  };
  const refused = (re: RegExp) => (e: ServiceError) => {
    assert.equal(e.code, Status.FAILED_PRECONDITION, e.details);
    assert.match(e.details, re);
    return true;
  };
  const pemOf = (ref: string): string => createPublicKey({ key: td.daemon.keys.publicKey(ref).spki, format: 'der', type: 'spki' }).export({ format: 'pem', type: 'spki' }).toString();
  const pemOfVersion = async (v: number): Promise<string> => pemOf(`${ROOT}@${v}`);
  const file = (name: string): string => join(td.dir, name);
  const db = (): DatabaseSync => new DatabaseSync(join(td.dir, 'sigil.db'));

  before(async () => {
    td = await startTestDaemon();
    await rpc.createKey(clients('admin'), { name: 'release/app', algorithm: Algorithm.ECDSA_P256_SHA256, backend: '' });
    const r = await root();
    assert.equal(r.keyVersion, `${ROOT}@1`);
    assert.deepEqual(r.rootKeyTransitions, [], 'no statement before the first rotation');
    v1Pem = file('v1.pem');
    writeFileSync(v1Pem, r.publicKeyPem);
  });
  after(async () => {
    await td?.stop();
  });

  test('policy on the root key, and disabling or destroying its current version, are refused, audited, and change nothing', async () => {
    const admin = clients('admin');
    const beforeKey = (await rpc.getKey(admin, { name: ROOT })).key;
    const size = td.daemon.audit.size;
    await assert.rejects(rpc.updateKeyPolicy(admin, { name: ROOT, autoRotatePeriodSeconds: 86_400 }), refused(/it signs the trusted root, the anchor verifiers pin, and takes no policy/));
    await assert.rejects(rpc.disableKeyVersion(admin, { key: `${ROOT}@1`, compromised: false, compromiseTime: undefined }), refused(/is the current version of sigil\/trust-root.*cannot be disabled: rotate first \(sigilctl key rotate sigil\/trust-root\)/));
    await assert.rejects(rpc.disableKeyVersion(admin, { key: `${ROOT}@1`, compromised: true, compromiseTime: undefined }), refused(/cannot be disabled: rotate first/));
    await assert.rejects(rpc.scheduleDestroyKeyVersion(admin, { key: `${ROOT}@1`, windowSeconds: 0 }), refused(/cannot be scheduled for destruction: rotate first/));
    assert.deepEqual((await rpc.getKey(admin, { name: ROOT })).key, beforeKey, 'nothing changed');
    assert.deepEqual(
      td.auditEntries().slice(size).map((e) => [e.act, e.key, e.result, e.reason]),
      [
        ['key.policy', ROOT, 'refused', 'FAILED_PRECONDITION'],
        ['key.disable', `${ROOT}@1`, 'refused', 'FAILED_PRECONDITION'],
        ['key.disable', `${ROOT}@1`, 'refused', 'FAILED_PRECONDITION'],
        ['key.schedule-destroy', `${ROOT}@1`, 'refused', 'FAILED_PRECONDITION'],
      ],
    );
  });

  test('sigilctl key rotate sigil/trust-root, twice: each answer comes after the statement is made and the trusted root is signed by the new version', async () => {
    for (const v of [2, 3]) {
      const r = await ctl(['key', 'rotate', ROOT, '-o', 'json'], 'admin');
      assert.equal(r.code, 0, r.stderr);
      assert.equal((JSON.parse(r.stdout) as { newVersion: number }).newVersion, v);
      // The hook ran before the answer: its log line names the version that signed the trusted root.
      const hook = td.logs().find((l) => l.msg === 'trusted-root key rotated; the trusted root is signed under the new version' && l.key === `${ROOT}@${v}`);
      assert.ok(hook, 'the lifecycle hook ran');
      assert.equal(hook.signedBy, `${ROOT}@${v}`);
      assert.deepEqual(hook.statements, [`${ROOT}@${v}`]);
      const tr = await root();
      assert.equal(tr.keyVersion, `${ROOT}@${v}`);
      assert.equal(tr.publicKeyPem, await pemOfVersion(v));
      assert.deepEqual(tr.rootKeyTransitions.map((t) => t.version), [2, 3].filter((x) => x <= v));
      writeFileSync(file('doc.json'), tr.json);
      writeFileSync(file('doc.sig'), tr.signature);
      writeFileSync(file('cur.pem'), tr.publicKeyPem);
      const ok = openssl(['dgst', '-sha256', '-verify', file('cur.pem'), '-signature', file('doc.sig'), file('doc.json')]);
      assert.equal(ok.code, 0, ok.out);
      // And not by the old key any more.
      const old = openssl(['dgst', '-sha256', '-verify', v1Pem, '-signature', file('doc.sig'), file('doc.json')]);
      assert.notEqual(old.code, 0, 'the trusted root is no longer signed by v1');
    }
    const rotations = td.auditEntries().filter((e) => e.act === 'key.rotate' && e.key?.startsWith(`${ROOT}@`) && e.result === 'ok');
    assert.deepEqual(rotations.map((e) => e.key), [`${ROOT}@2`, `${ROOT}@3`]);
  });

  test('each statement names both keys and verifies with openssl under each of them, and not under any other; http serves the same chain', async () => {
    const tr = await root();
    const http = (await (await fetch(`http://${td.daemon.metricsAddress}/trusted-root-keys.json`)).json()) as {
      key: string;
      transitions: Array<{ version: number; statement: string; previousSignature: string; signature: string }>;
      compromised: unknown[];
    };
    assert.equal(http.key, ROOT);
    assert.deepEqual(http.compromised, []);
    assert.equal(http.transitions.length, 2);
    for (const [i, t] of tr.rootKeyTransitions.entries()) {
      const h = http.transitions[i]!;
      assert.equal(h.version, t.version);
      assert.ok(Buffer.from(h.statement, 'base64').equals(Buffer.from(t.statement)));
      assert.ok(Buffer.from(h.previousSignature, 'base64').equals(Buffer.from(t.previousSignature)));
      assert.ok(Buffer.from(h.signature, 'base64').equals(Buffer.from(t.signature)));
      const s = JSON.parse(Buffer.from(t.statement).toString()) as Statement;
      assert.deepEqual(Object.keys(s), ['type', 'key', 'version', 'publicKey', 'previousVersion', 'previousPublicKey', 'time']);
      assert.equal(s.type, 'sigil.trusted-root-key-transition.v1');
      assert.equal(s.key, ROOT);
      assert.equal(s.version, t.version);
      assert.equal(s.previousVersion, t.version - 1);
      const p = `st${t.version}`;
      writeFileSync(file(`${p}.json`), t.statement);
      writeFileSync(file(`${p}.prev.sig`), t.previousSignature);
      writeFileSync(file(`${p}.sig`), t.signature);
      // The keys the statement names, turned into PEM by openssl itself, are the key versions the daemon holds.
      for (const [k, der] of [['new', s.publicKey], ['prev', s.previousPublicKey]] as const) {
        writeFileSync(file(`${p}.${k}.der`), Buffer.from(der, 'base64'));
        const c = openssl(['pkey', '-pubin', '-inform', 'DER', '-in', file(`${p}.${k}.der`), '-out', file(`${p}.${k}.pem`)]);
        assert.equal(c.code, 0, c.out);
      }
      assert.equal(readFileSync(file(`${p}.new.pem`), 'utf8'), await pemOfVersion(s.version));
      assert.equal(readFileSync(file(`${p}.prev.pem`), 'utf8'), await pemOfVersion(s.previousVersion));
      const byPrev = openssl(['dgst', '-sha256', '-verify', file(`${p}.prev.pem`), '-signature', file(`${p}.prev.sig`), file(`${p}.json`)]);
      assert.equal(byPrev.code, 0, byPrev.out);
      assert.match(byPrev.out, /Verified OK/);
      const byNew = openssl(['dgst', '-sha256', '-verify', file(`${p}.new.pem`), '-signature', file(`${p}.sig`), file(`${p}.json`)]);
      assert.equal(byNew.code, 0, byNew.out);
      // Crossed over, neither verifies: the two signatures are by two different keys.
      assert.notEqual(openssl(['dgst', '-sha256', '-verify', file(`${p}.new.pem`), '-signature', file(`${p}.prev.sig`), file(`${p}.json`)]).code, 0);
      assert.notEqual(openssl(['dgst', '-sha256', '-verify', file(`${p}.prev.pem`), '-signature', file(`${p}.sig`), file(`${p}.json`)]).code, 0);
    }
    // The links join: the key v3's statement names as previous is the one v2's statement introduced.
    assert.equal(readFileSync(file('st3.prev.pem'), 'utf8'), readFileSync(file('st2.new.pem'), 'utf8'));
  });

  test('sigilctl trusted-root get --root-key v1.pem follows @1 -> @2 -> @3 and writes what openssl verifies; without it, it says nothing was pinned', async () => {
    const r = await ctl(['trusted-root', 'get', '--root-key', v1Pem, '--out', file('got.json'), '--sig', file('got.sig'), '--pub', file('got.pem'), '--sigstore-out', file('got.sigstore.json'), '--sigstore-sig', file('got.sigstore.sig')]);
    assert.equal(r.code, 0, r.stderr);
    // The sigstore form is signed by the same (verified) current version.
    assert.match(openssl(['dgst', '-sha256', '-verify', file('got.pem'), '-signature', file('got.sigstore.sig'), file('got.sigstore.json')]).out, /Verified OK/);
    assert.match(r.stderr, /followed sigil\/trust-root@1 -> @2 -> @3/);
    assert.match(r.stdout, /verified from the pinned key/);
    assert.equal(readFileSync(file('got.pem'), 'utf8'), await pemOfVersion(3));
    const v = openssl(['dgst', '-sha256', '-verify', file('got.pem'), '-signature', file('got.sig'), file('got.json')]);
    assert.equal(v.code, 0, v.out);
    const j = await ctl(['trusted-root', 'get', '--root-key', file('st3.prev.pem'), '--out', file('got2.json'), '-o', 'json']);
    assert.equal(j.code, 0, j.stderr);
    assert.deepEqual((JSON.parse(j.stdout) as { followed: string; verified: boolean }).followed, `${ROOT}@2 -> @3`);
    const plain = await ctl(['trusted-root', 'get', '--out', file('plain.json')]);
    assert.equal(plain.code, 0, plain.stderr);
    assert.match(plain.stderr, /no root key pinned \(--root-key\): the trusted root was fetched but not verified/);
    // A key that was never a root key: exit 1, nothing written.
    writeFileSync(file('stranger.pem'), pemOf('release/app@1'));
    const stranger = await ctl(['trusted-root', 'get', '--root-key', file('stranger.pem'), '--out', file('stranger.json'), '--sig', file('stranger.sig')]);
    assert.equal(stranger.code, 1, stranger.stderr);
    assert.match(stranger.stderr, /does not verify from the pinned key .*the pinned key is not any sigil\/trust-root version the daemon serves \(sigil\/trust-root@1 to sigil\/trust-root@3\): check the key given \(--root-key\); nothing was written\n$/);
    assert.ok(!existsSync(file('stranger.json')) && !existsSync(file('stranger.sig')));
    // Not a key at all: a usage error before anything is fetched.
    const junk = await ctl(['trusted-root', 'get', '--root-key', file('st2.json'), '--out', file('junk.json')]);
    assert.equal(junk.code, 2, junk.stderr);
    assert.match(junk.stderr, /the pinned root key .* \(--root-key\) is not an ec p-256 public key/);
  });

  test('a tampered statement in the served chain fails the pinned verifier with exit 1 and nothing written; the store refuses to change a statement', async () => {
    const d = db();
    try {
      assert.throws(() => d.prepare("UPDATE root_key_transitions SET signature = x'00' WHERE version = 3").run(), /never change/);
      const orig = Buffer.from((d.prepare('SELECT statement FROM root_key_transitions WHERE version = 3').get() as { statement: Uint8Array }).statement);
      // Test-only: take the guard off to play an attacker who rewrites what the daemon serves.
      d.exec('DROP TRIGGER root_key_transitions_never_change');
      const forged = Buffer.from(orig);
      const i = forged.indexOf('"time":"') + 10;
      forged[i] = forged[i] === 0x30 ? 0x31 : 0x30;
      d.prepare('UPDATE root_key_transitions SET statement = ? WHERE version = 3').run(forged);
      const r = await ctl(['trusted-root', 'get', '--root-key', v1Pem, '--out', file('bad.json'), '--sig', file('bad.sig'), '--pub', file('bad.pem')]);
      assert.equal(r.code, 1, r.stderr);
      assert.match(r.stderr, /the statement introducing sigil\/trust-root@3 is not signed by sigil\/trust-root@2, the key before it; nothing was written/);
      assert.ok(!existsSync(file('bad.json')) && !existsSync(file('bad.sig')) && !existsSync(file('bad.pem')), 'nothing written');
      d.prepare('UPDATE root_key_transitions SET statement = ? WHERE version = 3').run(orig);
      d.exec(`CREATE TRIGGER root_key_transitions_never_change BEFORE UPDATE ON root_key_transitions
              BEGIN SELECT RAISE(ABORT, 'root key transition statements never change'); END;`);
    } finally {
      d.close();
    }
    const again = await ctl(['trusted-root', 'get', '--root-key', v1Pem, '--out', file('good.json')]);
    assert.equal(again.code, 0, again.stderr);
  });

  test('a restart keeps the chain; a statement lost between rotation and statement (a crash) is made at the next start, by the previous version', async () => {
    const beforeChain = await root();
    // Test-only: the state a crash between the rotation and its statement leaves (v3 made, no statement).
    const d = db();
    try {
      d.exec('DROP TRIGGER root_key_transitions_never_removed');
      d.prepare('DELETE FROM root_key_transitions WHERE version = 3').run();
      d.exec(`CREATE TRIGGER root_key_transitions_never_removed BEFORE DELETE ON root_key_transitions
              BEGIN SELECT RAISE(ABORT, 'root key transition statements are never removed'); END;`);
    } finally {
      d.close();
    }
    // Until the statement is made, v2 must stay able to sign it: destroying or disabling it is refused.
    await assert.rejects(rpc.scheduleDestroyKeyVersion(clients('admin'), { key: `${ROOT}@2`, windowSeconds: 0 }), refused(/sigil\/trust-root@2 must still sign the transition statement that introduces sigil\/trust-root@3, which the next start of sigild makes/));
    await assert.rejects(rpc.disableKeyVersion(clients('admin'), { key: `${ROOT}@2`, compromised: false, compromiseTime: undefined }), refused(/must still sign the transition statement/));
    assert.deepEqual((await root()).rootKeyTransitions.map((t) => t.version), [2]);
    const gap = await ctl(['trusted-root', 'get', '--root-key', v1Pem, '--out', file('gap.json')]);
    assert.equal(gap.code, 1, gap.stderr);
    assert.match(gap.stderr, /signed by sigil\/trust-root@3, but the chain from the pinned key ends at sigil\/trust-root@2: no statement introduces sigil\/trust-root@3 \(a gap in the chain\)/);
    await td.restart();
    const after = await root();
    assert.deepEqual(after.rootKeyTransitions.map((t) => t.version), [2, 3]);
    assert.ok(Buffer.from(after.rootKeyTransitions[0]!.statement).equals(Buffer.from(beforeChain.rootKeyTransitions[0]!.statement)), 'v2 statement unchanged');
    assert.ok(Buffer.from(after.rootKeyTransitions[0]!.signature).equals(Buffer.from(beforeChain.rootKeyTransitions[0]!.signature)));
    writeFileSync(file('healed.json'), after.rootKeyTransitions[1]!.statement);
    writeFileSync(file('healed.prev.sig'), after.rootKeyTransitions[1]!.previousSignature);
    const v = openssl(['dgst', '-sha256', '-verify', file('st3.prev.pem'), '-signature', file('healed.prev.sig'), file('healed.json')]);
    assert.equal(v.code, 0, `the healed statement is signed by v2: ${v.out}`);
    const r = await ctl(['trusted-root', 'get', '--root-key', v1Pem, '--out', file('after.json')]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /followed sigil\/trust-root@1 -> @2 -> @3/);
  });

  test('compromise: disabling v2 as compromised cuts the chain; verifiers pinned at or before it must re-pin; the current version stays undisablable', async () => {
    const admin = clients('admin');
    const dis = await ctl(['key', 'disable', `${ROOT}@2`, '--compromised'], 'admin');
    assert.equal(dis.code, 0, dis.stderr);
    const tr = await root();
    assert.deepEqual(tr.rootKeyTransitions, [], 'the statement introducing v3 was signed by the compromised v2: not served');
    assert.deepEqual(tr.compromisedRootKeys.map((c) => c.version), [2]);
    for (const [pin, re] of [
      [v1Pem, /the pinned key is not any sigil\/trust-root version the daemon serves \(sigil\/trust-root@3\): if it is a version from before sigil\/trust-root@2 was disabled as compromised, re-pin the current root key out of band/],
      [file('st3.prev.pem'), /the pinned key is sigil\/trust-root@2, which was disabled as compromised: re-pin/],
    ] as const) {
      const r = await ctl(['trusted-root', 'get', '--root-key', pin, '--out', file('cmp.json')]);
      assert.equal(r.code, 1, r.stderr);
      assert.match(r.stderr, re);
      assert.ok(!existsSync(file('cmp.json')));
    }
    // Re-pinned to v3 out of band: it verifies, and follows the next rotation.
    const v3 = file('st3.new.pem');
    assert.equal((await ctl(['trusted-root', 'get', '--root-key', v3, '--out', file('v3.json')])).code, 0);
    const rot = await ctl(['key', 'rotate', ROOT], 'admin');
    assert.equal(rot.code, 0, rot.stderr);
    const r4 = await ctl(['trusted-root', 'get', '--root-key', v3, '--out', file('v4.json')]);
    assert.equal(r4.code, 0, r4.stderr);
    assert.match(r4.stderr, /followed sigil\/trust-root@3 -> @4/);
    assert.deepEqual((await root()).rootKeyTransitions.map((t) => t.version), [4]);
    await assert.rejects(rpc.disableKeyVersion(admin, { key: `${ROOT}@4`, compromised: true, compromiseTime: undefined }), refused(/current version of sigil\/trust-root/));
    const audited = td.auditEntries().filter((e) => e.key === `${ROOT}@2` && e.act === 'key.disable' && e.result === 'ok');
    assert.equal(audited.length, 1);
    assert.equal(audited[0]!.detail?.compromised, true);
  });

  test('sigilctl audit verify passes after all of it', async () => {
    const r = await ctl(['audit', 'verify', '-o', 'json'], 'auditor');
    assert.equal(r.code, 0, r.stderr);
    assert.equal((JSON.parse(r.stdout) as { ok: boolean }).ok, true);
  });
});
