import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, generateKeyPairSync, X509Certificate } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { missingTools } from '../../helpers/hw.ts';
import { tempToken, type TempToken } from '../../helpers/softhsm.ts';
import { SqliteStore } from '../../../src/store/sqlite.ts';
import { BackendRegistry } from '../../../src/signers/registry.ts';
import { KeyService } from '../../../src/keys/key-service.ts';
import { IdentityCa, type IdentityCaOptions, type IssueRequest } from '../../../src/identity/identity-ca.ts';
import { BUILDER_OIDS, parseBuilderExtensions } from '../../../src/identity/builder-extensions.ts';
import { silentLogger } from '../../../src/log.ts';
import { isSigilError } from '../../../src/errors.ts';
import type { Clock } from '../../../src/clock.ts';
import { KeyLifecycle } from '../../../src/keys/lifecycle.ts';
import type { AuditEvent, AuditSink } from '../../../src/audit/audit-sink.ts';

const skip = missingTools('softhsm', 'softhsm2-util', 'openssl');

/** A clock the test moves. */
function movableClock(): Clock & { offsetMs: number } {
  const c = { offsetMs: 0, now: () => new Date(Date.now() + c.offsetMs) };
  return c;
}

interface Env {
  store: SqliteStore;
  backends: BackendRegistry;
  keys: KeyService;
  close(): Promise<void>;
}

function openEnv(token: TempToken, dbPath: string, clock: Clock): Env {
  const log = silentLogger();
  const store = new SqliteStore(dbPath);
  const backends = new BackendRegistry({ hsm: token.config }, { log, production: false });
  const keys = new KeyService({ store, backends, defaultBackend: 'hsm', maxMessageBytes: 1 << 20, log, clock });
  return { store, backends, keys, close: async () => (await backends.closeAll(), store.close()) };
}

const ekPub = Buffer.from('an ek public key');
const request = (spki: Buffer, over: Partial<IssueRequest> = {}): IssueRequest => ({
  spki,
  ekHash: createHash('sha256').update(ekPub).digest('hex'),
  akName: '000b' + 'ab'.repeat(32),
  pcrSelection: 'sha256:0,1,2,3,4,5,6,7',
  pcrDigest: 'cd'.repeat(32),
  policy: 'ci-linux',
  claims: { repository: 'acme/app', ref: 'refs/heads/main', run_id: '4242' },
  ...over,
});

