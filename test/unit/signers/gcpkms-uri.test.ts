import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { isSigilError } from '../../../src/errors.ts';
import { gcpKmsConfigSchema } from '../../../src/signers/gcpkms/config.ts';
import { open } from '../../../src/signers/gcpkms/index.ts';
import { isDerEcdsaSignature as isDerEcdsa } from '../../../src/signers/signer.ts';
import {
  formatGcpKeyUri,
  labelTarget,
  parseGcpKeyUri,
  sigilVersionOfLabelKey,
  versionName,
} from '../../../src/signers/gcpkms/resource-name.ts';
import { ecdsaRawToDer } from '../../../src/signers/signer.ts';
import { silentLogger } from '../../../src/log.ts';

const BASE = 'gcpkms:projects/sigil-prod/locations/europe-west1/keyRings/sigil/cryptoKeys/release-ci';

function invalid(uri: string): void {
  assert.throws(() => parseGcpKeyUri(uri), (e) => isSigilError(e, 'INVALID_ARGUMENT') && /^invalid gcpkms key uri: /.test(e.message), uri);
}

const lower = 'abcdefghijklmnopqrstuvwxyz';
const digits = '0123456789';
const chars = (set: string, min: number, max: number) => fc.string({ unit: fc.constantFrom(...set), minLength: min, maxLength: max });
const projectArb = fc.oneof(
  fc.tuple(fc.constantFrom(...lower), chars(`${lower}${digits}-`, 4, 28), fc.constantFrom(...`${lower}${digits}`)).map(([a, b, c]) => a + b + c),
  fc.bigInt({ min: 1n, max: 10n ** 19n }).map(String),
);
const locationArb = fc.oneof(fc.constant('global'), fc.tuple(fc.constantFrom(...lower), chars(`${lower}${digits}-`, 0, 20), fc.constantFrom(...`${lower}${digits}`)).map(([a, b, c]) => a + b + c));
const idArb = chars(`${lower}${lower.toUpperCase()}${digits}_-`, 1, 63);
const versionArb = fc.bigInt({ min: 1n, max: 10n ** 18n }).map(String);
const validUriArb = fc
  .record({ project: projectArb, location: locationArb, keyRing: idArb, cryptoKey: idArb, version: fc.option(versionArb, { nil: null }) })
  .map((k) => ({ k, uri: `gcpkms:projects/${k.project}/locations/${k.location}/keyRings/${k.keyRing}/cryptoKeys/${k.cryptoKey}${k.version === null ? '' : `/cryptoKeyVersions/${k.version}`}` }));

test('parses a version uri and a crypto key uri', () => {
  assert.deepEqual(parseGcpKeyUri(`${BASE}/cryptoKeyVersions/7`), {
    project: 'sigil-prod', location: 'europe-west1', keyRing: 'sigil', cryptoKey: 'release-ci', version: '7',
  });
  assert.equal(parseGcpKeyUri(BASE).version, null);
  assert.equal(parseGcpKeyUri('gcpkms:projects/123456789012/locations/global/keyRings/R_1/cryptoKeys/K-2').project, '123456789012');
});

test('refuses malformed uris with INVALID_ARGUMENT', () => {
  for (const uri of [
    '', 'gcpkms:', 'gcpkms:id=%zz', 'awskms:key-id=1', `${BASE}/`, `${BASE}/cryptoKeyVersions/`, `${BASE}/cryptoKeyVersions/0`,
    `${BASE}/cryptoKeyVersions/07`, `${BASE}/cryptoKeyVersions/-1`, `${BASE}/cryptoKeyVersions/1/x`, `${BASE}/versions/1`,
    `${BASE}/cryptoKeyVersions/1?x=1`, BASE.replace('cryptoKeys', 'cryptokeys'), BASE.replace('sigil-prod', 'short'),
    BASE.replace('sigil-prod', 'trailing-hyphen-'), BASE.replace('sigil-prod', 'Sigil-prod'), BASE.replace('sigil-prod', '1abcdef'),
    BASE.replace('sigil-prod', 'a'.repeat(31)), BASE.replace('europe-west1', 'Europe'), BASE.replace('europe-west1', 'eu-'),
    BASE.replace('keyRings/sigil', 'keyRings/'), BASE.replace('keyRings/sigil', `keyRings/${'r'.repeat(64)}`),
    BASE.replace('release-ci', 'release.ci'), BASE.replace('release-ci', 'release%2dci'), BASE.replace('release-ci', 'rélease'),
    `${BASE}/cryptoKeyVersions/1234567890123456789012`, ` ${BASE}`, `${BASE} `, BASE.replace('gcpkms:', 'GCPKMS:'),
    `gcpkms:/${BASE.slice(7)}`, `gcpkms:${'projects/p/'.repeat(60)}`,
  ]) invalid(uri);
});

