import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { createHash, createPublicKey, verify } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { after, before, test } from 'node:test';
import { silentLogger, type Logger } from '../../src/log.ts';
import type { Algorithm } from '../../src/signers/signer.ts';
import { tpmConfigSchema, type TpmConfig } from '../../src/signers/tpm/config.ts';
import { open, type RekeyStep } from '../../src/signers/tpm/index.ts';
import { KeyTable } from '../../src/signers/tpm/key-table.ts';
import { assertCode } from '../helpers/assert.ts';
import { missingTools } from '../helpers/hw.ts';
import { makeEmptyAuthKey, startSwtpm, withTpmClient, type Swtpm } from '../helpers/swtpm.ts';
import { TPM_RH } from '../../src/tpm/constants.ts';
import { SRK_TEMPLATE_ECC, templateBytes } from '../../src/tpm/templates.ts';

// Two lines of defence for TPM keys, against swtpm with tpm2-tools as the independent TPM client:
// every signature checked against the recorded public key, and a new authValue (TPM2_ObjectChangeAuth,
// Part 3 19.2) for keys sigil made before it set one, crash-safe at every step.

const skip = missingTools('swtpm', 'swtpm_setup', 'tpm2_sign');
const run = promisify(execFile);
const CHILD = fileURLToPath(new URL('../helpers/tpm-rekey-child.ts', import.meta.url));
const PERSISTENT = 0x81000000;

let dir: string;
let sw: Swtpm;
let n = 0;

before(async () => {
  if (skip) return;
  dir = await mkdtemp(join(tmpdir(), 'sigil-tpm-harden-it-'));
  sw = await startSwtpm();
});
after(async () => {
  if (skip) return;
  await sw?.stop();
  await rm(dir, { recursive: true, force: true });
});

const sha256 = (b: Buffer | string) => createHash('sha256').update(b).digest();
const hexHandle = (h: number) => `0x${h.toString(16)}`;

function config(stateDir: string): TpmConfig {
  return tpmConfigSchema.parse({ type: 'tpm', transport: sw.tcti, stateDir, timeoutMs: 2000, createTimeoutMs: 4000 });
}

function capture(): { log: Logger; lines: Array<{ level: string; msg: string; o: Record<string, unknown> }> } {
  const lines: Array<{ level: string; msg: string; o: Record<string, unknown> }> = [];
  const log = silentLogger();
  for (const level of ['info', 'warn', 'error'] as const) {
    log[level] = ((o: Record<string, unknown>, msg: string) => void lines.push({ level, msg, o })) as (typeof log)[typeof level];
  }
  return { log, lines };
}

const persistentHandles = () => withTpmClient(sw, (tpm) => tpm.getHandles(PERSISTENT));

const makeOldKey = (stateDir: string, label: string, handle: number) => makeEmptyAuthKey(sw, stateDir, label, handle);

/** tpm2_sign of a message with the key at `handle`, with `-p hex:<auth>` or (null) no password at all. */
async function toolSign(handle: number, auth: string | null): Promise<void> {
  const msg = join(dir, `tool-${n++}.msg`);
  await writeFile(msg, 'signed by tpm2-tools');
  await run('tpm2_sign', ['-c', hexHandle(handle), ...(auth === null ? [] : ['-p', `hex:${auth}`]), '-g', 'sha256', '-o', `${msg}.sig`, msg], { env: { ...process.env, TPM2TOOLS_TCTI: sw.tcti } });
}

/** tpm2_sign refused for its authorization (TPM_RC_BAD_AUTH, session 1), not for anything else. */
const refusedAuth = (err: unknown): boolean => /0x9a2|authorization failure/i.test(String((err as { stderr?: unknown }).stderr ?? err));

/** Signs through a freshly opened backend and checks the signature with node:crypto; returns the table entry's state. */
async function signsThroughSigil(stateDir: string, handle: number): Promise<{ auth: string | undefined; rekey: boolean }> {
  const b = await open(config(stateDir), { name: 'swtpm', log: silentLogger(), production: false });
  try {
    const k = await b.getKey(`tpm:handle=${hexHandle(handle)}`);
    const sig = await (await b.signer(k.uri, 'ECDSA_P256_SHA256', { spki: k.spki })).sign(sha256('after'));
    assert.ok(verify('sha256', Buffer.from('after'), { key: createPublicKey({ key: k.spki, format: 'der', type: 'spki' }), dsaEncoding: 'der' }, sig));
  } finally {
    await b.close();
  }
  const e = (await KeyTable.open(stateDir)).byHandle(handle)!;
  return { auth: e.auth, rekey: e.rekey !== undefined };
}

