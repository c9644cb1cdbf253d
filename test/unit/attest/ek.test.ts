import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { after, before, test } from 'node:test';
import { ekHash, trustEk } from '../../../src/attest/ek.ts';
import { isSigilError } from '../../../src/errors.ts';
import { spkiOf } from '../../../src/tpm/structures.ts';
import { missingTools } from '../../helpers/hw.ts';
import { OpensslCas, type TestCa } from './ek-certs.ts';
import { softEk } from './soft-tpm.ts';

const skip = missingTools('openssl');
let cas: OpensslCas;
let root: TestCa;
let inter: TestCa;
let otherRoot: TestCa;
const ek = softEk('rsa');
let cert: Buffer;
// A little after the certificates were made (their notBefore is the second they were issued).
const now = new Date(Date.now() + 60_000);

before(() => {
  if (skip) return;
  cas = new OpensslCas();
  root = cas.root('ek root');
  inter = cas.intermediate(root, 'ek intermediate');
  otherRoot = cas.root('other root');
  cert = cas.ekCert(inter, ek.key);
});
after(() => cas?.cleanup());

const x = (c: TestCa) => new X509Certificate(c.pem);
const denied = (m: string | RegExp) => (e: unknown) => isSigilError(e, 'PERMISSION_DENIED') && (typeof m === 'string' ? e.message === m : m.test(e.message));

test('ekHash is the sha-256 of the spki, the same from certificate and public area', { skip: skip ?? false }, () => {
  const fromCert = ekHash(new X509Certificate(cert).publicKey.export({ type: 'spki', format: 'der' }));
  assert.equal(fromCert, ekHash(spkiOf(ek.pub)));
  assert.match(fromCert, /^[0-9a-f]{64}$/);
});

test('a certificate chaining to the bundle is trusted, with or without the public area', { skip: skip ?? false }, () => {
  const anchors = { ekCas: [x(root), x(inter)], ekHashes: new Set<string>() };
  const a = trustEk({ ekCert: cert, ekPublic: ek.pub.raw }, anchors, now);
  assert.equal(a.via, 'certificate');
  assert.equal(a.ekHash, ekHash(spkiOf(ek.pub)));
  assert.deepEqual(a.ekPublic.raw, ek.pub.raw);
  // Certificate only: the public area is the default template with the certificate's key.
  const b = trustEk({ ekCert: cert }, anchors, now);
  assert.equal(b.ekHash, a.ekHash);
  assert.deepEqual(b.ekPublic.rsa!.modulus, ek.pub.rsa!.modulus);
  assert.equal(b.ekPublic.rsa!.symKeyBits, 128);
  // The intermediate alone is an anchor too.
  assert.equal(trustEk({ ekCert: cert }, { ekCas: [x(inter)], ekHashes: new Set() }, now).via, 'certificate');
});

test('certificate refusals name the reason', { skip: skip ?? false }, () => {
  const none = new Set<string>();
  assert.throws(() => trustEk({ ekCert: cert }, { ekCas: [x(otherRoot)], ekHashes: none }, now), denied('untrusted ek certificate: no trusted ca issued CN=ek'));
  assert.throws(() => trustEk({ ekCert: cert }, { ekCas: [x(root)], ekHashes: none }, now), denied('untrusted ek certificate: no trusted ca issued CN=ek'));
  assert.throws(() => trustEk({ ekCert: cert }, { ekCas: [], ekHashes: none }, now), denied('untrusted ek certificate: the policy trusts no ek ca'));
  const later = new Date(now.getTime() + 20 * 365 * 86400_000);
  assert.throws(() => trustEk({ ekCert: cert }, { ekCas: [x(root), x(inter)], ekHashes: none }, later), denied(/^untrusted ek certificate: CN=ek expired/));
  const earlier = new Date(now.getTime() - 86400_000);
  assert.throws(() => trustEk({ ekCert: cert }, { ekCas: [x(root), x(inter)], ekHashes: none }, earlier), denied(/not valid before/));
  // An issuer without keyCertSign does not count (OpenSSL's issuer check), nor one without CA basic constraints.
  const noSign = cas.intermediate(root, 'no cert sign', { ca: false, keyCertSign: false });
  assert.throws(() => trustEk({ ekCert: cas.ekCert(noSign, ek.key) }, { ekCas: [x(noSign), x(root)], ekHashes: none }, now), denied('untrusted ek certificate: no trusted ca issued CN=ek'));
  const notCa = cas.intermediate(root, 'not a ca', { ca: false });
  const leaf = cas.ekCert(notCa, ek.key);
  assert.throws(() => trustEk({ ekCert: leaf }, { ekCas: [x(notCa), x(root)], ekHashes: none }, now), denied('untrusted ek certificate: issuer CN=not a ca is not a ca'));
  // Certificate and public area with different keys.
  assert.throws(() => trustEk({ ekCert: cert, ekPublic: softEk('rsa').pub.raw }, { ekCas: [x(root)], ekHashes: none }, now), denied('ek certificate and ek public area carry different keys'));
});

test('the allowlist trusts an ek by hash, with or without a certificate', { skip: skip ?? false }, () => {
  const hash = ekHash(spkiOf(ek.pub));
  const list = { ekCas: [x(otherRoot)], ekHashes: new Set([hash]) };
  assert.equal(trustEk({ ekPublic: ek.pub.raw }, list, now).via, 'allowlist');
  assert.equal(trustEk({ ekCert: cert }, list, now).via, 'allowlist');
  const other = softEk('rsa');
  assert.throws(() => trustEk({ ekPublic: other.pub.raw }, list, now), denied('ek not on the allowlist'));
  const otherCert = cas.ekCert(inter, other.key);
  assert.throws(() => trustEk({ ekCert: otherCert }, list, now), denied('untrusted ek certificate: no trusted ca issued CN=ek; ek not on the allowlist'));
});

test('malformed input is INVALID_ARGUMENT', { skip: skip ?? false }, () => {
  const anchors = { ekCas: [x(root)], ekHashes: new Set<string>() };
  const bad = (e: unknown) => isSigilError(e, 'INVALID_ARGUMENT');
  assert.throws(() => trustEk({}, anchors, now), bad);
  assert.throws(() => trustEk({ ekCert: Buffer.from('nope') }, anchors, now), bad);
  assert.throws(() => trustEk({ ekPublic: Buffer.from([0, 1, 0]) }, anchors, now), bad);
});

test('a certificate whose public key does not decode is INVALID_ARGUMENT, not an internal error', { skip: skip ?? false }, () => {
  // The rsaEncryption OID inside the SubjectPublicKeyInfo, with its length byte changed (as fuzzing found):
  // the certificate still parses, and Node fails only when the key is read.
  const oid = Buffer.from('06092a864886f70d010101', 'hex');
  const at = cert.indexOf(oid);
  assert.ok(at > 0, 'the fixture holds an rsa key');
  const bad = Buffer.from(cert);
  bad[at + 1] = 0x0b;
  assert.doesNotThrow(() => new X509Certificate(bad));
  assert.throws(
    () => trustEk({ ekCert: bad }, { ekCas: [x(root)], ekHashes: new Set() }, now),
    (e: unknown) => isSigilError(e, 'INVALID_ARGUMENT') && e.message === 'ek certificate does not parse',
  );
});
