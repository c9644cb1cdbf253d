// sigilctl verify: a consumer checks a signature, or a DSSE envelope, against the signed trusted root, offline
// or fetching it; every way it can be wrong fails with its own message and a non-zero exit. sigilctl sign --dsse
// makes envelopes that openssl verifies independently over a PAE computed here.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { generateKeyPairSync, randomBytes, sign } from 'node:crypto';
import { existsSync, readFileSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { missingTools } from '../helpers/hw.ts';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.ts';
import type { Clock } from '../../src/clock.ts';

const run = promisify(execFile);
const skip = missingTools('softhsm', 'softhsm2-util', 'openssl');
const SIGILCTL = new URL('../../bin/sigilctl.js', import.meta.url).pathname;
const HOUR = 3_600_000;
const ISSUED = '\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\dZ';

class FakeClock implements Clock {
  t = Date.now();
  now(): Date {
    return new Date(this.t);
  }
}

/** DSSE v1 PAE, written out here from the spec rather than taken from sigil, for the independent check. */
function paeOf(type: string, body: Buffer): Buffer {
  return Buffer.concat([Buffer.from(`DSSEv1 ${Buffer.byteLength(type)} ${type} ${body.length} `), body]);
}

function flipped(b: Buffer, at: number): Buffer {
  const c = Buffer.from(b);
  c[at % c.length]! ^= 0x01;
  return c;
}

describe('sigilctl verify and sign --dsse against a running sigild', { skip: skip ?? false }, () => {
  let d: TestDaemon;
  let env: NodeJS.ProcessEnv;
  const clock = new FakeClock();
  const file = (name: string): string => join(d.dir, name);

  // The daemon runs in this process, so the CLI must run asynchronously (a sync spawn would block the server).
  const ctl = async (args: string[], who: 'admin' | 'signer' | 'none' = 'admin'): Promise<{ stdout: string; stderr: string; code: number }> => {
    const ids = who === 'none' ? { SIGIL_CLIENT_CERT: '', SIGIL_CLIENT_KEY: '' } : { SIGIL_CLIENT_CERT: d.ids[who].cert, SIGIL_CLIENT_KEY: d.ids[who].key };
    try {
      const r = await run(process.execPath, [SIGILCTL, ...args], { env: { ...env, ...ids }, maxBuffer: 16 * 1024 * 1024 });
      return { ...r, code: 0 };
    } catch (err) {
      const e = err as { stdout: string; stderr: string; code: number };
      return { stdout: e.stdout, stderr: e.stderr, code: e.code };
    }
  };
  const ok = async (args: string[], who: 'admin' | 'signer' | 'none' = 'admin'): Promise<string> => {
    const r = await ctl(args, who);
    assert.equal(r.code, 0, `sigilctl ${args.join(' ')}: ${r.stderr}`);
    return r.stdout;
  };
  /** Fetches the trusted root as a consumer keeps it (verified from the pin), to files with this prefix. */
  const fetchRoot = async (prefix: string): Promise<string[]> => {
    await ok(['trusted-root', 'get', '--root-key', file('pin.pem'), '--out', file(`${prefix}.json`), '--sig', file(`${prefix}.sig`), '--chain', file(`${prefix}.chain.json`)], 'none');
    return ['--trusted-root', file(`${prefix}.json`), '--root-sig', file(`${prefix}.sig`), '--root-key', file('pin.pem'), '--root-chain', file(`${prefix}.chain.json`)];
  };
  // Offline: no daemon address at all.
  const verify = (args: string[]): Promise<{ stdout: string; stderr: string; code: number }> => ctl(['verify', ...args], 'none');
  const offline = async (args: string[]): Promise<{ stdout: string; stderr: string; code: number }> => {
    try {
      const r = await run(process.execPath, [SIGILCTL, 'verify', ...args], { env: { PATH: process.env.PATH } });
      return { ...r, code: 0 };
    } catch (err) {
      const e = err as { stdout: string; stderr: string; code: number };
      return { stdout: e.stdout, stderr: e.stderr, code: e.code };
    }
  };
  const fails = async (args: string[], re: RegExp, code = 1): Promise<string> => {
    const r = await verify(args);
    assert.equal(r.code, code, `expected exit ${code}: ${r.stdout}${r.stderr}`);
    assert.equal(r.stderr.trim().split('\n').length, 1, `one line: ${r.stderr}`);
    assert.match(r.stderr, re);
    return r.stderr;
  };

  before(async () => {
    d = await startTestDaemon({ clock, extraConfig: { keys: { minDestroyWindow: '1h', defaultDestroyWindow: '2h', approvalTtl: '1d' } } });
    env = { ...process.env, SIGIL_ADDR: d.address, SIGIL_CACERT: d.ca };
    // Trust on first use for the test: the root key as the daemon names it becomes the pin.
    await ok(['trusted-root', 'get', '--pub', file('pin.pem'), '--out', file('first.json')], 'none');
    writeFileSync(file('artifact.bin'), randomBytes(3 * 1024 * 1024 + 17));
  });
  after(async () => d?.stop());

  test('a file signed with each algorithm verifies offline against the trusted root, and openssl agrees', async () => {
    const cases: Array<[string, string, string[]]> = [
      ['p256', 'ECDSA_P256_SHA256', ['dgst', '-sha256']],
      ['p384', 'ECDSA_P384_SHA384', ['dgst', '-sha384']],
      ['rsa', 'RSA_PKCS1_SHA256', ['dgst', '-sha256']],
      ['pss', 'RSA_PSS_SHA256', ['dgst', '-sha256', '-sigopt', 'rsa_padding_mode:pss']],
      ['ed', 'ED25519', []],
    ];
    for (const [name, alg] of cases) await ok(['key', 'create', `v/${name}`, '--alg', alg]);
    const root = await fetchRoot('root-a');
    for (const [name, alg, dgst] of cases) {
      const sig = file(`${name}.sig`);
      await ok(['sign', '--key', `v/${name}`, '--file', file('artifact.bin'), '--out', sig], 'signer');
      const out = (await offline(['--file', file('artifact.bin'), '--signature', sig, '--key', `v/${name}@1`, ...root]));
      assert.equal(out.code, 0, out.stderr);
      assert.match(out.stdout, new RegExp(`^verified .*artifact\\.bin \\(3145745 bytes\\): signed by v/${name}@1 \\(${alg}\\), valid now; trusted root signed by sigil/trust-root@1, followed sigil/trust-root@1 from the pinned key, issued ${ISSUED}, expires ${ISSUED}\\n$`));
      // The same signature, independently: openssl with the public key sigilctl prints.
      await ok(['key', 'pubkey', `v/${name}@1`, '--out', file(`${name}.pem`)]);
      const args = dgst.length ? [...dgst, '-verify', file(`${name}.pem`), '-signature', sig, file('artifact.bin')] : ['pkeyutl', '-verify', '-pubin', '-inkey', file(`${name}.pem`), '-rawin', '-in', file('artifact.bin'), '-sigfile', sig];
      assert.match((await run('openssl', args)).stdout, /Verified OK|Signature Verified Successfully/);
    }
    // Without a chain file the pinned key must be the one that signs: no version can be named.
    const noChain = await offline(['--file', file('artifact.bin'), '--signature', file('p256.sig'), '--key', 'v/p256@1', ...root.slice(0, 6)]);
    assert.equal(noChain.code, 0, noChain.stderr);
    assert.match(noChain.stdout, /valid now; trusted root signed by the pinned key, issued \S+Z, expires \S+Z\n$/);
    // --output json gives a structured result; --alg checks the algorithm.
    const j = JSON.parse(await ok(['verify', '-o', 'json', '--file', file('artifact.bin'), '--signature', file('p256.sig'), '--key', 'v/p256@1', '--alg', 'p256', ...root], 'none')) as Record<string, unknown>;
    assert.equal(j.verified, true);
    assert.equal(j.keyVersion, 'v/p256@1');
    assert.equal(j.algorithm, 'ECDSA_P256_SHA256');
    assert.equal(j.bytes, 3 * 1024 * 1024 + 17);
    assert.deepEqual(Object.keys(j.digest as object), ['sha256']);
    const tr = j.trustedRoot as { issuedAt: string; expiresAt: string };
    assert.deepEqual(j.trustedRoot, { source: 'file', signedBy: 'sigil/trust-root@1', followed: 'sigil/trust-root@1', issuedAt: tr.issuedAt, expiresAt: tr.expiresAt });
    // Signed on the daemon's clock, valid for the default 7 days.
    assert.equal(Date.parse(tr.expiresAt) - Date.parse(tr.issuedAt), 7 * 24 * HOUR);
    assert.deepEqual([j.key, j.versionsTried], ['v/p256@1', ['v/p256@1']]);
    assert.equal((j.validity as { checkedAt: unknown }).checkedAt, null);
    // With --addr (SIGIL_ADDR) and no --trusted-root, the root is fetched and verified the same way.
    const fetched = JSON.parse(await ok(['verify', '-o', 'json', '--file', file('artifact.bin'), '--signature', file('rsa.sig'), '--key', 'v/rsa@1', '--root-key', file('pin.pem')], 'none')) as { trustedRoot: { source: string } };
    assert.equal(fetched.trustedRoot.source, 'daemon');
  });

  test('each way a check can fail has its own one-line message and a non-zero exit', async () => {
    await ok(['key', 'create', 'v/bad', '--alg', 'p256']);
    const art = file('artifact.bin');
    const sig = file('bad.sig');
    await ok(['sign', '--key', 'v/bad', '--file', art, '--out', sig], 'signer');
    await ok(['key', 'rotate', 'v/bad']);
    const root = await fetchRoot('root-b');
    const base = ['--file', art, '--signature', sig, '--key', 'v/bad@1', ...root];
    assert.equal((await verify(base)).code, 0, 'the unmodified inputs verify');
    // A file that is not there is a mistake on the command line (exit 2), not a signature that failed (exit 1).
    await fails(['--file', file('nowhere.bin'), ...base.slice(2)], /cannot read .*nowhere\.bin \(--file\): no such file/, 2);
    await fails([...base.slice(0, 2), '--signature', file('nowhere.sig'), ...base.slice(4)], /cannot read .*nowhere\.sig \(--signature\): no such file/, 2);
    await fails(['--dsse', file('nowhere.json'), '--key', 'v/bad', ...root], /cannot read .*nowhere\.json \(--dsse\): no such file/, 2);

    writeFileSync(file('art.flipped'), flipped(readFileSync(art), 1_000_001));
    await fails(['--file', file('art.flipped'), ...base.slice(2)], /^sigilctl: bad signature: .*art\.flipped does not verify under v\/bad@1 \(ECDSA_P256_SHA256\)$/m);
    writeFileSync(file('sig.flipped'), flipped(readFileSync(sig), 20));
    await fails([...base.slice(0, 2), '--signature', file('sig.flipped'), ...base.slice(4)], /bad signature: .* does not verify under v\/bad@1/);
    // A raw r||s signature (as some tools write ECDSA) gets a hint.
    writeFileSync(file('sig.p1363'), randomBytes(64).fill(0x31, 0, 1));
    await fails([...base.slice(0, 2), '--signature', file('sig.p1363'), ...base.slice(4)], /looks like a raw r\|\|s signature: sigil writes ECDSA signatures DER-encoded/);
    // Another version of the same key: listed, but it did not make this signature.
    await fails([...base.slice(0, 4), '--key', 'v/bad@2', ...root], /bad signature: .* does not verify under v\/bad@2/);
    await fails([...base.slice(0, 4), '--key', 'v/bad@9', ...root], /unknown key version: v\/bad@9 is not in the trusted root \(it lists v\/bad@1, v\/bad@2;.*\); this trusted root was issued at \S+Z: a key or version made since is not in it, fetch a fresh one \(sigilctl trusted-root get\)$/m);
    // A bare name: any version of that key the root lists and finds valid; the one that verifies is reported.
    const bare = await verify(['-o', 'json', ...base.slice(0, 4), '--key', 'v/bad', ...root]);
    assert.equal(bare.code, 0, bare.stderr);
    const bj = JSON.parse(bare.stdout) as { key: string; keyVersion: string; versionsTried: string[] };
    assert.deepEqual([bj.key, bj.keyVersion, bj.versionsTried], ['v/bad', 'v/bad@1', ['v/bad@1', 'v/bad@2']]);
    assert.match((await verify([...base.slice(0, 4), '--key', 'v/bad', ...root])).stdout, /: signed by v\/bad@1 \(ECDSA_P256_SHA256; --key v\/bad, tried v\/bad@1, v\/bad@2\), valid now;/);
    await fails(['--file', file('art.flipped'), ...base.slice(2, 4), '--key', 'v/bad', ...root], /bad signature: .*art\.flipped does not verify under any of v\/bad@1, v\/bad@2 \(ECDSA_P256_SHA256\)$/m);
    await fails([...base.slice(0, 4), '--key', 'v/nope', ...root], /unknown key: the trusted root lists no version of v\/nope/);
    // --key is required: nothing but the verifier names the key it trusts.
    await fails(base.slice(0, 4).concat(root), /--key is required: the key you trust for this artifact/, 2);
    await fails([...base.slice(0, 4), '--key', 'V/Bad@x', ...root], /--key takes a key name or name@N: /, 2);
    await fails([...base, '--alg', 'ed25519'], /wrong algorithm: v\/bad@1 is ECDSA_P256_SHA256, not ED25519 \(--alg\)/);

    // The root document or its signature changed by one byte: nothing in it is trusted.
    const doc = readFileSync(file('root-b.json'));
    const at = doc.indexOf('v/bad@1');
    writeFileSync(file('root.flipped.json'), flipped(doc, at + 2));
    const rootArgs = (json: string, s: string): string[] => ['--trusted-root', json, '--root-sig', s, '--root-key', file('pin.pem')];
    await fails([...base.slice(0, 6), ...rootArgs(file('root.flipped.json'), file('root-b.sig'))], /the trusted root does not verify from the pinned key .*pin\.pem: the trusted root's signature does not verify under the pinned key/);
    writeFileSync(file('root.sig.flipped'), flipped(readFileSync(file('root-b.sig')), 30));
    await fails([...base.slice(0, 6), ...rootArgs(file('root-b.json'), file('root.sig.flipped'))], /the trusted root's signature does not verify under the pinned key/);
    // The sigstore form, signed by the same key, is not the full document.
    await ok(['trusted-root', 'get', '--sigstore-out', file('sigstore.json'), '--sigstore-sig', file('sigstore.sig')], 'none');
    await fails([...base.slice(0, 6), ...rootArgs(file('sigstore.json'), file('sigstore.sig'))], /it is the sigstore form, not the full document/);
    // Nothing unverified is used: a document needs its signature, and a pinned key is required.
    await fails([...base.slice(0, 6), '--trusted-root', file('root-b.json'), '--root-key', file('pin.pem')], /--trusted-root needs --root-sig/, 2);
    assert.match((await verify(base.slice(0, 6))).stderr, /required option '--root-key <file>' not specified/);

    // --output json: the failure as a structured result too.
    const r = await verify(['-o', 'json', '--file', file('art.flipped'), ...base.slice(2)]);
    assert.equal(r.code, 1);
    const j = JSON.parse(r.stdout) as { verified: boolean; check: string; error: string };
    assert.deepEqual([j.verified, j.check], [false, 'signature']);
    assert.match(j.error, /^bad signature: /);
  });

  test('a version disabled as compromised or destroyed fails without --at, and passes only for a time inside its window', async () => {
    for (const k of ['v/rev', 'v/gone', 'v/off']) {
      await ok(['key', 'create', k, '--alg', 'p256']);
      await ok(['sign', '--key', k, '--file', file('artifact.bin'), '--out', file(`${k.slice(2)}.sig`)], 'signer');
      await ok(['key', 'rotate', k]);
    }
    const created = (JSON.parse(await ok(['-o', 'json', 'key', 'show', 'v/rev'])) as { versions: Array<{ createTime: string }> }).versions[0]!.createTime;
    const args = (k: string): string[] => ['--file', file('artifact.bin'), '--signature', file(`${k}.sig`), '--key', `v/${k}@1`];

    clock.t += HOUR;
    await ok(['key', 'disable', 'v/rev@1', '--compromised']);
    const compromisedAt = new Date(clock.t).toISOString();
    await ok(['key', 'disable', 'v/off@1']);
    await ok(['key', 'schedule-destroy', 'v/gone@1', '--window', '1h']);
    clock.t += 2 * HOUR;
    assert.deepEqual((await d.daemon.scheduler.tick()).destroyed, ['v/gone@1']);
    const destroyedAt = new Date(clock.t).toISOString();
    const root = await fetchRoot('root-c');

    await fails([...args('rev'), ...root], new RegExp(`revoked: v/rev@1 was disabled as compromised \\(its window closed at ${compromisedAt}\\); a signature made before then passes only with --at`));
    await fails([...args('gone'), ...root], new RegExp(`not valid now: v/gone@1's window closed at ${destroyedAt} \\(destroyed\\)`));
    // Disabled (not compromised): its signatures stay valid.
    assert.equal((await verify([...args('off'), ...root])).code, 0);

    // --at inside the window passes (a compromised version with a warning); at or after its end, or before its start, fails.
    const inside = new Date(Date.parse(created) + 1000).toISOString();
    const g = await verify(['-o', 'json', ...args('gone'), ...root, '--at', inside]);
    assert.equal(g.code, 0, g.stderr);
    assert.equal((JSON.parse(g.stdout) as { validity: { checkedAt: string; end: string } }).validity.checkedAt, inside);
    const rv = await verify([...args('rev'), ...root, '--at', inside]);
    assert.equal(rv.code, 0, rv.stderr);
    assert.match(rv.stdout, new RegExp(`valid at ${inside}`));
    assert.match(rv.stderr, /warning: v\/rev@1 was disabled as compromised at .*: this passed only because you vouch that it was signed at/);
    await fails([...args('rev'), ...root, '--at', compromisedAt], new RegExp(`not valid at ${compromisedAt}: v/rev@1's window closed at ${compromisedAt} \\(disabled as compromised\\)`));
    await fails([...args('gone'), ...root, '--at', destroyedAt], /not valid at .*: v\/gone@1's window closed at .* \(destroyed\)/);
    await fails([...args('gone'), ...root, '--at', '2000-01-01T00:00:00Z'], /not valid at 2000-01-01T00:00:00\.000Z: v\/gone@1 was made at /);
    await fails([...args('gone'), ...root, '--at', 'yesterday'], /--at takes an ISO 8601 time/, 2);
    // A time without a UTC offset would be read in local time: refused; the same instant with an offset passes.
    await fails([...args('gone'), ...root, '--at', inside.replace(/\.\d+Z$/, '')], /--at takes an ISO 8601 time with a UTC offset, e\.g\. .*local time\)$/m, 2);
    const plusOne = new Date(Date.parse(inside) + HOUR).toISOString().replace('Z', '+01:00');
    assert.match((await verify([...args('gone'), ...root, '--at', plusOne])).stdout, new RegExp(`valid at ${inside}`));
    const since = await ctl(['key', 'disable', 'v/off@1', '--compromised', '--since', '2026-03-01T12:00:00']);
    assert.equal(since.code, 2, since.stderr);
    assert.match(since.stderr, /--since takes an ISO 8601 time with a UTC offset/);
    const off = JSON.parse(await ok(['-o', 'json', 'key', 'show', 'v/off'])) as { versions: Array<{ state: string; revokeTime?: string | null }> };
    assert.equal(off.versions[0]!.state, 'DISABLED');
    assert.ok(!off.versions[0]!.revokeTime, 'the refused disable changed nothing');

    // A bare --key name: a signature by a version that is not valid is reported for what it is, with its check.
    await fails([...args('rev').slice(0, 4), '--key', 'v/rev', ...root], /^sigilctl: revoked: v\/rev@1 was disabled as compromised .* \(the signature is by v\/rev@1\)$/m);
    await fails([...args('gone').slice(0, 4), '--key', 'v/gone', ...root], /^sigilctl: not valid now: v\/gone@1's window closed at .* \(destroyed\).* \(the signature is by v\/gone@1\)$/m);
    const revJson = await verify(['-o', 'json', ...args('rev').slice(0, 4), '--key', 'v/rev', ...root]);
    assert.equal((JSON.parse(revJson.stdout) as { check: string }).check, 'revoked');
    const atInside = JSON.parse((await verify(['-o', 'json', ...args('rev').slice(0, 4), '--key', 'v/rev', ...root, '--at', inside])).stdout) as { keyVersion: string; versionsTried: string[] };
    assert.deepEqual([atInside.keyVersion, atInside.versionsTried], ['v/rev@1', ['v/rev@1', 'v/rev@2']]);
    await fails([...args('rev').slice(0, 4), '--key', 'v/rev', ...root, '--at', '2000-01-01T00:00:00Z'], /^sigilctl: no version of v\/rev is valid at 2000-01-01T00:00:00\.000Z: not valid at .*: v\/rev@1 was made at .*; not valid at .*: v\/rev@2 was made at /m);
  });

  test('sign --dsse writes an envelope that verify --dsse accepts and openssl verifies over the PAE; a changed envelope fails', async () => {
    await ok(['key', 'create', 'v/prov', '--alg', 'p256']);
    await ok(['key', 'create', 'v/prov-ed', '--alg', 'ed25519']);
    await ok(['key', 'create', 'v/prov-pss', '--alg', 'rsa-pss']);
    const statement = Buffer.from(JSON.stringify({ _type: 'https://in-toto.io/Statement/v1', subject: [{ name: 'artifact.bin', digest: { sha256: 'ab'.repeat(32) } }], predicateType: 'https://slsa.dev/provenance/v1', predicate: {} }));
    writeFileSync(file('statement.json'), statement);
    const root = await fetchRoot('root-d');
    for (const [key, check] of [['v/prov', ['dgst', '-sha256']], ['v/prov-pss', ['dgst', '-sha256', '-sigopt', 'rsa_padding_mode:pss']], ['v/prov-ed', []]] as const) {
      const envFile = file(`${key.slice(2)}.dsse.json`);
      const s = await ok(['sign', '--key', key, '--dsse', '--file', file('statement.json'), '--out', envFile], 'signer');
      assert.match(s, new RegExp(`signed .*statement\\.json \\(${statement.length} bytes, application/vnd\\.in-toto\\+json\\) with ${key}@1 .*; dsse envelope written to`));
      const env = JSON.parse(readFileSync(envFile, 'utf8')) as { payload: string; payloadType: string; signatures: Array<{ keyid: string; sig: string }> };
      assert.equal(env.payloadType, 'application/vnd.in-toto+json');
      assert.deepEqual(Buffer.from(env.payload, 'base64'), statement);
      assert.equal(env.signatures.length, 1);
      assert.equal(env.signatures[0]!.keyid, `${key}@1`);

      // verify --dsse: the keyid picks the version; the payload is written out once everything verified.
      const out = file(`${key.slice(2)}.payload`);
      const v = await verify(['--dsse', envFile, '--key', key, '--payload-type', 'application/vnd.in-toto+json', '--payload-out', out, ...root]);
      assert.equal(v.code, 0, v.stderr);
      assert.match(v.stdout, new RegExp(`verified the dsse envelope .* \\(application/vnd\\.in-toto\\+json, ${statement.length} bytes of payload, written to .*\\): signed by ${key}@1`));
      assert.deepEqual(readFileSync(out), statement);

      // Independently: the PAE computed here, the public key from `sigilctl key pubkey`, openssl.
      writeFileSync(file('pae.bin'), paeOf(env.payloadType, statement));
      writeFileSync(file('pae.sig'), Buffer.from(env.signatures[0]!.sig, 'base64'));
      await ok(['key', 'pubkey', `${key}@1`, '--out', file('prov.pem')]);
      const args = check.length ? [...check, '-verify', file('prov.pem'), '-signature', file('pae.sig'), file('pae.bin')] : ['pkeyutl', '-verify', '-pubin', '-inkey', file('prov.pem'), '-rawin', '-in', file('pae.bin'), '-sigfile', file('pae.sig')];
      assert.match((await run('openssl', args)).stdout, /Verified OK|Signature Verified Successfully/);
    }

    const envFile = file('prov.dsse.json');
    const env = JSON.parse(readFileSync(envFile, 'utf8')) as { payload: string; payloadType: string; signatures: Array<{ keyid: string; sig: string }> };
    const variant = (name: string, e: object): string => {
      writeFileSync(file(name), JSON.stringify(e));
      return file(name);
    };
    const out = file('never.payload');
    await fails(['--dsse', variant('type.json', { ...env, payloadType: 'application/json' }), '--key', 'v/prov', '--payload-out', out, ...root], /bad signature: the envelope .*type\.json does not verify under v\/prov@1/);
    const other = Buffer.from(statement.toString().replace('ab', 'cd'));
    await fails(['--dsse', variant('payload.json', { ...env, payload: other.toString('base64') }), '--key', 'v/prov@1', '--payload-out', out, ...root], /bad signature: the envelope .*payload\.json does not verify/);
    assert.equal(existsSync(out), false, 'no payload is written from an envelope that failed');
    await fails(['--dsse', envFile, '--key', 'v/prov', '--payload-type', 'text/plain', '--payload-out', out, ...root], /wrong payload type: the envelope's payloadType is "application\/vnd\.in-toto\+json", not "text\/plain" \(--payload-type\)/);
    assert.equal(existsSync(out), false);
    // The key is the verifier's choice, never the envelope's: signed by another key, it fails whatever its keyid says.
    await fails(['--dsse', envFile, '--key', 'v/prov-ed@1', ...root], /wrong key version: the envelope has no signature by v\/prov-ed@1 \(it has "v\/prov@1"\)/);
    await fails(['--dsse', envFile, '--key', 'v/prov-ed', ...root], /wrong key version: the envelope has no signature by a version of v\/prov-ed \(keyid v\/prov-ed@N\) \(it has "v\/prov@1"\)/);
    const edEnv = JSON.parse(readFileSync(file('prov-ed.dsse.json'), 'utf8')) as typeof env;
    const forged = variant('forged.json', { ...edEnv, signatures: [{ keyid: 'v/prov@1', sig: edEnv.signatures[0]!.sig }] });
    await fails(['--dsse', forged, '--key', 'v/prov', ...root], /bad signature: the envelope .*forged\.json does not verify under v\/prov@1/);
    assert.equal((await verify(['--dsse', forged, '--key', 'v/prov-ed', ...root])).code, 1, 'a keyid of another key is no signature by this one');
    // The old form without --key: a usage error, before anything is read or trusted.
    await fails(['--dsse', envFile, ...root], /--key is required: the key you trust for this artifact, a name \(any of its versions\) or name@N; an envelope's keyid is chosen by the signer/, 2);
    // Two signatures (two keys): --key picks the one by its key, whichever order they come in.
    const both = variant('both.json', { ...env, signatures: [edEnv.signatures[0], env.signatures[0]] });
    for (const [k, by] of [['v/prov', 'v/prov@1'], ['v/prov-ed', 'v/prov-ed@1']]) {
      const r = JSON.parse((await verify(['-o', 'json', '--dsse', both, '--key', k!, ...root])).stdout) as { verified: boolean; keyVersion: string };
      assert.deepEqual([r.verified, r.keyVersion], [true, by]);
    }
    await fails(['--dsse', variant('keyid.json', { ...env, signatures: [{ keyid: 'v/prov', sig: env.signatures[0]!.sig }] }), '--key', 'v/prov', ...root], /no signature by a version of v\/prov \(keyid v\/prov@N\) \(it has "v\/prov"\)/);
    await fails(['--dsse', variant('garbage.json', { payload: 5 }), '--key', 'v/prov', ...root], /dsse envelope: payload must be a base64 string/);
    // A huge envelope is refused before it is read (a sparse file: no disk is used).
    writeFileSync(file('huge.json'), '');
    truncateSync(file('huge.json'), 64 * 1024 * 1024 + 1);
    await fails(['--dsse', file('huge.json'), '--key', 'v/prov', ...root], /--dsse .*huge\.json is larger than 64 MiB/, 2);
    // A pipe or FIFO has no size to go by: read up to the limit (the envelope through a FIFO a child process writes).
    await run('mkfifo', [file('env.fifo')]);
    const writer = run('sh', ['-c', 'cat "$1" > "$2"', 'sh', envFile, file('env.fifo')], { timeout: 30_000 });
    const viaFifo = await verify(['--dsse', file('env.fifo'), '--key', 'v/prov', ...root]);
    await writer;
    assert.equal(viaFifo.code, 0, viaFifo.stderr);
    assert.match(viaFifo.stdout, /verified the dsse envelope .*env\.fifo .*: signed by v\/prov@1/);
    // More than the limit through a FIFO is refused as too large (a signature is at most 64 KiB).
    await run('mkfifo', [file('sig.fifo')]);
    const big = run('sh', ['-c', 'head -c 70000 /dev/zero > "$1" || true', 'sh', file('sig.fifo')], { timeout: 30_000 });
    await fails(['--file', file('statement.json'), '--signature', file('sig.fifo'), '--key', 'v/prov', ...root], /--signature .*sig\.fifo is larger than/, 2);
    await big;
    await fails(['--dsse', envFile, '--file', file('artifact.bin'), ...root], /--dsse takes the place of --file and --signature/, 2);
  });

  test('after the root key is rotated, an old pin verifies offline with the chain, and says to give it when missing', async () => {
    await ok(['key', 'create', 'v/late', '--alg', 'p256']);
    await ok(['sign', '--key', 'v/late', '--file', file('artifact.bin'), '--out', file('late.sig')], 'signer');
    await ok(['key', 'rotate', 'sigil/trust-root']);
    const root = await fetchRoot('root-e');
    const art = ['--file', file('artifact.bin'), '--signature', file('late.sig'), '--key', 'v/late@1'];
    const r = await verify([...art, ...root]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /trusted root signed by sigil\/trust-root@2, followed sigil\/trust-root@1 -> @2 from the pinned key/);
    await fails([...art, ...root.slice(0, 6)], /the trusted root's signature does not verify under the pinned key: either it is no sigil\/trust-root version, or the trusted root or its signature was altered \(if the root key was rotated since you pinned it, give the chain of root keys with --root-chain/);
    writeFileSync(file('chain.bad.json'), '{"key":"sigil/trust-root","transitions":[{"version":"2"}],"compromised":[]}');
    await fails([...art, ...root.slice(0, 6), '--root-chain', file('chain.bad.json')], /--root-chain .*chain\.bad\.json is not a chain of root keys as `trusted-root get --chain` writes it .*: transition 1: version must be a version number$/m, 2);
    // A chain fetched before the rotation: it is given, but stops at the pinned key.
    writeFileSync(file('chain.old.json'), '{"key":"sigil/trust-root","transitions":[],"compromised":[]}');
    await fails([...art, ...root.slice(0, 6), '--root-chain', file('chain.old.json')], /does not verify under the pinned key: .* \(the chain in .*chain\.old\.json introduces no root key after the pinned one: if the root key was rotated since you fetched it, fetch the chain again with `trusted-root get --chain`\)$/m);
  });
  test('an expired trusted root (a genuine one, replayed after its expiry) is refused by verify, even with --at, and by trusted-root get --root-key', async () => {
    await ok(['key', 'create', 'v/old', '--alg', 'p256']);
    await ok(['sign', '--key', 'v/old', '--file', file('artifact.bin'), '--out', file('old.sig')], 'signer');
    const saved = clock.t;
    // The daemon signs on its clock: 8 days ago, a root valid for the default 7 days expired a day ago.
    clock.t = Date.now() - 8 * 24 * HOUR;
    try {
      await ok(['trusted-root', 'get', '--out', file('stale.json'), '--sig', file('stale.sig'), '--chain', file('stale.chain.json')], 'none');
      const stale = JSON.parse(readFileSync(file('stale.json'), 'utf8')) as { sigilIssuedAt: string; sigilExpiresAt: string };
      const expires = new Date(clock.t + 7 * 24 * HOUR).toISOString().replace(/\.\d+Z$/, '');
      assert.ok(stale.sigilExpiresAt.startsWith(expires), `${stale.sigilExpiresAt} vs ${expires}`);
      const got = await ctl(['trusted-root', 'get', '--root-key', file('pin.pem'), '--out', file('never.json')], 'none');
      assert.equal(got.code, 1, got.stderr);
      assert.match(got.stderr, new RegExp(`the trusted root expired at ${stale.sigilExpiresAt} \\(issued ${stale.sigilIssuedAt}\\): .*; nothing was written`));
      assert.equal(existsSync(file('never.json')), false);
    } finally {
      clock.t = saved;
    }
    const staleRoot = ['--trusted-root', file('stale.json'), '--root-sig', file('stale.sig'), '--root-key', file('pin.pem'), '--root-chain', file('stale.chain.json')];
    const art = ['--file', file('artifact.bin'), '--signature', file('old.sig'), '--key', 'v/old@1'];
    await fails([...art, ...staleRoot], /^sigilctl: the trusted root expired at \S+ \(issued \S+\): an old root may still list a key version that was disabled as compromised since; fetch a fresh one/m);
    await fails([...art, ...staleRoot, '--at', new Date(Date.now() - 8 * 24 * HOUR).toISOString()], /the trusted root expired at .*\(--at does not change this: it vouches for the signing time, not for the root\)$/m);
    const j = await verify(['-o', 'json', ...art, ...staleRoot]);
    assert.equal(j.code, 1);
    assert.deepEqual((({ verified, check }) => [verified, check])(JSON.parse(j.stdout) as { verified: boolean; check: string }), [false, 'root-expired']);
    // The daemon's clock back at now: the next read signs a fresh root, which verifies.
    const fresh = await fetchRoot('fresh');
    const r = await verify([...art, ...fresh]);
    assert.equal(r.code, 0, r.stderr);
    // A root without the times (as a sigild before them made it), signed by a key the test pins itself: refused.
    const own = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    writeFileSync(file('own.pem'), own.publicKey.export({ format: 'pem', type: 'spki' }));
    const doc = JSON.parse(readFileSync(file('fresh.json'), 'utf8')) as Record<string, unknown>;
    delete doc.sigilIssuedAt;
    delete doc.sigilExpiresAt;
    writeFileSync(file('timeless.json'), `${JSON.stringify(doc, null, 2)}\n`);
    writeFileSync(file('timeless.sig'), sign('sha256', readFileSync(file('timeless.json')), own.privateKey));
    await fails([...art, '--trusted-root', file('timeless.json'), '--root-sig', file('timeless.sig'), '--root-key', file('own.pem')], /the trusted root carries no valid issue and expiry time \(sigilIssuedAt, sigilExpiresAt\)/);
  });
});
