import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { status as Status, credentials, Metadata, type ServiceError } from '@grpc/grpc-js';
import { HealthClient, ReflectionClient } from '../helpers/grpc-clients.ts';
import { Algorithm, type SignStreamResponse } from '../../src/gen/sigil/v1/signer.ts';
import { rpc, type Clients } from '../../src/cli/client.ts';
import { missingTools } from '../helpers/hw.ts';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.ts';
import { inputFor, verifyWithNode, verifyWithOpenssl } from '../helpers/verify.ts';
import { readFileSync } from 'node:fs';

const skip = missingTools('softhsm', 'softhsm2-util', 'openssl', 'pkcs11-tool');

async function code(p: Promise<unknown>): Promise<number> {
  try {
    await p;
  } catch (err) {
    return (err as ServiceError).code;
  }
  return Status.OK;
}

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

const ALG_NAME: Record<number, string> = Object.fromEntries(Object.entries(Algorithm).map(([k, v]) => [v, k]));
const ALGS = [Algorithm.ECDSA_P256_SHA256, Algorithm.ECDSA_P384_SHA384, Algorithm.RSA_PKCS1_SHA256, Algorithm.RSA_PSS_SHA256, Algorithm.ED25519];

describe('sigild end to end over gRPC and TLS', { skip: skip ?? false }, () => {
  let d: TestDaemon;
  let admin: Clients;
  let signer: Clients;

  before(async () => {
    d = await startTestDaemon({ extraConfig: { limits: { maxMessageBytes: 4096, maxBatch: 64 } } });
    admin = d.client('admin');
    signer = d.client('signer');
    for (const alg of ALGS) await rpc.createKey(admin, { name: `e2e/${ALG_NAME[alg]}`.toLowerCase().replaceAll('_', '-'), algorithm: alg, backend: '' });
  });
  after(async () => d?.stop());

  const nameOf = (alg: number): string => `e2e/${ALG_NAME[alg]}`.toLowerCase().replaceAll('_', '-');

  test('every algorithm signs and the signature verifies with node:crypto and openssl', async () => {
    for (const alg of ALGS) {
      const msg = randomBytes(1000);
      const res = await rpc.sign(signer, { key: nameOf(alg), ...inputFor(alg, msg) });
      assert.equal(res.keyVersion, `${nameOf(alg)}@1`);
      assert.equal(res.algorithm, alg);
      const pk = await rpc.getPublicKey(signer, { key: res.keyVersion });
      assert.ok(verifyWithNode(alg, pk.spkiDer, msg, res.signature), `${ALG_NAME[alg]} verifies in node`);
      assert.ok(verifyWithOpenssl(alg, pk.pem, msg, res.signature), `${ALG_NAME[alg]} verifies in openssl`);
      assert.ok(!verifyWithNode(alg, pk.spkiDer, Buffer.concat([msg, Buffer.from('x')]), res.signature), 'another message does not verify');
      if (alg === Algorithm.ECDSA_P256_SHA256 || alg === Algorithm.ECDSA_P384_SHA384) assert.equal(res.signature[0], 0x30, 'ECDSA is DER');
    }
  });

  test('a message (not a digest) is hashed by the daemon for ECDSA and RSA', async () => {
    const msg = Buffer.from('hash me on the server');
    for (const alg of [Algorithm.ECDSA_P256_SHA256, Algorithm.RSA_PSS_SHA256]) {
      const res = await rpc.sign(signer, { key: nameOf(alg), message: msg });
      const pk = await rpc.getPublicKey(signer, { key: nameOf(alg) });
      assert.ok(verifyWithNode(alg, pk.spkiDer, msg, res.signature));
    }
  });

  test('keys are listed and shown with their versions and backend uris', async () => {
    const list = await rpc.adminListKeys(admin, { prefix: 'e2e/' });
    assert.deepEqual(list.keys.map((k) => k.name), ALGS.map(nameOf).sort());
    const k = await rpc.getKey(admin, { name: nameOf(Algorithm.ED25519) });
    assert.equal(k.key!.primaryVersion, 1);
    assert.equal(k.key!.backend, 'softhsm');
    assert.match(k.key!.versions[0]!.uri, /^pkcs11:token=sigil;object=sigil-e2e-ed25519-v1;id=(%[0-9a-f]{2}){16}$/);
    const viaSigner = await rpc.listKeys(signer, { prefix: 'e2e/' });
    assert.equal(viaSigner.keys.length, list.keys.length);
  });

  test('bad input is refused with INVALID_ARGUMENT, NOT_FOUND or RESOURCE_EXHAUSTED and changes nothing', async () => {
    const p256 = nameOf(Algorithm.ECDSA_P256_SHA256);
    await rejects(rpc.sign(signer, { key: p256, digest: Buffer.alloc(31) }), Status.INVALID_ARGUMENT, /digest must be 32 bytes/);
    await rejects(rpc.sign(signer, { key: nameOf(Algorithm.ECDSA_P384_SHA384), digest: Buffer.alloc(32) }), Status.INVALID_ARGUMENT, /48 bytes/);
    await rejects(rpc.sign(signer, { key: p256, digest: Buffer.alloc(0) }), Status.INVALID_ARGUMENT);
    await rejects(rpc.sign(signer, { key: p256 }), Status.INVALID_ARGUMENT, /digest or message is required/);
    await rejects(rpc.sign(signer, { key: '', digest: Buffer.alloc(32) }), Status.INVALID_ARGUMENT, /key is required/);
    await rejects(rpc.sign(signer, { key: 'Bad Name', digest: Buffer.alloc(32) }), Status.INVALID_ARGUMENT, /invalid key name/);
    await rejects(rpc.sign(signer, { key: `${p256}@0`, digest: Buffer.alloc(32) }), Status.INVALID_ARGUMENT, /invalid key version/);
    await rejects(rpc.sign(signer, { key: 'no/such-key', digest: Buffer.alloc(32) }), Status.NOT_FOUND, /no key named no\/such-key/);
    await rejects(rpc.sign(signer, { key: `${p256}@7`, digest: Buffer.alloc(32) }), Status.NOT_FOUND, /no version 7/);
    await rejects(rpc.sign(signer, { key: nameOf(Algorithm.ED25519), digest: Buffer.alloc(32) }), Status.INVALID_ARGUMENT, /send message, not digest/);
    await rejects(rpc.sign(signer, { key: nameOf(Algorithm.ED25519), message: Buffer.alloc(4097) }), Status.RESOURCE_EXHAUSTED, /limit is 4096/);
    // A whole message at the cap still signs.
    const atCap = randomBytes(4096);
    const ok = await rpc.sign(signer, { key: nameOf(Algorithm.ED25519), message: atCap });
    const pk = await rpc.getPublicKey(signer, { key: nameOf(Algorithm.ED25519) });
    assert.ok(verifyWithNode(Algorithm.ED25519, pk.spkiDer, atCap, ok.signature));

    const before = await rpc.adminListKeys(admin, { prefix: '' });
    await rejects(rpc.createKey(admin, { name: 'x', algorithm: 99 as Algorithm, backend: '' }), Status.INVALID_ARGUMENT, /unknown algorithm 99/);
    await rejects(rpc.createKey(admin, { name: 'x', algorithm: Algorithm.UNSPECIFIED, backend: '' }), Status.INVALID_ARGUMENT, /algorithm is required/);
    await rejects(rpc.createKey(admin, { name: '', algorithm: Algorithm.ED25519, backend: '' }), Status.INVALID_ARGUMENT, /key name is required/);
    await rejects(rpc.createKey(admin, { name: '../etc', algorithm: Algorithm.ED25519, backend: '' }), Status.INVALID_ARGUMENT);
    await rejects(rpc.createKey(admin, { name: 'x', algorithm: Algorithm.ED25519, backend: 'nope' }), Status.INVALID_ARGUMENT, /no backend named "nope"/);
    await rejects(rpc.createKey(admin, { name: p256, algorithm: Algorithm.ED25519, backend: '' }), Status.ALREADY_EXISTS);
    await rejects(rpc.getKey(admin, { name: 'missing' }), Status.NOT_FOUND);
    await rejects(rpc.importKey(admin, { name: 'imp', uri: 'pkcs11:token=sigil;object=does-not-exist', algorithm: 0, backend: '' }), Status.NOT_FOUND);
    await rejects(rpc.importKey(admin, { name: 'imp', uri: 'not a uri', algorithm: 0, backend: '' }), Status.INVALID_ARGUMENT);
    await rejects(rpc.importKey(admin, { name: 'imp', uri: 'pkcs11:token=other;object=x', algorithm: 0, backend: '' }), Status.INVALID_ARGUMENT);
    await rejects(rpc.importKey(admin, { name: 'imp', uri: (await rpc.getKey(admin, { name: p256 })).key!.versions[0]!.uri, algorithm: 0, backend: '' }), Status.ALREADY_EXISTS, /already registered/);
    const after = await rpc.adminListKeys(admin, { prefix: '' });
    assert.deepEqual(after, before, 'refused requests changed nothing');
  });

  test('clients without a trusted certificate are refused; roles are enforced', async () => {
    const req = { key: nameOf(Algorithm.ECDSA_P256_SHA256), digest: Buffer.alloc(32) };
    assert.equal(Status[await code(rpc.sign(d.client('anonymous'), req))], 'UNAUTHENTICATED');
    assert.equal(Status[await code(rpc.sign(d.client('outsider'), req))], 'UNAUTHENTICATED', 'a certificate from another CA (same CN as the admin) is not trusted');
    assert.equal(Status[await code(rpc.createKey(d.client('outsider'), { name: 'evil', algorithm: Algorithm.ED25519, backend: '' }))], 'UNAUTHENTICATED');
    assert.equal(Status[await code(rpc.sign(d.client('nobody'), req))], 'PERMISSION_DENIED');
    assert.equal(Status[await code(rpc.createKey(signer, { name: 'evil', algorithm: Algorithm.ED25519, backend: '' }))], 'PERMISSION_DENIED');
    assert.equal(Status[await code(rpc.adminListKeys(signer, { prefix: '' }))], 'PERMISSION_DENIED');
    assert.equal(Status[await code(rpc.sign(admin, req))], 'PERMISSION_DENIED', 'the admin role alone does not sign');
    await rejects(rpc.getKey(admin, { name: 'evil' }), Status.NOT_FOUND);
    const refusals = d.logs().filter((l) => l.msg === 'request refused');
    assert.ok(refusals.some((l) => l.reason === 'UNAUTHENTICATED' && l.rpc === 'Sign'));
    assert.ok(refusals.some((l) => l.reason === 'PERMISSION_DENIED' && l.rpc === 'CreateKey' && /CN=ci-signer-1/.test(String(l.detail))));
  });

  test('the PIN never appears in any log line or audit entry, and key creation is in the audit log', () => {
    const pin = readFileSync(d.token.pinFile, 'utf8').trim();
    const all = d.logs();
    const entries = d.auditEntries();
    assert.ok(all.length > 0 && entries.length > 0);
    for (const l of all) assert.ok(!JSON.stringify(l).includes(pin), 'a log line holds the pin');
    for (const e of entries) assert.ok(!JSON.stringify(e).includes(pin), 'an audit entry holds the pin');
    const created = entries.filter((l) => l.act === 'key.create' && l.result === 'ok' && l.key?.startsWith('e2e/'));
    assert.equal(created.length, 5);
    assert.equal(created[0]!.who, 'CN=test-admin');
    assert.match(String(created[0]!.key), /^e2e\/.+@1$/);
  });

  test('health is open to anyone; reflection only to admins', async () => {
    const creds = credentials.createSsl(readFileSync(d.ca));
    const health = new HealthClient(d.address, creds);
    const res = await new Promise<{ status: string }>((resolve, reject) => health.check({ service: 'sigil.v1.Signer' }, (e, r) => (e ? reject(e) : resolve(r!))));
    assert.equal(res.status, 'SERVING');
    health.close();
    const services = (who: 'admin' | 'anonymous' | 'signer'): Promise<string[]> => listServices(d, who);
    assert.ok((await services('admin')).includes('sigil.v1.Signer'));
    await assert.rejects(services('anonymous'), (e: ServiceError) => e.code === Status.UNAUTHENTICATED);
    await assert.rejects(services('signer'), (e: ServiceError) => e.code === Status.PERMISSION_DENIED);
  });

  test('200 concurrent signs on one token all verify', async () => {
    const alg = Algorithm.ECDSA_P256_SHA256;
    const pk = await rpc.getPublicKey(signer, { key: nameOf(alg) });
    const msgs = Array.from({ length: 200 }, (_, i) => Buffer.from(`artifact ${i}`));
    const sigs = await Promise.all(msgs.map((m) => rpc.sign(signer, { key: nameOf(alg), ...inputFor(alg, m) })));
    sigs.forEach((s, i) => assert.ok(verifyWithNode(alg, pk.spkiDer, msgs[i]!, s.signature), `signature ${i}`));
    const rsa = Algorithm.RSA_PKCS1_SHA256;
    const rpk = await rpc.getPublicKey(signer, { key: nameOf(rsa) });
    const rsigs = await Promise.all(msgs.slice(0, 50).map((m) => rpc.sign(signer, { key: nameOf(rsa), ...inputFor(rsa, m) })));
    rsigs.forEach((s, i) => assert.ok(verifyWithNode(rsa, rpk.spkiDer, msgs[i]!, s.signature), `rsa signature ${i}`));
  });

  test('SignBatch answers each item on its own; malformed batches are refused whole', async () => {
    const alg = Algorithm.ECDSA_P384_SHA384;
    const m = Buffer.from('batch');
    const res = await rpc.signBatch(signer, {
      requests: [
        { key: nameOf(alg), ...inputFor(alg, m) },
        { key: nameOf(alg), digest: Buffer.alloc(3) },
        { key: 'no/such', digest: Buffer.alloc(48) },
        { key: nameOf(Algorithm.ED25519), message: m },
      ],
    });
    assert.equal(res.results.length, 4);
    const pk = await rpc.getPublicKey(signer, { key: nameOf(alg) });
    assert.ok(verifyWithNode(alg, pk.spkiDer, m, res.results[0]!.signature!.signature));
    assert.equal(res.results[1]!.error!.code, Status.INVALID_ARGUMENT);
    assert.equal(res.results[1]!.error!.reason, 'INVALID_ARGUMENT');
    assert.equal(res.results[2]!.error!.code, Status.NOT_FOUND);
    assert.equal(res.results[2]!.error!.reason, 'KEY_NOT_FOUND');
    assert.equal(res.results[3]!.signature!.keyVersion, `${nameOf(Algorithm.ED25519)}@1`);
    await rejects(rpc.signBatch(signer, { requests: [] }), Status.INVALID_ARGUMENT, /empty/);
    await rejects(rpc.signBatch(signer, { requests: Array.from({ length: 65 }, () => ({ key: nameOf(alg), digest: Buffer.alloc(48) })) }), Status.INVALID_ARGUMENT, /at most 64/);
    await rejects(rpc.signBatch(admin, { requests: [{ key: nameOf(alg), digest: Buffer.alloc(48) }] }), Status.PERMISSION_DENIED);
  });

  test('SignStream pipelines 1000 requests; every answer carries its id and verifies', async () => {
    const alg = Algorithm.ECDSA_P256_SHA256;
    const pk = await rpc.getPublicKey(signer, { key: nameOf(alg) });
    const stream = signer.signer.signStream();
    const got = new Map<number, SignStreamResponse>();
    const done = new Promise<void>((resolve, reject) => {
      stream.on('data', (r: SignStreamResponse) => got.set(r.id, r));
      stream.on('end', resolve);
      stream.on('error', reject);
    });
    const msgs = Array.from({ length: 1000 }, (_, i) => Buffer.from(`stream ${i}`));
    msgs.forEach((m, i) => stream.write({ id: i + 1, request: { key: nameOf(alg), ...inputFor(alg, m) } }));
    stream.write({ id: 5000, request: { key: nameOf(alg), digest: Buffer.alloc(1) } });
    stream.end();
    await done;
    assert.equal(got.size, 1001);
    msgs.forEach((m, i) => assert.ok(verifyWithNode(alg, pk.spkiDer, m, got.get(i + 1)!.result!.signature!.signature), `stream ${i}`));
    assert.equal(got.get(5000)!.result!.error!.code, Status.INVALID_ARGUMENT);
  });

  test('SignStream refuses a caller without the signer role', async () => {
    const stream = d.client('nobody').signer.signStream();
    const err = await new Promise<ServiceError>((resolve) => {
      stream.on('error', resolve);
      stream.on('data', () => {});
      stream.write({ id: 1, request: { key: 'x', digest: Buffer.alloc(32) } });
    });
    assert.equal(err.code, Status.PERMISSION_DENIED);
  });

  test('a key made by pkcs11-tool is imported by uri and signs', async () => {
    const env = { ...process.env, SOFTHSM2_CONF: d.token.conf };
    const pin = readFileSync(d.token.pinFile, 'utf8').trim();
    execFileSync('pkcs11-tool', ['--module', d.token.module, '--token-label', 'sigil', '--login', '--pin', pin, '--keypairgen', '--key-type', 'EC:prime256v1', '--label', 'legacy-ec', '--id', 'c0ffee'], { env, stdio: 'ignore' });
    execFileSync('pkcs11-tool', ['--module', d.token.module, '--token-label', 'sigil', '--login', '--pin', pin, '--keypairgen', '--key-type', 'rsa:2048', '--label', 'legacy-rsa', '--id', 'beef'], { env, stdio: 'ignore' });
    const ec = await rpc.importKey(admin, { name: 'legacy/ec', uri: 'pkcs11:token=sigil;object=legacy-ec', algorithm: Algorithm.UNSPECIFIED, backend: '' });
    assert.equal(ec.key!.algorithm, Algorithm.ECDSA_P256_SHA256, 'algorithm inferred from the key');
    assert.equal(ec.key!.versions[0]!.generated, false);
    assert.match(ec.key!.versions[0]!.uri, /id=%c0%ff%ee/);
    await rejects(rpc.importKey(admin, { name: 'legacy/rsa', uri: 'pkcs11:id=%be%ef', algorithm: Algorithm.UNSPECIFIED, backend: '' }), Status.INVALID_ARGUMENT, /explicit algorithm/);
    await rejects(rpc.importKey(admin, { name: 'legacy/rsa', uri: 'pkcs11:id=%be%ef', algorithm: Algorithm.ED25519, backend: '' }), Status.INVALID_ARGUMENT, /cannot sign ED25519/);
    const rsa = await rpc.importKey(admin, { name: 'legacy/rsa', uri: 'pkcs11:id=%be%ef', algorithm: Algorithm.RSA_PSS_SHA256, backend: '' });
    for (const [name, alg] of [['legacy/ec', Algorithm.ECDSA_P256_SHA256], ['legacy/rsa', rsa.key!.algorithm]] as const) {
      const msg = Buffer.from(`imported ${name}`);
      const s = await rpc.sign(signer, { key: name, ...inputFor(alg, msg) });
      const pk = await rpc.getPublicKey(signer, { key: name });
      assert.ok(verifyWithOpenssl(alg, pk.pem, msg, s.signature), `${name} verifies in openssl`);
    }
  });

  test('the metrics endpoint counts requests, errors by code and signatures per backend', async () => {
    const body = await (await fetch(`http://${d.daemon.metricsAddress}/metrics`)).text();
    assert.match(body, /sigil_requests_total\{rpc="Sign",code="OK"\} \d+/);
    assert.match(body, /sigil_requests_total\{rpc="Sign",code="3"\} \d+/);
    assert.match(body, /sigil_signatures_total\{backend="softhsm",algorithm="ECDSA_P256_SHA256"\} \d+/);
    assert.match(body, /sigil_request_duration_seconds_bucket\{le="0.005",rpc="Sign"\}/);
    assert.match(body, /sigil_requests_in_flight\{rpc="Sign"\} 0/);
    assert.match(body, /sigil_backend_sign_duration_seconds_count\{backend="softhsm"\} [1-9]\d*/);
    // The audit log every answer waits for, and each backend's breaker.
    const num = (re: RegExp): number => Number(re.exec(body)?.[1] ?? NaN);
    assert.equal(num(/^sigil_audit_entries_total (\d+)$/m), d.daemon.audit.size, 'entries made durable = the log size');
    assert.equal(num(/^sigil_audit_log_up (\d)$/m), 1);
    assert.equal(num(/^sigil_audit_write_failures_total (\d+)$/m), 0);
    assert.ok(num(/^sigil_audit_commit_seconds_count (\d+)$/m) > 0);
    assert.match(body, /sigil_backend_breaker_state\{backend="softhsm",state="closed"\} 1/);
    assert.match(body, /sigil_backend_breaker_state\{backend="softhsm",state="open"\} 0/);
  });
});


async function listServices(d: TestDaemon, who: 'admin' | 'anonymous' | 'signer'): Promise<string[]> {
  const id = who === 'anonymous' ? undefined : d.ids[who];
  const creds = credentials.createSsl(readFileSync(d.ca), id ? readFileSync(id.key) : null, id ? readFileSync(id.cert) : null);
  const client = new ReflectionClient(d.address, creds);
  try {
    return await new Promise<string[]>((resolve, reject) => {
      const call = client.serverReflectionInfo(new Metadata());
      call.on('data', (r: { list_services_response?: { service: Array<{ name: string }> } }) => {
        resolve(r.list_services_response?.service.map((s) => s.name) ?? []);
        call.end();
      });
      call.on('error', reject);
      call.write({ list_services: '' });
    });
  } finally {
    client.close();
  }
}
