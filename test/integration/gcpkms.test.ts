import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createPublicKey } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { credentials, status } from '@grpc/grpc-js';
import { KeyManagementServiceClient } from '@google-cloud/kms';
import { isSigilError, type ErrorCode } from '../../src/errors.ts';
import { silentLogger } from '../../src/log.ts';
import { crc32c } from '../../src/signers/gcpkms/crc32c.ts';
import { open, type GcpKmsBackend } from '../../src/signers/gcpkms/index.ts';
import type { Algorithm, BackendKey } from '../../src/signers/signer.ts';
import { missingTools } from '../helpers/hw.ts';
import { startGcpKmsFake, type GcpKmsFake } from '../fakes/gcp-kms.ts';
import { inputFor, verifies as verifyWith } from '../conformance/suite.ts';

process.env.METADATA_SERVER_DETECTION = 'none';

const run = promisify(execFile);
const RING = 'projects/sigil-test/locations/global/keyRings/integration';
const TIMEOUT_MS = 1000;

const digestFor = inputFor;

function verifies(alg: Algorithm, k: BackendKey, msg: Buffer, sig: Buffer): boolean {
  return verifyWith(alg, createPublicKey({ key: k.spki, format: 'der', type: 'spki' }), msg, sig);
}

async function rejectsWith(p: Promise<unknown>, code: ErrorCode, message?: RegExp): Promise<void> {
  await assert.rejects(p, (e) => {
    assert.ok(isSigilError(e), `expected a SigilError, got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    if (message) assert.match(e.message, message);
    assert.doesNotMatch(e.message, /\.$/);
    return true;
  });
}

describe('gcpkms backend against the fake Cloud KMS', () => {
  let fake: GcpKmsFake;
  let backend: GcpKmsBackend;
  let raw: KeyManagementServiceClient;
  let work: string;

  before(async () => {
    fake = await startGcpKmsFake();
    backend = await open(
      { type: 'gcpkms', project: 'sigil-test', location: 'global', keyRing: 'integration', apiEndpoint: '127.0.0.1', port: fake.port, insecure: true, protectionLevel: 'SOFTWARE', timeoutMs: TIMEOUT_MS },
      { name: 'gcp', log: silentLogger(), production: false },
    );
    // An independent client of the same fake, standing in for an operator or for a process that crashed.
    raw = new KeyManagementServiceClient({ apiEndpoint: '127.0.0.1', port: fake.port, sslCreds: credentials.createInsecure(), universeDomain: 'googleapis.com' });
    work = await mkdtemp(join(tmpdir(), 'sigil-gcpkms-'));
  });

  after(async () => {
    await backend?.close();
    await raw?.close();
    await fake?.stop();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('1. rotation: v1 and v2 of one sigil key are two native versions of one CryptoKey, found by label', async () => {
    const v1 = await backend.createKey({ label: 'sigil-release-ci-v1', algorithm: 'ECDSA_P256_SHA256' });
    const v2 = await backend.createKey({ label: 'sigil-release-ci-v2', algorithm: 'ECDSA_P256_SHA256' });
    assert.equal(v1.uri, `gcpkms:${RING}/cryptoKeys/sigil-release-ci/cryptoKeyVersions/1`);
    assert.equal(v2.uri, `gcpkms:${RING}/cryptoKeys/sigil-release-ci/cryptoKeyVersions/2`);
    assert.notDeepEqual(v1.spki, v2.spki);
    const ck = fake.state.cryptoKeys.get(`${RING}/cryptoKeys/sigil-release-ci`)!;
    assert.equal(ck.algorithm, 'EC_SIGN_P256_SHA256');
    assert.equal(ck.protectionLevel, 'SOFTWARE');
    assert.deepEqual(ck.labels, { 'managed-by': 'sigil', 'sigil-v1': '1', 'sigil-v2': '2' });
    assert.equal(await backend.findKeyByLabel('sigil-release-ci-v1'), v1.uri);
    assert.equal(await backend.findKeyByLabel('sigil-release-ci-v2'), v2.uri);
    assert.equal(await backend.findKeyByLabel('sigil-release-ci-v3'), null);
    assert.equal(await backend.findKeyByLabel('sigil-no-such-key-v1'), null);
    // A CryptoKey URI without a version names its newest ENABLED version.
    assert.equal((await backend.getKey(`gcpkms:${RING}/cryptoKeys/sigil-release-ci`)).uri, v2.uri);
    // A label a live version holds is not created twice.
    await rejectsWith(backend.createKey({ label: 'sigil-release-ci-v2', algorithm: 'ECDSA_P256_SHA256' }), 'KEY_EXISTS');
    // A CryptoKey of another algorithm is not adopted.
    await rejectsWith(backend.createKey({ label: 'sigil-release-ci-v3', algorithm: 'ECDSA_P384_SHA384' }), 'KEY_EXISTS');
    await rejectsWith(backend.createKey({ label: 'sigil-ed-v1', algorithm: 'ED25519' }), 'UNSUPPORTED_ALGORITHM');
  });

  it('2. destroying v1 is idempotent and leaves v2 signing', async () => {
    const v1 = (await backend.findKeyByLabel('sigil-release-ci-v1'))!;
    const v2 = await backend.getKey((await backend.findKeyByLabel('sigil-release-ci-v2'))!);
    const s1 = await backend.signer(v1, 'ECDSA_P256_SHA256');
    await backend.destroyKey(v1);
    await backend.destroyKey(v1);
    assert.equal(fake.state.versions.get(v1.slice('gcpkms:'.length))!.state, 'DESTROY_SCHEDULED');
    await rejectsWith(s1.sign(digestFor('ECDSA_P256_SHA256', Buffer.from('x'))), 'FAILED_PRECONDITION');
    fake.completeDestruction();
    await backend.destroyKey(v1);
    await backend.destroyKey(`gcpkms:${RING}/cryptoKeys/sigil-release-ci/cryptoKeyVersions/99`);
    await backend.destroyKey(`gcpkms:${RING}/cryptoKeys/never-made/cryptoKeyVersions/1`);
    await rejectsWith(backend.destroyKey(`gcpkms:${RING}/cryptoKeys/sigil-release-ci`), 'INVALID_ARGUMENT');
    assert.equal(await backend.findKeyByLabel('sigil-release-ci-v1'), null, 'a destroyed version names nothing');
    const msg = Buffer.from('v2 still signs');
    const sig = await (await backend.signer(v2.uri, 'ECDSA_P256_SHA256')).sign(digestFor('ECDSA_P256_SHA256', msg));
    assert.ok(verifies('ECDSA_P256_SHA256', v2, msg, sig));
  });

  it('3. disable -> FAILED_PRECONDITION -> enable -> signs, both idempotent', async () => {
    const k = await backend.createKey({ label: 'sigil-toggle-v1', algorithm: 'RSA_PKCS1_SHA256' });
    const signer = await backend.signer(k.uri, 'RSA_PKCS1_SHA256');
    const msg = Buffer.from('toggle');
    await backend.setKeyEnabled(k.uri, false);
    await backend.setKeyEnabled(k.uri, false);
    await rejectsWith(signer.sign(digestFor('RSA_PKCS1_SHA256', msg)), 'FAILED_PRECONDITION');
    await backend.setKeyEnabled(k.uri, true);
    await backend.setKeyEnabled(k.uri, true);
    assert.ok(verifies('RSA_PKCS1_SHA256', k, msg, await signer.sign(digestFor('RSA_PKCS1_SHA256', msg))));
    await backend.destroyKey(k.uri);
    await rejectsWith(backend.setKeyEnabled(k.uri, true), 'FAILED_PRECONDITION');
    await rejectsWith(backend.setKeyEnabled(`gcpkms:${RING}/cryptoKeys/sigil-toggle/cryptoKeyVersions/9`, true), 'KEY_NOT_FOUND');
  });

  it('4. integrity: a corrupted signature crc, an unverified digest crc or another version name is BACKEND_ERROR', async () => {
    const k = await backend.createKey({ label: 'sigil-crc-v1', algorithm: 'ECDSA_P384_SHA384' });
    const signer = await backend.signer(k.uri, 'ECDSA_P384_SHA384');
    const d = digestFor('ECDSA_P384_SHA384', Buffer.from('crc'));
    for (const fault of ['corruptSignatureCrc', 'dropDigestVerification', 'wrongResponseName'] as const) {
      fake.state.faults[fault] = true;
      try {
        await rejectsWith(signer.sign(d), 'BACKEND_ERROR', /gcpkms sign/);
      } finally {
        fake.state.faults[fault] = false;
      }
    }
    assert.ok(verifies('ECDSA_P384_SHA384', k, Buffer.from('crc'), await signer.sign(d)));
    // The fake checks the digest checksum as Cloud KMS does: a wrong one is INVALID_ARGUMENT.
    await assert.rejects(
      raw.asymmetricSign({ name: k.uri.slice('gcpkms:'.length), digest: { sha384: d }, digestCrc32c: { value: (crc32c(d) ^ 1) >>> 0 } }, { retry: null }),
      (e: { code?: number }) => e.code === status.INVALID_ARGUMENT,
    );
  });

  it('5. errors are classified and the SDK does not retry on its own', async () => {
    const k = await backend.createKey({ label: 'sigil-errors-v1', algorithm: 'ECDSA_P256_SHA256' });
    const signer = await backend.signer(k.uri, 'ECDSA_P256_SHA256');
    const d = digestFor('ECDSA_P256_SHA256', Buffer.from('e'));
    const cases: Array<[status, ErrorCode]> = [
      [status.UNAVAILABLE, 'BACKEND_UNAVAILABLE'],
      [status.DEADLINE_EXCEEDED, 'BACKEND_UNAVAILABLE'],
      [status.INTERNAL, 'BACKEND_UNAVAILABLE'],
      [status.RESOURCE_EXHAUSTED, 'BACKEND_UNAVAILABLE'],
      [status.PERMISSION_DENIED, 'BACKEND_ERROR'],
      [status.NOT_FOUND, 'KEY_NOT_FOUND'],
      [status.FAILED_PRECONDITION, 'FAILED_PRECONDITION'],
    ];
    for (const [code, want] of cases) {
      const before = fake.state.calls.get('AsymmetricSign') ?? 0;
      fake.state.faults.fail = { method: 'AsymmetricSign', code, times: 1 };
      await rejectsWith(signer.sign(d), want);
      assert.equal(fake.state.calls.get('AsymmetricSign'), before + 1, `one attempt for ${status[code]}`);
    }
    fake.state.faults.fail = null;
    assert.ok(verifies('ECDSA_P256_SHA256', k, Buffer.from('e'), await signer.sign(d)));
    await rejectsWith(backend.getKey(`gcpkms:${RING}/cryptoKeys/absent`), 'KEY_NOT_FOUND');
    await rejectsWith(backend.signer(k.uri, 'RSA_PSS_SHA256'), 'INVALID_ARGUMENT');
  });

  it('6. crash recovery: an unlabelled version is found for the next sigil version only, never for a labelled one', async () => {
    const v1 = await backend.createKey({ label: 'sigil-crash-v1', algorithm: 'ECDSA_P256_SHA256' });
    const ck = `${RING}/cryptoKeys/sigil-crash`;
    // A crash right after CreateCryptoKeyVersion: the version exists, the label update never happened.
    const [orphan] = await raw.createCryptoKeyVersion({ parent: ck, cryptoKeyVersion: {} }, { retry: null });
    assert.equal(await backend.findKeyByLabel('sigil-crash-v2'), `gcpkms:${orphan.name}`);
    assert.equal(await backend.findKeyByLabel('sigil-crash-v1'), v1.uri, 'the labelled version keeps its label');
    // Recovery destroys the orphan; the next rotation then makes a fresh version for v2.
    await backend.destroyKey(`gcpkms:${orphan.name}`);
    assert.equal(await backend.findKeyByLabel('sigil-crash-v2'), null);
    const v2 = await backend.createKey({ label: 'sigil-crash-v2', algorithm: 'ECDSA_P256_SHA256' });
    assert.equal(v2.uri, `gcpkms:${ck}/cryptoKeyVersions/3`);
    // An unlabelled version older than the newest labelled one, or when a later sigil version is labelled, is never handed out.
    const [late] = await raw.createCryptoKeyVersion({ parent: ck, cryptoKeyVersion: {} }, { retry: null });
    assert.equal(await backend.findKeyByLabel('sigil-crash-v1'), v1.uri);
    assert.equal(await backend.findKeyByLabel('sigil-crash-v2'), v2.uri);
    assert.equal(await backend.findKeyByLabel('sigil-crash-v3'), `gcpkms:${late.name}`);
    await raw.updateCryptoKey({ cryptoKey: { name: ck, labels: { ...fake.state.cryptoKeys.get(ck)!.labels, 'sigil-v4': '9' } }, updateMask: { paths: ['labels'] } }, { retry: null });
    assert.equal(await backend.findKeyByLabel('sigil-crash-v3'), null, 'v4 is labelled: v3 was resolved long ago');
    // A CryptoKey sigil did not make is neither searched nor adopted.
    await raw.createCryptoKey({ parent: RING, cryptoKeyId: 'foreign', cryptoKey: { purpose: 'ASYMMETRIC_SIGN', versionTemplate: { algorithm: 'EC_SIGN_P256_SHA256' } } }, { retry: null });
    assert.equal(await backend.findKeyByLabel('foreign-v1'), null);
    await rejectsWith(backend.createKey({ label: 'foreign-v2', algorithm: 'ECDSA_P256_SHA256' }), 'KEY_EXISTS');
  });

  it('7. service gone: BACKEND_UNAVAILABLE within timeoutMs; back: signs again without reopening', async () => {
    const k = await backend.createKey({ label: 'sigil-outage-v1', algorithm: 'ECDSA_P256_SHA256' });
    const signer = await backend.signer(k.uri, 'ECDSA_P256_SHA256');
    const d = digestFor('ECDSA_P256_SHA256', Buffer.from('outage'));
    await signer.sign(d);
    await fake.stop();
    for (let i = 0; i < 3; i++) {
      const t0 = performance.now();
      await rejectsWith(signer.sign(d), 'BACKEND_UNAVAILABLE');
      assert.ok(performance.now() - t0 < TIMEOUT_MS + 500, `failed within the deadline (${Math.round(performance.now() - t0)} ms)`);
    }
    await fake.restart();
    const t0 = performance.now();
    let sig: Buffer | null = null;
    while (sig === null && performance.now() - t0 < 5000) {
      try {
        sig = await signer.sign(d);
      } catch (e) {
        assert.ok(isSigilError(e, 'BACKEND_UNAVAILABLE'), String(e));
        await new Promise((r) => setTimeout(r, 50));
      }
    }
    assert.ok(sig !== null, 'signs again after the service came back');
    assert.ok(performance.now() - t0 < 2500, `reconnected promptly (${Math.round(performance.now() - t0)} ms)`);
    assert.ok(verifies('ECDSA_P256_SHA256', k, Buffer.from('outage'), sig));
  });

  it('8. one signature per algorithm verifies with node:crypto and openssl dgst -verify', { skip: missingTools('openssl') ?? false }, async () => {
    for (const alg of ['ECDSA_P256_SHA256', 'ECDSA_P384_SHA384', 'RSA_PKCS1_SHA256', 'RSA_PSS_SHA256'] as const) {
      const k = await backend.createKey({ label: `sigil-openssl-${alg.toLowerCase().replace(/_/g, '-')}-v1`, algorithm: alg });
      const msg = Buffer.from(`openssl ${alg}`);
      const sig = await (await backend.signer(k.uri, alg)).sign(digestFor(alg, msg));
      assert.ok(verifies(alg, k, msg, sig));
      const base = join(work, alg);
      await writeFile(`${base}.pem`, createPublicKey({ key: k.spki, format: 'der', type: 'spki' }).export({ format: 'pem', type: 'spki' }));
      await writeFile(`${base}.msg`, msg);
      await writeFile(`${base}.sig`, sig);
      const args = [
        'dgst', alg === 'ECDSA_P384_SHA384' ? '-sha384' : '-sha256', '-verify', `${base}.pem`, '-signature', `${base}.sig`,
        ...(alg === 'RSA_PSS_SHA256' ? ['-sigopt', 'rsa_padding_mode:pss', '-sigopt', 'rsa_pss_saltlen:32'] : []),
        `${base}.msg`,
      ];
      const { stdout } = await run('openssl', args);
      assert.match(stdout, /Verified OK/, alg);
    }
  });

  it('9. a key rotated past Cloud KMS\'s 64 labels keeps rotating: the oldest labels go, the newest version is still found by label, old versions still sign', async () => {
    const ck = `${RING}/cryptoKeys/sigil-busy`;
    const made: BackendKey[] = [];
    // An operator's own label stays: only sigil's version labels are given up.
    made.push(await backend.createKey({ label: 'sigil-busy-v1', algorithm: 'ECDSA_P256_SHA256' }));
    await raw.updateCryptoKey({ cryptoKey: { name: ck, labels: { ...fake.state.cryptoKeys.get(ck)!.labels, team: 'release' } }, updateMask: { paths: ['labels'] } }, { retry: null });
    for (let n = 2; n <= 70; n++) made.push(await backend.createKey({ label: `sigil-busy-v${n}`, algorithm: 'ECDSA_P256_SHA256' }));
    const labels = fake.state.cryptoKeys.get(ck)!.labels;
    assert.ok(Object.keys(labels).length <= 64, `${Object.keys(labels).length} labels`);
    assert.equal(labels.team, 'release');
    assert.equal(labels['sigil-v70'], '70');
    assert.equal(labels['sigil-v1'], undefined, 'the oldest label made room');
    assert.equal(await backend.findKeyByLabel('sigil-busy-v70'), made[69]!.uri);
    // A crash after version 71 is made but before it is labelled: still found for v71, as before the limit.
    await raw.createCryptoKeyVersion({ parent: ck, cryptoKeyVersion: {} }, { retry: null });
    assert.equal(await backend.findKeyByLabel('sigil-busy-v71'), `gcpkms:${ck}/cryptoKeyVersions/71`);
    const msg = Buffer.from('signed by version 1 after 70 rotations');
    assert.ok(verifies('ECDSA_P256_SHA256', made[0]!, msg, await (await backend.signer(made[0]!.uri, 'ECDSA_P256_SHA256')).sign(digestFor('ECDSA_P256_SHA256', msg))));
  });

  it("10. a signature by another version's key is refused, logged and counted; the recorded key wins over the version's own", async () => {
    for (const alg of ['ECDSA_P256_SHA256', 'RSA_PKCS1_SHA256'] as const) {
      const k = await backend.createKey({ label: `sigil-mismatch-${alg === 'ECDSA_P256_SHA256' ? 'ec' : 'rsa'}-v1`, algorithm: alg });
      const other = await backend.createKey({ label: `sigil-mismatch-${alg === 'ECDSA_P256_SHA256' ? 'ec' : 'rsa'}-v2`, algorithm: alg });
      let counted = 0;
      const errors: string[] = [];
      const log = silentLogger();
      log.error = ((_o: unknown, m: string) => void errors.push(m)) as typeof log.error;
      const b = await open(
        { type: 'gcpkms', project: 'sigil-test', location: 'global', keyRing: 'integration', apiEndpoint: '127.0.0.1', port: fake.port, insecure: true, protectionLevel: 'SOFTWARE', timeoutMs: TIMEOUT_MS },
        { name: 'gcp', log, production: false, onSignatureMismatch: () => counted++ },
      );
      try {
        const d = digestFor(alg, Buffer.from('mismatch'));
        const signer = await b.signer(k.uri, alg, { spki: k.spki });
        fake.state.faults.signWithVersion = other.uri.slice('gcpkms:'.length);
        try {
          await rejectsWith(signer.sign(d), 'BACKEND_ERROR', /^gcp kms signature with gcpkms:.* does not verify under the key version's recorded public key; refused$/);
        } finally {
          fake.state.faults.signWithVersion = null;
        }
        assert.equal(counted, 1);
        assert.deepEqual(errors, ['signature from the backend does not verify under the recorded public key; refused']);
        assert.ok(verifies(alg, k, Buffer.from('mismatch'), await signer.sign(d)), 'an honest answer passes');
        await rejectsWith((await b.signer(k.uri, alg, { spki: other.spki })).sign(d), 'BACKEND_ERROR', /recorded public key/);
        assert.equal(counted, 2);
      } finally {
        await b.close();
      }
    }
  });
});
