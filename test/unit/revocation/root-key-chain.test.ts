// The chain of trusted-root keys as a verifier checks it: statements are untrusted bytes from the network,
// so parsing is fuzzed, and every way a chain can be wrong (a forged or missing link, a tampered byte, a
// document signed by a key the chain does not reach, a compromised pin) must fail with what failed.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { generateKeyPairSync, sign as cryptoSign, type KeyObject } from 'node:crypto';
import fc from 'fast-check';
import { isSigilError } from '../../../src/errors.ts';
import {
  canonicalTransition,
  chainHeadVersion,
  parseRootKeyChain,
  serializeRootKeyChain,
  parseTransition,
  transitionStatement,
  verifyRootChain,
  TRANSITION_TYPE,
  type RootChainInput,
  type SignedTransition,
} from '../../../src/revocation/root-key-chain.ts';

const KEY = 'sigil/trust-root';
interface Pair {
  priv: KeyObject;
  spki: Buffer;
}
const pair = (): Pair => {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  return { priv: privateKey, spki: publicKey.export({ format: 'der', type: 'spki' }) };
};
const sig = (p: Pair, data: Buffer): Buffer => cryptoSign('sha256', data, p.priv);
// Versions 1..4 of the root key.
const keys = [pair(), pair(), pair(), pair()];
const at = new Date('2026-11-25T08:00:00.000Z');

const link = (v: number, by: Pair = keys[v - 2]!, self: Pair = keys[v - 1]!, spki: Buffer = keys[v - 1]!.spki): SignedTransition => {
  const statement = transitionStatement(KEY, v, spki, keys[v - 2]!.spki, at);
  return { version: v, statement, previousSignature: sig(by, statement), signature: sig(self, statement) };
};
const doc = Buffer.from('{"mediaType":"application/vnd.dev.sigstore.trustedroot+json;version=0.1","sigilKeyVersions":[]}\n');
const input = (over: Partial<RootChainInput> = {}, signer = 4): RootChainInput => ({
  key: KEY,
  pinned: keys[0]!.spki,
  transitions: [link(2), link(3), link(4)],
  compromised: [],
  document: { json: doc, signature: sig(keys[signer - 1]!, doc), keyVersion: `${KEY}@${signer}` },
  ...over,
});
const fails = (i: RootChainInput, re: RegExp): void => {
  assert.throws(
    () => verifyRootChain(i),
    (e: unknown) => {
      assert.ok(isSigilError(e, 'FAILED_PRECONDITION'), String(e));
      assert.match((e as Error).message, re);
      return true;
    },
  );
};

test('the sigstore form (no sigilKeyVersions), signed by the same key, is refused in place of the full document', () => {
  const sigstore = Buffer.from('{"mediaType":"application/vnd.dev.sigstore.trustedroot+json;version=0.1"}\n');
  fails(input({ document: { json: sigstore, signature: sig(keys[3]!, sigstore), keyVersion: `${KEY}@4` } }), /has no sigilKeyVersions: it is the sigstore form/);
});

test('a verifier pinned to v1 follows the chain to v4 and verifies the document with v4', () => {
  const r = verifyRootChain(input());
  assert.deepEqual(r.followed, [1, 2, 3, 4]);
  assert.ok(r.currentSpki.equals(keys[3]!.spki));
  // Pinned later: it follows from there; the order the statements come in does not matter.
  assert.deepEqual(verifyRootChain(input({ pinned: keys[2]!.spki, transitions: [link(4), link(2), link(3)] })).followed, [3, 4]);
  assert.deepEqual(verifyRootChain(input({ pinned: keys[3]!.spki })).followed, [4]);
  // No rotation yet: the pinned key is the one that signs.
  assert.deepEqual(verifyRootChain(input({ transitions: [] }, 1)).followed, [1]);
});

test('a statement signed by a key other than the one before it fails (a forged link)', () => {
  const stranger = pair();
  fails(input({ transitions: [link(2), link(3, stranger), link(4)] }), /introducing sigil\/trust-root@3 is not signed by sigil\/trust-root@2, the key before it/);
});

test('a statement not signed by the key it introduces fails', () => {
  fails(input({ transitions: [link(2), link(3, keys[1], keys[0]), link(4)] }), /introducing sigil\/trust-root@3 is not signed by sigil\/trust-root@3 itself/);
});

test('a statement that introduces an attacker key, signed by the previous key but not by the key it names, fails', () => {
  const attacker = pair();
  fails(input({ transitions: [link(2), link(3, keys[1], keys[2], attacker.spki), link(4)] }), /not signed by sigil\/trust-root@3 itself/);
});