test('fuzz: every well-formed uri parses and formats back to itself', () => {
  fc.assert(
    fc.property(validUriArb, ({ k, uri }) => {
      const parsed = parseGcpKeyUri(uri);
      assert.deepEqual(parsed, { ...k });
      if (parsed.version !== null) assert.equal(formatGcpKeyUri(versionName({ ...parsed, version: parsed.version })), uri);
    }),
    { numRuns: 500 },
  );
});

test('fuzz: arbitrary text either parses to a canonical uri or is refused with INVALID_ARGUMENT', () => {
  const text = fc.oneof(
    fc.string({ maxLength: 200 }),
    fc.string({ unit: fc.constantFrom(...'gcpkms:/projectslocationskeyRingscryptoKeysVersions0123456789-_.%?=; A'), maxLength: 200 }),
    validUriArb.chain(({ uri }) => fc.tuple(fc.nat(uri.length), fc.string({ minLength: 1, maxLength: 3 })).map(([at, s]) => uri.slice(0, at) + s + uri.slice(at))),
    validUriArb.chain(({ uri }) => fc.tuple(fc.nat(uri.length - 1), fc.nat(5)).map(([at, n]) => uri.slice(0, at) + uri.slice(at + 1 + n))),
  );
  fc.assert(
    fc.property(text, (uri) => {
      let parsed;
      try {
        parsed = parseGcpKeyUri(uri);
      } catch (e) {
        assert.ok(isSigilError(e, 'INVALID_ARGUMENT'), `unexpected error ${String(e)}`);
        return;
      }
      const again = `gcpkms:projects/${parsed.project}/locations/${parsed.location}/keyRings/${parsed.keyRing}/cryptoKeys/${parsed.cryptoKey}${parsed.version === null ? '' : `/cryptoKeyVersions/${parsed.version}`}`;
      assert.equal(again, uri);
    }),
    { numRuns: 2000 },
  );
});

test('fuzz: a character outside the resource-name charset inside an id is refused', () => {
  const badChar = fc.constantFrom(...'%?#;=:@!$&\'()*+, "<>\\^`{|}~é\u0000\n.');
  fc.assert(
    fc.property(validUriArb, badChar, fc.constantFrom(3, 5, 7, 9), fc.nat(), ({ uri }, c, seg, at) => {
      const parts = uri.slice('gcpkms:'.length).split('/');
      if (seg >= parts.length) return;
      const id = parts[seg]!;
      const i = at % (id.length + 1);
      parts[seg] = id.slice(0, i) + c + id.slice(i);
      invalid(`gcpkms:${parts.join('/')}`);
    }),
    { numRuns: 500 },
  );
});

test('maps labels to CryptoKey ids and sigil versions', () => {
  assert.deepEqual(labelTarget('sigil-release-ci-v3'), { cryptoKeyId: 'sigil-release-ci', sigilVersion: 3, labelKey: 'sigil-v3' });
  assert.deepEqual(labelTarget('conformance-ecdsa_p256_sha256-1a2b3c4d'), { cryptoKeyId: 'conformance-ecdsa_p256_sha256-1a2b3c4d', sigilVersion: 1, labelKey: 'sigil-v1' });
  assert.equal(labelTarget('a.b/c-v12').cryptoKeyId, 'a-b-c');
  assert.equal(labelTarget('x-v0').sigilVersion, 1, 'v0 is no version suffix');
  assert.throws(() => labelTarget(''), (e) => isSigilError(e, 'INVALID_ARGUMENT'));
  assert.equal(sigilVersionOfLabelKey('sigil-v17'), 17);
  assert.equal(sigilVersionOfLabelKey('sigil-v017'), null);
  assert.equal(sigilVersionOfLabelKey('managed-by'), null);
});

