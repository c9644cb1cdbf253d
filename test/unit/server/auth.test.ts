import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { generateKeyPairSync, X509Certificate } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { PeerCertificate } from 'node:tls';
import { Authenticator } from '../../../src/server/auth.ts';
import { IdentityCa } from '../../../src/identity/identity-ca.ts';
import { SqliteStore } from '../../../src/store/sqlite.ts';
import { BackendRegistry } from '../../../src/signers/registry.ts';
import { KeyService } from '../../../src/keys/key-service.ts';
import { silentLogger } from '../../../src/log.ts';
import { systemClock } from '../../../src/clock.ts';
import { isSigilError } from '../../../src/errors.ts';

/** What Node's getPeerCertificate() gives for a certificate, as far as auth reads it. */
function peer(der: Buffer): PeerCertificate {
  const x = new X509Certificate(der);
  const subject = Object.fromEntries(x.subject.split('\n').map((l) => l.split('=') as [string, string]));
  return { raw: x.raw, fingerprint256: x.fingerprint256, subject, subjectaltname: x.subjectAltName, valid_to: x.validTo } as unknown as PeerCertificate;
}

const call = (cert?: PeerCertificate, authorizationError?: string) => ({ getAuthContext: () => ({ sslPeerCertificate: cert, authorizationError }) });
const unauthenticated = (fn: () => unknown, re: RegExp, reason = 'UNAUTHENTICATED'): void =>
  assert.throws(fn, (e: unknown) => isSigilError(e, 'UNAUTHENTICATED') && re.test(e.message) && e.reason === reason);

const ekHash = 'ab'.repeat(32);
const SAN = `spiffe://sigil.test/builder/tpm/${ekHash}`;
// Patterns so wide they match any certificate: builders must still get nothing but the builder role.
const roles = { admin: ['cn:*'], signer: [`uri:${SAN}`] };

