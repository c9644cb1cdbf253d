import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { createHash, createPublicKey, verify, type KeyObject } from 'node:crypto';
import { cp, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { promisify } from 'node:util';
import { launchSwtpm, prepareSwtpmState } from '../../src/dev/swtpm.ts';
import { isSigilError } from '../../src/errors.ts';
import { silentLogger } from '../../src/log.ts';
import type { Backend, KeyCreator, KeyDestroyer } from '../../src/signers/signer.ts';
import { tpmConfigSchema, type TpmConfig } from '../../src/signers/tpm/config.ts';
import { open } from '../../src/signers/tpm/index.ts';
import { missingTools } from '../helpers/hw.ts';
import { assertCode } from '../helpers/assert.ts';

// The TPM backend against a real swtpm, with tpm2-tools as an independent TPM client and openssl as an
// independent verifier. swtpm serves one connection at a time: the backend is closed around tool use.

const run = promisify(execFile);
const skip = missingTools('swtpm', 'swtpm_setup', 'tpm2_createprimary', 'tpm2_create', 'tpm2_load', 'tpm2_evictcontrol', 'tpm2_readpublic', 'tpm2_verifysignature', 'tpm2_flushcontext', 'openssl');

const TIMEOUT_MS = 1000;
const IMPORTED = 0x81000800;
const RESTRICTED = 0x81000801;
const RSASSA_ONLY = 0x81000802;

let dir: string;
let stateDir: string;
let keyDir: string;
let port: number;
let child: ChildProcess;
let config: TpmConfig;
let backend: Backend & KeyCreator & KeyDestroyer;
let importedName = '';

const uriOf = (h: number) => `tpm:handle=0x${h.toString(16)}`;
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest();
const tcti = () => `swtpm:host=127.0.0.1,port=${port}`;

async function tool(cmd: string, args: string[]): Promise<string> {
  const { stdout } = await run(cmd, args, { cwd: dir, env: { ...process.env, TPM2TOOLS_TCTI: tcti() } });
  return stdout;
}

// tpm2-tools without a resource manager leave transient objects behind; swtpm has three slots.
async function toolStep(cmd: string, args: string[]): Promise<void> {
  await tool(cmd, args);
  await tool('tpm2_flushcontext', ['-t']);
}

async function reopen(): Promise<void> {
  backend = await open(config, { name: 'swtpm', log: silentLogger(), production: false });
}

function canConnect(p: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host: '127.0.0.1', port: p });
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

async function stopSwtpm(): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const gone = new Promise<void>((r) => child.once('exit', () => r()));
  child.kill('SIGCONT');
  child.kill('SIGTERM');
  await gone;
}

// A restart on the same port over the same state, as an operator or systemd would do it.
async function restartSwtpm(): Promise<void> {
  child = spawn(
    'swtpm',
    ['socket', '--tpm2', '--tpmstate', `dir=${stateDir}`, '--server', `type=tcp,port=${port},bindaddr=127.0.0.1`, '--ctrl', `type=tcp,port=${port + 1},bindaddr=127.0.0.1`, '--flags', 'not-need-init,startup-clear'],
    { stdio: 'ignore' },
  );
  const deadline = Date.now() + 5000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error('swtpm exited at restart');
    if ((await canConnect(port + 1)) && (await canConnect(port))) return;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error('swtpm did not come back');
}


function pub(spki: Buffer): KeyObject {
  return createPublicKey({ key: spki, format: 'der', type: 'spki' });
}

