// The trusted-root publisher keeps its document fresh on the injectable clock: the same signed document while
// less than half of its validity is gone and nothing changed, a new one (new sigilIssuedAt and sigilExpiresAt,
// signed again) when half is gone, at every change, and when the clock was stepped back; reads racing a change
// never leave the older document in place.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createPublicKey, verify } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SqliteStore } from '../../../src/store/sqlite.ts';
import { BackendRegistry } from '../../../src/signers/registry.ts';
import { KeyService } from '../../../src/keys/key-service.ts';
import { silentLogger } from '../../../src/log.ts';
import { isSigilError } from '../../../src/errors.ts';
import { TrustedRootPublisher, type SignedTrustedRoot } from '../../../src/revocation/trusted-root-publisher.ts';
import { checkTrustedRootFresh, type TrustedRootDocument } from '../../../src/revocation/trusted-root.ts';

const HOUR = 3_600_000;
const VALIDITY = 10 * HOUR;

let dir: string;
let store: SqliteStore;
let backends: BackendRegistry;
let keys: KeyService;
const clock = { t: Date.parse('2026-11-25T12:00:00.000Z'), now: (): Date => new Date(clock.t) };

before(() => {
  dir = mkdtempSync(join(tmpdir(), 'sigil-trpub-'));
  const log = silentLogger();
  store = new SqliteStore(join(dir, 'sigil.db'));
  backends = new BackendRegistry({ soft: { type: 'soft', dir: join(dir, 'keys') } }, { log, production: false });
  keys = new KeyService({ store, backends, defaultBackend: 'soft', maxMessageBytes: 1 << 20, log, clock });
});

after(async () => {
  await backends.closeAll();
  store.close();
  rmSync(dir, { recursive: true, force: true });
});

const open = (validityMs?: number): Promise<TrustedRootPublisher> =>
  TrustedRootPublisher.open({ keys, store, clock, log: silentLogger(), identityCa: null, auditLog: null, reservedKeys: [], ...(validityMs !== undefined ? { validityMs } : {}) });

const doc = (r: SignedTrustedRoot): TrustedRootDocument => JSON.parse(r.json.toString()) as TrustedRootDocument;
const signedByRoot = (r: SignedTrustedRoot): boolean => verify('sha256', r.json, { key: createPublicKey(r.publicKeyPem), dsaEncoding: 'der' }, r.signature);

test('a document is served until half of its validity is gone, then signed anew with new times; a change signs anew at once', async () => {
  const p = await open(VALIDITY);
  const first = await p.current();
  assert.ok(signedByRoot(first));
  assert.deepEqual([doc(first).sigilIssuedAt, doc(first).sigilExpiresAt], ['2026-11-25T12:00:00Z', '2026-11-25T22:00:00Z']);

  clock.t += VALIDITY / 2 - 1000;
  const same = await p.current();
  assert.equal(same, first, 'the same signed document while less than half of the validity is gone');

  clock.t += 1000;
  const fresh = await p.current();
  assert.notEqual(fresh, first);
  assert.ok(signedByRoot(fresh));
  assert.deepEqual([doc(fresh).sigilIssuedAt, doc(fresh).sigilExpiresAt], ['2026-11-25T17:00:00Z', '2026-11-26T03:00:00Z']);
  assert.deepEqual(doc(fresh).sigilKeyVersions, doc(first).sigilKeyVersions, 'only the times changed');
  // The re-signed document never lapses: a verifier at the old one's expiry takes the new one.
  assert.throws(() => checkTrustedRootFresh(first.json, new Date(Date.parse('2026-11-25T22:00:00Z'))), /expired at 2026-11-25T22:00:00Z/);
  assert.ok(checkTrustedRootFresh(fresh.json, new Date(Date.parse('2026-11-25T22:00:00Z'))));

  // A change (a new key) is signed at once, with a new issue time, long before half of the validity.
  clock.t += 60_000;
  await keys.createKey('release/fw', 'ECDSA_P256_SHA256');
  const changed = await p.current();
  assert.notEqual(changed, fresh);
  assert.deepEqual(doc(changed).sigilKeyVersions.map((k) => k.hint), ['release/fw@1']);
  assert.equal(doc(changed).sigilIssuedAt, '2026-11-25T17:01:00Z');

  // A clock stepped back behind the issue time: a document issued in the future is not served.
  clock.t -= 2 * HOUR;
  const back = await p.current();
  assert.equal(doc(back).sigilIssuedAt, '2026-11-25T15:01:00Z');
});

test('the refresh timer signs a fresh document without reads; a read racing a change never serves the older one', async () => {
  // Counts what the publisher has the backend sign, so that the timer's work is seen without a read.
  let signs = 0;
  const counted = new Proxy(keys, {
    get(target, prop) {
      const v = Reflect.get(target, prop, target) as unknown;
      if (prop === 'sign') return (...args: Parameters<KeyService['sign']>) => (signs++, target.sign(...args));
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
  const p = await TrustedRootPublisher.open({ keys: counted, store, clock, log: silentLogger(), identityCa: null, auditLog: null, reservedKeys: [], validityMs: VALIDITY });
  const a = await p.current();
  const signed = signs;
  clock.t += VALIDITY / 2;
  // start() checks at once (then every quarter of the validity, at most hourly): the stale document is replaced.
  p.start();
  try {
    const deadline = Date.now() + 5000;
    while (signs === signed && Date.now() < deadline) await new Promise((r) => setImmediate(r));
    assert.ok(signs > signed, 'the timer signed without a read');
    const r = await p.current();
    // Two signatures (the full document and the sigstore form), both the timer's: the read signed nothing.
    assert.equal(signs, signed + 2, 'the read was served what the timer signed');
    assert.notEqual(doc(r).sigilIssuedAt, doc(a).sigilIssuedAt);
    assert.equal(doc(r).sigilIssuedAt, new Date(clock.t).toISOString().replace(/\.000Z$/, 'Z'));
  } finally {
    await p.stop();
  }
  // Concurrent reads around a change: each read gets a document with the state it saw, and the last one stays.
  const before = p.current();
  await keys.createKey('release/app', 'ECDSA_P256_SHA256');
  const afterChange = p.current();
  const [b, c] = await Promise.all([before, afterChange]);
  assert.ok(!doc(b).sigilKeyVersions.some((k) => k.hint === 'release/app@1'));
  assert.ok(doc(c).sigilKeyVersions.some((k) => k.hint === 'release/app@1'));
  assert.equal(await p.current(), c, 'the newer document is the one kept');
});

test('the default validity is 7 days; less than a minute is refused', async () => {
  const r = await (await open()).current();
  assert.equal(Date.parse(doc(r).sigilExpiresAt) - Date.parse(doc(r).sigilIssuedAt), 7 * 24 * HOUR);
  await assert.rejects(open(59_000), (e: unknown) => isSigilError(e, 'CONFIG_INVALID'));
});
