import assert from 'node:assert/strict';
import { createHash, createPublicKey, verify, constants as cryptoConstants } from 'node:crypto';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { startTpmRelay } from '../helpers/tpm-relay.ts';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { isSigilError } from '../../src/errors.ts';
import { silentLogger } from '../../src/log.ts';
import type { Backend, KeyCreator, KeyDestroyer } from '../../src/signers/signer.ts';
import { tpmConfigSchema, type TpmConfig } from '../../src/signers/tpm/config.ts';
import { open } from '../../src/signers/tpm/index.ts';
import { TPM_ALG, TPM_CC } from '../../src/tpm/constants.ts';
import { baseRc, TPM_RC, TpmError } from '../../src/tpm/rc.ts';
import { LOADED_SESSION_FIRST, Tpm } from '../../src/tpm/tpm.ts';
import { missingTools } from '../helpers/hw.ts';
import { dropTpmConnection, persistP256Key, startSwtpm, withTpmClient, type Swtpm } from '../helpers/swtpm.ts';

// TPM2_Sign authorized by an HMAC session whose cpHash holds the key name sigil recorded: another
// object persisted at the key's handle is refused by the TPM itself, where a password session signs.

const skip = missingTools('swtpm', 'swtpm_setup');
const TIMEOUT_MS = 1000;
const IMPORT_HANDLE = 0x81000700;

let dir: string;
let sw: Swtpm;
let n = 0;

before(async () => {
  if (skip) return;
  dir = await mkdtemp(join(tmpdir(), 'sigil-tpm-sessions-it-'));
  sw = await startSwtpm();
});
after(async () => {
  if (skip) return;
  await sw?.stop();
  await rm(dir, { recursive: true, force: true });
});

type Opened = Backend & KeyCreator & KeyDestroyer;

function config(over: Partial<Record<string, unknown>> = {}): TpmConfig {
  return tpmConfigSchema.parse({ type: 'tpm', transport: sw.tcti, stateDir: join(dir, `state-${n++}`), timeoutMs: TIMEOUT_MS, createTimeoutMs: 1000, ...over });
}

const openBackend = (c: TpmConfig) => open(c, { name: 'swtpm', log: silentLogger(), production: false });
const sha256 = (b: Buffer | string) => createHash('sha256').update(b).digest();
const spkiKey = (spki: Buffer) => createPublicKey({ key: spki, format: 'der', type: 'spki' });
const handleOf = (uri: string) => Number.parseInt(uri.slice('tpm:handle=0x'.length, 'tpm:handle=0x'.length + 8), 16);

const withClient = <T>(f: (tpm: Tpm) => Promise<T>): Promise<T> => withTpmClient(sw, f);

const dropConnection = (b: Opened, uri: string): Promise<void> => dropTpmConnection(sw, () => b.getKey(uri));

/** Persists a fresh P-256 signing key at `handle` (evicting what is there first): the swap an owner could make. */
async function persistOther(tpm: Tpm, handle: number, evict: boolean): Promise<Buffer> {
  if (evict) await tpm.evictControl(handle, handle);
  return persistP256Key(tpm, handle);
}

const notRecorded = (e: unknown) =>
  isSigilError(e, 'FAILED_PRECONDITION') && /tpm object at 0x[0-9a-f]{8} is not the recorded key/.test(e.message) && !/\.$/.test(e.message);

