import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { constants, createHash, createPublicKey, verify } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { inspect, promisify } from 'node:util';
import { pino } from 'pino';
import pkcs11js from 'pkcs11js';
import { isSigilError } from '../../src/errors.ts';
import { open } from '../../src/signers/pkcs11/index.ts';
import type { Algorithm, Backend, BackendKey, KeyCreator, KeySigner } from '../../src/signers/signer.ts';
import { missingTools } from '../helpers/hw.ts';
import { rawPkcs11, tempToken, type TempToken } from '../helpers/softhsm.ts';
import { assertCode } from '../helpers/assert.ts';

const run = promisify(execFile);
const skip = missingTools('softhsm2-util', 'softhsm');
const P256 = Buffer.from('06082a8648ce3d030107', 'hex');
const CKF_TOKEN_INITIALIZED = 0x400;


/** The input sigil's signers take for `message`: its digest, or the message itself for Ed25519. */
function inputOf(alg: Algorithm, message: Buffer): Buffer {
  if (alg === 'ED25519') return message;
  return createHash(alg === 'ECDSA_P384_SHA384' ? 'sha384' : 'sha256').update(message).digest();
}

function verifies(alg: Algorithm, spki: Buffer, message: Buffer, sig: Buffer): boolean {
  const key = createPublicKey({ key: spki, format: 'der', type: 'spki' });
  switch (alg) {
    case 'ED25519':
      return verify(null, message, key, sig);
    case 'RSA_PKCS1_SHA256':
      return verify('sha256', message, key, sig);
    case 'RSA_PSS_SHA256':
      return verify('sha256', message, { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 }, sig);
    default:
      return verify('sha256', message, { key, dsaEncoding: 'der' }, sig);
  }
}