test('a gap in the chain fails', () => {
  fails(input({ transitions: [link(2), link(4)] }), /gap: nothing introduces sigil\/trust-root@3/);
  // The newest link missing: the chain ends before the key that signs.
  fails(input({ transitions: [link(2), link(3)] }), /chain from the pinned key ends at sigil\/trust-root@3: no statement introduces sigil\/trust-root@4 \(a gap in the chain\)/);
  // Pinned to v1 with the first link missing: v1 is not in the chain at all.
  fails(input({ transitions: [link(3), link(4)] }), /pinned key is not any sigil\/trust-root version the daemon serves \(sigil\/trust-root@2 to sigil\/trust-root@4\): check the key given/);
});

test('a document signed by a key the chain does not reach fails', () => {
  fails(input({}, 3), /signed by sigil\/trust-root@3, not by sigil\/trust-root@4/);
  fails(input({ document: { json: doc, signature: sig(keys[3]!, doc), keyVersion: 'other/key@4' } }), /signed by other\/key@4, not by sigil\/trust-root@4/);
  const other = pair();
  fails(input({ document: { json: doc, signature: sig(other, doc), keyVersion: `${KEY}@4` } }), /signature does not verify under sigil\/trust-root@4/);
  fails(input({ document: { json: Buffer.concat([doc, Buffer.from(' ')]), signature: sig(keys[3]!, doc), keyVersion: `${KEY}@4` } }), /does not verify/);
  // An unrelated pinned key with no chain served cannot vouch for the signer.
  fails(
    input({ pinned: other.spki, transitions: [] }),
    /signature does not verify under the pinned key \(no chain of root keys given, so taken as the signer sigil\/trust-root@4\): either it is no sigil\/trust-root version, or the trusted root or its signature was altered$/,
  );
  // With a chain served, an unrelated key is none of its versions, and the message says exactly that.
  fails(input({ pinned: other.spki }), /^the pinned key is not any sigil\/trust-root version the daemon serves \(sigil\/trust-root@1 to sigil\/trust-root@4\): check the key given \(--root-key\)$/);
});

test('a pinned key that is compromised, or at or before a compromised version, fails and says to re-pin', () => {
  const compromised = [{ version: 2, spki: keys[1]!.spki }];
  // The daemon serves the chain from v3 on (the statement introducing v3 was signed by the compromised v2).
  fails(input({ pinned: keys[1]!.spki, transitions: [link(4)], compromised }), /pinned key is sigil\/trust-root@2, which was disabled as compromised: re-pin/);
  fails(input({ pinned: keys[0]!.spki, transitions: [link(4)], compromised }), /not any sigil\/trust-root version the daemon serves \(sigil\/trust-root@3 to sigil\/trust-root@4\): if it is a version from before sigil\/trust-root@2 was disabled as compromised, re-pin/);
  // Cut with nothing after it: only the current key verifies; an older pin is told to re-pin.
  fails(input({ pinned: keys[0]!.spki, transitions: [], compromised: [{ version: 3, spki: keys[2]!.spki }] }), /not any sigil\/trust-root version the daemon serves \(sigil\/trust-root@4\): if it is a version from before sigil\/trust-root@3 was disabled as compromised, re-pin/);
  assert.deepEqual(verifyRootChain(input({ pinned: keys[3]!.spki, transitions: [], compromised: [{ version: 3, spki: keys[2]!.spki }] })).followed, [4]);
  // A chain that still carries a link to a compromised version is refused even when it verifies.
  fails(input({ compromised: [{ version: 3, spki: keys[2]!.spki }] }), /reaches sigil\/trust-root@3, which was disabled as compromised/);
  assert.deepEqual(verifyRootChain(input({ pinned: keys[2]!.spki, transitions: [link(4)], compromised })).followed, [3, 4]);
});

test('flipping any one byte of any statement or signature makes the chain fail', () => {
  const good = input();
  fc.assert(
    fc.property(fc.nat(2), fc.constantFrom('statement', 'previousSignature', 'signature'), fc.nat(), fc.integer({ min: 1, max: 255 }), (i, field, pos, x) => {
      const transitions = good.transitions.map((t) => ({ ...t, [field]: Buffer.from(t[field as 'statement']) }));
      const b = transitions[i]![field as 'statement'];
      b[pos % b.length] = b[pos % b.length]! ^ x;
      assert.throws(() => verifyRootChain({ ...good, transitions }), (e: unknown) => isSigilError(e, 'FAILED_PRECONDITION'));
    }),
    { numRuns: 300 },
  );
});