test('P-256, RSA PKCS#1 and RSA-PSS signatures verify; at most the pool size of sessions stays loaded, none after close', { skip: skip ?? false }, async () => {
  const b = await openBackend(config());
  try {
    const ec = await b.createKey({ label: 'ec-v1', algorithm: 'ECDSA_P256_SHA256' });
    const rsa = await b.createKey({ label: 'rsa-v1', algorithm: 'RSA_PSS_SHA256' });
    const ecSigner = await b.signer(ec.uri, 'ECDSA_P256_SHA256');
    const pss = await b.signer(rsa.uri, 'RSA_PSS_SHA256');
    const pkcs1 = await b.signer(rsa.uri, 'RSA_PKCS1_SHA256');
    // Concurrent signatures share the pool; each one's nonces must roll in order for all to verify.
    const msgs = Array.from({ length: 12 }, (_, i) => Buffer.from(`message ${i}`));
    const sigs = await Promise.all(msgs.map((m, i) => (i % 3 === 0 ? ecSigner : i % 3 === 1 ? pss : pkcs1).sign(sha256(m))));
    msgs.forEach((m, i) => {
      const ok =
        i % 3 === 0
          ? verify('sha256', m, { key: spkiKey(ec.spki), dsaEncoding: 'der' }, sigs[i]!)
          : i % 3 === 1
            ? verify('sha256', m, { key: spkiKey(rsa.spki), padding: cryptoConstants.RSA_PKCS1_PSS_PADDING, saltLength: 32 }, sigs[i]!)
            : verify('sha256', m, spkiKey(rsa.spki), sigs[i]!);
      assert.ok(ok, `signature ${i} verifies`);
    });
    assert.ok(!verify('sha256', Buffer.from('other'), { key: spkiKey(ec.spki), dsaEncoding: 'der' }, sigs[0]!), 'a wrong message does not');
    await b.destroyKey(ec.uri);
    await b.destroyKey(rsa.uri);
  } finally {
    await b.close();
  }
  assert.deepEqual(await withClient((tpm) => tpm.getHandles(LOADED_SESSION_FIRST)), [], 'close flushed the sessions');
});

test('swap attack: another key persisted at the handle is refused by the tpm (TPM_RC_BAD_AUTH) and no signature is made', { skip: skip ?? false }, async () => {
  const b = await openBackend(config());
  let handle = 0;
  try {
    const k = await b.createKey({ label: 'swapped-v1', algorithm: 'ECDSA_P256_SHA256' });
    handle = handleOf(k.uri);
    const signer = await b.signer(k.uri, 'ECDSA_P256_SHA256');
    const msg = Buffer.from('before the swap');
    assert.ok(verify('sha256', msg, { key: spkiKey(k.spki), dsaEncoding: 'der' }, await signer.sign(sha256(msg))));

    await dropConnection(b, k.uri);
    // The owner evicts sigil's key and persists another at the same handle. A password session (what
    // sigil used before) signs with it without complaint: the attack is real.
    const otherName = await withClient(async (tpm) => {
      const name = await persistOther(tpm, handle, true);
      const sig = await tpm.sign(handle, sha256('password session'), TPM_ALG.ECDSA, TPM_ALG.SHA256);
      assert.equal(sig.sigAlg, TPM_ALG.ECDSA);
      return name;
    });

    // The signer made before the swap goes straight to TPM2_Sign: the refusal is the TPM's own.
    await assert.rejects(signer.sign(sha256('after the swap')), (e) => {
      assert.ok(notRecorded(e), String(e));
      const cause = (e as Error).cause;
      assert.ok(cause instanceof TpmError && cause.rc === 0x9a2, `TPM_RC_BAD_AUTH on session 1, got ${String(cause)}`);
      return true;
    });
    // A fresh lookup sees the other name and refuses before signing.
    await assert.rejects(b.signer(k.uri, 'ECDSA_P256_SHA256'), notRecorded);
    await assert.rejects(b.getKey(k.uri), notRecorded);
    // The backend still works for its other keys, and destroying the swapped version leaves the foreign object alone.
    const next = await b.createKey({ label: 'swapped-v2', algorithm: 'ECDSA_P256_SHA256' });
    const m2 = Buffer.from('another key still signs');
    assert.ok(verify('sha256', m2, { key: spkiKey(next.spki), dsaEncoding: 'der' }, await (await b.signer(next.uri, 'ECDSA_P256_SHA256')).sign(sha256(m2))));
    await b.destroyKey(k.uri);
    await b.destroyKey(next.uri);
    await b.close();
    const still = await withClient((tpm) => tpm.readPublic(handle));
    assert.deepEqual(still.name, otherName, 'the foreign key was not evicted');
  } finally {
    await b.close();
    if (handle !== 0) await withClient((tpm) => tpm.evictControl(handle, handle)).catch(() => undefined);
  }
});

