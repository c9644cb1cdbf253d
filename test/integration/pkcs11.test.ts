import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { constants, createHash, createPublicKey, verify } from 'node:crypto';
import { readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { inspect, promisify } from 'node:util';
import { pino } from 'pino';
import pkcs11js from 'pkcs11js';
import { initSoftHsmToken } from '../../src/dev/softhsm.ts';
import { isSigilError } from '../../src/errors.ts';
import { silentLogger, type Logger } from '../../src/log.ts';
import { parseKeyUri } from '../../src/signers/key-uri.ts';
import { open } from '../../src/signers/pkcs11/index.ts';
import type { Backend, BackendKey, KeyCreator } from '../../src/signers/signer.ts';
import { missingTools } from '../helpers/hw.ts';
import { rawPkcs11, tempToken, type TempToken } from '../helpers/softhsm.ts';
import { assertCode } from '../helpers/assert.ts';

const run = promisify(execFile);
const skip = missingTools('softhsm2-util', 'pkcs11-tool', 'softhsm');
const ctx = (log: Logger = silentLogger()) => ({ name: 'softhsm', log, production: false });


describe('pkcs11 backend on SoftHSM', { skip: skip ?? false }, () => {
  let token: TempToken;
  let pin: string;
  let backend: Backend & KeyCreator;
  let raw: pkcs11js.PKCS11;
  let rawSession: Buffer;
  const warnings: string[] = [];

  /** pkcs11-tool against the temp token (its --pin on the command line is fine for a throwaway token). */
  const tool = (...args: string[]) =>
    run('pkcs11-tool', ['--module', token.module, '--token-label', token.label, '--login', '--pin', pin, ...args], {
      env: { ...process.env, SOFTHSM2_CONF: token.conf },
    });

  before(async () => {
    token = await tempToken('sigil-it');
    pin = (await readFile(token.pinFile, 'utf8')).trim();
    // Keys made outside sigil, before it opens the token.
    await tool('--keypairgen', '--key-type', 'EC:prime256v1', '--label', 'legacy', '--id', '0a0b');
    await tool('--keypairgen', '--key-type', 'rsa:2048', '--label', 'legacy-rsa', '--id', '0c0d');
    await tool('--keypairgen', '--key-type', 'EC:prime256v1', '--label', 'dup', '--id', '01');
    await tool('--keypairgen', '--key-type', 'EC:prime256v1', '--label', 'dup', '--id', '02');
    const log = pino({ level: 'warn' }, { write: (line: string) => void warnings.push(line) });
    // The signing thread on (the daemon's default is off; test/conformance runs both).
    backend = await open({ ...token.config, signThread: true }, ctx(log));
    // A second, independent pkcs11js handle on the module the backend initialized, to inspect the token.
    raw = rawPkcs11(token.module);
    const slot = raw.C_GetSlotList(true).find((s) => raw.C_GetTokenInfo(s).label.trim() === token.label)!;
    rawSession = raw.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
  });

  after(async () => {
    if (rawSession) raw.C_CloseSession(rawSession);
    await backend?.close();
    await token?.cleanup();
  });

  function findOne(template: pkcs11js.Template): Buffer {
    raw.C_FindObjectsInit(rawSession, template);
    const found = raw.C_FindObjects(rawSession, 10);
    raw.C_FindObjectsFinal(rawSession);
    assert.equal(found.length, 1);
    return found[0]!;
  }

  function attr(handle: Buffer, type: number): Buffer {
    return raw.C_GetAttributeValue(rawSession, handle, [{ type }])[0]!.value;
  }

  async function signAndVerify(k: BackendKey, alg: 'ECDSA_P256_SHA256' | 'RSA_PKCS1_SHA256' | 'RSA_PSS_SHA256'): Promise<void> {
    const msg = Buffer.from(`integration ${alg}`);
    const sig = await (await backend.signer(k.uri, alg)).sign(createHash('sha256').update(msg).digest());
    const key = createPublicKey({ key: k.spki, format: 'der', type: 'spki' });
    const opts =
      alg === 'ECDSA_P256_SHA256'
        ? { key, dsaEncoding: 'der' as const }
        : alg === 'RSA_PSS_SHA256'
          ? { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 }
          : { key };
    assert.ok(verify('sha256', msg, opts, sig), `${alg} signature verifies`);
  }

  it('creates token keys that are private, sensitive, non-extractable, sign-only and share a 16-byte id', async () => {
    const k = await backend.createKey({ label: 'made-by-sigil', algorithm: 'ECDSA_P256_SHA256' });
    assert.match(k.uri, /^pkcs11:token=sigil-it;object=made-by-sigil;id=[^;]+$/);
    const priv = findOne([{ type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY }, { type: pkcs11js.CKA_LABEL, value: 'made-by-sigil' }]);
    const pub = findOne([{ type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PUBLIC_KEY }, { type: pkcs11js.CKA_LABEL, value: 'made-by-sigil' }]);
    for (const [type, want] of [
      [pkcs11js.CKA_TOKEN, 1], [pkcs11js.CKA_PRIVATE, 1], [pkcs11js.CKA_SENSITIVE, 1], [pkcs11js.CKA_EXTRACTABLE, 0],
      [pkcs11js.CKA_SIGN, 1], [pkcs11js.CKA_ALWAYS_SENSITIVE, 1], [pkcs11js.CKA_NEVER_EXTRACTABLE, 1],
    ] as const) {
      assert.equal(attr(priv, type)[0], want, `private attribute 0x${type.toString(16)}`);
    }
    assert.equal(attr(pub, pkcs11js.CKA_TOKEN)[0], 1);
    assert.equal(attr(pub, pkcs11js.CKA_VERIFY)[0], 1);
    const id = attr(priv, pkcs11js.CKA_ID);
    assert.equal(id.length, 16);
    assert.deepEqual(attr(pub, pkcs11js.CKA_ID), id);
    assert.deepEqual(parseKeyUri(k.uri).attrs.get('id'), id);
    assert.throws(() => raw.C_GetAttributeValue(rawSession, priv, [{ type: pkcs11js.CKA_VALUE }]), /CKR_ATTRIBUTE_SENSITIVE/);
  });

  it('creates an RSA-2048 key with exponent 65537', async () => {
    const k = await backend.createKey({ label: 'sigil-rsa', algorithm: 'RSA_PSS_SHA256' });
    const details = createPublicKey({ key: k.spki, format: 'der', type: 'spki' }).asymmetricKeyDetails!;
    assert.equal(details.modulusLength, 2048);
    assert.equal(details.publicExponent, 65537n);
    await signAndVerify(k, 'RSA_PSS_SHA256');
    await signAndVerify(k, 'RSA_PKCS1_SHA256');
  });

  it('refuses a second key with the same label: KEY_EXISTS', async () => {
    await backend.createKey({ label: 'once', algorithm: 'ED25519' });
    await assertCode(backend.createKey({ label: 'once', algorithm: 'ECDSA_P256_SHA256' }), 'KEY_EXISTS');
  });

  it('finds a pkcs11-tool EC key by label and by id, and signs with it', async () => {
    const byLabel = await backend.getKey(`pkcs11:token=${token.label};object=legacy`);
    const byId = await backend.getKey('pkcs11:id=%0a%0b');
    assert.equal(byLabel.keyType, 'EC_P256');
    assert.equal(byLabel.uri, `pkcs11:token=${token.label};object=legacy;id=%0a%0b`);
    assert.equal(byId.uri, byLabel.uri);
    assert.deepEqual(byId.spki, byLabel.spki);
    await signAndVerify(byLabel, 'ECDSA_P256_SHA256');
    await signAndVerify(byId, 'ECDSA_P256_SHA256');
  });

  it('signs PKCS#1 v1.5 and PSS with a pkcs11-tool RSA key', async () => {
    const k = await backend.getKey(`pkcs11:token=${token.label};object=legacy-rsa`);
    assert.equal(k.keyType, 'RSA');
    await signAndVerify(k, 'RSA_PKCS1_SHA256');
    await signAndVerify(k, 'RSA_PSS_SHA256');
  });

  it('calls a label shared by two private keys ambiguous unless the id picks one', async () => {
    await assertCode(backend.getKey('pkcs11:object=dup'), 'INVALID_ARGUMENT', (m) => assert.match(m, /ambiguous/));
    const k = await backend.getKey('pkcs11:object=dup;id=%02');
    assert.equal(k.uri, `pkcs11:token=${token.label};object=dup;id=%02`);
  });

  it('refuses a uri naming another token: INVALID_ARGUMENT', async () => {
    await assertCode(backend.getKey('pkcs11:token=other;object=legacy'), 'INVALID_ARGUMENT', (m) => assert.match(m, /other/));
    await assertCode(backend.signer('pkcs11:token=other;object=legacy', 'ECDSA_P256_SHA256'), 'INVALID_ARGUMENT');
  });

  it('refuses a key without CKA_SIGN and warns about an extractable one', async () => {
    const gen = (label: string, sign: boolean, extractable: boolean) =>
      raw.C_GenerateKeyPair(
        rawSession,
        { mechanism: pkcs11js.CKM_EC_KEY_PAIR_GEN },
        [
          { type: pkcs11js.CKA_TOKEN, value: true },
          { type: pkcs11js.CKA_EC_PARAMS, value: Buffer.from('06082a8648ce3d030107', 'hex') },
          { type: pkcs11js.CKA_LABEL, value: label },
        ],
        [
          { type: pkcs11js.CKA_TOKEN, value: true },
          { type: pkcs11js.CKA_PRIVATE, value: true },
          { type: pkcs11js.CKA_SIGN, value: sign },
          { type: pkcs11js.CKA_SENSITIVE, value: !extractable },
          { type: pkcs11js.CKA_EXTRACTABLE, value: extractable },
          { type: pkcs11js.CKA_LABEL, value: label },
        ],
      );
    gen('no-sign', false, false);
    gen('extractable', true, true);
    await assertCode(backend.getKey('pkcs11:object=no-sign'), 'INVALID_ARGUMENT', (m) => assert.match(m, /CKA_SIGN/));
    const k = await backend.getKey('pkcs11:object=extractable');
    assert.equal(k.uri, `pkcs11:token=${token.label};object=extractable`);
    await signAndVerify(k, 'ECDSA_P256_SHA256');
    assert.ok(warnings.some((w) => w.includes('extractable') && w.includes(k.uri)), 'a warning names the key');
  });

  it('reads RSA public keys from the private object when no public object exists, else KEY_NOT_FOUND', async () => {
    const pairOf = (label: string, mechanism: number, pub: pkcs11js.Template) =>
      raw.C_GenerateKeyPair(rawSession, { mechanism }, [{ type: pkcs11js.CKA_TOKEN, value: true }, { type: pkcs11js.CKA_LABEL, value: label }, ...pub], [
        { type: pkcs11js.CKA_TOKEN, value: true },
        { type: pkcs11js.CKA_PRIVATE, value: true },
        { type: pkcs11js.CKA_SIGN, value: true },
        { type: pkcs11js.CKA_SENSITIVE, value: true },
        { type: pkcs11js.CKA_LABEL, value: label },
      ]);
    const rsa = pairOf('lonely-rsa', pkcs11js.CKM_RSA_PKCS_KEY_PAIR_GEN, [
      { type: pkcs11js.CKA_MODULUS_BITS, value: 2048 },
      { type: pkcs11js.CKA_PUBLIC_EXPONENT, value: Buffer.from([1, 0, 1]) },
    ]);
    const ec = pairOf('lonely-ec', pkcs11js.CKM_EC_KEY_PAIR_GEN, [{ type: pkcs11js.CKA_EC_PARAMS, value: Buffer.from('06082a8648ce3d030107', 'hex') }]);
    raw.C_DestroyObject(rawSession, rsa.publicKey);
    raw.C_DestroyObject(rawSession, ec.publicKey);
    const k = await backend.getKey('pkcs11:object=lonely-rsa');
    await signAndVerify(k, 'RSA_PKCS1_SHA256');
    await assertCode(backend.getKey('pkcs11:object=lonely-ec'), 'KEY_NOT_FOUND', (m) => assert.match(m, /no public key object/));
  });

  it('a key deleted under a cached signer answers KEY_NOT_FOUND (looked up again, not a stale handle) and keeps its sessions usable', async () => {
    const doomed = await backend.createKey({ label: 'doomed', algorithm: 'ECDSA_P256_SHA256' });
    const signer = await backend.signer(doomed.uri, 'ECDSA_P256_SHA256');
    raw.C_DestroyObject(rawSession, findOne([{ type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY }, { type: pkcs11js.CKA_LABEL, value: 'doomed' }]));
    for (let i = 0; i < 8; i++) {
      await assertCode(signer.sign(Buffer.alloc(32)), 'KEY_NOT_FOUND', (m) => assert.match(m, /^no private key on token/));
    }
    // Twenty at once form one batch on the signing thread: the first failure stops the batch, the rest
    // are retried, and every one is answered with the error.
    const burst = await Promise.allSettled(Array.from({ length: 20 }, () => signer.sign(Buffer.alloc(32))));
    assert.ok(burst.every((r) => r.status === 'rejected' && isSigilError(r.reason, 'KEY_NOT_FOUND')), 'every signature of the burst failed with KEY_NOT_FOUND');
    const k = await backend.getKey('pkcs11:object=legacy');
    const ok = await Promise.all(Array.from({ length: 50 }, () => signAndVerify(k, 'ECDSA_P256_SHA256')));
    assert.equal(ok.length, 50);
  });

  it('waits for signatures in flight on close, then refuses: BACKEND_UNAVAILABLE', async () => {
    const second = await open({ ...token.config, signThread: true }, ctx());
    const k = await second.getKey('pkcs11:object=legacy-rsa');
    const signer = await second.signer(k.uri, 'RSA_PKCS1_SHA256');
    const ec = await second.signer((await second.getKey('pkcs11:object=legacy')).uri, 'ECDSA_P256_SHA256');
    const inflight = Array.from({ length: 20 }, () => signer.sign(Buffer.alloc(32, 1)));
    const ecInflight = Array.from({ length: 20 }, () => ec.sign(Buffer.alloc(32, 1)));
    const closed = second.close();
    const sigs = await Promise.all(inflight);
    assert.equal((await Promise.all(ecInflight)).length, 20, 'ECDSA batches on the signing thread finish before close');
    await closed;
    await assertCode(ec.sign(Buffer.alloc(32, 1)), 'BACKEND_UNAVAILABLE');
    assert.equal(sigs.length, 20);
    await assertCode(signer.sign(Buffer.alloc(32, 1)), 'BACKEND_UNAVAILABLE');
    // The first backend shares the module and the login; it must still work.
    await signAndVerify(await backend.getKey('pkcs11:object=legacy'), 'ECDSA_P256_SHA256');
  });

  it('refuses a wrong pin: BACKEND_UNAVAILABLE, and no message or cause shows the pin', async () => {
    const wrongPin = 'wrong-pin-4711';
    const wrongFile = join(token.dir, 'wrong.pin');
    await writeFile(wrongFile, `${wrongPin}\n`, { mode: 0o600 });
    await assertCode(open({ ...token.config, pinFile: wrongFile }, ctx()), 'BACKEND_UNAVAILABLE', (m) => {
      assert.match(m, /^pkcs11 login failed: CKR_PIN_INCORRECT/);
      assert.ok(!m.includes(wrongPin) && !m.includes(pin));
    });
    await assert.rejects(open({ ...token.config, pinFile: wrongFile }, ctx()), (e) => {
      const all = inspect(e, { depth: 10 });
      return !all.includes(wrongPin) && !all.includes(pin);
    });
  });

  it('reuses an existing token when initSoftHsmToken runs again on its dir', async () => {
    const again = await initSoftHsmToken({ dir: token.dir, label: token.label });
    assert.equal(again.conf, token.conf);
    assert.equal((await readFile(again.pinFile, 'utf8')).trim(), pin);
    assert.equal((await stat(again.pinFile)).mode & 0o777, 0o600);
    assert.equal((await stat(token.dir)).mode & 0o777, 0o700);
    // The token (and its keys) survived: nothing was re-initialized.
    assert.equal((await backend.getKey('pkcs11:object=legacy')).keyType, 'EC_P256');
  });

  it('signs a burst of ECDSA requests together; a key deleted underneath fails them all cleanly and the pool recovers', async () => {
    const k = await backend.createKey({ label: 'burst', algorithm: 'ECDSA_P256_SHA256' });
    const signer = await backend.signer(k.uri, 'ECDSA_P256_SHA256');
    const key = createPublicKey({ key: k.spki, format: 'der', type: 'spki' });
    const msgs = Array.from({ length: 50 }, (_, i) => Buffer.from(`burst ${i}`));
    // Issued in one turn of the event loop: signed back to back in one drain.
    const sigs = await Promise.all(msgs.map((m) => signer.sign(createHash('sha256').update(m).digest())));
    sigs.forEach((sig, i) => assert.ok(verify('sha256', msgs[i]!, { key, dsaEncoding: 'der' }, sig), `burst signature ${i}`));
    // Delete the private key behind the backend's cached handle: every queued request fails with a clear
    // KEY_NOT_FOUND (the stale handle is looked up again), none hangs, and the session pool keeps serving other keys.
    raw.C_DestroyObject(rawSession, findOne([{ type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY }, { type: pkcs11js.CKA_LABEL, value: 'burst' }]));
    const results = await Promise.allSettled(msgs.slice(0, 10).map((m) => signer.sign(createHash('sha256').update(m).digest())));
    for (const r of results) {
      assert.equal(r.status, 'rejected');
      assert.ok(isSigilError(r.reason, 'KEY_NOT_FOUND'), String(r.reason));
      assert.match((r.reason as Error).message, /^no private key on token/);
    }
    for (let i = 0; i < 3; i++) await signAndVerify(await backend.getKey('pkcs11:object=legacy'), 'ECDSA_P256_SHA256');
  });

  it('warns when the pin file is readable by group or others, without logging the pin', async () => {
    const loose = join(token.dir, 'loose.pin');
    await writeFile(loose, `${pin}\n`, { mode: 0o644 });
    const lines: string[] = [];
    const log = pino({ level: 'info' }, { write: (l: string) => void lines.push(l) });
    const b = await open({ ...token.config, pinFile: loose }, ctx(log));
    await b.close();
    const warn = lines.map((l) => JSON.parse(l) as { level: number; msg: string; mode?: string }).find((l) => /pin file is readable/.test(l.msg));
    assert.ok(warn, 'a warning was logged');
    assert.equal(warn.level, 40);
    assert.equal(warn.mode, '644');
    assert.ok(!lines.join('').includes(pin));
  });

  it('refuses an unknown token label and a missing pin file', async () => {
    await assertCode(open({ ...token.config, token: 'no-such-token' }, ctx()), 'BACKEND_UNAVAILABLE', (m) => assert.match(m, /no-such-token/));
    await assertCode(open({ ...token.config, pinFile: join(token.dir, 'absent.pin') }, ctx()), 'CONFIG_INVALID');
  });
});

describe('pkcs11 backend alone on a token', { skip: skip ?? false }, () => {
  it('refuses a wrong pin when it is the first to log in', async () => {
    const t = await tempToken('sigil-pin');
    try {
      // Runs after the suite above closed its backend, so the module initializes afresh with this token's
      // config, and nothing in the process is logged in yet: a real C_Login answers.
      const wrongFile = join(t.dir, 'wrong.pin');
      await writeFile(wrongFile, 'not-the-pin\n', { mode: 0o600 });
      await assertCode(open({ ...t.config, pinFile: wrongFile }, ctx()), 'BACKEND_UNAVAILABLE', (m) => assert.equal(m, 'pkcs11 login failed: CKR_PIN_INCORRECT'));
    } finally {
      await t.cleanup();
    }
  });
});