before(async () => {
  if (skip) return;
  dir = await mkdtemp(join(tmpdir(), 'sigil-tpm-keys-it-'));
  const prepared = await prepareSwtpmState(join(dir, 'prep'));
  stateDir = join(dir, 'state');
  await cp(prepared.state, stateDir, { recursive: true });
  keyDir = join(dir, 'sigil-state');
  const sw = await launchSwtpm(stateDir);
  port = sw.port;
  child = sw.child;
  config = tpmConfigSchema.parse({ type: 'tpm', transport: tcti(), stateDir: keyDir, timeoutMs: TIMEOUT_MS, createTimeoutMs: 3000 });

  // Keys made outside sigil, before the backend holds swtpm's one connection.
  await toolStep('tpm2_createprimary', ['-C', 'o', '-g', 'sha256', '-G', 'ecc256', '-c', 'primary.ctx']);
  const persist = async (alg: string, attrs: string | null, handle: number, name: string) => {
    await toolStep('tpm2_create', ['-C', 'primary.ctx', '-G', alg, ...(attrs ? ['-a', attrs] : []), '-u', `${name}.pub`, '-r', `${name}.priv`]);
    await toolStep('tpm2_load', ['-C', 'primary.ctx', '-u', `${name}.pub`, '-r', `${name}.priv`, '-c', `${name}.ctx`]);
    await toolStep('tpm2_evictcontrol', ['-C', 'o', '-c', `${name}.ctx`, `0x${handle.toString(16)}`]);
  };
  await persist('ecc256', null, IMPORTED, 'imported');
  await persist('ecc256:ecdsa-sha256:null', 'fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign', RESTRICTED, 'restricted');
  await persist('rsa2048:rsassa-sha256:null', null, RSASSA_ONLY, 'rsassa');
  const shown = await tool('tpm2_readpublic', ['-c', `0x${IMPORTED.toString(16)}`, '-f', 'pem', '-o', 'imported.pem']);
  importedName = shown.match(/^name: ([0-9a-f]+)$/m)?.[1] ?? '';
  await reopen();
});

after(async () => {
  if (skip) return;
  await backend?.close().catch(() => undefined);
  if (child) await stopSwtpm();
  await rm(dir, { recursive: true, force: true });
});

test('a key made with tpm2-tools is imported by handle and its signatures verify with openssl and node:crypto', { skip: skip ?? false }, async () => {
  const k = await backend.getKey(uriOf(IMPORTED));
  // The URI an import records carries the key's name as tpm2_readpublic showed it: every signature is bound to it.
  assert.match(importedName, /^000b[0-9a-f]{64}$/);
  assert.equal(k.uri, `${uriOf(IMPORTED)};name=${importedName}`);
  assert.equal((await backend.getKey(k.uri)).uri, k.uri, 'canonical: looked up again, the same uri');
  assert.equal(k.keyType, 'EC_P256');
  const toolPem = await readFile(join(dir, 'imported.pem'), 'utf8');
  assert.deepEqual(k.spki, createPublicKey(toolPem).export({ format: 'der', type: 'spki' }));
  const msg = Buffer.from('signed by a key tpm2-tools made');
  const sig = await (await backend.signer(k.uri, 'ECDSA_P256_SHA256')).sign(sha256(msg));
  assert.ok(verify('sha256', msg, { key: pub(k.spki), dsaEncoding: 'der' }, sig));
  await writeFile(join(dir, 'imported.msg'), msg);
  await writeFile(join(dir, 'imported.sig'), sig);
  const { stdout } = await run('openssl', ['dgst', '-sha256', '-verify', join(dir, 'imported.pem'), '-signature', join(dir, 'imported.sig'), join(dir, 'imported.msg')]);
  assert.match(stdout, /Verified OK/);
});

test('a restricted key, a non-signing object and a fixed-scheme key are refused with clear errors', { skip: skip ?? false }, async () => {
  await assertCode(backend.getKey(uriOf(RESTRICTED)), 'FAILED_PRECONDITION', /restricted/);
  await assertCode(backend.signer(uriOf(RESTRICTED), 'ECDSA_P256_SHA256'), 'FAILED_PRECONDITION', /restricted/);
  // swtpm_setup's RSA EK: a restricted decryption key.
  await assertCode(backend.getKey('tpm:handle=0x81010001'), 'FAILED_PRECONDITION', /not a signing key/);
  // An RSA key whose scheme was fixed to RSASSA at creation signs PKCS#1 v1.5 only.
  const k = await backend.getKey(uriOf(RSASSA_ONLY));
  assert.equal(k.keyType, 'RSA');
  await assertCode(backend.signer(k.uri, 'RSA_PSS_SHA256'), 'INVALID_ARGUMENT', /fixed signing scheme/);
  const msg = Buffer.from('pkcs1 from a fixed-scheme key');
  const sig = await (await backend.signer(k.uri, 'RSA_PKCS1_SHA256')).sign(sha256(msg));
  assert.ok(verify('sha256', msg, pub(k.spki), sig));
  await assertCode(backend.getKey('tpm:handle=0x81000100'), 'KEY_NOT_FOUND');
  await assertCode(backend.createKey({ label: 'ed-v1', algorithm: 'ED25519' }), 'UNSUPPORTED_ALGORITHM');
  await assertCode(backend.createKey({ label: 'bad\nlabel', algorithm: 'ECDSA_P256_SHA256' }), 'INVALID_ARGUMENT');
});