test('an import records the name in its uri; an old plain-handle import gets its name pinned at first use; both refuse a swap, across a reopen', { skip: skip ?? false }, async () => {
  const firstName = await withClient((tpm) => persistOther(tpm, IMPORT_HANDLE, false));
  const c = config();
  const plain = `tpm:handle=0x${IMPORT_HANDLE.toString(16)}`;
  let b = await openBackend(c);
  try {
    const imported = await b.getKey(plain);
    assert.equal(imported.uri, `${plain};name=${firstName.toString('hex')}`);
    // A plain URI recorded by the previous version: signs, and pins the name it has now.
    const legacy = await b.signer(plain, 'ECDSA_P256_SHA256');
    const msg = Buffer.from('legacy import');
    assert.ok(verify('sha256', msg, { key: spkiKey(imported.spki), dsaEncoding: 'der' }, await legacy.sign(sha256(msg))));
    const table = JSON.parse(await readFile(join(c.stateDir, 'keys.json'), 'utf8')) as { pinned?: Array<{ handle: number; name: string }> };
    assert.deepEqual(table.pinned?.map((p) => [p.handle, p.name]), [[IMPORT_HANDLE, firstName.toString('hex')]]);
    const named = await b.signer(imported.uri, 'ECDSA_P256_SHA256');
    assert.ok(verify('sha256', msg, { key: spkiKey(imported.spki), dsaEncoding: 'der' }, await named.sign(sha256(msg))));

    await dropConnection(b, imported.uri);
    await withClient((tpm) => persistOther(tpm, IMPORT_HANDLE, true));
    await assert.rejects(named.sign(sha256(msg)), notRecorded);
    await assert.rejects(legacy.sign(sha256(msg)), notRecorded);
    await b.close();

    // After a restart of sigild the pin still holds: the plain URI is not re-learned from the new object.
    b = await openBackend(c);
    await assert.rejects(b.signer(plain, 'ECDSA_P256_SHA256'), notRecorded);
    await assert.rejects(b.signer(imported.uri, 'ECDSA_P256_SHA256'), notRecorded);
    // The plain URI stays bound to the pinned name; destroying that version drops the pin and leaves
    // the foreign object alone, and only then does an import of the handle name the new object.
    await assert.rejects(b.getKey(plain), notRecorded);
    await b.destroyKey(plain);
    const reimported = await b.getKey(plain);
    assert.notEqual(reimported.uri, imported.uri);
    assert.match(reimported.uri, /;name=000b[0-9a-f]{64}$/);
  } finally {
    await b.close();
    await withClient((tpm) => tpm.evictControl(IMPORT_HANDLE, IMPORT_HANDLE)).catch(() => undefined);
  }
});

test('sessions a killed client left are flushed at open (the default); with the flush off, signing and key creation find no session slot', { skip: skip ?? false }, async () => {
  const fill = () =>
    withClient(async (tpm) => {
      let started = 0;
      for (; started < 16; started++) {
        try {
          await tpm.startHmacSession();
        } catch (err) {
          assert.ok(err instanceof TpmError && err.rc === TPM_RC.SESSION_MEMORY, String(err));
          break;
        }
      }
      return started;
    });
  const off = config({ flushTransientsOnOpen: false });
  const b0 = await openBackend(off);
  let uri = '';
  try {
    uri = (await b0.createKey({ label: 'no-slot-v1', algorithm: 'ECDSA_P256_SHA256' })).uri;
  } finally {
    await b0.close();
  }
  assert.equal(await fill(), 3, 'swtpm has three loaded-session slots');
  const noSlot = (e: unknown) => isSigilError(e, 'BACKEND_UNAVAILABLE') && /0x903/.test(e.message);
  const b1 = await openBackend(off);
  try {
    await assert.rejects((await b1.signer(uri, 'ECDSA_P256_SHA256')).sign(sha256('x')), noSlot);
    // Key creation takes a session too: TPM2_Create is authorized by a salted session that encrypts the authValue.
    await assert.rejects(b1.createKey({ label: 'no-slot-v2', algorithm: 'ECDSA_P256_SHA256' }), noSlot);
  } finally {
    await b1.close();
  }
  assert.equal((await withClient((tpm) => tpm.getHandles(LOADED_SESSION_FIRST))).length, 3, 'left alone with the flush off');

  const on = config();
  const b2 = await openBackend({ ...on, stateDir: off.stateDir });
  try {
    const k = await b2.getKey(uri);
    const msg = Buffer.from('slots freed at open');
    assert.ok(verify('sha256', msg, { key: spkiKey(k.spki), dsaEncoding: 'der' }, await (await b2.signer(uri, 'ECDSA_P256_SHA256')).sign(sha256(msg))));
    await b2.destroyKey(uri);
  } finally {
    await b2.close();
  }
});

