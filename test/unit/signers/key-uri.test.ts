import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { isSigilError } from '../../../src/errors.ts';
import { attrText, formatKeyUri, parseKeyUri } from '../../../src/signers/key-uri.ts';

test('parses an RFC 7512 style pkcs11 uri with percent-encoded bytes', () => {
  const u = parseKeyUri('pkcs11:token=sigil;object=release-v1;id=%01%a2');
  assert.equal(u.scheme, 'pkcs11');
  assert.equal(u.path, null);
  assert.deepEqual([...u.attrs.keys()], ['token', 'object', 'id']);
  assert.equal(attrText(u, 'token'), 'sigil');
  assert.equal(attrText(u, 'object'), 'release-v1');
  assert.deepEqual(u.attrs.get('id'), Buffer.from([0x01, 0xa2]));
  assert.equal(attrText(u, 'missing'), undefined);
});

test('keeps path-style identifiers in path', () => {
  const u = parseKeyUri('gcpkms:projects/p/locations/l/keyRings/r/cryptoKeys/k/cryptoKeyVersions/3');
  assert.equal(u.scheme, 'gcpkms');
  assert.equal(u.path, 'projects/p/locations/l/keyRings/r/cryptoKeys/k/cryptoKeyVersions/3');
  assert.equal(u.attrs.size, 0);
});

test('formats attributes in order and percent-encodes what needs it', () => {
  assert.equal(
    formatKeyUri('pkcs11', [['token', 'sigil'], ['object', 'a b/c'], ['id', Buffer.from([0x0a, 0x0b])]]),
    'pkcs11:token=sigil;object=a%20b%2fc;id=%0a%0b',
  );
  assert.equal(formatKeyUri('soft', [['id', 'ünï']]), 'soft:id=%c3%bcn%c3%af');
});

test('refuses malformed uris with INVALID_ARGUMENT', () => {
  const bad = [
    '', 'x'.repeat(2049), 'pkcs11', ':id=1', 'PKCS11:id=1', '1abc:id=1', 'pkcs11:', 'pkcs11:id=1;id=2', 'pkcs11:=1',
    'pkcs11:id=1;', 'pkcs11:Id=1', 'pkcs11:id=a b', 'pkcs11:id=%zz', 'pkcs11:id=%4', 'pkcs11:id=1?pin-value=1234',
    'pkcs11:token=a;object',
  ];
  for (const uri of bad) {
    assert.throws(() => parseKeyUri(uri), (e) => isSigilError(e, 'INVALID_ARGUMENT') && /^invalid key uri: [^.]*$/.test(e.message), uri);
  }
});

test('an error message never echoes a pin-value query attribute', () => {
  assert.throws(() => parseKeyUri('pkcs11:object=k?pin-value=s3cret-pin'), (e) => isSigilError(e) && !e.message.includes('s3cret'));
});

test('property: parseKeyUri throws nothing but INVALID_ARGUMENT on arbitrary strings', () => {
  const pieces = fc.constantFrom('pkcs11', ':', ';', '=', '%', '%0', '%a2', '?', '/', 'id', 'token', 'a', 'Z', ' ', 'é', '\u0000', '%%');
  const text = fc.oneof(fc.string({ maxLength: 80 }), fc.string({ unit: 'binary', maxLength: 80 }), fc.array(pieces, { maxLength: 30 }).map((a) => a.join('')));
  fc.assert(
    fc.property(text, (s) => {
      try {
        const u = parseKeyUri(s);
        assert.ok(u.scheme.length > 0);
      } catch (e) {
        assert.ok(isSigilError(e, 'INVALID_ARGUMENT'), `unexpected ${String(e)}`);
      }
    }),
    { numRuns: 5000 },
  );
});

test('property: format then parse gives back arbitrary byte attributes', () => {
  const name = fc.stringMatching(/^[a-z][a-z0-9-]{0,11}$/);
  const attrs = fc.uniqueArray(fc.tuple(name, fc.uint8Array({ minLength: 0, maxLength: 40 })), { minLength: 1, maxLength: 6, selector: ([n]) => n });
  fc.assert(
    fc.property(fc.constantFrom('pkcs11', 'soft', 'awskms'), attrs, (scheme, list) => {
      const uri = formatKeyUri(scheme, list);
      const u = parseKeyUri(uri);
      assert.equal(u.scheme, scheme);
      assert.equal(u.path, null);
      assert.deepEqual([...u.attrs.keys()], list.map(([n]) => n));
      for (const [n, v] of list) assert.deepEqual(u.attrs.get(n), Buffer.from(v));
      // Formatting is canonical: the same attributes give the same text.
      assert.equal(formatKeyUri(scheme, [...u.attrs.entries()]), uri);
    }),
    { numRuns: 2000 },
  );
});
