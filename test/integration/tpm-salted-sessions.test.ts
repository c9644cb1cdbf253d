import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash, createHmac, createPublicKey, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { after, before, test } from 'node:test';
import { isSigilError } from '../../src/errors.ts';
import { Algorithm } from '../../src/gen/sigil/v1/signer.ts';
import { silentLogger, type Logger } from '../../src/log.ts';
import type { Backend, KeyCreator, KeyDestroyer } from '../../src/signers/signer.ts';
import { tpmConfigSchema, type TpmConfig } from '../../src/signers/tpm/config.ts';
import { open } from '../../src/signers/tpm/index.ts';
import { signingKeyTemplate } from '../../src/signers/tpm/templates.ts';
import { TPM_ALG, TPM_CC, TPM_RH, TPM_ST, TPMA_SESSION } from '../../src/tpm/constants.ts';
import { rpHash } from '../../src/tpm/hmac-session.ts';
import { Reader, Writer } from '../../src/tpm/marshal.ts';
import { SRK_TEMPLATE_ECC, templateBytes } from '../../src/tpm/templates.ts';
import { Tpm } from '../../src/tpm/tpm.ts';
import { missingTools } from '../helpers/hw.ts';
import { startTpmRelay, type TpmRelay } from '../helpers/tpm-relay.ts';
import { dropTpmConnection, persistP256Key, startSwtpm, withTpmClient, type Swtpm } from '../helpers/swtpm.ts';
import { verifyWithOpenssl } from '../helpers/verify.ts';

// Sessions salted with the pinned SRK (TPM 2.0 Part 1, 19.6.13) and TPM2_Create with its first parameter
// encrypted (Part 1, 21.3), against swtpm (libtpms decrypts the salt and the parameter: an independent
// implementation), with a relay in front of it playing the interposer on the TPM's bus.

const skip = missingTools('swtpm', 'swtpm_setup', 'tpm2_clear', 'tpm2_sign', 'openssl');
const run = promisify(execFile);
const IMPORT_HANDLE = 0x81000710;

let dir: string;
let sw: Swtpm;
let n = 0;

before(async () => {
  if (skip) return;
  dir = await mkdtemp(join(tmpdir(), 'sigil-tpm-salted-it-'));
  sw = await startSwtpm();
});
after(async () => {
  if (skip) return;
  await sw?.stop();
  await rm(dir, { recursive: true, force: true });
});

type Opened = Backend & KeyCreator & KeyDestroyer;

function config(transport: string, stateDir = join(dir, `state-${n++}`)): TpmConfig {
  return tpmConfigSchema.parse({ type: 'tpm', transport, stateDir, timeoutMs: 1000, createTimeoutMs: 1000 });
}

const viaRelay = (r: TpmRelay) => `swtpm:host=127.0.0.1,port=${r.port}`;
const openBackend = (c: TpmConfig, log: Logger = silentLogger()): Promise<Opened> => open(c, { name: 'swtpm', log, production: false });
const sha256 = (b: Buffer | string) => createHash('sha256').update(b).digest();
const pemOf = (spki: Buffer) => createPublicKey({ key: spki, format: 'der', type: 'spki' }).export({ type: 'spki', format: 'pem' }) as string;
const handleOf = (uri: string) => Number.parseInt(uri.slice('tpm:handle=0x'.length, 'tpm:handle=0x'.length + 8), 16);
const ccOf = (cmd: Buffer) => (cmd.length >= 10 ? cmd.readUInt32BE(6) : 0);

/** The SRK's name as a TPM client of its own sees it (CreatePrimary from the same template). */
function srkName(s: Swtpm): Promise<Buffer> {
  return withTpmClient(s, async (tpm) => {
    const srk = await tpm.createPrimary(TPM_RH.OWNER, templateBytes(SRK_TEMPLATE_ECC));
    await tpm.flushContext(srk.handle);
    return srk.name;
  });
}