test('after a reconnect the pool starts new sessions (old ones flushed); after a swtpm restart signing recovers', { skip: skip ?? false }, async () => {
  const b = await openBackend(config());
  try {
    const k = await b.createKey({ label: 'reconnect-v1', algorithm: 'ECDSA_P256_SHA256' });
    const signer = await b.signer(k.uri, 'ECDSA_P256_SHA256');
    const check = async (what: string) => {
      const msg = Buffer.from(what);
      assert.ok(verify('sha256', msg, { key: spkiKey(k.spki), dsaEncoding: 'der' }, await signer.sign(sha256(msg))), what);
    };
    await Promise.all([check('a'), check('b'), check('c')]);
    await dropConnection(b, k.uri);
    const during = await withClient((tpm) => tpm.getHandles(LOADED_SESSION_FIRST));
    assert.ok(during.length >= 1 && during.length <= 2, `the pool's sessions stay loaded while it is away: ${during.length}`);
    for (let i = 0; i < 5; i++) await check(`after reconnect ${i}`);
    await dropConnection(b, k.uri);
    assert.ok((await withClient((tpm) => tpm.getHandles(LOADED_SESSION_FIRST))).length <= 2, 'old sessions were flushed, not leaked');
    await check('after a second reconnect');
    await b.destroyKey(k.uri);
  } finally {
    await b.close();
  }
});

/** A relay to swtpm that counts the TPM2_Sign commands it passes on and can flip a bit in the next Sign response, as an interposer on the TPM's bus could. */
async function tamperingRelay(): Promise<{ port: number; tamperNextSign(): void; signs(): number; close(): Promise<void> }> {
  const relay = await startTpmRelay(sw.port);
  const isSign = (command: Buffer): boolean => command.length >= 10 && command.readUInt32BE(6) === TPM_CC.Sign;
  let tamper = false;
  relay.onResponse((command, response) => {
    if (!tamper || !isSign(command) || response.readUInt32BE(6) !== 0) return response;
    tamper = false;
    const altered = Buffer.from(response);
    altered[20]! ^= 0x01; // inside the TPMT_SIGNATURE parameter
    return altered;
  });
  return {
    port: relay.port,
    tamperNextSign: () => {
      tamper = true;
    },
    signs: () => relay.commands.filter(isSign).length,
    close: () => relay.close(),
  };
}

test('a response whose hmac does not verify is refused (BACKEND_ERROR), and the next signature works on a fresh session', { skip: skip ?? false }, async () => {
  const relay = await tamperingRelay();
  const b = await openBackend(config({ transport: `swtpm:host=127.0.0.1,port=${relay.port}` }));
  try {
    const k = await b.createKey({ label: 'tampered-v1', algorithm: 'ECDSA_P256_SHA256' });
    const signer = await b.signer(k.uri, 'ECDSA_P256_SHA256');
    const msg = Buffer.from('through the relay');
    assert.ok(verify('sha256', msg, { key: spkiKey(k.spki), dsaEncoding: 'der' }, await signer.sign(sha256(msg))), 'an untouched relay changes nothing');
    relay.tamperNextSign();
    await assert.rejects(signer.sign(sha256(msg)), (e) => isSigilError(e, 'BACKEND_ERROR') && /response hmac does not verify/.test(e.message));
    assert.ok(verify('sha256', msg, { key: spkiKey(k.spki), dsaEncoding: 'der' }, await signer.sign(sha256(msg))));
    await b.destroyKey(k.uri);
  } finally {
    await b.close();
    await relay.close();
  }
});

