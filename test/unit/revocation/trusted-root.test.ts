import 'reflect-metadata';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, generateKeyPairSync } from 'node:crypto';
import fc from 'fast-check';
import { createDevCa } from '../../../src/dev/pki.ts';
import { buildTrustedRoot, checkTrustedRootFresh, keyVersionsOf, serializeTrustedRoot, sigstoreTrustedRoot, TRUSTED_ROOT_MEDIA_TYPE, type TrustedKeyVersion } from '../../../src/revocation/trusted-root.ts';
import { strictTrustedRootParser } from '../../helpers/sigstore-schema.ts';
import { parseAkName, parseEkHash, parseReason, parseSerial } from '../../../src/revocation/inputs.ts';
import { isSigilError } from '../../../src/errors.ts';
import { DEFAULT_KEY_POLICY, type KeyRecord } from '../../../src/store/store.ts';
import { auditKeyVersions } from '../../../src/audit/audit-key.ts';

const spki = (type: 'ec' | 'ed25519' | 'rsa', opts: object = {}): Buffer =>
  (generateKeyPairSync as (t: string, o: object) => { publicKey: { export(o: object): Buffer } })(type, opts).publicKey.export({ format: 'der', type: 'spki' });
const p256 = spki('ec', { namedCurve: 'P-256' });
const ed = spki('ed25519');
const rsa3072 = spki('rsa', { modulusLength: 3072 });
const t = (s: string) => new Date(s);
const TIMES = { issuedAt: t('2026-11-25T12:00:00Z'), expiresAt: t('2026-12-02T12:00:00Z') };

const v = (over: Partial<TrustedKeyVersion>): TrustedKeyVersion => ({
  keyName: 'release/fw',
  version: 1,
  algorithm: 'ECDSA_P256_SHA256',
  spki: p256,
  createdAt: t('2026-01-01T00:00:00Z'),
  revokedAt: null,
  destroyedAt: null,
  minVerifyVersion: 1,
  hasKey: true,
  ...over,
});

