// verifyLog and openCheckpointWith across an audit key rotation: checkpoints signed by different key versions
// (Ed25519 then ECDSA P-256, the two note key types), each verified with the version its signature line names.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { generateKeyPairSync, sign, type KeyObject } from 'node:crypto';
import fc from 'fast-check';
import { encodeEntry } from '../../../src/audit/entry.ts';
import { consistencyProof, leafHash, memoryReader, rangeRoot } from '../../../src/audit/merkle.ts';
import { noteKeyId, noteKeyOfSpki, signCheckpoint } from '../../../src/audit/note.ts';
import { openCheckpointWith, verifyLog, type VerifyKey } from '../../../src/audit/verify.ts';
import { isSigilError } from '../../../src/errors.ts';

const ORIGIN = 'sigil/test/audit';

interface Version {
  key: VerifyKey;
  priv: KeyObject;
}

function version(label: string, type: 'ed25519' | 'ec'): Version {
  const pair = type === 'ed25519' ? generateKeyPairSync('ed25519') : generateKeyPairSync('ec', { namedCurve: 'P-256' });
  return { key: { spki: pair.publicKey.export({ format: 'der', type: 'spki' }), label }, priv: pair.privateKey };
}

const v1 = version('sigil/audit@1', 'ed25519');
const v2 = version('sigil/audit@2', 'ec');
const forger = version('forger', 'ed25519');

const entries = Array.from({ length: 13 }, (_, i) =>
  encodeEntry({ t: new Date(Date.UTC(2030, 0, 1, 0, 0, i)).toISOString(), who: 'CN=ci', act: 'sign', key: 'rel/app@1', digest: i.toString(16).padStart(64, '0'), result: 'ok' }),
);
const leaves = entries.map((d) => leafHash(d));
const read = memoryReader(leaves);
const listed = (data: readonly Buffer[] = entries) => data.map((d, index) => ({ index, data: d, leaf: leafHash(d) }));

/** A checkpoint of the first `size` entries signed by `by`; `as` lends another version's key id (a forgery). */
async function checkpoint(size: number, by: Version, as: Version = by): Promise<string> {
  const { type, publicKey } = noteKeyOfSpki(as.key.spki);
  const ecdsa = noteKeyOfSpki(by.key.spki).type === 2;
  return signCheckpoint(
    { origin: ORIGIN, size, root: rangeRoot(read, 0, size), extensions: [] },
    { name: ORIGIN, keyId: noteKeyId(ORIGIN, type, publicKey), sign: async (text) => sign(ecdsa ? 'sha256' : null, text, by.priv) },
  );
}

// Saved under v1 at size 8; the key rotates; the latest checkpoint (size 13) is signed by v2.
const saved = await checkpoint(8, v1);
const latest = await checkpoint(13, v2);
const proof = consistencyProof(read, 8, 13);

test('a checkpoint saved under v1 proves consistency with the latest under v2 when both versions are trusted', async () => {
  const r = await verifyLog({ entries: listed(), checkpoint: latest, keys: [v1.key, v2.key], origin: ORIGIN, saved: { checkpoint: saved, proof } });
  assert.equal(r.ok, true, JSON.stringify(r.failure));
  assert.deepEqual([r.size, r.signedBy, r.savedSize, r.savedSignedBy], [13, 'sigil/audit@2', 8, 'sigil/audit@1']);
  // The order of the trusted keys does not matter: the key id picks the version.
  const reversed = await verifyLog({ entries: listed(), checkpoint: latest, keys: [v2.key, v1.key], origin: ORIGIN, saved: { checkpoint: saved, proof } });
  assert.deepEqual([reversed.ok, reversed.signedBy, reversed.savedSignedBy], [true, 'sigil/audit@2', 'sigil/audit@1']);
});

test('only v2 trusted: the latest verifies, the saved checkpoint fails naming the unpinned version', async () => {
  const r = await verifyLog({
    entries: listed(),
    checkpoint: latest,
    keys: [v2.key],
    untrusted: new Map([[noteKeyId(ORIGIN, 1, noteKeyOfSpki(v1.key.spki).publicKey).toString('hex'), 'sigil/audit@1']]),
    origin: ORIGIN,
    saved: { checkpoint: saved, proof },
  });
  assert.equal(r.ok, false);
  assert.equal(r.failure?.check, 'saved-checkpoint-signature');
  assert.match(r.failure!.message, /^the saved checkpoint does not verify: it is signed by sigil\/audit@1 \(key id [0-9a-f]{8}\), which is not among the trusted keys \(sigil\/audit@2\)/);
  assert.equal(r.signedBy, 'sigil/audit@2');
  assert.equal(r.savedSignedBy, null);
});

test('only v1 trusted: the latest checkpoint (under v2) fails its signature check', async () => {
  const r = await verifyLog({ entries: listed(), checkpoint: latest, keys: [v1.key], origin: ORIGIN });
  assert.deepEqual([r.ok, r.failure?.check, r.signedBy], [false, 'checkpoint-signature', null]);
  assert.match(r.failure!.message, /it is signed by key id [0-9a-f]{8}, which is not among the trusted keys \(sigil\/audit@1\)/);
});

test('a signature that borrows a trusted version\'s key id but not its key fails, and is not retried with another key', async () => {
  const forged = await checkpoint(13, forger, v1);
  const r = await verifyLog({ entries: listed(), checkpoint: forged, keys: [v1.key, v2.key], origin: ORIGIN });
  assert.deepEqual([r.ok, r.failure?.check], [false, 'checkpoint-signature']);
  assert.match(r.failure!.message, /signature by sigil\/test\/audit does not verify/);
});

