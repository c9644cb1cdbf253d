// @peculiar/x509 uses tsyringe, which needs the reflect polyfill loaded first.
import 'reflect-metadata';
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, generateKeyPairSync, randomBytes, webcrypto } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { status as Status, type ServiceError } from '@grpc/grpc-js';
import * as x509 from '@peculiar/x509';
import { createDevCa } from '../../src/dev/pki.ts';
import { Algorithm, type SignStreamResponse } from '../../src/gen/sigil/v1/signer.ts';
import { connect, rpc, type Clients } from '../../src/cli/client.ts';
import type { IssueRequest } from '../../src/identity/identity-ca.ts';
import { missingTools } from '../helpers/hw.ts';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.ts';
import { verifyWithOpenssl } from '../helpers/verify.ts';

const skip = missingTools('softhsm', 'softhsm2-util', 'openssl');

async function rejects(p: Promise<unknown>, expected: Status, re?: RegExp): Promise<void> {
  try {
    await p;
  } catch (err) {
    const e = err as ServiceError;
    assert.equal(Status[e.code], Status[expected], `got ${Status[e.code]}: ${e.details}`);
    if (re) assert.match(e.details, re);
    return;
  }
  assert.fail(`expected ${Status[expected]}, the call succeeded`);
}

const clock = { offsetMs: 0, now: () => new Date(Date.now() + clock.offsetMs) };
const P256 = Algorithm.ECDSA_P256_SHA256;

