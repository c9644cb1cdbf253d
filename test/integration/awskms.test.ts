import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash, createPublicKey, randomBytes, randomUUID, verify, constants } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { CreateAliasCommand, CreateKeyCommand, DeleteAliasCommand, KMSClient } from '@aws-sdk/client-kms';
import type { ErrorCode } from '../../src/errors.ts';
import { silentLogger } from '../../src/log.ts';
import { awsKmsConfigSchema, type AwsKmsConfig } from '../../src/signers/awskms/config.ts';
import { open, LABEL_TAG, type AwsKmsBackend } from '../../src/signers/awskms/index.ts';
import { canEnableKeys } from '../../src/signers/signer.ts';
import { formatAwsKmsUri, parseAwsKmsUri } from '../../src/signers/awskms/key-uri.ts';
import type { BackendKey } from '../../src/signers/signer.ts';
import { startAwsKmsFake, type AwsKmsFake } from '../fakes/aws-kms.ts';
import { missingTools } from '../helpers/hw.ts';
import { assertCode } from '../helpers/assert.ts';

process.env.AWS_EC2_METADATA_DISABLED = 'true';
const run = promisify(execFile);
const REGION = 'us-west-2';
const CREDS = { accessKeyId: 'AKIASIGILINTEGRATION', secretAccessKey: `integration-secret-${randomUUID()}` };
const TIMEOUT_MS = 400;
// Slack over timeoutMs for the event loop and the socket teardown on a busy 2-core machine.
const SLACK_MS = 400;
const ctx = { name: 'awskms', log: silentLogger(), production: true };


function digest(msg: Buffer, hash = 'sha256'): Buffer {
  return createHash(hash).update(msg).digest();
}

function verifiesEcdsa(k: BackendKey, msg: Buffer, sig: Buffer, hash = 'sha256'): boolean {
  return verify(hash, msg, { key: createPublicKey({ key: k.spki, format: 'der', type: 'spki' }), dsaEncoding: 'der' }, sig);
}

