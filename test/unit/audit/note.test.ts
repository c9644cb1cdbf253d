import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createPrivateKey, createPublicKey, generateKeyPairSync, sign } from 'node:crypto';
import fc from 'fast-check';
import { isSigilError } from '../../../src/errors.ts';
import {
  formatCheckpoint,
  noteVerifier,
  openCheckpoint,
  openNote,
  parseCheckpoint,
  parseNote,
  signCheckpoint,
  signNote,
  verifierKeyText,
  noteKeyId,
  noteKeyOfSpki,
  type NoteSigner,
} from '../../../src/audit/note.ts';

// The example of golang.org/x/mod/sumdb/note (also the signed-note spec's format): verifier and signer keys, text, note.
const PETER_VKEY = 'PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW';
const PETER_SKEY_SEED = Buffer.from('AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz', 'base64').subarray(1);
const TEXT = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n";
const NOTE = `${TEXT}\n\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n`;
// The Sigstore-style ECDSA key of transparency-dev/formats' tests: type 0x02 || SPKI, key id 91c16e30.
const PIXEL_KEY = 'AjBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABN+4x0Jk1yTwvLFI9A4NDdGZcX0aiWVdWM5XJVy0M4VWD3AvyW5Q6Hs9A0mcDkpUoYgn+KKPNzFC0H3nN3q6JQ8=';

const ED25519_SPKI_PREFIX = Buffer.from('302a300506032b6570032100', 'hex');
const ED25519_PKCS8_PREFIX = Buffer.from('302e020100300506032b657004220420', 'hex');
const peterSpki = Buffer.concat([ED25519_SPKI_PREFIX, Buffer.from(PETER_VKEY.split('+')[2]!, 'base64').subarray(1)]);
const peterPriv = createPrivateKey({ key: Buffer.concat([ED25519_PKCS8_PREFIX, PETER_SKEY_SEED]), format: 'der', type: 'pkcs8' });

const peterSigner: NoteSigner = {
  name: 'PeterNeumann',
  keyId: Buffer.from('c74f20a3', 'hex'),
  sign: async (t) => sign(null, t, peterPriv),
};

test('the sumdb/note example: key id, verifier key text, signing reproduces the note byte for byte, opening it', async () => {
  assert.equal(verifierKeyText('PeterNeumann', peterSpki), PETER_VKEY);
  const v = noteVerifier('PeterNeumann', peterSpki);
  assert.equal(v.keyId.toString('hex'), 'c74f20a3');
  assert.equal(await signNote(TEXT, [peterSigner]), NOTE);
  assert.equal(openNote(NOTE, v), TEXT);
  assert.throws(() => openNote(NOTE.replace('cryptography', 'cryptographY'), v), (e) => isSigilError(e, 'FAILED_PRECONDITION'));
});

test('a signature by an unknown key is ignored; only the known key decides', async () => {
  const v = noteVerifier('PeterNeumann', peterSpki);
  const other = generateKeyPairSync('ed25519');
  const otherSigner: NoteSigner = { name: 'Other', keyId: Buffer.from('01020304', 'hex'), sign: async (t) => sign(null, t, other.privateKey) };
  const both = await signNote(TEXT, [otherSigner, peterSigner]);
  assert.equal(openNote(both, v), TEXT);
  const onlyOther = await signNote(TEXT, [otherSigner]);
  assert.throws(() => openNote(onlyOther, v), /not signed by PeterNeumann\+c74f20a3/);
});

test('ecdsa p-256 note keys use the sigstore key id (sha-256 of the spki) and verify sha-256 signatures', async () => {
  const spki = Buffer.from(PIXEL_KEY, 'base64').subarray(1);
  const k = noteKeyOfSpki(spki);
  assert.equal(k.type, 0x02);
  assert.equal(noteKeyId('pixel6_transparency_log', k.type, k.publicKey).toString('hex'), '91c16e30');
  const pair = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const pub = pair.publicKey.export({ format: 'der', type: 'spki' });
  const v = noteVerifier('example.org/log', pub);
  const signer: NoteSigner = { name: 'example.org/log', keyId: v.keyId, sign: async (t) => sign('sha256', t, pair.privateKey) };
  const cp = { origin: 'example.org/log', size: 3, root: Buffer.alloc(32, 7), extensions: [] };
  assert.deepEqual(openCheckpoint(await signCheckpoint(cp, signer), v, 'example.org/log'), cp);
});

