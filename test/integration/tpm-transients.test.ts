import assert from 'node:assert/strict';
import { createHash, createPublicKey, verify } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { isSigilError } from '../../src/errors.ts';
import { silentLogger } from '../../src/log.ts';
import type { Backend, KeyCreator, KeyDestroyer } from '../../src/signers/signer.ts';
import { tpmConfigSchema, type TpmConfig } from '../../src/signers/tpm/config.ts';
import { open } from '../../src/signers/tpm/index.ts';
import { TPM_RH } from '../../src/tpm/constants.ts';
import { TPM_RC, TpmError } from '../../src/tpm/rc.ts';
import { SRK_TEMPLATE_ECC, templateBytes } from '../../src/tpm/templates.ts';
import { TRANSIENT_FIRST, Tpm } from '../../src/tpm/tpm.ts';
import { missingTools } from '../helpers/hw.ts';
import { dropTpmConnection, startSwtpm, withTpmClient, type Swtpm } from '../helpers/swtpm.ts';

// Transient objects left in swtpm (no resource manager, three object slots) by a client that went away
// without flushing, as a sigild killed mid-creation does: key creation fails on a full TPM unless the
// backend flushes at open, and after a reconnect.

const skip = missingTools('swtpm', 'swtpm_setup');
const TIMEOUT_MS = 1000;

let dir: string;
let sw: Swtpm;
let n = 0;

before(async () => {
  if (skip) return;
  dir = await mkdtemp(join(tmpdir(), 'sigil-tpm-transients-it-'));
  sw = await startSwtpm();
});
after(async () => {
  if (skip) return;
  await sw?.stop();
  await rm(dir, { recursive: true, force: true });
});

// createTimeoutMs also bounds each command on the socket: at its minimum (1 s), a hung TPM makes the
// backend drop its connection within the reconnect tests.
function config(flushTransientsOnOpen?: boolean, createTimeoutMs = 5000): TpmConfig {
  return tpmConfigSchema.parse({ type: 'tpm', transport: sw.tcti, stateDir: join(dir, `state-${n++}`), timeoutMs: TIMEOUT_MS, createTimeoutMs, flushTransientsOnOpen });
}

const dropConnection = (b: Opened, uri: string): Promise<void> => dropTpmConnection(sw, () => b.getKey(uri));

const withClient = <T>(f: (tpm: Tpm) => Promise<T>): Promise<T> => withTpmClient(sw, f);

/** Loads storage primaries until the TPM refuses one, then hangs up without flushing: a crashed client. */
async function fillSlots(): Promise<number> {
  return withClient(async (tpm) => {
    for (let i = 0; i < 16; i++) {
      try {
        await tpm.createPrimary(TPM_RH.OWNER, templateBytes(SRK_TEMPLATE_ECC));
      } catch (err) {
        assert.ok(err instanceof TpmError && err.rc === TPM_RC.OBJECT_MEMORY, String(err));
        return i;
      }
    }
    assert.fail('the tpm never ran out of object slots');
  });
}

const transients = () => withClient((tpm) => tpm.getHandles(TRANSIENT_FIRST));

type Opened = Backend & KeyCreator & KeyDestroyer;

async function using(b: Opened, f: (b: Opened) => Promise<void>): Promise<void> {
  try {
    await f(b);
  } finally {
    await b.close();
  }
}

test('slots left full: creation fails without the flush (TPM_RC_OBJECT_MEMORY), and works with it (the default)', { skip: skip ?? false }, async () => {
  const slots = await fillSlots();
  assert.ok(slots >= 2, `swtpm took ${slots} objects`);
  assert.equal((await transients()).length, slots);

  await using(await open(config(false), { name: 'swtpm', log: silentLogger(), production: false }), async (b) => {
    await assert.rejects(b.createKey({ label: 'no-flush-v1', algorithm: 'ECDSA_P256_SHA256' }), (e) => isSigilError(e, 'BACKEND_UNAVAILABLE') && /0x902/.test(e.message));
  });
  assert.equal((await transients()).length, slots, 'flushTransientsOnOpen: false left them alone');

  const c = config();
  assert.equal(c.flushTransientsOnOpen, undefined, 'default');
  await using(await open(c, { name: 'swtpm', log: silentLogger(), production: false }), async (b) => {
    const k = await b.createKey({ label: 'flushed-v1', algorithm: 'ECDSA_P256_SHA256' });
    const k2 = await b.createKey({ label: 'flushed-v2', algorithm: 'RSA_PKCS1_SHA256' });
    await b.destroyKey(k.uri);
    await b.destroyKey(k2.uri);
  });
  assert.deepEqual(await transients(), [], 'nothing left behind by the backend either');
});

test('objects left while the backend was disconnected are flushed at its next call: signing and creation work', { skip: skip ?? false }, async () => {
  await using(await open(config(undefined, 1000), { name: 'swtpm', log: silentLogger(), production: false }), async (b) => {
    const before = await b.createKey({ label: 'reconnect-v1', algorithm: 'ECDSA_P256_SHA256' });
    const signer = await b.signer(before.uri, 'ECDSA_P256_SHA256');
    await dropConnection(b, before.uri);
    // Meanwhile another client fills the slots and hangs up (swtpm serves one connection at a time).
    const slots = await fillSlots();
    assert.equal((await transients()).length, slots);
    const msg = Buffer.from('after a reconnect');
    const sig = await signer.sign(createHash('sha256').update(msg).digest());
    assert.ok(verify('sha256', msg, { key: createPublicKey({ key: before.spki, format: 'der', type: 'spki' }), dsaEncoding: 'der' }, sig));
    const after = await b.createKey({ label: 'reconnect-v2', algorithm: 'ECDSA_P256_SHA256' });
    assert.notEqual(after.uri, before.uri);
    await b.destroyKey(before.uri);
    await b.destroyKey(after.uri);
  });
  assert.deepEqual(await transients(), []);
});

test('with the flush off, objects left during a disconnection block creation and even signing with a persistent key', { skip: skip ?? false }, async () => {
  await withClient((tpm) => tpm.flushTransients());
  const c = config(false, 1000);
  let uri = '';
  await using(await open(c, { name: 'swtpm', log: silentLogger(), production: false }), async (b) => {
    const k = await b.createKey({ label: 'off-v1', algorithm: 'ECDSA_P256_SHA256' });
    uri = k.uri;
    const signer = await b.signer(k.uri, 'ECDSA_P256_SHA256');
    await dropConnection(b, k.uri);
    assert.ok((await fillSlots()) >= 2);
    const full = (e: unknown) => isSigilError(e, 'BACKEND_UNAVAILABLE') && /0x902/.test(e.message);
    await assert.rejects(b.createKey({ label: 'off-v2', algorithm: 'ECDSA_P256_SHA256' }), full);
    await assert.rejects(signer.sign(Buffer.alloc(32, 1)), full);
  });
  await withClient((tpm) => tpm.flushTransients());
  await using(await open(c, { name: 'swtpm', log: silentLogger(), production: false }), (b) => b.destroyKey(uri));
  assert.deepEqual(await transients(), []);
});