test('signatures whose callers were answered with a timeout while the tpm hung are dropped, not made once it answers again', { skip: skip ?? false }, async () => {
  const relay = await tamperingRelay();
  const b = await openBackend(config({ transport: `swtpm:host=127.0.0.1,port=${relay.port}` }));
  try {
    const k = await b.createKey({ label: 'abandoned-v1', algorithm: 'ECDSA_P256_SHA256' });
    const signer = await b.signer(k.uri, 'ECDSA_P256_SHA256');
    const msg = Buffer.from('asked for while the tpm hung');
    await signer.sign(sha256(msg));
    sw.signal('SIGSTOP');
    let settled: PromiseSettledResult<Buffer>[];
    try {
      // More callers than sessions: some hold a session in the transport's queue, the others wait for one.
      settled = await Promise.allSettled(Array.from({ length: 8 }, () => signer.sign(sha256(msg))));
    } finally {
      sw.signal('SIGCONT');
    }
    for (const r of settled) assert.ok(r.status === 'rejected' && isSigilError(r.reason, 'BACKEND_UNAVAILABLE'), 'every caller is answered with a timeout');
    const answered = relay.signs();
    // What was still queued now reaches a TPM that answers again: none of it may be a signature.
    await new Promise((r) => setTimeout(r, 2 * TIMEOUT_MS));
    assert.equal(relay.signs(), answered, 'no TPM2_Sign was sent after its caller had been answered');
    assert.ok(verify('sha256', msg, { key: spkiKey(k.spki), dsaEncoding: 'der' }, await signer.sign(sha256(msg))), 'the backend signs again');
    await b.destroyKey(k.uri);
  } finally {
    await b.close();
    await relay.close();
  }
});

test('a key sigil creates has a random authValue kept in its 0600 key table: another TPM user cannot sign with it, sigil can, also after a reopen', { skip: skip ?? false }, async () => {
  const c = config();
  const msg = Buffer.from('only sigild signs this');
  let b = await openBackend(c);
  let uri = '';
  try {
    const k = await b.createKey({ label: 'authed-v1', algorithm: 'ECDSA_P256_SHA256' });
    uri = k.uri;
    const file = join(c.stateDir, 'keys.json');
    const entry = (JSON.parse(await readFile(file, 'utf8')) as { keys: Array<{ label: string; auth?: string }> }).keys.find((e) => e.label === 'authed-v1');
    assert.match(entry?.auth ?? '', /^[0-9a-f]{64}$/, 'the table records a 32-byte authValue');
    assert.equal((await stat(file)).mode & 0o777, 0o600);
    assert.ok(verify('sha256', msg, { key: spkiKey(k.spki), dsaEncoding: 'der' }, await (await b.signer(k.uri, 'ECDSA_P256_SHA256')).sign(sha256(msg))));
    await b.close(); // swtpm serves one connection at a time
    // Another process with the TPM open, and the empty password a key had before: refused by the TPM.
    const refused = await withClient((tpm) => tpm.sign(handleOf(k.uri), sha256(msg), TPM_ALG.ECDSA, TPM_ALG.SHA256).then(() => null, (e: unknown) => e));
    assert.ok(refused instanceof TpmError && [TPM_RC.BAD_AUTH, TPM_RC.AUTH_FAIL].includes(baseRc(refused.rc)), `the TPM refuses the empty password, got ${String(refused)}`);
    b = await openBackend(c);
    assert.ok(verify('sha256', msg, { key: spkiKey(k.spki), dsaEncoding: 'der' }, await (await b.signer(uri, 'ECDSA_P256_SHA256')).sign(sha256(msg))), 'the authValue is read back from the table');
  } finally {
    if (uri) await b.destroyKey(uri).catch(() => undefined);
    await b.close();
  }
});