test('checkpoint bodies follow tlog-checkpoint and parse strictly', async () => {
  const root = Buffer.from('5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328', 'hex');
  const body = formatCheckpoint({ origin: 'sigil/host/audit', size: 8, root, extensions: [] });
  assert.equal(body, `sigil/host/audit\n8\n${root.toString('base64')}\n`);
  assert.deepEqual(parseCheckpoint(body), { origin: 'sigil/host/audit', size: 8, root, extensions: [] });
  for (const wrong of [
    'o\n08\n' + root.toString('base64') + '\n', // leading zero
    'o\n-1\n' + root.toString('base64') + '\n',
    'o\n8\n' + root.subarray(1).toString('base64') + '\n', // short root
    'o\n8\n',
    'o p\n8\n' + root.toString('base64') + '\n', // space in origin
    'o\n8\n' + root.toString('base64'), // no final newline
  ]) {
    assert.throws(() => parseCheckpoint(wrong), (e) => isSigilError(e, 'INVALID_ARGUMENT'), JSON.stringify(wrong));
  }
  const v = noteVerifier('PeterNeumann', peterSpki);
  const note = await signCheckpoint({ origin: 'PeterNeumann', size: 8, root, extensions: ['ext line'] }, peterSigner);
  assert.deepEqual(openCheckpoint(note, v).extensions, ['ext line']);
  assert.throws(() => openCheckpoint(note, v, 'someone/else'), /checkpoint is for origin/);
});

test('malformed notes are refused with typed errors', () => {
  const cases = [
    '',
    TEXT, // no signatures
    `${TEXT}\n`, // blank line, no signature
    `${TEXT}\n-- PeterNeumann x08go/ZJ=\n`,
    `${TEXT}\n\u2014 PeterNeumann x08go\n`, // bad base64 length
    `${TEXT}\n\u2014 PeterNeumann AAAA\n`, // too short
    `${TEXT}\n\u2014 Peter Neumann AAAAAAAA\n`,
    `${TEXT}\n\u2014 PeterNeumann AAAAAAAA`, // no final newline
    `a\tb\n\n\u2014 PeterNeumann AAAAAAAA\n`,
  ];
  for (const c of cases) assert.throws(() => parseNote(c), (e) => isSigilError(e, 'INVALID_ARGUMENT'), JSON.stringify(c));
  assert.throws(() => parseNote(Buffer.from([0xff, 0x0a, 0x0a])), (e) => isSigilError(e, 'INVALID_ARGUMENT'));
});

test('fuzz: the parser and the opener throw nothing but SigilError on arbitrary and mutated input', () => {
  const v = noteVerifier('PeterNeumann', peterSpki);
  const note = Buffer.from(NOTE, 'utf8');
  const mutated = fc.tuple(fc.nat({ max: note.length - 1 }), fc.integer({ min: 0, max: 255 }), fc.nat({ max: 4 })).map(([at, b, cut]) => {
    const m = Buffer.from(note);
    m[at] = b;
    return cut === 0 ? m.subarray(0, at) : m;
  });
  const inputs = fc.oneof(fc.uint8Array({ maxLength: 300 }), fc.string({ unit: 'binary', maxLength: 300 }), mutated, fc.constantFrom(NOTE.replaceAll('\n', '\n\n')));
  fc.assert(
    fc.property(inputs, (input) => {
      for (const f of [() => parseNote(input), () => openNote(input, v), () => openCheckpoint(input, v)]) {
        try {
          f();
        } catch (err) {
          if (!isSigilError(err)) throw err;
        }
      }
    }),
    { numRuns: 3000 },
  );
});

test('a public key other than ed25519 or p-256 is refused as a note key', () => {
  const rsa = generateKeyPairSync('rsa', { modulusLength: 1024 });
  assert.throws(() => noteVerifier('x', rsa.publicKey.export({ format: 'der', type: 'spki' })), (e) => isSigilError(e, 'UNSUPPORTED_ALGORITHM'));
  assert.throws(() => noteVerifier('x', Buffer.from('nope')), (e) => isSigilError(e, 'INVALID_ARGUMENT'));
  assert.ok(createPublicKey({ key: peterSpki, format: 'der', type: 'spki' }));
});
