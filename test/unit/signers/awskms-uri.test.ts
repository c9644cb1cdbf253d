import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { isSigilError } from '../../../src/errors.ts';
import { canonicalEndpoint, formatAwsKmsUri, keyIdKind, parseAwsKmsUri, type AwsKmsKeyRef } from '../../../src/signers/awskms/key-uri.ts';

const ID = '1234abcd-12ab-34cd-56ef-1234567890ab';
const ARN = `arn:aws:kms:us-east-2:111122223333:key/${ID}`;

test('parses each kind of key reference', () => {
  assert.deepEqual(parseAwsKmsUri(`awskms:key-id=${ID};region=us-east-2`), { keyId: ID, region: 'us-east-2', endpoint: null });
  assert.deepEqual(parseAwsKmsUri(`awskms:region=us-east-2;key-id=${ARN}`), { keyId: ARN, region: 'us-east-2', endpoint: null });
  assert.equal(parseAwsKmsUri('awskms:key-id=alias/sigil/release-ci-v3;region=eu-west-1').keyId, 'alias/sigil/release-ci-v3');
  assert.equal(parseAwsKmsUri('awskms:key-id=arn:aws-us-gov:kms:us-gov-west-1:111122223333:alias/x;region=us-gov-west-1').keyId.endsWith('alias/x'), true);
  assert.equal(parseAwsKmsUri(`awskms:key-id=mrk-${'0'.repeat(32)};region=ap-southeast-2`).keyId, `mrk-${'0'.repeat(32)}`);
  assert.equal(parseAwsKmsUri(`awskms:key-id=${ID};region=us-east-2;endpoint=HTTPS://KMS.Example:443/`).endpoint, 'https://kms.example');
  assert.equal(parseAwsKmsUri(`awskms:key-id=${ID};region=us-east-2;endpoint=http%3a%2f%2f127.0.0.1%3a4566`).endpoint, 'http://127.0.0.1:4566');
  assert.deepEqual(
    [ID, ARN, 'alias/a', `arn:aws:kms:us-east-2:111122223333:alias/a`, 'nope', `arn:aws:kms:us-east-2:111122223333:key/nope`].map(keyIdKind),
    ['id', 'arn', 'alias', 'alias-arn', null, null],
  );
});

test('formats the canonical uri: key-id, region, endpoint; ipv6 endpoints survive the round trip', () => {
  assert.equal(formatAwsKmsUri({ keyId: ARN, region: 'us-east-2', endpoint: null }), `awskms:key-id=${ARN};region=us-east-2`);
  const ref: AwsKmsKeyRef = { keyId: 'alias/a_b-c/d', region: 'eu-west-1', endpoint: 'http://[::1]:4566' };
  const uri = formatAwsKmsUri(ref);
  assert.equal(uri, 'awskms:key-id=alias/a_b-c/d;region=eu-west-1;endpoint=http://%5b::1%5d:4566');
  assert.deepEqual(parseAwsKmsUri(uri), ref);
});

test('refuses malformed uris with INVALID_ARGUMENT and a reason', () => {
  const bad = [
    '', 'awskms:', `awskms:key-id=${ID}`, 'awskms:region=us-east-1', `gcpkms:key-id=${ID};region=us-east-1`, `awskms:${ID}`,
    `awskms:key-id=${ID};region=us-east-1;extra=1`, `awskms:key-id=${ID};key-id=${ID};region=us-east-1`,
    `awskms:key-id=${ID.toUpperCase()};region=us-east-1`, 'awskms:key-id=not-a-key;region=us-east-1', 'awskms:key-id=alias/;region=us-east-1',
    'awskms:key-id=alias/a.b;region=us-east-1', `awskms:key-id=alias/${'a'.repeat(251)};region=us-east-1`, `awskms:key-id=${ID};region=US-EAST-1`,
    `awskms:key-id=${ID};region=useast1`, `awskms:key-id=${ARN};region=us-east-1`, `awskms:key-id=arn:aws:kms:us-east-2:1111:key/${ID};region=us-east-2`,
    `awskms:key-id=arn:aws:s3:us-east-2:111122223333:key/${ID};region=us-east-2`, `awskms:key-id=${ID};region=us-east-1;endpoint=ftp://x`,
    `awskms:key-id=${ID};region=us-east-1;endpoint=https://u:p@kms.example`, `awskms:key-id=${ID};region=us-east-1;endpoint=https://kms.example/path`,
    `awskms:key-id=${ID};region=us-east-1;endpoint=https://kms.example?x=1`, `awskms:key-id=${ID};region=us-east-1;endpoint=notaurl`,
    `awskms:key-id=${ID};region=us-east-1?pin-value=1`, `awskms:key-id=%ff;region=us-east-1`, `awskms:key-id=${ID}%00;region=us-east-1`,
  ];
  for (const uri of bad) {
    assert.throws(() => parseAwsKmsUri(uri), (e) => isSigilError(e, 'INVALID_ARGUMENT') && !/\.$/.test(e.message), uri);
  }
});