/** Persists a P-256 signing key with an empty authValue at `handle` (made by another TPM user; sigil imports it). */
async function persistImportable(s: Swtpm, handle: number): Promise<void> {
  await withTpmClient(s, (tpm) => persistP256Key(tpm, handle));
}

/** StartAuthSession command fields (Part 3, 11.1): tpmKey, bind, encryptedSalt, symmetric algorithm. */
function startAuthSessionOf(cmd: Buffer): { tpmKey: number; encryptedSalt: Buffer; symmetric: number; keyBits?: number; mode?: number } {
  const r = new Reader(cmd.subarray(10));
  const tpmKey = r.u32();
  r.u32(); // bind
  r.sized(); // nonceCaller
  const encryptedSalt = r.sized();
  r.u8(); // sessionType
  const symmetric = r.u16();
  return symmetric === TPM_ALG.NULL ? { tpmKey, encryptedSalt, symmetric } : { tpmKey, encryptedSalt, symmetric, keyBits: r.u16(), mode: r.u16() };
}

/** The one TPMS_AUTH_COMMAND of a command with `handles` handles: session handle, nonceCaller, attributes. */
function authOf(cmd: Buffer, handles: number): { session: number; nonce: Buffer; attributes: number } {
  const r = new Reader(cmd.subarray(10 + 4 * handles));
  r.u32(); // authorizationSize
  return { session: r.u32(), nonce: r.sized(), attributes: r.u8() };
}

test('the first open pins the srk in srk.json (0600); every session is salted with it and can encrypt; created and imported keys sign, openssl verifies', { skip: skip ?? false }, async () => {
  const expected = await srkName(sw);
  await persistImportable(sw, IMPORT_HANDLE);
  const relay = await startTpmRelay(sw.port);
  const c = config(viaRelay(relay));
  const b = await openBackend(c);
  try {
    const file = join(c.stateDir, 'srk.json');
    const pin = JSON.parse(await readFile(file, 'utf8')) as { version: number; name: string; public: string };
    assert.equal(pin.name, expected.toString('hex'), 'the pinned name is the one the tpm gives the srk template');
    assert.equal((await stat(file)).mode & 0o777, 0o600);

    const ec = await b.createKey({ label: 'salted-ec-v1', algorithm: 'ECDSA_P256_SHA256' });
    const rsa = await b.createKey({ label: 'salted-rsa-v1', algorithm: 'RSA_PKCS1_SHA256' });
    const imported = await b.getKey(`tpm:handle=0x${IMPORT_HANDLE.toString(16)}`);
    const cases = [
      { k: ec, alg: 'ECDSA_P256_SHA256', wire: Algorithm.ECDSA_P256_SHA256 },
      { k: rsa, alg: 'RSA_PKCS1_SHA256', wire: Algorithm.RSA_PKCS1_SHA256 },
      { k: imported, alg: 'ECDSA_P256_SHA256', wire: Algorithm.ECDSA_P256_SHA256 },
    ] as const;
    for (const { k, alg, wire } of cases) {
      const msg = Buffer.from(`salted ${k.uri}`);
      const sig = await (await b.signer(k.uri, alg)).sign(sha256(msg));
      assert.ok(verifyWithOpenssl(wire, pemOf(k.spki), msg, sig), `openssl verifies ${k.uri}`);
      assert.ok(!verifyWithOpenssl(wire, pemOf(k.spki), Buffer.from('another message'), sig), 'and refuses another message');
    }

    const starts = relay.commands.filter((cmd) => ccOf(cmd) === TPM_CC.StartAuthSession).map(startAuthSessionOf);
    assert.ok(starts.length >= 1 && starts.length <= 2, `the pool started ${starts.length} sessions`);
    for (const s of starts) {
      assert.notEqual(s.tpmKey, TPM_RH.NULL, 'salted: tpmKey is the loaded srk');
      assert.equal(s.encryptedSalt.length, 2 + 32 + 2 + 32, 'the ephemeral P-256 point (TPMS_ECC_POINT)');
      assert.deepEqual([s.symmetric, s.keyBits, s.mode], [TPM_ALG.AES, 128, TPM_ALG.CFB]);
    }
    const signs = relay.commands.filter((cmd) => ccOf(cmd) === TPM_CC.Sign);
    assert.equal(signs.length, 3);
    await b.destroyKey(ec.uri);
    await b.destroyKey(rsa.uri);
  } finally {
    await b.close();
    await relay.close();
    await withTpmClient(sw, (tpm) => tpm.evictControl(IMPORT_HANDLE, IMPORT_HANDLE)).catch(() => undefined);
  }
});

