import 'reflect-metadata';
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, X509Certificate } from 'node:crypto';
import { execFile, spawnSync } from 'node:child_process';
import { promisify } from 'node:util';
import { readFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { status as Status } from '@grpc/grpc-js';
import { rejectsWith } from '../helpers/assert.ts';
import { missingTools } from '../helpers/hw.ts';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.ts';
import { builderConfig } from '../helpers/builder.ts';
import { startSwtpm, type Swtpm } from '../helpers/swtpm.ts';
import { strictTrustedRootParser } from '../helpers/sigstore-schema.ts';
import { rpc, type Clients } from '../../src/cli/client.ts';
import { Attestor, builderClients, type AttestorOptions } from '../../src/cli/agent/attestor.ts';

const skip = missingTools('swtpm', 'swtpm_setup', 'openssl', 'softhsm');

let sw: Swtpm;
let td: TestDaemon;
let anon: Clients;
let admin: Clients;

before(async () => {
  if (skip) return;
  sw = await startSwtpm();
  td = await startTestDaemon({
    extraConfig: builderConfig(sw.ekCaFile),
  });
  anon = td.client('anonymous');
  admin = td.client('admin');
  await rpc.createKey(admin, { name: 'ci/provenance', algorithm: 1, backend: '' });
});

after(async () => {
  await td?.stop();
  await sw?.stop();
});

const agent = (o: Partial<AttestorOptions> = {}): Attestor =>
  new Attestor({ addr: td.address, ca: td.ca, tpm: sw.tcti, policy: 'ci', ek: 'rsa', ak: 'ecc', claims: { repository: 'acme/widgets' }, lifetimeSeconds: 0, ...o });

const sign = (c: Clients) => rpc.sign(c, { key: 'ci/provenance', digest: createHash('sha256').update('artifact').digest(), message: undefined });

function openssl(args: string[]): { code: number; out: string } {
  const r = spawnSync('openssl', args, { encoding: 'utf8' });
  return { code: r.status ?? -1, out: `${r.stdout}${r.stderr}` };
}

const httpBase = () => `http://${td.daemon.metricsAddress}`;

test('revoking an identity by serial: the next Sign on the open connection is refused; openssl -crl_check says revoked', { skip: skip ?? false }, async () => {
  const a = agent();
  const revokedId = await a.enroll();
  const keptId = await a.enroll();
  const c = builderClients(td.address, td.ca, revokedId);
  const kept = builderClients(td.address, td.ca, keptId);
  try {
    await sign(c);
    const serial = new X509Certificate(revokedId.certificatePem).serialNumber;
    await rejectsWith(rpc.revokeIdentity(td.client('signer'), { serial, reason: 'keyCompromise' }), Status.PERMISSION_DENIED, /lacks the role admin/);
    await rejectsWith(rpc.revokeIdentity(td.client('auditor'), { serial, reason: 'keyCompromise' }), Status.PERMISSION_DENIED, /lacks the role admin/);
    await rejectsWith(rpc.revokeIdentity(anon, { serial, reason: 'keyCompromise' }), Status.UNAUTHENTICATED, /client certificate/);
    await sign(c);
    const r = await rpc.revokeIdentity(admin, { serial, reason: 'keyCompromise' });
    assert.equal(r.revoked!.serial, serial.toLowerCase().replace(/^0+/, ''));
    assert.equal(r.revoked!.revokedBy, 'CN=test-admin');
    // Same channel, same TLS connection: refused from now on.
    await rejectsWith(sign(c), Status.UNAUTHENTICATED, /^builder identity revoked$/, 'IDENTITY_REVOKED');
    await sign(kept);
    assert.ok(td.auditEntries().some((l) => l.act === 'identity.revoke' && l.result === 'ok'), 'the revocation is audited');
    assert.ok(td.auditEntries().some((l) => l.act === 'request.refused' && (l.detail as { why?: string } | undefined)?.why === 'builder identity revoked'), 'the refusal is audited');

    // The CRL over gRPC without a client certificate, and over plain HTTP.
    const crl = await rpc.getCrl(anon, { caVersion: 0 });
    const dir = td.dir;
    await writeFile(join(dir, 'id-ca.pem'), revokedId.caCertificatePem);
    await writeFile(join(dir, 'revoked.pem'), revokedId.certificatePem);
    await writeFile(join(dir, 'kept.pem'), keptId.certificatePem);
    await writeFile(join(dir, 'crl.pem'), crl.pem);
    const bad = openssl(['verify', '-crl_check', '-CAfile', join(dir, 'id-ca.pem'), '-CRLfile', join(dir, 'crl.pem'), join(dir, 'revoked.pem')]);
    assert.notEqual(bad.code, 0);
    assert.match(bad.out, /certificate revoked/);
    const good = openssl(['verify', '-crl_check', '-CAfile', join(dir, 'id-ca.pem'), '-CRLfile', join(dir, 'crl.pem'), join(dir, 'kept.pem')]);
    assert.equal(good.code, 0, good.out);
    const der = await fetch(`${httpBase()}/crl`);
    assert.equal(der.headers.get('content-type'), 'application/pkix-crl');
    assert.ok(Buffer.from(await der.arrayBuffer()).equals(crl.der));
    assert.equal(await (await fetch(`${httpBase()}/crl.pem`)).text(), crl.pem);

    const list = await rpc.listRevocations(td.client('auditor'), {});
    assert.deepEqual(list.identities.map((i) => i.serial), [r.revoked!.serial]);
    await rejectsWith(rpc.listRevocations(td.client('signer'), {}), Status.PERMISSION_DENIED, /lacks the role admin or auditor/);
  } finally {
    c.close();
    kept.close();
  }
});

test('revoking a builder by ek hash: its identity stops working, renewal and a new enrollment are refused and audited', { skip: skip ?? false }, async () => {
  const a = agent();
  const id = await a.enroll();
  const ekHash = id.spiffeId.slice(id.spiffeId.lastIndexOf('/') + 1);
  const c = builderClients(td.address, td.ca, id);
  try {
    await sign(c);
    await rpc.revokeBuilder(admin, { ekHash, reason: 'cessationOfOperation', akName: '' });
    await rejectsWith(sign(c), Status.UNAUTHENTICATED, /^builder tpm revoked$/, 'BUILDER_REVOKED');
    await rejectsWith(a.renew(id), Status.UNAUTHENTICATED, /builder tpm revoked/, 'BUILDER_REVOKED');
    assert.ok(
      td.auditEntries().some((l) => l.act === 'request.refused' && (l.detail as { rpc?: string; why?: string } | undefined)?.rpc === 'BeginEnrollment' && /builder tpm revoked/.test(String((l.detail as { why?: string }).why))),
      'the refused renewal is audited',
    );
    const seen = td.logs().length;
    await rejectsWith(agent().enroll(), Status.PERMISSION_DENIED, /builder tpm revoked/, 'BUILDER_REVOKED');
    assert.ok(td.logs().slice(seen).some((l) => l.msg === 'enrollment refused' && l.detail === 'builder tpm revoked'), 'the refused enrollment is audited');
    assert.ok(td.auditEntries().some((l) => l.act === 'builder.revoke' && l.result === 'ok'));
    await rejectsWith(rpc.revokeBuilder(admin, { ekHash, reason: '', akName: '' }), Status.FAILED_PRECONDITION, /already revoked/);
  } finally {
    c.close();
  }
});

test('the trusted root over gRPC without a client certificate and over HTTP; its signature verifies with openssl', { skip: skip ?? false }, async () => {
  const r = await rpc.getTrustedRoot(anon, {});
  const doc = JSON.parse(r.json.toString()) as { mediaType: string; certificateAuthorities: Array<{ certChain: { certificates: Array<{ rawBytes: string }> } }>; sigilKeyVersions: Array<{ hint: string }> };
  assert.equal(doc.mediaType, 'application/vnd.dev.sigstore.trustedroot+json;version=0.1');
  assert.equal(doc.certificateAuthorities[0]!.certChain.certificates[0]!.rawBytes, td.daemon.identity!.caCertificateDer().toString('base64'));
  assert.deepEqual(doc.sigilKeyVersions.map((k) => k.hint), ['ci/provenance@1'], 'reserved keys are not signing keys');
  assert.equal(r.keyVersion, 'sigil/trust-root@1');
  const dir = td.dir;
  await writeFile(join(dir, 'trusted_root.json'), r.json);
  await writeFile(join(dir, 'trusted_root.json.sig'), r.signature);
  await writeFile(join(dir, 'root.pub'), r.publicKeyPem);
  const v = openssl(['dgst', '-sha256', '-verify', join(dir, 'root.pub'), '-signature', join(dir, 'trusted_root.json.sig'), join(dir, 'trusted_root.json')]);
  assert.equal(v.code, 0, v.out);
  assert.match(v.out, /Verified OK/);
  const json = Buffer.from(await (await fetch(`${httpBase()}/trusted-root.json`)).arrayBuffer());
  const sig = Buffer.from(await (await fetch(`${httpBase()}/trusted-root.json.sig`)).arrayBuffer());
  assert.ok(json.equals(r.json));
  assert.ok(sig.equals(r.signature), 'an unchanged document is not signed again');
  // The sigstore form: the same document with Sigstore's fields only, signed by the same key version, read by
  // a strict proto JSON parser (which refuses the full document for its sigilKeyVersions).
  const parse = strictTrustedRootParser();
  assert.throws(() => parse(r.json), /sigil(IssuedAt|KeyVersions)/);
  parse(r.sigstoreJson);
  const { sigilKeyVersions: _, sigilIssuedAt: _i, sigilExpiresAt: _e, ...sigstoreFields } = doc as typeof doc & { sigilIssuedAt: string; sigilExpiresAt: string };
  assert.deepEqual(JSON.parse(r.sigstoreJson.toString()), sigstoreFields);
  await writeFile(join(dir, 'trusted_root.sigstore.json'), r.sigstoreJson);
  await writeFile(join(dir, 'trusted_root.sigstore.json.sig'), r.sigstoreSignature);
  const vs = openssl(['dgst', '-sha256', '-verify', join(dir, 'root.pub'), '-signature', join(dir, 'trusted_root.sigstore.json.sig'), join(dir, 'trusted_root.sigstore.json')]);
  assert.match(vs.out, /Verified OK/);
  assert.ok(Buffer.from(await (await fetch(`${httpBase()}/trusted-root.sigstore.json`)).arrayBuffer()).equals(r.sigstoreJson));
  assert.ok(Buffer.from(await (await fetch(`${httpBase()}/trusted-root.sigstore.json.sig`)).arrayBuffer()).equals(r.sigstoreSignature));
  // No RPC may sign with the root key.
  await rejectsWith(rpc.sign(td.client('signer'), { key: 'sigil/trust-root', digest: createHash('sha256').update('x').digest(), message: undefined }), Status.PERMISSION_DENIED, /reserved|may not/);
  // A new key changes the document, which is signed anew.
  await rpc.createKey(admin, { name: 'release/fw', algorithm: 1, backend: '' });
  const r2 = await rpc.getTrustedRoot(anon, {});
  assert.ok(!r2.json.equals(r.json));
  assert.ok((JSON.parse(r2.json.toString()) as typeof doc).sigilKeyVersions.some((k) => k.hint === 'release/fw@1'));
});

const SIGILCTL = new URL('../../bin/sigilctl.js', import.meta.url).pathname;

test('sigilctl: crl get, trusted-root get, revocations list, revoke (admin only)', { skip: skip ?? false }, async () => {
  // The daemon runs in this process: the CLI must run asynchronously.
  const ctl = async (args: string[], who?: 'admin' | 'signer'): Promise<{ stdout: string; stderr: string; code: number }> => {
    const env = { ...process.env, SIGIL_ADDR: td.address, SIGIL_CACERT: td.ca, ...(who ? { SIGIL_CLIENT_CERT: td.ids[who].cert, SIGIL_CLIENT_KEY: td.ids[who].key } : {}) };
    try {
      return { ...(await promisify(execFile)(process.execPath, [SIGILCTL, ...args], { env })), code: 0 };
    } catch (err) {
      const e = err as { stdout: string; stderr: string; code: number };
      return { stdout: e.stdout, stderr: e.stderr, code: e.code };
    }
  };
  const dir = td.dir;
  const crl = await ctl(['crl', 'get', '--out', join(dir, 'cli-crl.der'), '--der', '--output', 'json']);
  assert.equal(crl.code, 0, crl.stderr);
  assert.ok(readFileSync(join(dir, 'cli-crl.der')).equals((await rpc.getCrl(anon, { caVersion: 0 })).der));
  assert.equal((JSON.parse(crl.stdout) as { file: string }).file, join(dir, 'cli-crl.der'));
  const pem = await ctl(['crl', 'get']);
  assert.match(pem.stdout, /^-----BEGIN X509 CRL-----/);

  const tr = await ctl(['trusted-root', 'get', '--out', join(dir, 'cli-tr.json'), '--sig', join(dir, 'cli-tr.sig'), '--pub', join(dir, 'cli-root.pub')]);
  assert.equal(tr.code, 0, tr.stderr);
  const v = openssl(['dgst', '-sha256', '-verify', join(dir, 'cli-root.pub'), '-signature', join(dir, 'cli-tr.sig'), join(dir, 'cli-tr.json')]);
  assert.match(v.out, /Verified OK/);
  const st = await ctl(['trusted-root', 'get', '--sigstore-out', join(dir, 'cli-st.json'), '--sigstore-sig', join(dir, 'cli-st.sig')]);
  assert.equal(st.code, 0, st.stderr);
  assert.match(st.stdout, /^wrote the trusted root's sigstore form to .*cli-st\.json, that form's signature to /);
  strictTrustedRootParser()(readFileSync(join(dir, 'cli-st.json')));
  assert.match(openssl(['dgst', '-sha256', '-verify', join(dir, 'cli-root.pub'), '-signature', join(dir, 'cli-st.sig'), join(dir, 'cli-st.json')]).out, /Verified OK/);

  const denied = await ctl(['revoke', 'builder', 'ab'.repeat(32)], 'signer');
  assert.equal(denied.code, 1);
  assert.match(denied.stderr, /PERMISSION_DENIED: CN=ci-signer-1 lacks the role admin/);
  const bad = await ctl(['revoke', 'identity', 'zz'], 'admin');
  assert.match(bad.stderr, /INVALID_ARGUMENT: serial must be hexadecimal/);
  const ok = await ctl(['revoke', 'builder', 'AB'.repeat(32), '--reason', 'superseded', '--output', 'json'], 'admin');
  assert.equal(ok.code, 0, ok.stderr);
  assert.equal((JSON.parse(ok.stdout) as { ekHash: string; reason: string }).reason, 'superseded');
  const list = await ctl(['revocations', 'list', '--output', 'json'], 'admin');
  const parsed = JSON.parse(list.stdout) as { builders: Array<{ ekHash: string; reason: string }> };
  assert.ok(parsed.builders.some((b) => b.ekHash === 'ab'.repeat(32) && b.reason === 'superseded'));
});