test('parseTransition accepts exactly the canonical form and nothing else', () => {
  const s = transitionStatement(KEY, 2, keys[1]!.spki, keys[0]!.spki, at);
  const p = parseTransition(s);
  assert.equal(p.type, TRANSITION_TYPE);
  assert.equal(p.version, 2);
  assert.equal(p.previousVersion, 1);
  assert.ok(canonicalTransition(p).equals(s));
  const obj = JSON.parse(s.toString()) as Record<string, unknown>;
  const bad = (o: unknown, re: RegExp) => assert.throws(() => parseTransition(Buffer.from(typeof o === 'string' ? o : JSON.stringify(o))), (e: unknown) => isSigilError(e, 'INVALID_ARGUMENT') && re.test((e as Error).message));
  bad(JSON.stringify(obj, null, 1), /canonical/);
  bad({ ...obj, extra: 1 }, /canonical/);
  bad({ time: obj.time, ...obj }, /canonical/);
  bad({ ...obj, version: 3 }, /follow previousVersion/);
  bad({ ...obj, version: 0, previousVersion: -1 }, /version must be a version number/);
  bad({ ...obj, type: 'x' }, /type/);
  bad({ ...obj, publicKey: 'AAAA' }, /publicKey is not a public key/);
  bad({ ...obj, time: '2026-11-25' }, /time/);
  bad('[]', /not a json object/);
  bad('{', /not json/);
  const ed = generateKeyPairSync('ed25519').publicKey.export({ format: 'der', type: 'spki' }).toString('base64');
  bad({ ...obj, publicKey: ed }, /not an ec p-256 key/);
});

test('parseTransition never throws anything but INVALID_ARGUMENT on arbitrary bytes, and what it accepts is canonical', () => {
  const s = transitionStatement(KEY, 2, keys[1]!.spki, keys[0]!.spki, at);
  const mutated = fc.tuple(fc.nat(s.length - 1), fc.integer({ min: 0, max: 255 })).map(([i, x]) => {
    const b = Buffer.from(s);
    b[i] = x;
    return b;
  });
  fc.assert(
    fc.property(fc.oneof(fc.uint8Array({ maxLength: 600 }), fc.json().map((j) => Buffer.from(j)), mutated), (bytes) => {
      try {
        const p = parseTransition(bytes);
        assert.ok(canonicalTransition(p).equals(Buffer.from(bytes)));
      } catch (e) {
        assert.ok(isSigilError(e, 'INVALID_ARGUMENT'), String(e));
      }
    }),
    { numRuns: 2000 },
  );
});

test('verifyRootChain on arbitrary transitions fails cleanly and never reaches a key it was not given a valid link to', () => {
  const arbTransition = fc.record({
    version: fc.integer({ min: 0, max: 6 }),
    statement: fc.oneof(fc.uint8Array({ maxLength: 300 }).map((b) => Buffer.from(b)), fc.constantFrom(...[2, 3, 4].map((v) => link(v).statement))),
    previousSignature: fc.uint8Array({ maxLength: 80 }).map((b) => Buffer.from(b)),
    signature: fc.uint8Array({ maxLength: 80 }).map((b) => Buffer.from(b)),
  });
  fc.assert(
    fc.property(fc.array(arbTransition, { maxLength: 4 }), (transitions) => {
      // Random signatures never verify, so only the pinned key itself can sign a document that passes.
      try {
        const r = verifyRootChain(input({ transitions }, 4));
        assert.fail(`verified ${JSON.stringify(r.followed)} with forged signatures`);
      } catch (e) {
        assert.ok(isSigilError(e, 'FAILED_PRECONDITION') || isSigilError(e, 'INVALID_ARGUMENT'), String(e));
      }
    }),
    { numRuns: 300 },
  );
});

test('a chain file round-trips, verifies offline as served, and names the version the chain ends at', () => {
  const chain = { key: KEY, transitions: [link(2), link(3), link(4)], compromised: [] };
  const back = parseRootKeyChain(serializeRootKeyChain(chain));
  assert.deepEqual(back, chain);
  assert.equal(chainHeadVersion(back), 4);
  assert.deepEqual(verifyRootChain(input({ transitions: back.transitions, document: input().document })).followed, [1, 2, 3, 4]);
  // After a compromise of v2 cut the chain, the head is the version after it; with nothing at all, 1.
  assert.equal(chainHeadVersion({ key: KEY, transitions: [], compromised: [{ version: 2, spki: keys[1]!.spki }] }), 3);
  assert.equal(chainHeadVersion({ key: KEY, transitions: [], compromised: [] }), 1);
});

test('parseRootKeyChain refuses a malformed file with the field at fault, and only with INVALID_ARGUMENT', () => {
  const refused = (text: string, re: RegExp): void => {
    assert.throws(() => parseRootKeyChain(Buffer.from(text)), (e: unknown) => isSigilError(e, 'INVALID_ARGUMENT') && re.test((e as Error).message));
  };
  refused('nope', /root key chain: not json/);
  refused('{"key":"k","transitions":{},"compromised":[]}', /transitions must be an array/);
  refused('{"key":"k","transitions":[{"version":2,"statement":"!","previousSignature":"","signature":""}],"compromised":[]}', /transition 1: statement must be base64/);
  refused('{"key":"k","transitions":[],"compromised":[{"version":0,"publicKey":"AA=="}]}', /compromised 1: version must be a version number/);
  fc.assert(
    fc.property(fc.jsonValue(), (v) => {
      try {
        parseRootKeyChain(Buffer.from(JSON.stringify(v) ?? 'null'));
      } catch (e) {
        assert.ok(isSigilError(e, 'INVALID_ARGUMENT'), String(e));
      }
    }),
  );
});