test("a created key's authValue never crosses the wire in the clear (TPM2_Create's first parameter is encrypted), and it is exactly what the tpm holds", { skip: skip ?? false }, async () => {
  const relay = await startTpmRelay(sw.port);
  const c = config(viaRelay(relay));
  let b = await openBackend(c);
  let uri = '';
  try {
    const k = await b.createKey({ label: 'secret-auth-v1', algorithm: 'ECDSA_P256_SHA256' });
    uri = k.uri;
    const table = JSON.parse(await readFile(join(c.stateDir, 'keys.json'), 'utf8')) as { keys: Array<{ label: string; auth: string }> };
    const auth = Buffer.from(table.keys.find((e) => e.label === 'secret-auth-v1')!.auth, 'hex');
    assert.equal(auth.length, 32);
    const sent = Buffer.concat(relay.commands);
    assert.equal(sent.indexOf(auth), -1, 'the 32-byte authValue occurs nowhere in the bytes sent to the tpm');
    const creates = relay.commands.filter((cmd) => ccOf(cmd) === TPM_CC.Create);
    assert.equal(creates.length, 1);
    assert.ok(authOf(creates[0]!, 1).attributes & TPMA_SESSION.decrypt, 'TPM2_Create carries the decrypt session attribute');
    await b.close();

    // The TPM decrypted the authValue sigil recorded (independent client: tpm2-tools with a password session).
    const msgFile = join(dir, 'auth.msg');
    await writeFile(msgFile, 'signed by tpm2-tools');
    const env = { ...process.env, TPM2TOOLS_TCTI: sw.tcti };
    const sign = (hexAuth: string) => run('tpm2_sign', ['-c', `0x${handleOf(uri).toString(16)}`, '-p', `hex:${hexAuth}`, '-g', 'sha256', '-o', join(dir, 'auth.sig'), msgFile], { env });
    await sign(auth.toString('hex'));
    const wrong = Buffer.from(auth);
    wrong[0]! ^= 1;
    await assert.rejects(sign(wrong.toString('hex')), 'a wrong authValue is refused');

    // The control: a Create whose parent is authorized by the password session sends userAuth as it is,
    // and this relay sees it.
    const visible = randomBytes(32);
    const tpm = await Tpm.open(viaRelay(relay));
    try {
      const srk = await tpm.createPrimary(TPM_RH.OWNER, templateBytes(SRK_TEMPLATE_ECC));
      await tpm.create(srk.handle, templateBytes(signingKeyTemplate('EC_P256')!), { userAuth: visible });
      await tpm.flushContext(srk.handle);
    } finally {
      await tpm.close();
    }
    assert.notEqual(Buffer.concat(relay.commands).indexOf(visible), -1, 'an unencrypted TPM2_Create shows the authValue to the relay');

    b = await openBackend(c);
    const msg = Buffer.from('sigil signs with it too');
    const sig = await (await b.signer(uri, 'ECDSA_P256_SHA256')).sign(sha256(msg));
    assert.ok(verifyWithOpenssl(Algorithm.ECDSA_P256_SHA256, pemOf(k.spki), msg, sig));
    await b.destroyKey(uri);
  } finally {
    await b.close();
    await relay.close();
  }
});

/**
 * A response hook that replaces the signature in every successful TPM2_Sign response and recomputes
 * the response HMAC as anyone could for an unsalted, unbound session on a key with an empty authValue:
 * HMAC key empty (Part 1, 19.6.5).
 */