test('create, find by label, sign, destroy (twice), with the label table kept on disk', { skip: skip ?? false }, async () => {
  const k = await backend.createKey({ label: 'release-ci-v1', algorithm: 'ECDSA_P256_SHA256' });
  assert.equal(k.uri, 'tpm:handle=0x81000100', 'first free handle of the default range');
  assert.equal(await backend.findKeyByLabel('release-ci-v1'), k.uri);
  assert.equal(await backend.findKeyByLabel('release-ci-v2'), null);
  await assertCode(backend.createKey({ label: 'release-ci-v1', algorithm: 'ECDSA_P256_SHA256' }), 'KEY_EXISTS');
  const second = await backend.createKey({ label: 'release-ci-v2', algorithm: 'RSA_PSS_SHA256' });
  assert.equal(second.uri, 'tpm:handle=0x81000101');

  assert.equal((await stat(keyDir)).mode & 0o777, 0o700);
  const tablePath = join(keyDir, 'keys.json');
  assert.equal((await stat(tablePath)).mode & 0o777, 0o600);
  const table = JSON.parse(await readFile(tablePath, 'utf8')) as { keys: Array<{ label: string; handle: number }> };
  assert.deepEqual(table.keys.map((e) => [e.label, e.handle]), [['release-ci-v1', 0x81000100], ['release-ci-v2', 0x81000101]]);

  const signer = await backend.signer(k.uri, 'ECDSA_P256_SHA256');
  const msg = Buffer.from('before destruction');
  assert.ok(verify('sha256', msg, { key: pub(k.spki), dsaEncoding: 'der' }, await signer.sign(sha256(msg))));

  await backend.destroyKey(k.uri);
  await backend.destroyKey(k.uri);
  await assertCode(backend.getKey(k.uri), 'KEY_NOT_FOUND');
  await assertCode(signer.sign(sha256(msg)), 'KEY_NOT_FOUND');
  assert.equal(await backend.findKeyByLabel('release-ci-v1'), null);
  const after = JSON.parse(await readFile(tablePath, 'utf8')) as { keys: Array<{ label: string }> };
  assert.deepEqual(after.keys.map((e) => e.label), ['release-ci-v2']);
  // The freed handle is taken again by the next key.
  const third = await backend.createKey({ label: 'release-ci-v3', algorithm: 'ECDSA_P256_SHA256' });
  assert.equal(third.uri, k.uri);
  assert.notDeepEqual(third.spki, k.spki);
});

test('crash recovery: a key persisted before the caller recorded it is found by label after a restart; a trail without a key is dropped', { skip: skip ?? false }, async () => {
  const made = await backend.createKey({ label: 'crash-after-evict-v1', algorithm: 'ECDSA_P384_SHA384' });
  await backend.close();
  // A crash between the table write and EvictControl: the entry names a handle that holds nothing.
  const tablePath = join(keyDir, 'keys.json');
  const table = JSON.parse(await readFile(tablePath, 'utf8')) as { keys: Array<Record<string, unknown>> };
  table.keys.push({ label: 'crash-before-evict-v1', handle: 0x81000180, name: `000b${'ab'.repeat(32)}`, algorithm: 'ECDSA_P256_SHA256', createdAt: new Date().toISOString() });
  await writeFile(tablePath, JSON.stringify(table));
  await reopen();
  assert.equal(await backend.findKeyByLabel('crash-after-evict-v1'), made.uri);
  assert.deepEqual((await backend.getKey(made.uri)).spki, made.spki);
  assert.equal(await backend.findKeyByLabel('crash-before-evict-v1'), null);
  const now = JSON.parse(await readFile(tablePath, 'utf8')) as { keys: Array<{ label: string }> };
  assert.ok(!now.keys.some((e) => e.label === 'crash-before-evict-v1'), 'stale entry dropped from the table');
  // The same label can be created afresh once its stale entry is gone.
  const fresh = await backend.createKey({ label: 'crash-before-evict-v1', algorithm: 'ECDSA_P256_SHA256' });
  assert.equal(await backend.findKeyByLabel('crash-before-evict-v1'), fresh.uri);
});