let dir: string;
let store: SqliteStore;
let backends: BackendRegistry;
let real: IdentityCa;
let builder: Buffer;
let impostor: Buffer;
let impostorCa: Buffer;

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'sigil-auth-'));
  const log = silentLogger();
  store = new SqliteStore(':memory:');
  backends = new BackendRegistry({ soft: { type: 'soft', dir } }, { log, production: false });
  const keys = new KeyService({ store, backends, defaultBackend: 'soft', maxMessageBytes: 1 << 20, log, clock: systemClock });
  real = await IdentityCa.open({ keys, store, clock: systemClock, log, trustDomain: 'sigil.test' });
  // Another CA with the same name ("sigil identity CA") and the same kind of certificates: not the identity CA.
  const other = await IdentityCa.open({ keys, store, clock: systemClock, log, trustDomain: 'sigil.test', caKey: 'other/ca' });
  const req = (spki: Buffer) => ({ spki, ekHash, akName: '000b' + 'cd'.repeat(32), pcrSelection: 'sha256:0,7', pcrDigest: 'ef'.repeat(32), policy: 'ci-linux', claims: { repository: 'acme/app' } });
  const spki = () => generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ format: 'der', type: 'spki' });
  builder = (await real.issue(req(spki()))).certificateDer;
  impostor = (await other.issue(req(spki()))).certificateDer;
  impostorCa = other.caCertificateDer();
  assert.equal(new X509Certificate(impostor).issuer, new X509Certificate(builder).issuer, 'same issuer name');
});
after(async () => {
  await backends?.closeAll();
  store?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test('a certificate signed by the identity ca gets the builder role only, with what it certifies', () => {
  const auth = new Authenticator(roles, { identityCa: real.caCertificateDer() });
  const p = auth.principal(call(peer(builder)));
  assert.deepEqual([...p.roles], ['builder']);
  assert.equal(p.builder!.san, SAN);
  assert.equal(p.builder!.ekHash, ekHash);
  assert.equal(p.builder!.policy, 'ci-linux');
  assert.deepEqual(p.builder!.claims, { repository: 'acme/app' });
  assert.equal(p.builder!.pcrSelection, 'sha256:0,7');
  assert.equal(p.notAfter, Date.parse(new X509Certificate(builder).validTo));
  assert.throws(() => auth.require(call(peer(builder)), ['admin']), (e: unknown) => isSigilError(e, 'PERMISSION_DENIED') && /lacks the role admin/.test((e as Error).message));
});

test('a certificate from another ca with the same issuer name, san and extensions is never a builder', () => {
  const auth = new Authenticator(roles, { identityCa: real.caCertificateDer() });
  const p = auth.principal(call(peer(impostor)));
  assert.deepEqual([...p.roles].sort(), ['admin', 'signer'], 'the operator patterns apply to it');
  assert.equal(p.builder, undefined);
  const none = new Authenticator(roles);
  assert.ok(!none.principal(call(peer(builder))).roles.has('builder'), 'without an identity ca nothing is a builder');
});

test('a missing, refused or outlived certificate is UNAUTHENTICATED with the reason', () => {
  const later = new Authenticator(roles, { identityCa: real.caCertificateDer(), clock: { now: () => new Date(Date.now() + 2 * 3_600_000) } });
  unauthenticated(() => later.principal(call()), /client certificate issued by the operator ca or the identity ca is required/);
  unauthenticated(() => later.principal(call(undefined, 'CERT_HAS_EXPIRED')), /^client certificate expired$/, 'CERTIFICATE_EXPIRED');
  unauthenticated(() => later.principal(call(undefined, 'CERT_NOT_YET_VALID')), /^client certificate not yet valid$/);
  unauthenticated(() => later.principal(call(undefined, 'CERT_SIGNATURE_FAILURE')), /^client certificate not trusted \(cert_signature_failure\)$/);
  unauthenticated(() => later.principal(call(peer(builder))), /^client certificate expired$/, 'CERTIFICATE_EXPIRED');
  const now = new Authenticator(roles, { identityCa: real.caCertificateDer() });
  assert.ok(now.principal(call(peer(builder))).roles.has('builder'), 'valid under the wall clock');
});

test('a revoked builder is refused on every call after the revocation, although its principal is cached', () => {
  const revoked = new Set<string>();
  const seen: string[] = [];
  const auth = new Authenticator(roles, {
    identityCa: real.caCertificateDer(),
    revoked: (p) => {
      seen.push(p.serial);
      return revoked.has(p.serial) ? { reason: 'IDENTITY_REVOKED', message: 'builder identity revoked' } : null;
    },
  });
  const c = call(peer(builder));
  assert.ok(auth.principal(c).roles.has('builder'));
  const serial = new X509Certificate(builder).serialNumber.toLowerCase().replace(/^0+/, '');
  assert.deepEqual(seen, [serial], 'the check gets the canonical serial');
  revoked.add(serial);
  unauthenticated(() => auth.principal(c), /^builder identity revoked$/, 'IDENTITY_REVOKED');
  unauthenticated(() => auth.require(c, ['builder']), /^builder identity revoked$/, 'IDENTITY_REVOKED');
  // Operator certificates are not builders: the check is not asked about them.
  auth.principal(call(peer(impostor)));
  assert.equal(seen.length, 3);
});

test('identity ca generations: a certificate gets the builder role from the generation that signed it, and is refused on every call once that generation is not live', () => {
  const refusals = new Map<number, string>();
  const gens = [
    // Generation 1 is a CA that did not sign `builder` (the other CA): the signature decides, not the name.
    { version: 1, certificate: new X509Certificate(impostorCa) },
    { version: 2, certificate: new X509Certificate(real.caCertificateDer()) },
  ];
  const auth = new Authenticator(roles, { identityCas: { generations: () => gens, refusal: (v) => refusals.get(v) ?? null } });
  const c = call(peer(builder));
  const p = auth.principal(c);
  assert.deepEqual([[...p.roles], p.caVersion], [['builder'], 2]);
  assert.deepEqual([[...auth.principal(call(peer(impostor))).roles], auth.principal(call(peer(impostor))).caVersion], [['builder'], 1]);
  // The principal is cached, the generation's state is not.
  refusals.set(2, 'builder certificate issued by identity ca generation 2, which is disabled');
  unauthenticated(() => auth.principal(c), /^builder certificate issued by identity ca generation 2, which is disabled$/);
  unauthenticated(() => auth.require(c, ['builder']), /which is disabled/);
  refusals.delete(2);
  assert.ok(auth.principal(c).roles.has('builder'), 'enabled again: accepted again');
  // Without any generation that signed it, a builder-looking certificate is an operator certificate like any other.
  const none = new Authenticator(roles, { identityCas: { generations: () => [gens[0]!], refusal: () => null } });
  assert.ok(!none.principal(call(peer(builder))).roles.has('builder'));
  assert.equal(none.principal(call(peer(builder))).caVersion, undefined);
});