test('trusted root: the CA, the audit log and each key version window, in proto JSON', async () => {
  const ca = await createDevCa('sigil identity CA');
  const caDer = Buffer.from(ca.cert.replace(/-----[^-]+-----/g, '').replace(/\s/g, ''), 'base64');
  const doc = buildTrustedRoot({
    ...TIMES,
    identityCa: caDer,
    auditLog: { baseUrl: 'https://sigil.example:8443', algorithm: 'ED25519', versions: [{ version: 1, spki: ed, createdAt: t('2026-01-01T00:00:00Z'), supersededAt: null }] },
    keyVersions: [
      v({ keyName: 'release/fw', version: 3, createdAt: t('2026-03-01T00:00:00Z') }),
      v({ keyName: 'release/fw', version: 1, destroyedAt: t('2026-02-15T00:00:00Z') }),
      v({ keyName: 'release/fw', version: 2, createdAt: t('2026-02-01T00:00:00Z'), revokedAt: t('2026-02-20T12:00:00.500Z') }),
      v({ keyName: 'ci/prov', version: 1, minVerifyVersion: 2 }),
      v({ keyName: 'ci/prov', version: 2, minVerifyVersion: 2, algorithm: 'RSA_PSS_SHA256', spki: rsa3072 }),
      v({ keyName: 'ci/prov', version: 3, minVerifyVersion: 2, hasKey: false }),
    ],
  });
  assert.equal(doc.mediaType, TRUSTED_ROOT_MEDIA_TYPE);
  assert.deepEqual([doc.sigilIssuedAt, doc.sigilExpiresAt], ['2026-11-25T12:00:00Z', '2026-12-02T12:00:00Z']);
  assert.deepEqual(doc.tlogs, [
    {
      baseUrl: 'https://sigil.example:8443',
      hashAlgorithm: 'SHA2_256',
      publicKey: { rawBytes: ed.toString('base64'), keyDetails: 'PKIX_ED25519', validFor: { start: '2026-01-01T00:00:00Z' } },
      logId: { keyId: createHash('sha256').update(ed).digest('base64') },
    },
  ]);
  assert.equal(doc.certificateAuthorities.length, 1);
  assert.equal(doc.certificateAuthorities[0]!.subject.commonName, 'sigil identity CA');
  assert.deepEqual(doc.certificateAuthorities[0]!.certChain.certificates, [{ rawBytes: caDer.toString('base64') }]);
  assert.match(doc.certificateAuthorities[0]!.validFor.start, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
  assert.equal(doc.certificateAuthorities[0]!.validFor.end, undefined);
  assert.deepEqual(doc.ctlogs, []);
  assert.deepEqual(doc.timestampAuthorities, []);
  // Sorted by name then version; below minVerifyVersion and PENDING left out; windows end at revocation or destruction.
  assert.deepEqual(
    doc.sigilKeyVersions.map((k) => [k.hint, k.publicKey.keyDetails, k.publicKey.validFor, k.revoked]),
    [
      ['ci/prov@2', 'PKIX_RSA_PSS_3072_SHA256', { start: '2026-01-01T00:00:00Z' }, false],
      ['release/fw@1', 'PKIX_ECDSA_P256_SHA_256', { start: '2026-01-01T00:00:00Z', end: '2026-02-15T00:00:00Z' }, false],
      ['release/fw@2', 'PKIX_ECDSA_P256_SHA_256', { start: '2026-02-01T00:00:00Z', end: '2026-02-20T12:00:00.500Z' }, true],
      ['release/fw@3', 'PKIX_ECDSA_P256_SHA_256', { start: '2026-03-01T00:00:00Z' }, false],
    ],
  );
  // No signing key where a verifier would trust it as a log or an authority.
  const trusted = JSON.stringify([doc.tlogs, doc.certificateAuthorities, doc.ctlogs, doc.timestampAuthorities]);
  assert.ok(!trusted.includes(p256.toString('base64')) && !trusted.includes(rsa3072.toString('base64')));
  // The same input gives the same bytes (what is signed), and they parse back to the document.
  const bytes = serializeTrustedRoot(doc);
  assert.deepEqual(JSON.parse(bytes.toString()), doc);
  assert.ok(bytes.equals(serializeTrustedRoot(buildTrustedRoot({ ...TIMES, identityCa: caDer, auditLog: null, keyVersions: [] }))) === false);
});

test("the sigstore form: a strict proto JSON parser of Sigstore's TrustedRoot reads it, and refuses the full document", async () => {
  const parse = strictTrustedRootParser();
  const older = await createDevCa('sigil identity CA');
  const current = await createDevCa('sigil identity CA 2');
  const der = (pem: string) => Buffer.from(pem.replace(/-----[^-]+-----/g, '').replace(/\s/g, ''), 'base64');
  const doc = buildTrustedRoot({
    ...TIMES,
    identityCa: [
      { der: der(older.cert), end: t('2026-02-01T00:00:00Z') },
      { der: der(current.cert), end: null },
    ],
    auditLog: {
      baseUrl: 'https://sigil.example:8443',
      algorithm: 'ECDSA_P256_SHA256',
      versions: [
        { version: 1, spki: p256, createdAt: t('2026-01-01T00:00:00Z'), supersededAt: t('2026-02-01T00:00:00Z') },
        { version: 2, spki: spki('ec', { namedCurve: 'P-256' }), createdAt: t('2026-02-01T00:00:00Z'), supersededAt: null },
      ],
    },
    keyVersions: [v({}), v({ keyName: 'ci/prov', algorithm: 'RSA_PSS_SHA256', spki: rsa3072 }), v({ keyName: 'ed/k', algorithm: 'ED25519', spki: ed })],
  });
  const sigstore = sigstoreTrustedRoot(doc);
  assert.deepEqual(Object.keys(sigstore), ['mediaType', 'tlogs', 'certificateAuthorities', 'ctlogs', 'timestampAuthorities']);
  const { sigilKeyVersions, sigilIssuedAt, sigilExpiresAt, ...rest } = doc;
  assert.equal(sigilKeyVersions.length, 3);
  assert.deepEqual([sigilIssuedAt, sigilExpiresAt], ['2026-11-25T12:00:00Z', '2026-12-02T12:00:00Z'], 'the times are sigil fields, left out of the sigstore form');
  assert.deepEqual(sigstore, rest);
  assert.equal(sigstore.tlogs.length, 2);
  assert.equal(sigstore.certificateAuthorities.length, 2);
  parse(serializeTrustedRoot(sigstore));
  assert.throws(() => parse(serializeTrustedRoot(doc)), /key "sigil(IssuedAt|KeyVersions)" is unknown/);
  const { sigilIssuedAt: _i, sigilExpiresAt: _e, ...withoutTimes } = doc;
  assert.throws(() => parse(serializeTrustedRoot(withoutTimes)), /key "sigilKeyVersions" is unknown/);
});

test('a rotated audit key: one tlog per version in version order, each closed when the next took over, the current one open', () => {
  const ed2 = spki('ed25519');
  const ed3 = spki('ed25519');
  const versions = [
    { version: 3, spki: ed3, createdAt: t('2026-03-01T00:00:00Z'), supersededAt: null },
    { version: 1, spki: ed, createdAt: t('2026-01-01T00:00:00Z'), supersededAt: t('2026-02-01T10:00:00.250Z') },
    { version: 2, spki: ed2, createdAt: t('2026-02-01T10:00:00.250Z'), supersededAt: t('2026-03-01T00:00:00Z') },
  ];
  const doc = buildTrustedRoot({ ...TIMES, identityCa: null, auditLog: { baseUrl: 'https://sigil.example:8443', algorithm: 'ED25519', versions }, keyVersions: [] });
  assert.deepEqual(
    doc.tlogs.map((l) => [l.baseUrl, l.publicKey.rawBytes, l.publicKey.validFor, l.logId.keyId]),
    [
      ['https://sigil.example:8443', ed.toString('base64'), { start: '2026-01-01T00:00:00Z', end: '2026-02-01T10:00:00.250Z' }, createHash('sha256').update(ed).digest('base64')],
      ['https://sigil.example:8443', ed2.toString('base64'), { start: '2026-02-01T10:00:00.250Z', end: '2026-03-01T00:00:00Z' }, createHash('sha256').update(ed2).digest('base64')],
      ['https://sigil.example:8443', ed3.toString('base64'), { start: '2026-03-01T00:00:00Z' }, createHash('sha256').update(ed3).digest('base64')],
    ],
  );
  // Any input order gives the same bytes.
  const again = buildTrustedRoot({ ...TIMES, identityCa: null, auditLog: { baseUrl: 'https://sigil.example:8443', algorithm: 'ED25519', versions: [...versions].reverse() }, keyVersions: [] });
  assert.ok(serializeTrustedRoot(doc).equals(serializeTrustedRoot(again)));
});

test('auditKeyVersions: pending versions left out, each version superseded by the next one made, the primary current', () => {
  const base: KeyRecord = { name: 'sigil/audit', algorithm: 'ED25519', backend: 'hsm', primaryVersion: 2, createdAt: t('2026-01-01T00:00:00Z'), versions: [], policy: { ...DEFAULT_KEY_POLICY }, nextRotationAt: null };
  const key = {
    ...base,
    versions: [
      { name: 'sigil/audit', version: 3, uri: '', state: 'PENDING', generated: true, spki: Buffer.alloc(0), createdAt: t('2026-04-01T00:00:00Z') },
      { name: 'sigil/audit', version: 1, uri: 'u1', state: 'ENABLED', generated: true, spki: ed, createdAt: t('2026-01-01T00:00:00Z') },
      { name: 'sigil/audit', version: 2, uri: 'u2', state: 'ENABLED', generated: true, spki: p256, createdAt: t('2026-02-01T00:00:00Z') },
    ],
  } as unknown as KeyRecord;
  assert.deepEqual(
    auditKeyVersions(key).map((v) => [v.keyVersion, v.version, v.createdAt.toISOString(), v.supersededAt?.toISOString() ?? null, v.current]),
    [
      ['sigil/audit@1', 1, '2026-01-01T00:00:00.000Z', '2026-02-01T00:00:00.000Z', false],
      ['sigil/audit@2', 2, '2026-02-01T00:00:00.000Z', null, true],
    ],
  );
});

test('keyVersionsOf reads the lifecycle fields of key records, and skips reserved keys', () => {
  const base: KeyRecord = { name: 'a/k', algorithm: 'ED25519', backend: 'hsm', primaryVersion: 2, createdAt: t('2026-01-01T00:00:00Z'), versions: [], policy: { ...DEFAULT_KEY_POLICY }, nextRotationAt: null };
  const keys = [
    { ...base, policy: { ...DEFAULT_KEY_POLICY, minVerifyVersion: 2 }, versions: [
      { name: 'a/k', version: 1, uri: 'u1', state: 'DISABLED', generated: true, spki: ed, createdAt: t('2026-01-01T00:00:00Z'), revokedAt: t('2026-01-05T00:00:00Z') },
      { name: 'a/k', version: 2, uri: 'u2', state: 'DESTROYED', generated: true, spki: ed, createdAt: t('2026-01-02T00:00:00Z'), destroyedAt: t('2026-01-09T00:00:00Z') },
    ] },
    { ...base, name: 'sigil/identity-ca', versions: [{ name: 'sigil/identity-ca', version: 1, uri: 'u3', state: 'ENABLED', generated: true, spki: p256, createdAt: t('2026-01-01T00:00:00Z') }] },
  ] as unknown as KeyRecord[];
  const out = keyVersionsOf(keys, ['sigil/identity-ca']);
  assert.deepEqual(out.map((x) => [x.keyName, x.version, x.minVerifyVersion, x.revokedAt?.toISOString() ?? null, x.destroyedAt?.toISOString() ?? null]), [
    ['a/k', 1, 2, '2026-01-05T00:00:00.000Z', null],
    ['a/k', 2, 2, null, '2026-01-09T00:00:00.000Z'],
  ]);
});

test('serials: any spelling of a positive number of at most 20 octets gives one canonical form', () => {
  fc.assert(
    fc.property(fc.bigInt({ min: 1n, max: (1n << 160n) - 1n }), fc.nat({ max: 4 }), fc.boolean(), fc.boolean(), (n, zeros, upper, colons) => {
      let hex = '0'.repeat(zeros) + n.toString(16);
      if (upper) hex = hex.toUpperCase();
      if (colons) hex = (hex.length % 2 ? `0${hex}` : hex).match(/../g)!.join(':');
      assert.equal(parseSerial(hex), n.toString(16));
    }),
  );
  for (const bad of ['', '0', '00:00', 'xyz', '12-34', 'f'.repeat(41), ' ']) {
    assert.throws(() => parseSerial(bad), (e) => isSigilError(e, 'INVALID_ARGUMENT'), bad);
  }
});

test('serials, ek hashes, ak names and reasons: arbitrary strings never throw anything but INVALID_ARGUMENT', () => {
  fc.assert(
    fc.property(fc.string({ maxLength: 200 }), (s) => {
      for (const f of [parseSerial, parseEkHash, parseAkName, parseReason] as Array<(x: string) => unknown>) {
        try {
          const r = f(s);
          if (f === parseEkHash) assert.match(r as string, /^[0-9a-f]{64}$/);
          if (f === parseSerial) assert.match(r as string, /^[1-9a-f][0-9a-f]{0,39}$/);
        } catch (e) {
          assert.ok(isSigilError(e, 'INVALID_ARGUMENT'), String(e));
        }
      }
    }),
  );
  fc.assert(fc.property(fc.stringMatching(/^[0-9a-fA-F]{64}$/), (h) => assert.equal(parseEkHash(h), h.toLowerCase())));
  assert.throws(() => parseEkHash('a'.repeat(63)), (e) => isSigilError(e, 'INVALID_ARGUMENT'));
  assert.equal(parseAkName(''), null);
  assert.equal(parseAkName('000B' + 'AB'.repeat(32)), '000b' + 'ab'.repeat(32));
  assert.equal(parseReason(''), 'unspecified');
  assert.throws(() => parseReason('toString'), (e) => isSigilError(e, 'INVALID_ARGUMENT'));
});

test('trusted root: one certificate authority per identity ca generation, in order, an older one closing at the end of its window', async () => {
  const der = async (cn: string) => {
    const ca = await createDevCa(cn);
    return Buffer.from(ca.cert.replace(/-----[^-]+-----/g, '').replace(/\s/g, ''), 'base64');
  };
  const v1 = await der('sigil identity CA');
  const v2 = await der('sigil identity CA 2');
  // The certificates start now: v1's window ends a day later (with its milliseconds).
  const end = new Date(Math.floor(Date.now() / 1000) * 1000 + 86_400_000 + 250);
  const doc = buildTrustedRoot({ ...TIMES, identityCa: [{ der: v1, end }, { der: v2, end: null }], auditLog: null, keyVersions: [] });
  assert.deepEqual(
    doc.certificateAuthorities.map((a) => [a.subject.commonName, a.certChain.certificates[0]!.rawBytes, a.validFor.end]),
    [
      ['sigil identity CA', v1.toString('base64'), end.toISOString()],
      ['sigil identity CA 2', v2.toString('base64'), undefined],
    ],
  );
  assert.ok(doc.certificateAuthorities.every((a) => /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/.test(a.validFor.start)));
  // A lone certificate is one open generation, as before.
  const lone = buildTrustedRoot({ ...TIMES, identityCa: v1, auditLog: null, keyVersions: [] }).certificateAuthorities;
  assert.deepEqual(lone.map((a) => [a.certChain.certificates[0]!.rawBytes, a.validFor.start, a.validFor.end]), [[v1.toString('base64'), doc.certificateAuthorities[0]!.validFor.start, undefined]]);
});

test('a window never ends before it starts: a compromise time recorded before the version was made closes it at its start', () => {
  const doc = buildTrustedRoot({
    ...TIMES,
    identityCa: null,
    auditLog: null,
    keyVersions: [v({ keyName: 'old/k', createdAt: t('2026-03-01T00:00:00Z'), revokedAt: t('2026-02-01T00:00:00Z') })],
  });
  assert.deepEqual(doc.sigilKeyVersions[0]!.publicKey.validFor, { start: '2026-03-01T00:00:00Z', end: '2026-03-01T00:00:00Z' });
  assert.equal(doc.sigilKeyVersions[0]!.revoked, true);
});

test('freshness: a verifier takes a document until its sigilExpiresAt, then refuses it with the expiry; a document without the times is refused', () => {
  const json = serializeTrustedRoot(buildTrustedRoot({ ...TIMES, identityCa: null, auditLog: null, keyVersions: [] }));
  assert.deepEqual(checkTrustedRootFresh(json, t('2026-11-25T12:00:00Z')), TIMES);
  assert.deepEqual(checkTrustedRootFresh(json, t('2026-12-02T11:59:59.999Z')), TIMES);
  for (const now of ['2026-12-02T12:00:00Z', '2027-01-01T00:00:00Z']) {
    assert.throws(
      () => checkTrustedRootFresh(json, t(now)),
      (e: unknown) => isSigilError(e, 'FAILED_PRECONDITION') && /^the trusted root expired at 2026-12-02T12:00:00Z \(issued 2026-11-25T12:00:00Z\): /.test((e as Error).message),
    );
  }
  const doc = JSON.parse(json.toString()) as Record<string, unknown>;
  const variants: Array<Record<string, unknown>> = [
    { ...doc, sigilExpiresAt: undefined },
    { ...doc, sigilIssuedAt: undefined },
    { ...doc, sigilExpiresAt: 'next week' },
    { ...doc, sigilExpiresAt: '2026-12-02T12:00:00' },
    { ...doc, sigilExpiresAt: 1796212800 },
    { ...doc, sigilExpiresAt: doc.sigilIssuedAt },
  ];
  for (const d of variants) {
    assert.throws(() => checkTrustedRootFresh(Buffer.from(JSON.stringify(d)), t('2026-11-26T00:00:00Z')), /carries no valid issue and expiry time/);
  }
  assert.throws(() => checkTrustedRootFresh(Buffer.from('not json'), t('2026-11-26T00:00:00Z')), /carries no valid issue and expiry time/);
  // Valid for longer than sigild ever signs (90 days): refused.
  const long = Buffer.from(JSON.stringify({ ...doc, sigilExpiresAt: '2027-03-01T12:00:00Z' }));
  assert.throws(() => checkTrustedRootFresh(long, t('2026-11-26T00:00:00Z')), /longer than the 90 days sigild ever signs for/);
});