function forgeSignResponses(onForged: () => void): (cmd: Buffer, rsp: Buffer) => Buffer {
  return (cmd, rsp) => {
    if (ccOf(cmd) !== TPM_CC.Sign || rsp.readUInt32BE(6) !== 0) return rsp;
    const nonceCaller = authOf(cmd, 1).nonce;
    const r = new Reader(rsp.subarray(10));
    const params = Buffer.from(r.bytes(r.u32()));
    const nonceTPM = r.sized();
    const attributes = r.u8();
    params[params.length - 1]! ^= 1; // the last byte of s (ECDSA) or of the RSA signature
    const hmac = createHmac('sha256', Buffer.alloc(0)).update(rpHash(0, TPM_CC.Sign, params)).update(nonceTPM).update(nonceCaller).update(Buffer.of(attributes)).digest();
    const body = new Writer().u32(params.length).bytes(params).sized(nonceTPM).u8(attributes).sized(hmac).finish();
    onForged();
    return new Writer().u16(rsp.readUInt16BE(0)).u32(10 + body.length).u32(0).bytes(body).finish();
  };
}

test('an interposer that rewrites a signature and recomputes the response hmac, as an unsalted session allowed for an imported key, is refused', { skip: skip ?? false }, async () => {
  await persistImportable(sw, IMPORT_HANDLE);
  const relay = await startTpmRelay(sw.port);
  let forged = 0;
  const c = config(viaRelay(relay));
  const b = await openBackend(c);
  try {
    const k = await b.getKey(`tpm:handle=0x${IMPORT_HANDLE.toString(16)}`);
    const signer = await b.signer(k.uri, 'ECDSA_P256_SHA256');
    const msg = Buffer.from('imported, empty authValue');
    assert.ok(verifyWithOpenssl(Algorithm.ECDSA_P256_SHA256, pemOf(k.spki), msg, await signer.sign(sha256(msg))));
    relay.onResponse(forgeSignResponses(() => forged++));
    await assert.rejects(signer.sign(sha256(msg)), (e) => isSigilError(e, 'BACKEND_ERROR') && /response hmac does not verify/.test(e.message));
    assert.equal(forged, 1, 'the relay did forge the response');
    relay.onResponse((_c, r) => r);
    assert.ok(verifyWithOpenssl(Algorithm.ECDSA_P256_SHA256, pemOf(k.spki), msg, await signer.sign(sha256(msg))), 'the next signature, on a fresh session, is genuine');
  } finally {
    await b.close();
  }
  // The control: over an unsalted session (what sigil used before) the same forgery passes the check
  // and hands back a signature that does not verify.
  relay.onResponse(forgeSignResponses(() => forged++));
  const tpm = await Tpm.open(viaRelay(relay));
  try {
    const session = await tpm.startHmacSession();
    const pub = await tpm.readPublic(IMPORT_HANDLE);
    const sig = await tpm.sign(IMPORT_HANDLE, sha256('unsalted'), TPM_ALG.ECDSA, TPM_ALG.SHA256, { session, name: pub.name });
    assert.equal(forged, 2);
    assert.equal(sig.sigAlg, TPM_ALG.ECDSA, 'the forged response was accepted');
    await tpm.flushContext(session.handle);
  } finally {
    await tpm.close();
    await relay.close();
    await withTpmClient(sw, (t) => t.evictControl(IMPORT_HANDLE, IMPORT_HANDLE)).catch(() => undefined);
  }
});