test('after a rotation a changed entry is still caught, before and after the saved size', async () => {
  for (const at of [3, 10]) {
    const data = entries.map((d) => Buffer.from(d));
    const e = data[at]!;
    const i = e.indexOf('"digest":"') + 10;
    e[i] = e[i] === 0x30 ? 0x31 : 0x30;
    // The server's stored leaf hashes recomputed too: only the roots can tell.
    const r = await verifyLog({ entries: listed(data), checkpoint: latest, keys: [v1.key, v2.key], origin: ORIGIN, saved: { checkpoint: saved, proof } });
    assert.equal(r.ok, false, `entry ${at}`);
    assert.equal(r.failure?.check, at < 8 ? 'rewritten' : 'root-mismatch', `entry ${at}`);
  }
});

test('the single-key form (spki) still verifies a log that never rotated', async () => {
  const only = await checkpoint(13, v1);
  const r = await verifyLog({ entries: listed(), checkpoint: only, spki: v1.key.spki, origin: ORIGIN });
  assert.deepEqual([r.ok, r.signedBy], [true, 'audit key']);
  const none = await verifyLog({ entries: listed(), checkpoint: only, origin: ORIGIN });
  assert.deepEqual([none.ok, none.failure?.check], [false, 'checkpoint-signature']);
});

test('openCheckpointWith: arbitrary notes are refused with INVALID_ARGUMENT or FAILED_PRECONDITION, never opened', () => {
  const keys = [v1.key, v2.key];
  fc.assert(
    fc.property(fc.oneof(fc.string({ maxLength: 300 }), fc.constantFrom(saved, latest).chain((n) => fc.nat({ max: n.length - 1 }).map((at) => n.slice(0, at) + String.fromCharCode((n.charCodeAt(at) + 1) % 128) + n.slice(at + 1)))), (note) => {
      try {
        const opened = openCheckpointWith(note, keys, ORIGIN);
        // Only a change the signature does not cover (the signature line's name, which must still be ours) can open.
        assert.ok([8, 13].includes(opened.checkpoint.size), note);
      } catch (e) {
        assert.ok(isSigilError(e, 'INVALID_ARGUMENT') || isSigilError(e, 'FAILED_PRECONDITION'), String(e));
      }
    }),
    { numRuns: 500 },
  );
  assert.equal(openCheckpointWith(saved, keys, ORIGIN).key.label, 'sigil/audit@1');
  assert.throws(() => openCheckpointWith(saved, [], ORIGIN), (e) => isSigilError(e, 'INVALID_ARGUMENT'));
  assert.throws(() => openCheckpointWith(saved, keys, 'another/log'), (e) => isSigilError(e, 'FAILED_PRECONDITION') && /no signature by another\/log/.test((e as Error).message));
});

test('acts written ahead with no outcome are listed, in log order; an intent whose outcome came is not', async () => {
  const at = (i: number) => new Date(Date.UTC(2030, 0, 2, 0, 0, i)).toISOString();
  const log = [
    encodeEntry({ t: at(0), who: 'CN=admin', act: 'key.rotate', key: 'rel/app', result: 'started', detail: { intent: 'a' } }),
    encodeEntry({ t: at(1), who: 'CN=admin', act: 'key.rotate', key: 'rel/app@2', result: 'ok', detail: { intent: 'a', previous: 'rel/app@1' } }),
    encodeEntry({ t: at(2), who: 'CN=admin', act: 'key.disable', key: 'rel/app@1', result: 'started', detail: { intent: 'b' } }),
    encodeEntry({ t: at(3), who: 'CN=ci', act: 'sign', key: 'rel/app@2', digest: '00'.repeat(32), result: 'ok' }),
    encodeEntry({ t: at(4), who: 'CN=admin', act: 'key.schedule-destroy', key: 'rel/app@1', result: 'started', detail: { intent: 'c' } }),
    encodeEntry({ t: at(5), who: 'CN=admin', act: 'key.schedule-destroy', key: 'rel/app@1', result: 'refused', reason: 'FAILED_PRECONDITION', detail: { intent: 'c' } }),
    encodeEntry({ t: at(6), who: 'sigild', act: 'key.rotate', key: 'rel/app', result: 'started', detail: { intent: 'd', recovering: 'PENDING' } }),
  ];
  const r2 = memoryReader(log.map((d) => leafHash(d)));
  const note = signCheckpoint(
    { origin: ORIGIN, size: log.length, root: rangeRoot(r2, 0, log.length), extensions: [] },
    { name: ORIGIN, keyId: noteKeyId(ORIGIN, noteKeyOfSpki(v1.key.spki).type, noteKeyOfSpki(v1.key.spki).publicKey), sign: async (text) => sign(null, text, v1.priv) },
  );
  const r = await verifyLog({ entries: listed(log), checkpoint: await note, keys: [v1.key], origin: ORIGIN });
  assert.equal(r.ok, true, JSON.stringify(r.failure));
  assert.deepEqual(
    r.openIntents.map((x) => [x.index, x.act, x.key, x.who, x.intent]),
    [
      [2, 'key.disable', 'rel/app@1', 'CN=admin', 'b'],
      [6, 'key.rotate', 'rel/app', 'sigild', 'd'],
    ],
  );
  // A log that fails verification reports no pairing (its entries cannot be trusted).
  const bad = await verifyLog({ entries: listed(log.map((d, i) => (i === 3 ? Buffer.from(d.toString().replace('CN=ci', 'CN=cx')) : d))), checkpoint: await note, keys: [v1.key], origin: ORIGIN });
  assert.deepEqual([bad.ok, bad.openIntents], [false, []]);
});
