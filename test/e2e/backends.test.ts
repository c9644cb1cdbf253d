import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { status } from '@grpc/grpc-js';
import { CreateKeyCommand, KMSClient } from '@aws-sdk/client-kms';
import { connect, rpc, type Clients } from '../../src/cli/client.ts';
import { Algorithm } from '../../src/gen/sigil/v1/signer.ts';
import { startAwsKmsFake, type AwsKmsFake } from '../fakes/aws-kms.ts';
import { startGcpKmsFake, type GcpKmsFake } from '../fakes/gcp-kms.ts';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.ts';
import { missingTools } from '../helpers/hw.ts';
import { startSwtpm, type Swtpm } from '../helpers/swtpm.ts';
import { verifyWithNode } from '../helpers/verify.ts';

// Cloud KMS (loopback fakes speaking the real wire protocols to the real SDKs) and the TPM (swtpm) behind
// sigild, used exactly like the SoftHSM keys: created, signed with, rotated, disabled and enabled through
// the RPCs and sigilctl, with what the backend itself holds checked after every act.

process.env.AWS_EC2_METADATA_DISABLED = 'true';
process.env.METADATA_SERVER_DETECTION = 'none';
const run = promisify(execFile);
const skip = missingTools('softhsm', 'swtpm', 'openssl');
const SIGILCTL = new URL('../../bin/sigilctl.js', import.meta.url).pathname;
const REGION = 'eu-west-1';
const CREDS = { accessKeyId: 'AKIASIGILE2EBACKEND', secretAccessKey: `e2e-secret-${randomUUID()}` };
// Small numbers so outages show within a test's time: 2 failed calls open the breaker for 300 ms.
const RESILIENCE = { deadlineMs: 2500, retries: 1, backoffMs: 20, breakerFailures: 2, breakerCooldownMs: 300 };
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe('cloud KMS and TPM keys behind sigild', { skip: skip ?? false }, () => {
  let aws: AwsKmsFake;
  let gcp: GcpKmsFake;
  let tpm: Swtpm;
  let d: TestDaemon;
  let admin: Clients;
  let signer: Clients;

  const ctl = async (args: string[], who: 'admin' | 'signer' = 'admin'): Promise<{ stdout: string; stderr: string; code: number }> => {
    const env = { ...process.env, SIGIL_ADDR: d.address, SIGIL_CACERT: d.ca, SIGIL_CLIENT_CERT: d.ids[who].cert, SIGIL_CLIENT_KEY: d.ids[who].key };
    try {
      return { ...(await run(process.execPath, [SIGILCTL, ...args], { env })), code: 0 };
    } catch (err) {
      const e = err as { stdout: string; stderr: string; code: number };
      return { stdout: e.stdout, stderr: e.stderr, code: e.code };
    }
  };
  const metricsText = async (): Promise<string> => (await fetch(`http://${d.daemon.metricsAddress}/metrics`)).text();
  const sign = async (key: string, msg: Buffer) => rpc.sign(signer, { key, digest: createHash('sha256').update(msg).digest(), message: undefined });
  const verifies = async (keyVersion: string, msg: Buffer, sig: Buffer): Promise<boolean> => {
    const pk = await rpc.getPublicKey(signer, { key: keyVersion });
    return verifyWithNode(pk.algorithm, pk.spkiDer, msg, sig);
  };
  const versionUri = async (name: string, version: number): Promise<string> => {
    const k = (await rpc.getKey(admin, { name })).key!;
    const v = k.versions.find((x) => x.version === version);
    assert.ok(v, `${name}@${version} exists`);
    return v.uri;
  };
  const awsState = async (name: string, version: number) => aws.resolve(new URLSearchParams((await versionUri(name, version)).slice('awskms:'.length).replaceAll(';', '&')).get('key-id')!)?.state;
  const gcpState = async (name: string, version: number) => gcp.state.versions.get((await versionUri(name, version)).slice('gcpkms:'.length))?.state;
  const rejects = async (p: Promise<unknown>, code: number, re: RegExp): Promise<void> => {
    await assert.rejects(p, (e: { code?: number; details?: string }) => {
      assert.equal(e.code, code, e.details);
      assert.match(e.details ?? '', re);
      return true;
    });
  };

  before(async () => {
    aws = await startAwsKmsFake({ ...CREDS, region: REGION });
    gcp = await startGcpKmsFake();
    tpm = await startSwtpm();
    const credsDir = await (await import('node:fs/promises')).mkdtemp(join((await import('node:os')).tmpdir(), 'sigil-e2e-creds-'));
    const credentialsFile = join(credsDir, 'aws.json');
    await writeFile(credentialsFile, JSON.stringify(CREDS), { mode: 0o600 });
    d = await startTestDaemon({
      extraBackends: {
        aws: { type: 'awskms', region: REGION, endpoint: aws.endpoint, credentialsFile, timeoutMs: 1000, resilience: RESILIENCE },
        gcp: { type: 'gcpkms', project: 'sigil-e2e', location: 'global', keyRing: 'e2e', apiEndpoint: '127.0.0.1', port: gcp.port, insecure: true, protectionLevel: 'SOFTWARE', timeoutMs: 1000, resilience: RESILIENCE },
        tpm: { type: 'tpm', transport: `swtpm:host=127.0.0.1,port=${tpm.port}`, stateDir: join(credsDir, 'tpm'), timeoutMs: 2000, resilience: RESILIENCE },
      },
    });
    admin = connect({ addr: d.address, ca: d.ca, cert: d.ids.admin.cert, key: d.ids.admin.key });
    signer = connect({ addr: d.address, ca: d.ca, cert: d.ids.signer.cert, key: d.ids.signer.key });
  });

  after(async () => {
    admin?.close();
    signer?.close();
    await d?.stop();
    await aws?.stop();
    await gcp?.stop();
    await tpm?.stop();
  });

  for (const backend of ['aws', 'gcp', 'tpm'] as const) {
    test(`${backend}: sigilctl creates a key there, signs a file, and openssl verifies it with the key's public PEM`, async () => {
      const created = await ctl(['key', 'create', `be/${backend}`, '--alg', 'P256', '--backend', backend, '-o', 'json']);
      assert.equal(created.code, 0, created.stderr);
      const key = JSON.parse(created.stdout) as { backend: string; versions: Array<{ uri: string }> };
      assert.equal(key.backend, backend);
      assert.match(key.versions[0]!.uri, backend === 'aws' ? /^awskms:key-id=arn:aws:kms:/ : backend === 'gcp' ? /^gcpkms:projects\/sigil-e2e\/.*\/cryptoKeyVersions\/1$/ : /^tpm:handle=0x81/);
      const file = join(d.dir, `${backend}.bin`);
      await writeFile(file, randomBytes(100_000));
      const signed = await ctl(['sign', '--key', `be/${backend}`, '--file', file, '--out', `${file}.sig`], 'signer');
      assert.equal(signed.code, 0, signed.stderr);
      const pem = await ctl(['key', 'pubkey', `be/${backend}`, '--out', `${file}.pub.pem`]);
      assert.equal(pem.code, 0, pem.stderr);
      const { stdout } = await run('openssl', ['dgst', '-sha256', '-verify', `${file}.pub.pem`, '-signature', `${file}.sig`, file]);
      assert.match(stdout, /Verified OK/);
    });

    test(`${backend}: rotation makes a new version there; the old signature still verifies; the name signs with the new one`, async () => {
      const msg = Buffer.from(`before rotation on ${backend}`);
      const old = await sign(`be/${backend}`, msg);
      assert.equal(old.keyVersion, `be/${backend}@1`);
      const r = await rpc.rotateKey(admin, { name: `be/${backend}` });
      assert.equal(r.key!.primaryVersion, 2);
      const uris = r.key!.versions.map((v) => v.uri);
      assert.equal(new Set(uris).size, 2, 'each version is its own backend key');
      if (backend === 'gcp') assert.equal(uris[1]!.replace(/\/cryptoKeyVersions\/\d+$/, ''), uris[0]!.replace(/\/cryptoKeyVersions\/\d+$/, ''), 'GCP rotates with a native version of the same CryptoKey');
      const fresh = await sign(`be/${backend}`, msg);
      assert.equal(fresh.keyVersion, `be/${backend}@2`);
      assert.ok(await verifies(old.keyVersion, msg, old.signature));
      assert.ok(await verifies(fresh.keyVersion, msg, fresh.signature));
      assert.equal(await verifies(fresh.keyVersion, msg, old.signature), false);
    });
  }

  test('disable and enable reach the cloud KMS too: the old version is Disabled there, then Enabled again', async () => {
    for (const b of ['aws', 'gcp'] as const) {
      const state = b === 'aws' ? () => awsState('be/aws', 1) : () => gcpState('be/gcp', 1);
      assert.equal(await state(), b === 'aws' ? 'Enabled' : 'ENABLED');
      await rpc.disableKeyVersion(admin, { key: `be/${b}@1`, compromised: false, compromiseTime: undefined });
      assert.equal(await state(), b === 'aws' ? 'Disabled' : 'DISABLED', `${b}: the backend's own state follows sigil's`);
      await rejects(sign(`be/${b}@1`, Buffer.from('x')), status.FAILED_PRECONDITION, /disabled/i);
      await rpc.enableKeyVersion(admin, { key: `be/${b}@1` });
      assert.equal(await state(), b === 'aws' ? 'Enabled' : 'ENABLED');
      const s = await sign(`be/${b}@1`, Buffer.from('enabled again'));
      assert.ok(await verifies(s.keyVersion, Buffer.from('enabled again'), s.signature));
    }
    // The audit log says the backend followed.
    const acts = d.auditEntries().filter((e) => e.act === 'key.disable' && e.result === 'ok' && String(e.key).startsWith('be/'));
    assert.equal(acts.length, 2);
    for (const a of acts) assert.equal((a.detail as Record<string, unknown>)['backendDisabled'], true);
  });

  test('an algorithm a backend lacks is refused clearly, and nothing is made', async () => {
    const before = aws.keys.size;
    await rejects(rpc.createKey(admin, { name: 'be/aws-ed', algorithm: Algorithm.ED25519, backend: 'aws' }), status.INVALID_ARGUMENT, /does not support ED25519/);
    await rejects(rpc.createKey(admin, { name: 'be/tpm-ed', algorithm: Algorithm.ED25519, backend: 'tpm' }), status.INVALID_ARGUMENT, /does not support ED25519/);
    assert.equal(aws.keys.size, before);
    await rejects(rpc.getKey(admin, { name: 'be/aws-ed' }), status.NOT_FOUND, /be\/aws-ed/);
  });

  test('a key made in AWS KMS outside sigil is imported by uri and signs', async () => {
    const kms = new KMSClient({ region: REGION, endpoint: aws.endpoint, credentials: CREDS, maxAttempts: 1 });
    const made = await kms.send(new CreateKeyCommand({ KeySpec: 'ECC_NIST_P256', KeyUsage: 'SIGN_VERIFY', Description: 'made by hand' }));
    kms.destroy();
    const imported = await rpc.importKey(admin, { name: 'be/aws-legacy', uri: `awskms:key-id=${made.KeyMetadata!.Arn!};region=${REGION}`, algorithm: Algorithm.UNSPECIFIED, backend: 'aws' });
    assert.equal(imported.key!.algorithm, Algorithm.ECDSA_P256_SHA256);
    const msg = Buffer.from('legacy');
    const s = await sign('be/aws-legacy', msg);
    assert.ok(await verifies(s.keyVersion, msg, s.signature));
  });

  test('a cloud KMS that goes away answers UNAVAILABLE within the deadline, fails fast while down, and recovers by itself', async () => {
    for (const [b, fake] of [['aws', aws], ['gcp', gcp]] as const) {
      const msg = Buffer.from(`outage ${b}`);
      await fake.stop();
      const t0 = performance.now();
      await rejects(sign(`be/${b}`, msg), status.UNAVAILABLE, /./);
      assert.ok(performance.now() - t0 < RESILIENCE.deadlineMs + 1500, `first failure within the deadline (${Math.round(performance.now() - t0)} ms)`);
      await rejects(sign(`be/${b}`, msg), status.UNAVAILABLE, /./);
      // Two failed calls opened the breaker: the next one is refused without waiting on the network.
      const t1 = performance.now();
      await rejects(sign(`be/${b}`, msg), status.UNAVAILABLE, /circuit breaker open/);
      assert.ok(performance.now() - t1 < 500, 'refused at once while the breaker is open');
      assert.match(await metricsText(), new RegExp(`sigil_backend_breaker_state\\{backend="${b}",state="open"\\} 1`), 'the metrics show the breaker open');
      // Other backends are not affected.
      const other = await sign('be/tpm', msg);
      assert.ok(await verifies(other.keyVersion, msg, other.signature));
      await fake.restart();
      await sleep(RESILIENCE.breakerCooldownMs + 50);
      let s: Awaited<ReturnType<typeof sign>> | undefined;
      for (let i = 0; i < 20 && s === undefined; i++) {
        s = await sign(`be/${b}`, msg).catch(async () => {
          await sleep(100);
          return undefined;
        });
      }
      assert.ok(s, `${b} signs again after it came back, without a daemon restart`);
      assert.match(await metricsText(), new RegExp(`sigil_backend_breaker_state\\{backend="${b}",state="closed"\\} 1`), 'and closed again');
      assert.ok(await verifies(s.keyVersion, msg, s.signature));
    }
  });

  // Last: it restarts the daemon (new port), which the clients above do not follow.
  test("a signature that does not verify under the key version's recorded public key never leaves sigild: INTERNAL, audited, counted", async () => {
    const mismatches = async (b: string): Promise<number> => Number((await metricsText()).match(new RegExp(`sigil_backend_signature_mismatches_total\\{backend="${b}"\\} (\\d+)`))?.[1] ?? 0);
    const digest = createHash('sha256').update('checked').digest();
    // AWS: the service answers for be/aws@2 with be/aws@1's key (a key id that reaches another key).
    aws.signWithKeyOf(new URLSearchParams((await versionUri('be/aws', 1)).slice('awskms:'.length).replaceAll(';', '&')).get('key-id')!);
    try {
      await rejects(rpc.sign(signer, { key: 'be/aws@2', digest, message: undefined }), status.INTERNAL, /./);
    } finally {
      aws.signWithKeyOf(null);
    }
    assert.equal(await mismatches('aws'), 1);
    assert.ok((await rpc.sign(signer, { key: 'be/aws@2', digest, message: undefined })).signature.length > 0);

    // TPM: the store's record of be/tpm@2 says it is be/tpm@1's public key; the TPM signs with the key at
    // @2's handle, so its signature does not verify under what the version recorded.
    const db = join(d.dir, 'sigil.db');
    const uri2 = await versionUri('be/tpm', 2);
    const { DatabaseSync } = await import('node:sqlite');
    const spkiOf = (version: number): Uint8Array => {
      const conn = new DatabaseSync(db);
      try {
        return (conn.prepare("SELECT spki FROM key_versions WHERE name = 'be/tpm' AND version = ?").get(version) as { spki: Uint8Array }).spki;
      } finally {
        conn.close();
      }
    };
    const recordFor2 = async (spki: Uint8Array): Promise<void> => {
      await d.stopDaemon();
      const conn = new DatabaseSync(db);
      try {
        conn.prepare("UPDATE key_versions SET spki = ? WHERE name = 'be/tpm' AND version = 2").run(spki);
      } finally {
        conn.close();
      }
      await d.restart();
    };
    const own = spkiOf(2);
    const before = d.auditEntries().length;
    await recordFor2(spkiOf(1));
    await rejects(rpc.sign(d.client('signer'), { key: 'be/tpm@2', digest, message: undefined }), status.INTERNAL, /./);
    assert.equal(await mismatches('tpm'), 1);
    const refused = d.auditEntries().slice(before).filter((e) => e.act === 'sign' && e.key === 'be/tpm@2');
    assert.deepEqual(refused.map((e) => [e.result, e.reason]), [['failed', 'BACKEND_ERROR']]);
    assert.ok(d.logs().some((l) => l.msg === 'signature from the backend does not verify under the recorded public key; refused' && l.uri === uri2));
    await recordFor2(own);
    const ok = await rpc.sign(d.client('signer'), { key: 'be/tpm@2', digest, message: undefined });
    const pk = await rpc.getPublicKey(d.client('signer'), { key: 'be/tpm@2' });
    assert.ok(verifyWithNode(pk.algorithm, pk.spkiDer, Buffer.from('checked'), ok.signature));
  });
});