const hex = (n: number) => fc.string({ unit: fc.constantFrom(...'0123456789abcdef'), minLength: n, maxLength: n });
const region = fc.tuple(fc.constantFrom('us', 'eu', 'ap', 'ca', 'sa', 'me', 'af', 'il', 'cn'), fc.constantFrom('east', 'west', 'central', 'south', 'northeast', 'gov-west'), fc.integer({ min: 1, max: 9 })).map(([a, b, n]) => `${a}-${b}-${n}`);
const uuid = fc.tuple(hex(8), hex(4), hex(4), hex(4), hex(12)).map((p) => p.join('-'));
const aliasName = fc.string({ unit: fc.constantFrom(...'abcXYZ019/_-'), minLength: 1, maxLength: 60 }).map((s) => `alias/${s}`);
const account = fc.string({ unit: fc.constantFrom(...'0123456789'), minLength: 12, maxLength: 12 });
const endpoint = fc.oneof(
  fc.constant(null),
  fc.tuple(fc.constantFrom('http', 'https'), fc.constantFrom('127.0.0.1', 'kms.eu-west-1.amazonaws.com', '[::1]', 'vpce-1.kms.example'), fc.option(fc.integer({ min: 1, max: 65535 }), { nil: undefined }))
    .map(([s, h, p]) => canonicalEndpoint(`${s}://${h}${p === undefined ? '' : `:${p}`}`)),
);
const ref = fc.tuple(region, fc.oneof(uuid, hex(32).map((h) => `mrk-${h}`), aliasName, fc.constant('arn'), fc.constant('alias-arn')), account, uuid, aliasName, endpoint).map(
  ([r, k, acct, id, alias, e]): AwsKmsKeyRef => ({
    region: r,
    keyId: k === 'arn' ? `arn:aws:kms:${r}:${acct}:key/${id}` : k === 'alias-arn' ? `arn:aws:kms:${r}:${acct}:${alias}` : k,
    endpoint: e,
  }),
);

test('property: every well-formed reference round-trips through format and parse', () => {
  fc.assert(
    fc.property(ref, (r) => {
      assert.deepEqual(parseAwsKmsUri(formatAwsKmsUri(r)), r);
    }),
    { numRuns: 2000 },
  );
});

test('property: arbitrary text parses to a canonical reference or fails with INVALID_ARGUMENT, nothing else', () => {
  const pieces = fc.constantFrom('awskms:', 'key-id=', 'region=', 'endpoint=', ';', '=', '%', '%2f', '%3a', '?', '/', ':', 'alias/', 'arn:aws:kms:', 'us-east-1', ID, 'http://127.0.0.1:1', 'é', '\u0000', ' ');
  const text = fc.oneof(fc.string({ maxLength: 120 }), fc.string({ unit: 'binary', maxLength: 120 }), fc.array(pieces, { maxLength: 14 }).map((a) => a.join('')), ref.map(formatAwsKmsUri).chain((u) => fc.nat(u.length).map((i) => u.slice(0, i) + u.slice(i + 1))));
  fc.assert(
    fc.property(text, (s) => {
      let parsed: AwsKmsKeyRef;
      try {
        parsed = parseAwsKmsUri(s);
      } catch (e) {
        assert.ok(isSigilError(e, 'INVALID_ARGUMENT'), String(e));
        return;
      }
      // Whatever parses has a canonical form that parses to the same reference.
      assert.deepEqual(parseAwsKmsUri(formatAwsKmsUri(parsed)), parsed);
      assert.notEqual(keyIdKind(parsed.keyId), null);
    }),
    { numRuns: 3000 },
  );
});