test('an interposer that strips the authorization area from a Sign answer (tag NO_SESSIONS, no hmac to check) is refused', { skip: skip ?? false }, async () => {
  const relay = await startTpmRelay(sw.port);
  let stripped = 0;
  const b = await openBackend(config(viaRelay(relay)));
  try {
    const k = await b.createKey({ label: 'stripped-v1', algorithm: 'ECDSA_P256_SHA256' });
    const signer = await b.signer(k.uri, 'ECDSA_P256_SHA256');
    const msg = Buffer.from('answered by the relay');
    relay.onResponse((command, response) => {
      if (command.readUInt32BE(6) !== TPM_CC.Sign || response.readUInt16BE(0) !== TPM_ST.SESSIONS || response.readUInt32BE(6) !== 0) return response;
      stripped++;
      // The parameters alone, as a TPM answers a command sent without sessions.
      const params = response.subarray(14, 14 + response.readUInt32BE(10));
      return new Writer().u16(TPM_ST.NO_SESSIONS).u32(10 + params.length).u32(0).bytes(params).finish();
    });
    await assert.rejects(signer.sign(sha256(msg)), (e) => isSigilError(e, 'BACKEND_ERROR') && /response hmac does not verify/.test(e.message));
    assert.equal(stripped, 1, 'the relay did strip the answer');
    relay.onResponse((_c, r) => r);
    assert.ok(verifyWithOpenssl(Algorithm.ECDSA_P256_SHA256, pemOf(k.spki), msg, await signer.sign(sha256(msg))), 'the next signature, on a fresh session, is genuine');
    await b.destroyKey(k.uri);
  } finally {
    await b.close();
    await relay.close();
  }
});

/** Clears the TPM (TPM2_Clear by the platform, tpm2-tools): a new owner seed, so a new SRK, and every owner key gone. */
async function clearTpm(s: Swtpm): Promise<void> {
  await run('tpm2_clear', ['-c', 'p'], { env: { ...process.env, TPM2TOOLS_TCTI: s.tcti } });
}

function capturingLogger(errors: Array<Record<string, unknown>>): Logger {
  const base = silentLogger();
  const log = Object.assign(Object.create(base) as Logger, {
    error: (o: Record<string, unknown>, msg: string) => errors.push({ ...o, msg }),
    child: () => log,
  });
  return log;
}

const srkChanged = (e: unknown) =>
  isSigilError(e, 'FAILED_PRECONDITION') && /the tpm's storage key \(srk\) is not the one pinned in .*srk\.json on .*: pinned name 000b[0-9a-f]{64}, the tpm answers with 000b[0-9a-f]{64}/.test(e.message) && !/\.$/.test(e.message);

test('a tpm whose srk changed (tpm2_clear) is refused with the reason and logged, at the next session and at open; removing srk.json pins the new one', { skip: skip ?? false }, async () => {
  const other = await startSwtpm();
  const errors: Array<Record<string, unknown>> = [];
  const c = config(other.tcti);
  let b = await openBackend(c, capturingLogger(errors));
  try {
    const before = JSON.parse(await readFile(join(c.stateDir, 'srk.json'), 'utf8')) as { name: string };
    const k = await b.createKey({ label: 'cleared-v1', algorithm: 'ECDSA_P256_SHA256' });
    const signer = await b.signer(k.uri, 'ECDSA_P256_SHA256');
    await signer.sign(sha256('before the clear'));
    await dropTpmConnection(other, () => b.getKey(k.uri));
    await clearTpm(other);
    await assert.rejects(signer.sign(sha256('after the clear')), srkChanged);
    await assert.rejects(b.createKey({ label: 'cleared-v2', algorithm: 'ECDSA_P256_SHA256' }), srkChanged);
    const logged = errors.find((e) => /storage key differs from the pinned one/.test(String(e.msg)));
    assert.ok(logged !== undefined && logged.pinned === before.name && typeof logged.found === 'string' && logged.found !== before.name, JSON.stringify(errors));
    await b.close();

    await assert.rejects(openBackend(c), srkChanged);
    assert.equal(JSON.parse(await readFile(join(c.stateDir, 'srk.json'), 'utf8')).name, before.name, 'a refused open leaves the pin alone');

    // The documented way out after a legitimate clear: remove the pin (the keys are gone with the clear).
    await rm(join(c.stateDir, 'srk.json'));
    b = await openBackend(c);
    const after = JSON.parse(await readFile(join(c.stateDir, 'srk.json'), 'utf8')) as { name: string };
    assert.notEqual(after.name, before.name);
    assert.equal(after.name, (await (async () => {
      await b.close();
      return srkName(other);
    })()).toString('hex'));
    b = await openBackend(c);
    await assert.rejects(b.getKey(k.uri), (e) => isSigilError(e, 'KEY_NOT_FOUND'), 'the clear took the key with it');
    const k2 = await b.createKey({ label: 'cleared-v2', algorithm: 'ECDSA_P256_SHA256' });
    const msg = Buffer.from('after re-pinning');
    assert.ok(verifyWithOpenssl(Algorithm.ECDSA_P256_SHA256, pemOf(k2.spki), msg, await (await b.signer(k2.uri, 'ECDSA_P256_SHA256')).sign(sha256(msg))));
  } finally {
    await b.close();
    await other.stop();
  }
});