describe('awskms backend against the loopback fake', () => {
  let fake: AwsKmsFake;
  let dir: string;
  let config: AwsKmsConfig;
  let backend: AwsKmsBackend;
  let raw: KMSClient;

  const configWith = (extra: Record<string, unknown>): AwsKmsConfig =>
    awsKmsConfigSchema.parse({ type: 'awskms', region: REGION, endpoint: fake.endpoint, timeoutMs: TIMEOUT_MS, ...extra });
  const signCount = (op = 'Sign') => fake.requests.filter((r) => r.op === op).length;

  before(async () => {
    fake = await startAwsKmsFake({ ...CREDS, region: REGION });
    dir = await mkdtemp(join(tmpdir(), 'sigil-awskms-it-'));
    const credentialsFile = join(dir, 'credentials.json');
    await writeFile(credentialsFile, JSON.stringify(CREDS), { mode: 0o600 });
    config = configWith({ credentialsFile, pendingWindowDays: 9 });
    backend = await open(config, ctx);
    // A second, plain SDK client to make keys outside sigil.
    raw = new KMSClient({ region: REGION, endpoint: fake.endpoint, credentials: CREDS, maxAttempts: 1 });
  });

  after(async () => {
    raw?.destroy();
    await backend?.close();
    await fake?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('1. creates a key behind its alias, finds it by label after a lost answer, destroys it idempotently', async () => {
    const label = `release-ci-${randomUUID().slice(0, 8)}-v1`;
    assert.equal(await backend.findKeyByLabel(label), null);
    const k = await backend.createKey({ label, algorithm: 'ECDSA_P256_SHA256' });
    const ref = parseAwsKmsUri(k.uri);
    assert.equal(ref.region, REGION);
    assert.equal(ref.endpoint, fake.endpoint);
    const held = fake.resolve(ref.keyId)!;
    assert.equal(held.arn, ref.keyId, 'the canonical uri names the key arn');
    assert.equal(held.keySpec, 'ECC_NIST_P256');
    assert.equal(held.keyUsage, 'SIGN_VERIFY');
    assert.equal(held.tags.get(LABEL_TAG), label);
    assert.equal(fake.aliases.get(`alias/sigil/${label}`)?.targetKeyId, held.keyId);
    assert.deepEqual(createPublicKey({ key: k.spki, format: 'der', type: 'spki' }).export({ format: 'der', type: 'spki' }), held.spki);

    // Crash recovery: sigil lost the answer of createKey; the label still leads to the same key.
    assert.equal(await backend.findKeyByLabel(label), k.uri);

    const msg = randomBytes(64);
    const signer = await backend.signer(k.uri, 'ECDSA_P256_SHA256');
    const sig = await signer.sign(digest(msg));
    assert.ok(verifiesEcdsa(k, msg, sig));
    const signReq = fake.requests.findLast((r) => r.op === 'Sign')!;
    assert.equal(signReq.input?.MessageType, 'DIGEST');
    assert.equal(signReq.input?.KeyId, held.arn);

    await backend.destroyKey(k.uri);
    assert.equal(held.state, 'PendingDeletion');
    assert.equal(held.pendingWindowInDays, 9);
    assert.equal(fake.aliases.has(`alias/sigil/${label}`), false);
    assert.equal(await backend.findKeyByLabel(label), null);
    await backend.destroyKey(k.uri);
    await backend.destroyKey(formatAwsKmsUri({ keyId: randomUUID(), region: REGION, endpoint: null }));
    await assertCode(backend.getKey(k.uri), 'FAILED_PRECONDITION');
    await assertCode(backend.signer(k.uri, 'ECDSA_P256_SHA256'), 'FAILED_PRECONDITION');
    await assertCode(signer.sign(digest(msg)), 'FAILED_PRECONDITION', (m) => assert.match(m, /pending deletion/));
  });

  it('2. a key destroyed after its alias went (crash mid-destroy) still schedules deletion on retry', async () => {
    const label = `half-destroyed-${randomUUID().slice(0, 8)}-v1`;
    const k = await backend.createKey({ label, algorithm: 'RSA_PSS_SHA256' });
    const held = fake.resolve(parseAwsKmsUri(k.uri).keyId)!;
    await raw.send(new DeleteAliasCommand({ AliasName: `alias/sigil/${label}` }));
    await backend.destroyKey(k.uri);
    assert.equal(held.state, 'PendingDeletion');
  });

  it('3. refuses a taken label with KEY_EXISTS and schedules the key it had just made for deletion', async () => {
    const label = `taken-${randomUUID().slice(0, 8)}-v1`;
    const first = await backend.createKey({ label, algorithm: 'ECDSA_P384_SHA384' });
    const before = new Set(fake.keys.keys());
    await assertCode(backend.createKey({ label, algorithm: 'ECDSA_P384_SHA384' }), 'KEY_EXISTS', (m) => assert.match(m, /taken/));
    const extra = [...fake.keys.values()].filter((k) => !before.has(k.keyId));
    assert.equal(extra.length, 1);
    assert.equal(extra[0]!.state, 'PendingDeletion');
    assert.equal(await backend.findKeyByLabel(label), first.uri);

    // CreateAlias failing transiently: the key just made is scheduled for deletion, the label stays free.
    const label2 = `alias-fault-${randomUUID().slice(0, 8)}-v1`;
    const before2 = new Set(fake.keys.keys());
    fake.failNext('CreateAlias', 'KMSInternalException');
    await assertCode(backend.createKey({ label: label2, algorithm: 'ECDSA_P256_SHA256' }), 'BACKEND_UNAVAILABLE');
    const orphan = [...fake.keys.values()].filter((k) => !before2.has(k.keyId));
    assert.equal(orphan.length, 1);
    assert.equal(orphan[0]!.state, 'PendingDeletion');
    assert.equal(orphan[0]!.tags.get(LABEL_TAG), label2);
    assert.equal(await backend.findKeyByLabel(label2), null);
    const retried = await backend.createKey({ label: label2, algorithm: 'ECDSA_P256_SHA256' });
    assert.equal(await backend.findKeyByLabel(label2), retried.uri);
  });

  it('4. bad labels and ED25519 are refused before anything is created', async () => {
    const count = fake.keys.size;
    for (const label of ['', 'has space', 'dot.ted', 'ünï', 'x'.repeat(201)]) {
      await assertCode(backend.createKey({ label, algorithm: 'ECDSA_P256_SHA256' }), 'INVALID_ARGUMENT');
      await assertCode(backend.findKeyByLabel(label), 'INVALID_ARGUMENT');
    }
    await assertCode(backend.createKey({ label: 'ed-v1', algorithm: 'ED25519' }), 'UNSUPPORTED_ALGORITHM');
    assert.equal(fake.keys.size, count);
  });

  it('5. disable -> sign FAILED_PRECONDITION -> enable -> signs (setKeyEnabled idempotent)', async () => {
    assert.ok(canEnableKeys(backend));
    const k = await backend.createKey({ label: `toggle-${randomUUID().slice(0, 8)}-v1`, algorithm: 'RSA_PKCS1_SHA256' });
    const signer = await backend.signer(k.uri, 'RSA_PKCS1_SHA256');
    const held = fake.resolve(parseAwsKmsUri(k.uri).keyId)!;
    await backend.setKeyEnabled(k.uri, false);
    await backend.setKeyEnabled(k.uri, false);
    assert.equal(held.state, 'Disabled');
    const msg = Buffer.from('while disabled');
    await assertCode(signer.sign(digest(msg)), 'FAILED_PRECONDITION', (m) => assert.match(m, /disabled/));
    await backend.setKeyEnabled(k.uri, true);
    await backend.setKeyEnabled(k.uri, true);
    assert.equal(held.state, 'Enabled');
    const sig = await signer.sign(digest(msg));
    assert.ok(verify('sha256', msg, { key: createPublicKey({ key: k.spki, format: 'der', type: 'spki' }), padding: constants.RSA_PKCS1_PADDING }, sig));
    await backend.destroyKey(k.uri);
    await assertCode(backend.setKeyEnabled(k.uri, true), 'FAILED_PRECONDITION');
    await assertCode(backend.setKeyEnabled(formatAwsKmsUri({ keyId: randomUUID(), region: REGION, endpoint: null }), false), 'KEY_NOT_FOUND');
  });

  it('6. finds keys by key id, key arn, alias name and alias arn; the canonical uri is the arn', async () => {
    const label = `refs-${randomUUID().slice(0, 8)}-v1`;
    const k = await backend.createKey({ label, algorithm: 'ECDSA_P256_SHA256' });
    const held = fake.resolve(parseAwsKmsUri(k.uri).keyId)!;
    const alias = `alias/sigil/${label}`;
    for (const keyId of [held.keyId, held.arn, alias, `arn:aws:kms:${REGION}:${fake.accountId}:${alias}`]) {
      const got = await backend.getKey(formatAwsKmsUri({ keyId, region: REGION, endpoint: null }));
      assert.equal(got.uri, k.uri, keyId);
      assert.deepEqual(got.spki, k.spki);
      const msg = Buffer.from(keyId);
      assert.ok(verifiesEcdsa(k, msg, await (await backend.signer(formatAwsKmsUri({ keyId, region: REGION, endpoint: fake.endpoint }), 'ECDSA_P256_SHA256')).sign(digest(msg))));
    }
    // The public key is fetched once per key, not per signer.
    const gets = signCount('GetPublicKey');
    await backend.signer(k.uri, 'ECDSA_P256_SHA256');
    await backend.getKey(formatAwsKmsUri({ keyId: held.keyId, region: REGION, endpoint: null }));
    assert.equal(signCount('GetPublicKey'), gets);
  });

  it('7. refuses uris for another region or endpoint, and keys that cannot sign for sigil', async () => {
    const other = formatAwsKmsUri({ keyId: randomUUID(), region: 'eu-central-1', endpoint: null });
    await assertCode(backend.getKey(other), 'INVALID_ARGUMENT', (m) => assert.match(m, /region eu-central-1/));
    await assertCode(backend.getKey(formatAwsKmsUri({ keyId: randomUUID(), region: REGION, endpoint: 'https://kms.example' })), 'INVALID_ARGUMENT');
    const enc = await raw.send(new CreateKeyCommand({ KeyUsage: 'ENCRYPT_DECRYPT', KeySpec: 'RSA_2048' }));
    await assertCode(backend.getKey(formatAwsKmsUri({ keyId: enc.KeyMetadata!.Arn!, region: REGION, endpoint: null })), 'INVALID_ARGUMENT', (m) => assert.match(m, /not a signing key/));
    const p521 = await raw.send(new CreateKeyCommand({ KeyUsage: 'SIGN_VERIFY', KeySpec: 'ECC_NIST_P521' }));
    await assertCode(backend.getKey(formatAwsKmsUri({ keyId: p521.KeyMetadata!.KeyId!, region: REGION, endpoint: null })), 'UNSUPPORTED_ALGORITHM');
    const sym = await raw.send(new CreateKeyCommand({}));
    await assertCode(backend.getKey(formatAwsKmsUri({ keyId: sym.KeyMetadata!.KeyId!, region: REGION, endpoint: null })), 'UNSUPPORTED_ALGORITHM');
    // A key made outside sigil with an alias under the prefix is found by its label like any other.
    const rsa = await raw.send(new CreateKeyCommand({ KeyUsage: 'SIGN_VERIFY', KeySpec: 'RSA_3072' }));
    await raw.send(new CreateAliasCommand({ AliasName: 'alias/sigil/imported-v1', TargetKeyId: rsa.KeyMetadata!.KeyId! }));
    const uri = (await backend.findKeyByLabel('imported-v1'))!;
    const msg = Buffer.from('rsa 3072');
    const sig = await (await backend.signer(uri, 'RSA_PSS_SHA256')).sign(digest(msg));
    assert.equal(sig.length, 384);
    const k = await backend.getKey(uri);
    assert.ok(verify('sha256', msg, { key: createPublicKey({ key: k.spki, format: 'der', type: 'spki' }), padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 }, sig));
  });

  it('8. a request signed with the wrong secret is refused with InvalidSignatureException: BACKEND_ERROR, no secret in the message', async () => {
    const wrongFile = join(dir, 'wrong.json');
    const wrongSecret = `wrong-${randomUUID()}`;
    await writeFile(wrongFile, JSON.stringify({ accessKeyId: CREDS.accessKeyId, secretAccessKey: wrongSecret }), { mode: 0o600 });
    const wrong = await open(configWith({ credentialsFile: wrongFile }), ctx);
    try {
      const k = await backend.createKey({ label: `auth-${randomUUID().slice(0, 8)}-v1`, algorithm: 'ECDSA_P256_SHA256' });
      await assertCode(wrong.getKey(k.uri), 'BACKEND_ERROR', (m) => {
        assert.match(m, /signature/);
        assert.ok(!m.includes(wrongSecret) && !m.includes(CREDS.secretAccessKey));
      });
      assert.equal(fake.requests.at(-1)?.error, 'InvalidSignatureException');
      await assertCode(wrong.findKeyByLabel('anything-v1'), 'BACKEND_ERROR');
    } finally {
      await wrong.close();
    }
    const unknownFile = join(dir, 'unknown.json');
    await writeFile(unknownFile, JSON.stringify({ accessKeyId: 'AKIAUNKNOWNKEY000000', secretAccessKey: CREDS.secretAccessKey }), { mode: 0o600 });
    const unknown = await open(configWith({ credentialsFile: unknownFile }), ctx);
    try {
      await assertCode(unknown.getKey(formatAwsKmsUri({ keyId: randomUUID(), region: REGION, endpoint: null })), 'BACKEND_ERROR', (m) => assert.match(m, /access key/));
      assert.equal(fake.requests.at(-1)?.error, 'UnrecognizedClientException');
    } finally {
      await unknown.close();
    }
  });

  it('9. fake stopped -> BACKEND_UNAVAILABLE within timeoutMs -> restarted -> the same backend signs again', async () => {
    const k = await backend.createKey({ label: `outage-${randomUUID().slice(0, 8)}-v1`, algorithm: 'ECDSA_P256_SHA256' });
    const signer = await backend.signer(k.uri, 'ECDSA_P256_SHA256');
    const msg = Buffer.from('before the outage');
    assert.ok(verifiesEcdsa(k, msg, await signer.sign(digest(msg))));
    await fake.stop();
    try {
      const t0 = performance.now();
      await assertCode(signer.sign(digest(msg)), 'BACKEND_UNAVAILABLE', (m) => assert.match(m, /unreachable|no answer/));
      assert.ok(performance.now() - t0 < TIMEOUT_MS + SLACK_MS, 'fails within the deadline');
      // An outage is never mistaken for an absent label (crash recovery would create a second key).
      await assertCode(backend.findKeyByLabel('outage-v1'), 'BACKEND_UNAVAILABLE');
      await assertCode(backend.destroyKey(k.uri), 'BACKEND_UNAVAILABLE');
    } finally {
      await fake.restart();
    }
    const after = Buffer.from('after the outage');
    assert.ok(verifiesEcdsa(k, after, await signer.sign(digest(after))));
  });

  it('10. a hung service answers BACKEND_UNAVAILABLE within timeoutMs, and the backend recovers', async () => {
    const k = await backend.createKey({ label: `hang-${randomUUID().slice(0, 8)}-v1`, algorithm: 'ECDSA_P256_SHA256' });
    const signer = await backend.signer(k.uri, 'ECDSA_P256_SHA256');
    fake.setLatency(TIMEOUT_MS * 5);
    try {
      const t0 = performance.now();
      await assertCode(signer.sign(digest(Buffer.from('hung'))), 'BACKEND_UNAVAILABLE', (m) => assert.match(m, new RegExp(`within ${TIMEOUT_MS} ms`)));
      const took = performance.now() - t0;
      assert.ok(took >= TIMEOUT_MS - 20 && took < TIMEOUT_MS + SLACK_MS, `took ${took} ms`);
    } finally {
      fake.setLatency(0);
    }
    const msg = Buffer.from('answering again');
    assert.ok(verifiesEcdsa(k, msg, await signer.sign(digest(msg))));
  });

  it('11. transient service faults are BACKEND_UNAVAILABLE and the SDK does not retry them', async () => {
    const k = await backend.createKey({ label: `faults-${randomUUID().slice(0, 8)}-v1`, algorithm: 'ECDSA_P256_SHA256' });
    const signer = await backend.signer(k.uri, 'ECDSA_P256_SHA256');
    const cases: Array<[string, ErrorCode]> = [
      ['KMSInternalException', 'BACKEND_UNAVAILABLE'],
      ['DependencyTimeoutException', 'BACKEND_UNAVAILABLE'],
      ['ThrottlingException', 'BACKEND_UNAVAILABLE'],
      ['KeyUnavailableException', 'BACKEND_UNAVAILABLE'],
      ['AccessDeniedException', 'BACKEND_ERROR'],
      ['NotFoundException', 'KEY_NOT_FOUND'],
      ['KMSInvalidStateException', 'FAILED_PRECONDITION'],
    ];
    for (const [name, code] of cases) {
      fake.failNext('Sign', name);
      const before = signCount();
      await assertCode(signer.sign(digest(Buffer.from(name))), code, (m) => assert.ok(!m.includes(CREDS.secretAccessKey)));
      assert.equal(signCount(), before + 1, `${name}: exactly one request`);
    }
    const msg = Buffer.from('after the faults');
    assert.ok(verifiesEcdsa(k, msg, await signer.sign(digest(msg))));
  });

  it('12. without credentialsFile the SDK standard chain (environment) is used', async () => {
    const saved = { id: process.env.AWS_ACCESS_KEY_ID, secret: process.env.AWS_SECRET_ACCESS_KEY };
    process.env.AWS_ACCESS_KEY_ID = CREDS.accessKeyId;
    process.env.AWS_SECRET_ACCESS_KEY = CREDS.secretAccessKey;
    const envBackend = await open(configWith({}), ctx);
    try {
      const k = await envBackend.createKey({ label: `env-${randomUUID().slice(0, 8)}-v1`, algorithm: 'ECDSA_P384_SHA384' });
      const msg = Buffer.from('env credentials');
      assert.ok(verifiesEcdsa(k, msg, await (await envBackend.signer(k.uri, 'ECDSA_P384_SHA384')).sign(digest(msg, 'sha384')), 'sha384'));
    } finally {
      await envBackend.close();
      if (saved.id === undefined) delete process.env.AWS_ACCESS_KEY_ID;
      else process.env.AWS_ACCESS_KEY_ID = saved.id;
      if (saved.secret === undefined) delete process.env.AWS_SECRET_ACCESS_KEY;
      else process.env.AWS_SECRET_ACCESS_KEY = saved.secret;
    }
  });

  it('13. a bad credentials file is CONFIG_INVALID and its content never appears in the message', async () => {
    const secret = `do-not-print-${randomUUID()}`;
    const cases = [`{"accessKeyId": "AKIAX", "secretAccessKey": "${secret}"`, JSON.stringify({ accessKeyId: 'lower', secretAccessKey: secret }), JSON.stringify({ secretAccessKey: secret, extra: 1 }), secret];
    for (const [i, text] of cases.entries()) {
      const f = join(dir, `bad-${i}.json`);
      await writeFile(f, text, { mode: 0o600 });
      await assertCode(open(configWith({ credentialsFile: f }), ctx), 'CONFIG_INVALID', (m) => assert.ok(!m.includes(secret) && !m.includes('do-not-print'), m));
    }
    await assertCode(open(configWith({ credentialsFile: join(dir, 'missing.json') }), ctx), 'CONFIG_INVALID', (m) => assert.match(m, /ENOENT/));
  });

  it('14. each algorithm signs what openssl dgst -verify accepts', { skip: missingTools('openssl') ?? false }, async () => {
    for (const [alg, hash] of [['ECDSA_P256_SHA256', 'sha256'], ['ECDSA_P384_SHA384', 'sha384'], ['RSA_PKCS1_SHA256', 'sha256'], ['RSA_PSS_SHA256', 'sha256']] as const) {
      const k = await backend.createKey({ label: `openssl-${alg.toLowerCase().replace(/_/g, '-')}-${randomUUID().slice(0, 6)}`, algorithm: alg });
      const msg = randomBytes(300);
      const sig = await (await backend.signer(k.uri, alg)).sign(digest(msg, hash));
      const base = join(dir, `${alg}-${randomUUID().slice(0, 8)}`);
      await writeFile(`${base}.pem`, createPublicKey({ key: k.spki, format: 'der', type: 'spki' }).export({ format: 'pem', type: 'spki' }));
      await writeFile(`${base}.msg`, msg);
      await writeFile(`${base}.sig`, sig);
      const pss = alg === 'RSA_PSS_SHA256' ? ['-sigopt', 'rsa_padding_mode:pss', '-sigopt', 'rsa_pss_saltlen:32'] : [];
      const { stdout } = await run('openssl', ['dgst', `-${hash}`, '-verify', `${base}.pem`, '-signature', `${base}.sig`, ...pss, `${base}.msg`]);
      assert.match(stdout, /Verified OK/, alg);
    }
  });

  it("15. a signature by another key (a key id that reached another key) is refused, logged and counted; the recorded key wins over the key's own", async () => {
    for (const alg of ['ECDSA_P256_SHA256', 'RSA_PSS_SHA256'] as const) {
      const k = await backend.createKey({ label: `mismatch-${alg.toLowerCase().replace(/_/g, '-')}-${randomUUID().slice(0, 6)}`, algorithm: alg });
      const other = await backend.createKey({ label: `mismatch-other-${randomUUID().slice(0, 6)}`, algorithm: alg });
      let counted = 0;
      const errors: string[] = [];
      const log = silentLogger();
      log.error = ((_o: unknown, m: string) => void errors.push(m)) as typeof log.error;
      const b = await open(config, { ...ctx, log, onSignatureMismatch: () => counted++ });
      try {
        const d = digest(Buffer.from('mismatch'));
        const signer = await b.signer(k.uri, alg, { spki: k.spki });
        fake.signWithKeyOf(parseAwsKmsUri(other.uri).keyId);
        const before = signCount();
        try {
          await assertCode(signer.sign(d), 'BACKEND_ERROR', /does not verify under the key version's recorded public key; refused/);
        } finally {
          fake.signWithKeyOf(null);
        }
        assert.equal(signCount(), before + 1, 'one Sign reached the service and was not retried');
        assert.equal(counted, 1);
        assert.deepEqual(errors, ['signature from the backend does not verify under the recorded public key; refused']);
        assert.ok((await signer.sign(d)).length > 0, 'an honest answer passes');
        // The key version's recorded public key is what counts, not the one the service reports for the key now.
        await assertCode((await b.signer(k.uri, alg, { spki: other.spki })).sign(d), 'BACKEND_ERROR', /recorded public key/);
        assert.equal(counted, 2);
      } finally {
        await b.close();
      }
    }
  });
});