function builderKey(): { spki: Buffer } {
  const { publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  return { spki: publicKey.export({ format: 'der', type: 'spki' }) };
}

function openssl(args: string[]): string {
  return execFileSync('openssl', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

describe('identity ca on a softhsm token', { skip: skip ?? false }, () => {
  let token: TempToken;
  let dir: string;
  let env: Env;
  let ca: IdentityCa;
  const clock = movableClock();
  const opts = (e: Env, over: Partial<IdentityCaOptions> = {}): IdentityCaOptions => ({
    keys: e.keys,
    store: e.store,
    clock,
    log: silentLogger(),
    trustDomain: 'sigil.test',
    ...over,
  });

  before(async () => {
    token = await tempToken('sigil');
    dir = mkdtempSync(join(tmpdir(), 'sigil-idca-'));
    env = openEnv(token, join(dir, 'sigil.db'), clock);
    ca = await IdentityCa.open(opts(env));
  });
  after(async () => {
    await env?.close();
    await token?.cleanup();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test('first start creates the key in the hsm and a self-signed ca certificate', () => {
    const key = env.keys.getKey('sigil/identity-ca');
    assert.equal(key.algorithm, 'ECDSA_P256_SHA256');
    assert.match(key.versions[0]!.uri, /^pkcs11:token=sigil;object=sigil-sigil-identity-ca-v1;/);
    assert.equal(ca.keyVersion, 'sigil/identity-ca@1');
    const x = new X509Certificate(ca.caCertificatePem());
    assert.equal(x.subject, 'CN=sigil identity CA');
    assert.equal(x.issuer, x.subject);
    assert.ok(x.ca);
    assert.ok(x.verify(x.publicKey), 'self-signed signature verifies');
    assert.deepEqual(x.publicKey.export({ format: 'der', type: 'spki' }), key.versions[0]!.spki);
    const years = (Date.parse(x.validTo) - Date.parse(x.validFrom)) / (365.25 * 86_400_000);
    assert.ok(years > 9.9 && years < 10.1, `about 10 years, got ${years}`);
    const caFile = join(dir, 'ca.pem');
    writeFileSync(caFile, ca.caCertificatePem());
    const text = openssl(['x509', '-in', caFile, '-noout', '-text']);
    assert.match(text, /X509v3 Basic Constraints: critical\s+CA:TRUE, pathlen:0/);
    assert.match(text, /X509v3 Key Usage: critical\s+Certificate Sign, CRL Sign/);
    assert.match(text, /X509v3 Subject Key Identifier/);
    assert.match(openssl(['verify', '-CAfile', caFile, caFile]), /: OK/);
  });

  test('an issued certificate verifies with openssl and shows its san and extensions', async () => {
    const { spki } = builderKey();
    const req = request(spki);
    const issued = await ca.issue(req);
    const caFile = join(dir, 'ca.pem');
    const leafFile = join(dir, 'leaf.pem');
    writeFileSync(caFile, ca.caCertificatePem());
    writeFileSync(leafFile, issued.certificatePem);
    assert.match(openssl(['verify', '-CAfile', caFile, '-purpose', 'sslclient', leafFile]), /leaf\.pem: OK/);
    const text = openssl(['x509', '-in', leafFile, '-noout', '-text']);
    assert.match(text, new RegExp(`Subject: CN ?= ?builder ${req.ekHash.slice(0, 16)}`));
    assert.match(text, new RegExp(`URI:spiffe://sigil\\.test/builder/tpm/${req.ekHash}`));
    assert.match(text, /X509v3 Key Usage: critical\s+Digital Signature/);
    assert.match(text, /X509v3 Extended Key Usage:\s+TLS Web Client Authentication/);
    assert.match(text, /X509v3 Basic Constraints: critical\s+CA:FALSE/);
    assert.match(text, /X509v3 Authority Key Identifier/);
    for (const oid of Object.values(BUILDER_OIDS)) assert.ok(text.includes(`${oid}:`), `extension ${oid} shown`);
    assert.doesNotMatch(text, /2\.25\.[0-9.]+: critical/, 'private extensions are not critical');
    assert.equal(issued.san, `spiffe://sigil.test/builder/tpm/${req.ekHash}`);
    assert.match(issued.serial, /^[0-9a-f]{32}$/);
    assert.equal(BigInt(`0x${new X509Certificate(issued.certificateDer).serialNumber}`), BigInt(`0x${issued.serial}`));
    // Another CA's openssl verify fails: the check above is not vacuous.
    const other = await IdentityCa.open(opts(env, { caKey: 'other/ca' }));
    writeFileSync(join(dir, 'other.pem'), other.caCertificatePem());
    assert.throws(() => openssl(['verify', '-CAfile', join(dir, 'other.pem'), leafFile]));
  });

  test('the extensions parse back to what was issued', async () => {
    const { spki } = builderKey();
    const req = request(spki, { pcrSelection: 'sha256:7,0,1+sha1:3', claims: { z: 'last', a: 'first / with spaces' } });
    const issued = await ca.issue(req);
    const parsed = parseBuilderExtensions(issued.certificateDer);
    assert.deepEqual(parsed, {
      san: issued.san,
      ekHash: req.ekHash,
      akName: req.akName,
      pcrSelection: 'sha1:3+sha256:0,1,7',
      pcrDigest: req.pcrDigest,
      policy: 'ci-linux',
      claims: { a: 'first / with spaces', z: 'last' },
    });
    assert.deepEqual(Object.keys(parsed.claims), ['a', 'z']);
    const x = new X509Certificate(issued.certificateDer);
    assert.deepEqual(x.publicKey.export({ format: 'der', type: 'spki' }), spki);
  });

  test('lifetime: 15 minutes by default, capped at the maximum, starting 60 s early', async () => {
    const { spki } = builderKey();
    const t0 = clock.now().getTime();
    const def = await ca.issue(request(spki));
    const sec = (d: Date): number => Math.round(d.getTime() / 1000);
    assert.ok(Math.abs(sec(def.notBefore) - Math.round((t0 - 60_000) / 1000)) <= 2);
    assert.ok(Math.abs(sec(def.notAfter) - sec(def.notBefore) - 16 * 60) <= 2, 'notAfter = now + 15 min');
    const long = await ca.issue(request(spki, { lifetimeMs: 48 * 3_600_000 }));
    assert.ok(Math.abs(sec(long.notAfter) - sec(long.notBefore) - (24 * 3600 + 60)) <= 2, 'capped at 24 h');
    const x = new X509Certificate(long.certificateDer);
    assert.equal(Date.parse(x.validTo), long.notAfter.getTime());
    const short = await IdentityCa.open(opts(env, { maxLifetimeMs: 3_600_000, lifetimeMs: 60_000 }));
    const capped = await short.issue(request(spki, { lifetimeMs: 5 * 3_600_000 }));
    assert.ok(Math.abs(sec(capped.notAfter) - sec(capped.notBefore) - 3660) <= 2, 'capped at the configured maximum');
    const own = await short.issue(request(spki));
    assert.ok(Math.abs(sec(own.notAfter) - sec(own.notBefore) - 120) <= 2, 'configured default lifetime');
    await assert.rejects(ca.issue(request(spki, { lifetimeMs: 10 })), (e) => isSigilError(e, 'INVALID_ARGUMENT'));
    await assert.rejects(IdentityCa.open(opts(env, { maxLifetimeMs: 25 * 3_600_000 })), (e) => isSigilError(e, 'CONFIG_INVALID'));
  });

  test('the clock decides the validity window', async () => {
    const { spki } = builderKey();
    clock.offsetMs = -2 * 3_600_000;
    try {
      const past = await ca.issue(request(spki));
      assert.ok(past.notAfter.getTime() < Date.now(), 'issued in the past, already expired');
    } finally {
      clock.offsetMs = 0;
    }
  });

  test('bad input is refused with INVALID_ARGUMENT', async () => {
    const { spki } = builderKey();
    const bad = async (over: Partial<IssueRequest>, re: RegExp): Promise<void> => {
      await assert.rejects(ca.issue(request(spki, over)), (e: unknown) => isSigilError(e, 'INVALID_ARGUMENT') && re.test((e as Error).message));
    };
    await bad({ spki: Buffer.from('nope') }, /spki/);
    await bad({ spki: generateKeyPairSync('ec', { namedCurve: 'secp256k1' }).publicKey.export({ format: 'der', type: 'spki' }) }, /p-256/);
    await bad({ ekHash: 'ab' }, /ekHash must be 32 bytes/);
    await bad({ ekHash: 'zz'.repeat(32) }, /ekHash/);
    await bad({ akName: '' }, /akName/);
    await bad({ pcrDigest: 'ab' }, /pcrDigest/);
    await bad({ pcrSelection: 'md5:0' }, /pcrSelection/);
    await bad({ pcrSelection: 'sha256:0,0' }, /twice/);
    await bad({ pcrSelection: 'sha256:32' }, /above 31/);
    await bad({ policy: '' }, /policy/);
    await bad({ policy: 'has space' }, /policy/);
    await bad({ claims: { Repository: 'x' } }, /invalid claim name/);
    await bad({ claims: { repository: 'x\ny' } }, /printable/);
    await bad({ claims: { repository: 'é' } }, /printable/);
    await bad({ claims: { repository: 'x'.repeat(257) } }, /printable/);
    await bad({ claims: { repository: '' } }, /printable/);
    await bad({ claims: Object.fromEntries(Array.from({ length: 33 }, (_, i) => [`c${i}`, 'v'])) }, /at most 32 claims/);
  });

  test('a restart with the same store and token reuses the key and the certificate', async () => {
    const before = ca.caCertificateDer();
    await env.close();
    env = openEnv(token, join(dir, 'sigil.db'), clock);
    const again = await IdentityCa.open(opts(env));
    assert.deepEqual(again.caCertificateDer(), before);
    assert.equal(again.keyVersion, 'sigil/identity-ca@1');
    assert.equal(env.keys.listKeys('sigil/').length, 1);
    const issued = await again.issue(request(builderKey().spki));
    assert.ok(new X509Certificate(issued.certificateDer).verify(new X509Certificate(before).publicKey));
    ca = again;
  });

  test('a ca certificate near its end is replaced by a new one for the same key', async () => {
    const before = ca.caCertificateDer();
    clock.offsetMs = 3650 * 86_400_000 - 3_600_000;
    try {
      const renewed = await IdentityCa.open(opts(env));
      assert.notDeepEqual(renewed.caCertificateDer(), before);
      assert.deepEqual(new X509Certificate(renewed.caCertificateDer()).publicKey.export({ format: 'der', type: 'spki' }), env.keys.getKey('sigil/identity-ca').versions[0]!.spki);
      assert.deepEqual(env.store.latestCaCertificate('sigil/identity-ca@1')!.der, renewed.caCertificateDer());
    } finally {
      clock.offsetMs = 0;
    }
  });
  test('a crash between a rotation and its ca certificate heals at the next open; rotated() is idempotent and issues with the new generation', async () => {
    const events: AuditEvent[] = [];
    const sink: AuditSink = { ready: () => {}, record: async (e) => void events.push(e) };
    const before = env.store.latestCaCertificate('sigil/identity-ca@1')!.der;
    // The lifecycle without the identity ca's hook: the key rotates, no certificate follows (as if the daemon died there).
    const life = new KeyLifecycle({ store: env.store, backends: env.backends, keys: env.keys, audit: sink, clock, log: silentLogger(), minDestroyWindowMs: 86_400_000, defaultDestroyWindowMs: 7 * 86_400_000, approvalTtlMs: 86_400_000 });
    await life.rotate({ subject: 'CN=test', fingerprint: 'ff' }, 'sigil/identity-ca');
    assert.equal(env.store.latestCaCertificate('sigil/identity-ca@2'), null);
    const healed = await IdentityCa.open(opts(env, { sink }));
    assert.equal(healed.keyVersion, 'sigil/identity-ca@2');
    const v2 = new X509Certificate(healed.caCertificateDer());
    assert.equal(v2.subject, 'CN=sigil identity CA 2');
    assert.deepEqual(v2.publicKey.export({ format: 'der', type: 'spki' }), env.keys.getKey('sigil/identity-ca').versions[1]!.spki);
    assert.ok(v2.verify(v2.publicKey), 'self-signed by the new version');
    const created = events.filter((e) => e.act === 'identity.ca.create');
    assert.deepEqual(created.map((e) => [e.key, (e.detail as { fingerprint: string }).fingerprint]), [['sigil/identity-ca@2', createHash('sha256').update(v2.raw).digest('hex')]]);
    assert.deepEqual(healed.liveVersions(), [1, 2]);
    assert.deepEqual(healed.generation(1)!.der, before, 'generation 1 keeps its certificate');
    // Nothing left to make: the hook changes nothing.
    await healed.rotated();
    assert.equal(events.filter((e) => e.act === 'identity.ca.create').length, 1);
    const issued = await healed.issue(request(builderKey().spki));
    assert.equal(issued.caVersion, 2);
    assert.equal(new X509Certificate(issued.certificateDer).issuer, 'CN=sigil identity CA 2');
    assert.ok(new X509Certificate(issued.certificateDer).verify(v2.publicKey));
    assert.equal(env.store.getIssuedCertificate(BigInt(`0x${issued.serial}`).toString(16))!.caVersion, 2);
    // Generation 1 still signs its own CRL, under its own name.
    const g1 = healed.crlIssuer(1);
    assert.deepEqual(g1.subjectDer(), ca.subjectDer());
    assert.throws(() => healed.crlIssuer(9), (e: unknown) => isSigilError(e, 'KEY_NOT_FOUND'));
    healed.close();
  });
});