test('fuzz: every label maps to a valid CryptoKey id; long names stay distinct', () => {
  fc.assert(
    fc.property(fc.string({ minLength: 1, maxLength: 300 }), fc.integer({ min: 1, max: 999_999_999 }), (name, n) => {
      const t = labelTarget(`${name}-v${n}`);
      assert.match(t.cryptoKeyId, /^[a-zA-Z0-9_-]{1,63}$/);
      assert.equal(t.sigilVersion, n);
      assert.match(t.labelKey, /^[a-z][a-z0-9_-]{0,62}$/);
    }),
  );
  const long = 'release/'.repeat(10);
  assert.notEqual(labelTarget(`${long}a-v1`).cryptoKeyId, labelTarget(`${long}b-v1`).cryptoKeyId);
});

test('isDerEcdsa accepts DER of any r and s and refuses damaged encodings', () => {
  fc.assert(
    fc.property(fc.constantFrom(32, 48), fc.uint8Array({ minLength: 48, maxLength: 48 }), fc.uint8Array({ minLength: 48, maxLength: 48 }), (size, r, s) => {
      r[size - 1] = r[size - 1]! | 1;
      s[size - 1] = s[size - 1]! | 1;
      const der = ecdsaRawToDer(Buffer.concat([r.subarray(0, size), s.subarray(0, size)]));
      assert.ok(isDerEcdsa(der, size));
      assert.ok(!isDerEcdsa(der.subarray(0, der.length - 1), size), 'truncated');
      assert.ok(!isDerEcdsa(Buffer.concat([der, Buffer.from([0])]), size), 'trailing byte');
      const wrongTag = Buffer.from(der);
      wrongTag[0] = 0x31;
      assert.ok(!isDerEcdsa(wrongTag, size), 'not a SEQUENCE');
    }),
  );
  assert.ok(!isDerEcdsa(Buffer.from('3006020100020101', 'hex'), 32), 'r = 0');
  assert.ok(!isDerEcdsa(Buffer.from('300702020001020101', 'hex'), 32), 'non-minimal r');
  assert.ok(!isDerEcdsa(Buffer.from('3006020181020101', 'hex'), 32), 'negative r');
});

test('config: strict, loopback-only insecure, bounded timeout; production refuses insecure', async () => {
  const base = { type: 'gcpkms', project: 'sigil-test', location: 'global', keyRing: 'ring' };
  const ok = gcpKmsConfigSchema.parse(base);
  assert.equal(ok.timeoutMs, 5000);
  assert.equal(ok.insecure, false);
  assert.equal(ok.protectionLevel, 'HSM');
  for (const bad of [
    { ...base, extra: 1 },
    { ...base, insecure: true },
    { ...base, insecure: true, apiEndpoint: 'kms.example.com' },
    { ...base, insecure: true, apiEndpoint: '127.0.0.1', credentialsFile: '/x.json' },
    { ...base, timeoutMs: 99 },
    { ...base, timeoutMs: 120001 },
    { ...base, keyRing: 'bad/ring' },
    { ...base, project: 'x' },
    { ...base, port: 0 },
  ]) assert.equal(gcpKmsConfigSchema.safeParse(bad).success, false, JSON.stringify(bad));
  const insecure = gcpKmsConfigSchema.parse({ ...base, insecure: true, apiEndpoint: '127.0.0.1', port: 1 });
  await assert.rejects(open(insecure, { name: 'gcp', log: silentLogger(), production: true }), (e) => isSigilError(e, 'CONFIG_INVALID'));
});