test('a tpm signature that does not verify under the recorded public key is refused, logged and counted; the right key signs', { skip: skip ?? false }, async () => {
  const { log, lines } = capture();
  let counted = 0;
  const b = await open(config(join(dir, `state-${n++}`)), { name: 'swtpm', log, production: false, onSignatureMismatch: () => counted++ });
  try {
    const a = await b.createKey({ label: 'check-a', algorithm: 'ECDSA_P256_SHA256' });
    const other = await b.createKey({ label: 'check-b', algorithm: 'ECDSA_P256_SHA256' });
    const d = sha256('checked');
    // The key version's recorded public key swapped for another key's: the TPM signs with the key at the
    // handle, and that signature must not leave the backend.
    await assertCode((await b.signer(a.uri, 'ECDSA_P256_SHA256', { spki: other.spki })).sign(d), 'BACKEND_ERROR', /^tpm signature with tpm:handle=0x[0-9a-f]{8} does not verify under the key version's recorded public key; refused$/);
    assert.equal(counted, 1);
    assert.deepEqual(lines.filter((l) => l.level === 'error').map((l) => l.msg), ['signature from the backend does not verify under the recorded public key; refused']);
    const sig = await (await b.signer(a.uri, 'ECDSA_P256_SHA256', { spki: a.spki })).sign(d);
    assert.ok(verify('sha256', Buffer.from('checked'), { key: createPublicKey({ key: a.spki, format: 'der', type: 'spki' }), dsaEncoding: 'der' }, sig));
    assert.equal(counted, 1);
    // The TPM's own RSA signatures pass the check in both schemes (PSS with a salt of the digest's length).
    const rsa = await b.createKey({ label: 'check-rsa', algorithm: 'RSA_PSS_SHA256' });
    for (const alg of ['RSA_PKCS1_SHA256', 'RSA_PSS_SHA256'] as Algorithm[]) {
      assert.equal((await (await b.signer(rsa.uri, alg, { spki: rsa.spki })).sign(d)).length, 256, alg);
    }
    // A recorded key that cannot verify the algorithm at all refuses the signer rather than let anything pass.
    await assertCode(b.signer(rsa.uri, 'RSA_PSS_SHA256', { spki: a.spki }), 'INVALID_ARGUMENT', /cannot verify RSA_PSS_SHA256/);
    for (const k of [a, other, rsa]) await b.destroyKey(k.uri);
  } finally {
    await b.close();
  }
});

test('a key sigil made with an empty authValue gets a new one: it signs through sigil, and tpm2_sign without the authValue is refused by the tpm', { skip: skip ?? false }, async () => {
  const stateDir = join(dir, `state-${n++}`);
  const handle = 0x81000020;
  await makeOldKey(stateDir, 'old-v1', handle);
  // Before: anyone who may open the TPM signs with it.
  await toolSign(handle, null);
  const handlesBefore = await persistentHandles();

  const { log, lines } = capture();
  const b = await open(config(stateDir), { name: 'swtpm', log, production: false });
  let auth: string;
  try {
    assert.ok(lines.some((l) => l.level === 'warn' && /empty one/.test(l.msg) && (l.o.labels as string[]).includes('old-v1')), 'the open names keys without an authValue');
    assert.deepEqual((await b.emptyAuthKeys()).map((k) => [k.label, k.uri]), [['old-v1', `tpm:handle=${hexHandle(handle)}`]]);
    const k = await b.getKey(`tpm:handle=${hexHandle(handle)}`);
    const before = await b.signer(k.uri, 'ECDSA_P256_SHA256', { spki: k.spki });
    await before.sign(sha256('before'));
    await b.setAuthValue('old-v1');
    assert.deepEqual(await b.emptyAuthKeys(), []);
    const e = (await KeyTable.open(stateDir)).get('old-v1')!;
    assert.match(e.auth ?? '', /^[0-9a-f]{64}$/);
    assert.equal(e.rekey, undefined);
    auth = e.auth!;
    // The same key (same name and public key) signs through sigil with its new authValue.
    const after = await b.signer(k.uri, 'ECDSA_P256_SHA256', { spki: k.spki });
    const sig = await after.sign(sha256('after'));
    assert.ok(verify('sha256', Buffer.from('after'), { key: createPublicKey({ key: k.spki, format: 'der', type: 'spki' }), dsaEncoding: 'der' }, sig));
    assert.deepEqual((await b.getKey(k.uri)).spki, k.spki);
    // Keys sigil did not make, and keys that have an authValue, are never changed.
    await assertCode(b.setAuthValue('old-v1'), 'FAILED_PRECONDITION', /has an authValue already/);
    await assertCode(b.setAuthValue('never-made'), 'KEY_NOT_FOUND', /only keys sigil made/);
    assert.ok(lines.some((l) => l.level === 'info' && /new authValue/.test(l.msg)));
  } finally {
    await b.close();
  }
  await assert.rejects(toolSign(handle, null), refusedAuth, 'the empty authValue no longer signs');
  await toolSign(handle, auth);
  assert.deepEqual(await persistentHandles(), handlesBefore, 'the key stays at its handle and no persistent handle is left over');
  await withTpmClient(sw, (tpm) => tpm.evictControl(handle, handle));
});

// After each step, the outcome a crash there must leave: the old key (empty authValue) or the new one.
const STEPS: Array<[RekeyStep, 'old' | 'new']> = [
  ['changed', 'old'],
  ['prepared', 'old'],
  ['evicted', 'new'],
  ['recorded', 'new'],
  ['persisted', 'new'],
  ['done', 'new'],
];

for (const [step, outcome] of STEPS) {
  test(`SIGKILL after '${step}' of an authValue change: after a restart the key signs with the ${outcome} authValue, the table says which, no handle leaks`, { skip: skip ?? false }, async (t) => {
    const stateDir = join(dir, `state-${n++}`);
    const handle = 0x81000030 + STEPS.findIndex(([s]) => s === step);
    await makeOldKey(stateDir, `crash-${step}`, handle);
    const handlesBefore = await persistentHandles();
    const child = spawn(process.execPath, [CHILD, JSON.stringify({ type: 'tpm', transport: sw.tcti, stateDir, timeoutMs: 2000, createTimeoutMs: 4000 }), `crash-${step}`, step], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (c: Buffer) => void (stderr += c.toString()));
    const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((res) => child.once('exit', (c, s) => res([c, s])));
    assert.equal(signal, 'SIGKILL', `the child died at its step (exit ${code}): ${stderr}`);

    // The restart: open settles what the crash left, and the key signs.
    const state = await signsThroughSigil(stateDir, handle);
    assert.equal(state.rekey, false, 'no change is left pending');
    if (outcome === 'old') {
      assert.equal(state.auth, undefined);
      await toolSign(handle, null);
    } else {
      assert.match(state.auth ?? '', /^[0-9a-f]{64}$/);
      await assert.rejects(toolSign(handle, null), refusedAuth, 'the empty authValue no longer signs');
      await toolSign(handle, state.auth!);
    }
    assert.deepEqual(await persistentHandles(), handlesBefore, 'the key is at its handle and nothing else persisted');
    t.after(() => withTpmClient(sw, (tpm) => tpm.evictControl(handle, handle)));
    // An interrupted change rolled back is simply run again.
    if (outcome === 'old') {
      const b = await open(config(stateDir), { name: 'swtpm', log: silentLogger(), production: false });
      try {
        await b.setAuthValue(`crash-${step}`);
      } finally {
        await b.close();
      }
      assert.match((await signsThroughSigil(stateDir, handle)).auth ?? '', /^[0-9a-f]{64}$/);
    }
  });
}

test('a crash while settling a change (the new object persisted, the table still at prepared) keeps the new authValue', { skip: skip ?? false }, async (t) => {
  const stateDir = join(dir, `state-${n++}`);
  const handle = 0x81000041;
  await makeOldKey(stateDir, 'twice', handle);
  const child = spawn(process.execPath, [CHILD, JSON.stringify({ type: 'tpm', transport: sw.tcti, stateDir, timeoutMs: 2000, createTimeoutMs: 4000 }), 'twice', 'evicted'], { stdio: 'ignore' });
  assert.equal((await new Promise<[number | null, NodeJS.Signals | null]>((res) => child.once('exit', (c, sig) => res([c, sig]))))[1], 'SIGKILL');
  const e = (await KeyTable.open(stateDir)).get('twice')!;
  assert.equal(e.rekey?.step, 'prepared', 'killed after the eviction, before it was recorded');
  // A settle that persisted the new private area and died before its table write (or whose write failed): the
  // handle holds the new object, with the same name as the old one, and the table still says prepared.
  await withTpmClient(sw, async (tpm) => {
    const srk = await tpm.createPrimary(TPM_RH.OWNER, templateBytes(SRK_TEMPLATE_ECC));
    try {
      const loaded = await tpm.load(srk.handle, Buffer.from(e.rekey!.private, 'hex'), Buffer.from(e.rekey!.public, 'hex'));
      await tpm.evictControl(loaded.handle, handle);
      await tpm.flushContext(loaded.handle);
    } finally {
      await tpm.flushContext(srk.handle);
    }
  });
  t.after(() => withTpmClient(sw, (tpm) => tpm.evictControl(handle, handle)));
  const state = await signsThroughSigil(stateDir, handle);
  assert.deepEqual(state, { auth: e.rekey!.auth, rekey: false }, 'the object takes the new authValue: kept, not rolled back');
  await assert.rejects(toolSign(handle, null), refusedAuth);
});

test('a change cut by a failure in this process (a test hook throwing) is settled before the key next signs, without a restart', { skip: skip ?? false }, async () => {
  const stateDir = join(dir, `state-${n++}`);
  const handle = 0x81000040;
  await makeOldKey(stateDir, 'cut', handle);
  const b = await open(config(stateDir), { name: 'swtpm', log: silentLogger(), production: false });
  try {
    await assert.rejects(b.setAuthValue('cut', (s) => {
      if (s === 'recorded') throw new Error('cut here');
    }));
    // The handle is empty now; the next signer settles the change first.
    const e = (await KeyTable.open(stateDir)).get('cut')!;
    assert.equal(e.rekey?.step, 'evicted');
    const k = await b.signer(`tpm:handle=${hexHandle(handle)}`, 'ECDSA_P256_SHA256');
    assert.ok((await k.sign(sha256('x'))).length > 0);
    assert.match((await KeyTable.open(stateDir)).get('cut')!.auth ?? '', /^[0-9a-f]{64}$/);
    await b.destroyKey(`tpm:handle=${hexHandle(handle)}`);
  } finally {
    await b.close();
  }
});