for (const signThread of [false, true]) {
  describe(`pkcs11 session and login recovery on SoftHSM, signThread ${signThread ? 'on' : 'off'}`, { skip: skip ?? false }, () => {
    let token: TempToken;
    let soPin: string;
    let backend: Backend & KeyCreator;
    // A second pkcs11js handle on the module the backend initialized: the same SoftHSM instance, so what
    // it does to sessions, logins and the token is what another part of the process (or an operator) does.
    let raw: pkcs11js.PKCS11;
    const lines: Array<{ msg: string; slotChanged?: boolean; relogin?: boolean }> = [];
    const logText: string[] = [];
    const count = (msg: string): number => lines.filter((l) => l.msg === msg).length;
    const keys = new Map<string, BackendKey>();

    const slotOf = (label: string): Buffer => {
      const slot = raw.C_GetSlotList(true).find((s) => {
        try {
          return raw.C_GetTokenInfo(s).label.trim() === label;
        } catch {
          return false;
        }
      });
      assert.ok(slot, `a slot holds token ${label}`);
      return slot;
    };

    /** Signs `message` with `key` through the backend and checks the signature against the key's current public key. */
    async function signAndVerify(signer: KeySigner, key: BackendKey, message = Buffer.from('recovered')): Promise<void> {
      const sig = await signer.sign(inputOf(signer.algorithm, message));
      assert.ok(verifies(signer.algorithm, key.spki, message, sig), `${signer.algorithm} signature verifies`);
    }

    /**
     * Re-initialises the token in `slot` (C_InitToken wipes every object and needs no session open on it),
     * sets `pin` as the new user PIN and makes a P-256 key pair labelled `label` with CKA_ID `id`, as an
     * operator re-provisioning the HSM would; ends logged out.
     */
    function reinitialise(slot: Buffer, pin: string, label: string, id: Buffer): void {
      raw.C_CloseAllSessions(slot);
      raw.C_InitToken(slot, soPin, token.label.padEnd(32, ' '));
      const s = raw.C_OpenSession(slotOf(token.label), pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
      try {
        raw.C_Login(s, pkcs11js.CKU_SO, soPin);
        raw.C_InitPIN(s, pin);
        raw.C_Logout(s);
        raw.C_Login(s, pkcs11js.CKU_USER, pin);
        const common = [
          { type: pkcs11js.CKA_TOKEN, value: true },
          { type: pkcs11js.CKA_LABEL, value: label },
          { type: pkcs11js.CKA_ID, value: id },
        ];
        raw.C_GenerateKeyPair(
          s,
          { mechanism: pkcs11js.CKM_EC_KEY_PAIR_GEN },
          [...common, { type: pkcs11js.CKA_EC_PARAMS, value: P256 }, { type: pkcs11js.CKA_VERIFY, value: true }],
          [...common, { type: pkcs11js.CKA_PRIVATE, value: true }, { type: pkcs11js.CKA_SENSITIVE, value: true }, { type: pkcs11js.CKA_SIGN, value: true }],
        );
        raw.C_Logout(s);
      } finally {
        raw.C_CloseSession(s);
      }
    }

    before(async () => {
      token = await tempToken(`sigil-rec-${signThread ? 'thread' : 'loop'}`);
      soPin = (await readFile(token.soPinFile, 'utf8')).trim();
      const log = pino({ level: 'info' }, {
        write: (line: string) => {
          logText.push(line);
          lines.push(JSON.parse(line) as { msg: string });
        },
      });
      backend = await open({ ...token.config, sessions: 8, signThread }, { name: 'softhsm', log, production: false });
      raw = rawPkcs11(token.module);
      for (const [label, algorithm] of [['ec', 'ECDSA_P256_SHA256'], ['rsa', 'RSA_PKCS1_SHA256'], ['ed', 'ED25519'], ['keep', 'ECDSA_P256_SHA256'], ['gone', 'ECDSA_P256_SHA256']] as const) {
        keys.set(label, await backend.createKey({ label, algorithm }));
      }
    });

    after(async () => {
      await backend?.close();
      try {
        raw?.close();
      } catch {
        // Already unloaded.
      }
      await token?.cleanup();
    });

    it('signs again after every session was closed behind its back, with one recovery and one login', async () => {
      const ec = await backend.signer(keys.get('ec')!.uri, 'ECDSA_P256_SHA256');
      const rsa = await backend.signer(keys.get('rsa')!.uri, 'RSA_PKCS1_SHA256');
      const ed = await backend.signer(keys.get('ed')!.uri, 'ED25519');
      await signAndVerify(ec, keys.get('ec')!);
      await signAndVerify(rsa, keys.get('rsa')!);
      await signAndVerify(ed, keys.get('ed')!);
      const [recovered, logins] = [count('pkcs11 backend recovered'), count('pkcs11 login restored')];
      // PKCS#11 v2.40 section 5.6: closing an application's last session also logs it out.
      raw.C_CloseAllSessions(slotOf(token.label));
      await signAndVerify(ec, keys.get('ec')!);
      await signAndVerify(rsa, keys.get('rsa')!);
      await signAndVerify(ed, keys.get('ed')!);
      assert.equal(count('pkcs11 backend recovered'), recovered + 1);
      assert.equal(count('pkcs11 login restored'), logins + 1);
    });

    it('logs in again after a logout behind its back, for signing and for looking keys up', async () => {
      const ec = await backend.signer(keys.get('ec')!.uri, 'ECDSA_P256_SHA256');
      const logins = count('pkcs11 login restored');
      const s = raw.C_OpenSession(slotOf(token.label), pkcs11js.CKF_SERIAL_SESSION);
      try {
        // Login state is per application: this logs the backend out too, and SoftHSM hides its private
        // objects (a signature then fails with CKR_OBJECT_HANDLE_INVALID, not CKR_USER_NOT_LOGGED_IN).
        raw.C_Logout(s);
        await signAndVerify(ec, keys.get('ec')!);
        assert.equal(count('pkcs11 login restored'), logins + 1);
        raw.C_Logout(s);
        // A uri form never looked up before, so not cached: hidden private keys must not read as KEY_NOT_FOUND.
        const byLabel = await backend.getKey(`pkcs11:object=ec;type=private`);
        assert.deepEqual(byLabel.spki, keys.get('ec')!.spki);
        assert.equal(count('pkcs11 login restored'), logins + 2);
      } finally {
        raw.C_CloseSession(s);
      }
    });

    it('answers a burst of 60 signatures across the fault: all verify, after one recovery and one login', async () => {
      const ec = await backend.signer(keys.get('ec')!.uri, 'ECDSA_P256_SHA256');
      const rsa = await backend.signer(keys.get('rsa')!.uri, 'RSA_PKCS1_SHA256');
      const ed = await backend.signer(keys.get('ed')!.uri, 'ED25519');
      const [recovered, logins] = [count('pkcs11 backend recovered'), count('pkcs11 login restored')];
      const msgs = Array.from({ length: 60 }, (_, i) => Buffer.from(`burst ${i}`));
      const jobs: Array<{ signer: KeySigner; key: BackendKey; msg: Buffer; p: Promise<Buffer> }> = [];
      const start = (signer: KeySigner, key: BackendKey, msg: Buffer) => jobs.push({ signer, key, msg, p: signer.sign(inputOf(signer.algorithm, msg)) });
      // 40 ECDSA requests queued for the next drain, then the fault, then 10 RSA and 10 Ed25519 requests
      // that meet the closed sessions at once (8 of them in parallel on the pool's 8 sessions).
      for (const m of msgs.slice(0, 40)) start(ec, keys.get('ec')!, m);
      raw.C_CloseAllSessions(slotOf(token.label));
      for (const m of msgs.slice(40, 50)) start(rsa, keys.get('rsa')!, m);
      for (const m of msgs.slice(50)) start(ed, keys.get('ed')!, m);
      const settled = await Promise.allSettled(jobs.map((j) => j.p));
      settled.forEach((r, i) => {
        const j = jobs[i]!;
        if (r.status === 'fulfilled') {
          assert.ok(verifies(j.signer.algorithm, j.key.spki, j.msg, r.value), `signature ${i} (${j.signer.algorithm}) verifies`);
        } else {
          assert.ok(isSigilError(r.reason) && ['BACKEND_UNAVAILABLE', 'BACKEND_ERROR'].includes(r.reason.code), `request ${i} failed with a clear code: ${inspect(r.reason)}`);
        }
      });
      // The fault is fully recoverable: every request was answered with a signature.
      assert.equal(settled.filter((r) => r.status === 'fulfilled').length, 60);
      assert.equal(count('pkcs11 backend recovered'), recovered + 1, 'one recovery for the whole burst');
      assert.equal(count('pkcs11 login restored'), logins + 1, 'one login for the whole burst');
      // And the backend keeps working.
      await Promise.all(msgs.slice(0, 20).map((m) => signAndVerify(ec, keys.get('ec')!, m)));
      await signAndVerify(rsa, keys.get('rsa')!);
      await signAndVerify(ed, keys.get('ed')!);
    });

    it('after a re-initialisation with a new pin, signs with a re-created key under the same uri; a key that is gone is KEY_NOT_FOUND', async () => {
      const keep = keys.get('keep')!;
      const gone = keys.get('gone')!;
      const keepSigner = await backend.signer(keep.uri, 'ECDSA_P256_SHA256');
      const goneSigner = await backend.signer(gone.uri, 'ECDSA_P256_SHA256');
      await signAndVerify(keepSigner, keep);
      await signAndVerify(goneSigner, gone);
      const id = Buffer.from(/;id=([^;]+)/.exec(keep.uri)![1]!.replace(/%/g, ''), 'hex');
      assert.equal(id.length, 16);
      const newPin = 'new-pin-after-reinit';
      reinitialise(slotOf(token.label), newPin, 'keep', id);

      // The pin file still holds the old pin: the token refuses it once, and the same pin is not tried
      // again (a real token counts wrong pins and locks).
      await assertCode(keepSigner.sign(inputOf('ECDSA_P256_SHA256', Buffer.from('x'))), 'BACKEND_UNAVAILABLE', (m) => assert.equal(m, 'pkcs11 login failed: CKR_PIN_INCORRECT'));
      await assertCode(keepSigner.sign(inputOf('ECDSA_P256_SHA256', Buffer.from('x'))), 'BACKEND_UNAVAILABLE', (m) => assert.match(m, /pin file has not changed/));

      const logins = count('pkcs11 login restored');
      await writeFile(token.pinFile, `${newPin}\n`, { mode: 0o600 });
      const again = await backend.getKey(keep.uri);
      assert.equal(again.uri, keep.uri);
      assert.notDeepEqual(again.spki, keep.spki, 'a new key pair under the same label and id');
      await signAndVerify(keepSigner, again);
      assert.equal(count('pkcs11 login restored'), logins + 1);
      keys.set('keep', again);
      await assertCode(goneSigner.sign(inputOf('ECDSA_P256_SHA256', Buffer.from('x'))), 'KEY_NOT_FOUND');
      await assertCode(backend.getKey(gone.uri), 'KEY_NOT_FOUND');
      await assertCode(backend.signer(gone.uri, 'ECDSA_P256_SHA256').then((s) => s.sign(Buffer.alloc(32))), 'KEY_NOT_FOUND');
      // The other keys went with the old token, and the backend says so rather than failing oddly.
      await assertCode(backend.getKey(keys.get('rsa')!.uri), 'KEY_NOT_FOUND');
      assert.ok(!logText.join('').includes(newPin), 'the pin is never logged');
    });

    it('answers BACKEND_UNAVAILABLE while the token is gone, and finds it again by label under another slot id', async () => {
      const keep = keys.get('keep')!;
      const signer = await backend.signer(keep.uri, 'ECDSA_P256_SHA256');
      const id = Buffer.from(/;id=([^;]+)/.exec(keep.uri)![1]!.replace(/%/g, ''), 'hex');
      const oldSlot = slotOf(token.label);
      // Deleted by another process: this SoftHSM instance keeps the empty slot, whose token info now fails.
      await run('softhsm2-util', ['--delete-token', '--token', token.label], { env: { ...process.env, SOFTHSM2_CONF: token.conf } });
      const down = await Promise.allSettled(Array.from({ length: 10 }, (_, i) => signer.sign(inputOf('ECDSA_P256_SHA256', Buffer.from(`down ${i}`)))));
      for (const r of down) {
        assert.equal(r.status, 'rejected');
        assert.ok(isSigilError(r.reason, 'BACKEND_UNAVAILABLE'), inspect(r.reason));
        assert.match((r.reason as Error).message, /token "sigil-rec-\w+" not found/);
      }
      await assertCode(signer.sign(inputOf('ECDSA_P256_SHA256', Buffer.from('still down'))), 'BACKEND_UNAVAILABLE');

      // The token comes back in SoftHSM's free slot, under another slot id, with yet another pin.
      const free = raw.C_GetSlotList(true).find((s) => {
        try {
          return (raw.C_GetTokenInfo(s).flags & CKF_TOKEN_INITIALIZED) === 0;
        } catch {
          return false;
        }
      });
      assert.ok(free, 'SoftHSM offers a free slot');
      const pin = 'pin-of-the-new-token';
      await writeFile(token.pinFile, `${pin}\n`, { mode: 0o600 });
      reinitialise(free, pin, 'keep', id);
      assert.ok(!slotOf(token.label).equals(oldSlot), 'the token is under another slot id');

      const recovered = count('pkcs11 backend recovered');
      const back = await backend.getKey(keep.uri);
      await signAndVerify(signer, back);
      const rec = lines.filter((l) => l.msg === 'pkcs11 backend recovered');
      assert.equal(rec.length, recovered + 1);
      assert.equal(rec.at(-1)!.slotChanged, true);
      assert.equal(rec.at(-1)!.relogin, true);
      await Promise.all(Array.from({ length: 30 }, (_, i) => signAndVerify(signer, back, Buffer.from(`back ${i}`))));
    });
  });
}