describe('builders: identity ca certificates and per-key authorization', { skip: skip ?? false }, () => {
  let d: TestDaemon;
  let admin: Clients;
  const opened: Clients[] = [];
  let n = 0;

  /** Writes a key and certificate for a builder and opens clients with them. */
  const clientWith = (certPem: string, keyPem: string): Clients => {
    const i = ++n;
    const cert = join(d.dir, `builder-${i}.pem`);
    const key = join(d.dir, `builder-${i}-key.pem`);
    writeFileSync(cert, certPem);
    writeFileSync(key, keyPem, { mode: 0o600 });
    const c = connect({ addr: d.address, ca: d.ca, cert, key });
    opened.push(c);
    return c;
  };

  /** A builder whose certificate the daemon's own identity CA issued. */
  const builder = async (over: Partial<IssueRequest> = {}): Promise<{ c: Clients; san: string }> => {
    const { publicKey, privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const issued = await d.daemon.identity!.issue({
      spki: publicKey.export({ format: 'der', type: 'spki' }),
      ekHash: randomBytes(32).toString('hex'),
      akName: '000b' + randomBytes(32).toString('hex'),
      pcrSelection: 'sha256:0,1,2,3,4,5,6,7',
      pcrDigest: randomBytes(32).toString('hex'),
      policy: 'ci-linux',
      claims: { repository: 'acme/app', ref: 'refs/heads/main', run_id: '17' },
      ...over,
    });
    return { c: clientWith(issued.certificatePem, privateKey.export({ format: 'pem', type: 'pkcs8' }).toString()), san: issued.san };
  };

  before(async () => {
    d = await startTestDaemon({
      clock,
      extraConfig: {
        identity: { trustDomain: 'sigil.test', lifetime: '15m', maxLifetime: '1h' },
        authorization: {
          builders: [
            {
              keys: ['release/*'],
              identities: [{ san: 'spiffe://sigil.test/builder/tpm/*', policy: 'ci-linux', claims: { repository: 'acme/*', ref: 'refs/heads/main' } }],
            },
          ],
        },
      },
    });
    admin = d.client('admin');
    await rpc.createKey(admin, { name: 'release/app', algorithm: P256, backend: '' });
    await rpc.createKey(admin, { name: 'other/secret', algorithm: P256, backend: '' });
  });
  after(async () => {
    for (const c of opened) c.close();
    await d?.stop();
  });

  test('a builder signs with a key its rule grants; openssl verifies the signature', async () => {
    const { c } = await builder();
    const msg = Buffer.from('artifact built by an attested runner');
    const res = await rpc.sign(c, { key: 'release/app', digest: createHash('sha256').update(msg).digest() });
    assert.equal(res.keyVersion, 'release/app@1');
    const pk = await rpc.getPublicKey(c, { key: 'release/app' });
    assert.ok(verifyWithOpenssl(P256, pk.pem, msg, res.signature));
    assert.ok(!verifyWithOpenssl(P256, pk.pem, Buffer.from('something else'), res.signature));
    const viaVersion = await rpc.sign(c, { key: 'release/app@1', message: msg });
    assert.ok(verifyWithOpenssl(P256, pk.pem, msg, viaVersion.signature));
  });

  test('a key outside the rule is PERMISSION_DENIED, naming the builder and the key', async () => {
    const { c, san } = await builder();
    const req = { key: 'other/secret', digest: Buffer.alloc(32) };
    await rejects(rpc.sign(c, req), Status.PERMISSION_DENIED, new RegExp(`^builder ${san.replaceAll('.', '\\.')} may not use key other/secret$`));
    await rejects(rpc.sign(c, req), Status.PERMISSION_DENIED, /may not use key other\/secret/);
    await rejects(rpc.getPublicKey(c, { key: 'other/secret' }), Status.PERMISSION_DENIED);
    await rejects(rpc.listKeys(c, { prefix: '' }), Status.PERMISSION_DENIED, /lacks the role/);
    const batch = await rpc.signBatch(c, { requests: [{ key: 'release/app', digest: Buffer.alloc(32) }, req] });
    assert.equal(batch.results[0]!.signature!.keyVersion, 'release/app@1');
    assert.equal(batch.results[1]!.error!.code, Status.PERMISSION_DENIED);
    assert.equal(batch.results[1]!.error!.reason, 'PERMISSION_DENIED');

    const stream = c.signer.signStream();
    const got = new Map<number, SignStreamResponse>();
    const done = new Promise<void>((resolve, reject) => {
      stream.on('data', (r: SignStreamResponse) => got.set(r.id, r));
      stream.on('end', resolve);
      stream.on('error', reject);
    });
    stream.write({ id: 1, request: { key: 'release/app', digest: Buffer.alloc(32) } });
    stream.write({ id: 2, request: req });
    stream.end();
    await done;
    assert.equal(got.get(1)!.result!.signature!.keyVersion, 'release/app@1');
    assert.equal(got.get(2)!.result!.error!.code, Status.PERMISSION_DENIED);
  });

  test('claims or policy that do not match the rule are PERMISSION_DENIED', async () => {
    const req = { key: 'release/app', digest: Buffer.alloc(32) };
    const feature = await builder({ claims: { repository: 'acme/app', ref: 'refs/heads/feature' } });
    await rejects(rpc.sign(feature.c, req), Status.PERMISSION_DENIED, /may not use key release\/app/);
    const otherOrg = await builder({ claims: { repository: 'evil/app', ref: 'refs/heads/main' } });
    await rejects(rpc.sign(otherOrg.c, req), Status.PERMISSION_DENIED);
    const missing = await builder({ claims: { repository: 'acme/app' } });
    await rejects(rpc.sign(missing.c, req), Status.PERMISSION_DENIED);
    const policy = await builder({ policy: 'ci-windows' });
    await rejects(rpc.sign(policy.c, req), Status.PERMISSION_DENIED);
    const ok = await builder({ claims: { repository: 'acme/other', ref: 'refs/heads/main' } });
    assert.equal((await rpc.sign(ok.c, req)).keyVersion, 'release/app@1', 'globs in claims match');
  });

  test('an expired builder certificate is UNAUTHENTICATED with a clear message', async () => {
    clock.offsetMs = -2 * 3_600_000;
    let expired: Clients;
    try {
      expired = (await builder()).c;
    } finally {
      clock.offsetMs = 0;
    }
    await rejects(rpc.sign(expired, { key: 'release/app', digest: Buffer.alloc(32) }), Status.UNAUTHENTICATED, /^client certificate expired$/);
  });

  test('a connection that outlives its builder certificate is refused on the next call', async () => {
    const { c } = await builder();
    const req = { key: 'release/app', digest: Buffer.alloc(32) };
    await rpc.sign(c, req);
    clock.offsetMs = 3_600_000;
    try {
      await rejects(rpc.sign(c, req), Status.UNAUTHENTICATED, /client certificate expired/);
    } finally {
      clock.offsetMs = 0;
    }
    await rpc.sign(c, req);
  });

  test('a builder may not call Admin', async () => {
    const { c } = await builder();
    await rejects(rpc.createKey(c, { name: 'release/mine', algorithm: P256, backend: '' }), Status.PERMISSION_DENIED, /lacks the role admin/);
    await rejects(rpc.adminListKeys(c, { prefix: '' }), Status.PERMISSION_DENIED);
    await rejects(rpc.getKey(admin, { name: 'release/mine' }), Status.NOT_FOUND);
  });

  test('a certificate from an attacker with the same SAN is UNAUTHENTICATED', async () => {
    const subtle = webcrypto.subtle;
    await createDevCa('provider set-up');
    const alg = { name: 'ECDSA', namedCurve: 'P-256' } as const;
    const sign = { name: 'ECDSA', hash: 'SHA-256' } as const;
    const san = `spiffe://sigil.test/builder/tpm/${'ab'.repeat(32)}`;
    const now = Date.now();
    const leafExtensions = (): x509.Extension[] => [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.clientAuth]),
      new x509.SubjectAlternativeNameExtension([{ type: 'url', value: san }]),
    ];
    const pem = async (k: webcrypto.CryptoKey): Promise<string> =>
      `-----BEGIN PRIVATE KEY-----\n${Buffer.from(await subtle.exportKey('pkcs8', k)).toString('base64')}\n-----END PRIVATE KEY-----\n`;
    const req = { key: 'release/app', digest: Buffer.alloc(32) };

    const self = (await subtle.generateKey(alg, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
    const selfSigned = await x509.X509CertificateGenerator.createSelfSigned({
      serialNumber: '01',
      name: 'CN=builder abababababababab',
      notBefore: new Date(now - 60_000),
      notAfter: new Date(now + 600_000),
      keys: self,
      signingAlgorithm: sign,
      extensions: leafExtensions(),
    });
    await rejects(rpc.sign(clientWith(selfSigned.toString('pem'), await pem(self.privateKey)), req), Status.UNAUTHENTICATED, /client certificate not trusted/);

    // A fake CA that copies the identity CA's name and key identifier.
    const real = new x509.X509Certificate(d.daemon.identity!.caCertificatePem());
    const fakeCaKeys = (await subtle.generateKey(alg, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
    const leafKeys = (await subtle.generateKey(alg, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
    const ski = real.getExtension(x509.SubjectKeyIdentifierExtension)!.keyId;
    const leaf = await x509.X509CertificateGenerator.create({
      serialNumber: '02',
      subject: 'CN=builder abababababababab',
      issuer: real.subject,
      notBefore: new Date(now - 60_000),
      notAfter: new Date(now + 600_000),
      publicKey: leafKeys.publicKey,
      signingKey: fakeCaKeys.privateKey,
      signingAlgorithm: sign,
      extensions: [...leafExtensions(), new x509.AuthorityKeyIdentifierExtension(ski)],
    });
    await rejects(rpc.sign(clientWith(leaf.toString('pem'), await pem(leafKeys.privateKey)), req), Status.UNAUTHENTICATED, /client certificate not trusted/);
  });

  test('no caller signs with the identity ca key; signers keep their access', async () => {
    const signer = d.client('signer');
    const ca = d.daemon.identity!.keyName;
    await rejects(rpc.sign(signer, { key: ca, digest: Buffer.alloc(32) }), Status.PERMISSION_DENIED, /reserved for the daemon's own use/);
    await rejects(rpc.sign(signer, { key: `${ca}@1`, digest: Buffer.alloc(32) }), Status.PERMISSION_DENIED, /reserved/);
    const pk = await rpc.getPublicKey(signer, { key: ca });
    assert.ok(pk.pem.includes('BEGIN PUBLIC KEY'), 'its public key is not secret');
    assert.equal((await rpc.sign(signer, { key: 'other/secret', digest: Buffer.alloc(32) })).keyVersion, 'other/secret@1');
    assert.equal((await rpc.sign(signer, { key: 'release/app', digest: Buffer.alloc(32) })).keyVersion, 'release/app@1');
  });

  test('issuances and refusals are logged', () => {
    const logs = d.logs();
    assert.ok(logs.some((l) => l.channel === 'audit' && l.msg === 'builder certificate issued' && /^spiffe:\/\/sigil\.test\/builder\/tpm\/[0-9a-f]{64}$/.test(String(l.san))));
    assert.ok(logs.some((l) => l.msg === 'request refused' && l.reason === 'PERMISSION_DENIED' && /^builder spiffe:/.test(String(l.detail))));
    assert.ok(logs.some((l) => l.msg === 'request refused' && l.reason === 'UNAUTHENTICATED' && l.detail === 'client certificate expired'));
  });
});