test('an interposer answering CreatePrimary with the pinned srk for a tpm that does not hold it: key creation and signing are refused, nothing is signed', { skip: skip ?? false }, async () => {
  // Pin the SRK of `sw`, and record its CreatePrimary answer.
  let recorded: Buffer | undefined;
  const recorder = await startTpmRelay(sw.port);
  recorder.onResponse((cmd, rsp) => {
    if (ccOf(cmd) === TPM_CC.CreatePrimary) recorded ??= rsp;
    return rsp;
  });
  const stateDir = join(dir, `state-${n++}`);
  await (await openBackend(config(viaRelay(recorder), stateDir))).close();
  await recorder.close();
  assert.ok(recorded !== undefined);

  // Another TPM with another SRK, holding a key sigil may import.
  const other = await startSwtpm();
  await clearTpm(other);
  const pinned = (JSON.parse(await readFile(join(stateDir, 'srk.json'), 'utf8')) as { name: string }).name;
  assert.notEqual((await srkName(other)).toString('hex'), pinned, 'the cleared tpm has another srk');
  await persistImportable(other, IMPORT_HANDLE);
  const relay = await startTpmRelay(other.port);
  let replayed = 0;
  relay.onResponse((cmd, rsp) => {
    if (ccOf(cmd) !== TPM_CC.CreatePrimary || rsp.readUInt32BE(6) !== 0) return rsp;
    replayed++;
    // The pinned SRK's answer, at the handle this TPM really loaded its own SRK at.
    const fake = Buffer.from(recorded!);
    fake.writeUInt32BE(rsp.readUInt32BE(10), 10);
    return fake;
  });
  const b = await openBackend(config(viaRelay(relay), stateDir));
  try {
    assert.ok(replayed >= 1, 'the open-time check saw the pinned srk');
    await assert.rejects(b.createKey({ label: 'interposed-v1', algorithm: 'ECDSA_P256_SHA256' }), (e) => {
      assert.ok(isSigilError(e, 'FAILED_PRECONDITION') && /tpm key creation: the tpm refused the session hmac: the tpm does not hold the private key of the pinned storage key/.test(e.message), String(e));
      return true;
    });
    assert.equal(await b.findKeyByLabel('interposed-v1'), null, 'nothing of the refused key is left');
    const k = await b.getKey(`tpm:handle=0x${IMPORT_HANDLE.toString(16)}`);
    const signs = () => relay.commands.filter((cmd) => ccOf(cmd) === TPM_CC.Sign).length;
    await assert.rejects((await b.signer(k.uri, 'ECDSA_P256_SHA256')).sign(sha256('interposed')), (e) => {
      assert.ok(isSigilError(e, 'FAILED_PRECONDITION') && /the tpm refused the session hmac: .*the tpm does not hold the private key of the pinned storage key/.test(e.message), String(e));
      return true;
    });
    assert.equal(signs(), 1, 'the one TPM2_Sign sent was refused by the tpm itself');
  } finally {
    await b.close();
    await relay.close();
    await other.stop();
  }
});