test('signatures made by sigil verify with tpm2_verifysignature inside the same tpm', { skip: skip ?? false }, async () => {
  const ec = await backend.createKey({ label: 'verify-ec-v1', algorithm: 'ECDSA_P256_SHA256' });
  const rsa = await backend.createKey({ label: 'verify-rsa-v1', algorithm: 'RSA_PKCS1_SHA256' });
  const msg = Buffer.from('checked by the tpm itself');
  await writeFile(join(dir, 'v.msg'), msg);
  await writeFile(join(dir, 'v-ec.sig'), await (await backend.signer(ec.uri, 'ECDSA_P256_SHA256')).sign(sha256(msg)));
  await writeFile(join(dir, 'v-rsa.sig'), await (await backend.signer(rsa.uri, 'RSA_PKCS1_SHA256')).sign(sha256(msg)));
  await backend.close();
  try {
    // Every transient object the backend loaded (SRK, new keys) was flushed: swtpm has three slots.
    assert.equal((await tool('tpm2_getcap', ['handles-transient'])).trim(), '');
    const handle = (uri: string) => uri.slice('tpm:handle='.length);
    await toolStep('tpm2_verifysignature', ['-c', handle(ec.uri), '-g', 'sha256', '-m', 'v.msg', '-f', 'ecdsa', '-s', 'v-ec.sig', '-t', 'v-ec.tk']);
    await toolStep('tpm2_verifysignature', ['-c', handle(rsa.uri), '-g', 'sha256', '-m', 'v.msg', '-f', 'rsassa', '-s', 'v-rsa.sig', '-t', 'v-rsa.tk']);
    // A tampered message is refused, so the checks above are not vacuous.
    await writeFile(join(dir, 'v-bad.msg'), Buffer.from('not what was signed'));
    await assert.rejects(tool('tpm2_verifysignature', ['-c', handle(ec.uri), '-g', 'sha256', '-m', 'v-bad.msg', '-f', 'ecdsa', '-s', 'v-ec.sig', '-t', 'v-bad.tk']));
    await tool('tpm2_flushcontext', ['-t']);
  } finally {
    await reopen();
  }
});

test('swtpm stopped: BACKEND_UNAVAILABLE within timeoutMs; restarted: the same backend and signer sign again and the keys survived', { skip: skip ?? false }, async () => {
  const k = await backend.createKey({ label: 'resilient-v1', algorithm: 'ECDSA_P256_SHA256' });
  const signer = await backend.signer(k.uri, 'ECDSA_P256_SHA256');
  const msg = Buffer.from('across a tpm restart');
  await stopSwtpm();
  const t0 = performance.now();
  await assertCode(signer.sign(sha256(msg)), 'BACKEND_UNAVAILABLE');
  assert.ok(performance.now() - t0 < TIMEOUT_MS + 200, 'refused within timeoutMs');
  await assertCode(backend.getKey(k.uri), 'BACKEND_UNAVAILABLE');
  await assertCode(backend.findKeyByLabel('resilient-v1'), 'BACKEND_UNAVAILABLE');

  await restartSwtpm();
  const sig = await signer.sign(sha256(msg));
  assert.ok(verify('sha256', msg, { key: pub(k.spki), dsaEncoding: 'der' }, sig));
  assert.deepEqual((await backend.getKey(k.uri)).spki, k.spki);
  assert.equal(await backend.findKeyByLabel('resilient-v1'), k.uri);
  assert.equal((await backend.getKey(uriOf(IMPORTED))).keyType, 'EC_P256');
});

test('a hung tpm (swtpm paused): BACKEND_UNAVAILABLE within timeoutMs; resumed: signing works again', { skip: skip ?? false }, async () => {
  const k = await backend.getKey(uriOf(IMPORTED));
  const signer = await backend.signer(k.uri, 'ECDSA_P256_SHA256');
  const msg = Buffer.from('across a pause');
  child.kill('SIGSTOP');
  try {
    const t0 = performance.now();
    const results = await Promise.allSettled([signer.sign(sha256(msg)), signer.sign(sha256(msg))]);
    const ms = performance.now() - t0;
    for (const r of results) {
      assert.equal(r.status, 'rejected');
      assert.ok(isSigilError((r as PromiseRejectedResult).reason, 'BACKEND_UNAVAILABLE'));
    }
    assert.ok(ms >= TIMEOUT_MS - 50 && ms < TIMEOUT_MS + 300, `refused after ${ms.toFixed(0)} ms`);
  } finally {
    child.kill('SIGCONT');
  }
  let sig: Buffer | undefined;
  const deadline = Date.now() + 10_000;
  while (sig === undefined && Date.now() < deadline) {
    sig = await signer.sign(sha256(msg)).catch(() => undefined);
  }
  assert.ok(sig !== undefined, 'signs again after the pause');
  assert.ok(verify('sha256', msg, { key: pub(k.spki), dsaEncoding: 'der' }, sig));
});
