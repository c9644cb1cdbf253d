import assert from 'node:assert/strict';
import { request } from 'node:http';
import { after, before, describe, it } from 'node:test';
import fc from 'fast-check';
import { sigV4Sign, startAwsKmsFake, type AwsKmsFake } from '../../fakes/aws-kms.ts';

const CREDS = { accessKeyId: 'AKIASIGILFAKETEST000', secretAccessKey: 'fake-test-secret' };
const REGION = 'eu-north-1';
// Every exception name the fake may answer a request with: the real AWS KMS names.
const REAL_NAMES = new Set([
  'IncompleteSignatureException', 'InvalidSignatureException', 'UnrecognizedClientException', 'UnknownOperationException',
  'SerializationException', 'ValidationException', 'NotFoundException', 'DisabledException', 'KMSInvalidStateException',
  'InvalidKeyUsageException', 'AlreadyExistsException', 'UnsupportedOperationException', 'InvalidMarkerException', 'TagException',
  'NotAuthorizedException',
]);
const OPS = ['CreateKey', 'DescribeKey', 'GetPublicKey', 'Sign', 'CreateAlias', 'UpdateAlias', 'DeleteAlias', 'ListAliases', 'DisableKey', 'EnableKey', 'ScheduleKeyDeletion', 'CancelKeyDeletion', 'TagResource', 'ListResourceTags', 'ListKeys'];

interface Answer {
  status: number;
  type: string | undefined;
  body: Record<string, unknown>;
}

describe('aws kms fake: wire protocol and request parsing', () => {
  let fake: AwsKmsFake;

  before(async () => {
    fake = await startAwsKmsFake({ ...CREDS, region: REGION });
  });
  after(() => fake?.stop());

  function send(body: Buffer | string, o: { target?: string; sign?: Partial<typeof CREDS> & { region?: string; date?: Date } | null; headers?: Record<string, string>; method?: string } = {}): Promise<Answer> {
    const data = typeof body === 'string' ? Buffer.from(body) : body;
    const base: Record<string, string> = { 'content-type': 'application/x-amz-json-1.1', ...(o.target !== undefined ? { 'x-amz-target': o.target } : {}), ...o.headers };
    const headers =
      o.sign === null
        ? base
        : sigV4Sign({ method: o.method ?? 'POST', url: '/', host: `127.0.0.1:${fake.port}`, headers: base, body: data, ...CREDS, region: REGION, ...o.sign });
    return new Promise((resolve, reject) => {
      const req = request({ agent: false, host: '127.0.0.1', port: fake.port, method: o.method ?? 'POST', path: '/', headers: { ...headers, 'content-length': String(data.length) } }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          resolve({ status: res.statusCode!, type: (res.headers['x-amzn-errortype'] as string | undefined)?.split(':')[0], body: JSON.parse(text) as Record<string, unknown> });
        });
      });
      req.on('error', reject);
      req.end(data);
    });
  }

  function assertError(a: Answer, name: string, status = 400): void {
    assert.equal(a.status, status);
    assert.equal(a.type, name);
    assert.equal(a.body.__type, name);
    assert.equal(typeof a.body.message, 'string');
  }

  it('verifies SigV4: missing, malformed, unknown key, wrong secret, wrong scope and stale date are refused', async () => {
    const body = '{}';
    const target = 'TrentService.ListKeys';
    assertError(await send(body, { target, sign: null }), 'IncompleteSignatureException');
    assertError(await send(body, { target, sign: null, headers: { authorization: 'AWS4-HMAC-SHA256 Credential=x' } }), 'IncompleteSignatureException');
    assertError(await send(body, { target, sign: null, headers: { authorization: 'Bearer abc' } }), 'IncompleteSignatureException');
    assertError(await send(body, { target, sign: { accessKeyId: 'AKIANOBODY0000000000' } }), 'UnrecognizedClientException');
    assertError(await send(body, { target, sign: { secretAccessKey: 'not-the-secret' } }), 'InvalidSignatureException');
    assertError(await send(body, { target, sign: { region: 'us-east-1' } }), 'InvalidSignatureException');
    assertError(await send(body, { target, sign: { date: new Date(Date.now() - 20 * 60 * 1000) } }), 'InvalidSignatureException');
    assertError(await send(body, { target, headers: { 'x-amz-security-token': 'unexpected' } }), 'UnrecognizedClientException');
    const ok = await send(body, { target });
    assert.equal(ok.status, 200);
    assert.ok(Array.isArray(ok.body.Keys));
  });

  it('a body altered after signing fails the signature check', async () => {
    const data = Buffer.from('{"KeyId":"alias/a"}');
    const headers = sigV4Sign({ method: 'POST', url: '/', host: `127.0.0.1:${fake.port}`, headers: { 'content-type': 'application/x-amz-json-1.1', 'x-amz-target': 'TrentService.DescribeKey' }, body: data, ...CREDS, region: REGION });
    const a = await send('{"KeyId":"alias/b"}', { sign: null, headers });
    assertError(a, 'InvalidSignatureException');
  });

  it('answers protocol errors with the real names', async () => {
    assertError(await send('{}', { target: 'TrentService.NoSuchOp' }), 'UnknownOperationException');
    assertError(await send('{}'), 'UnknownOperationException');
    assertError(await send('{not json', { target: 'TrentService.DescribeKey' }), 'SerializationException');
    assertError(await send('[1]', { target: 'TrentService.DescribeKey' }), 'SerializationException');
    assertError(await send('{"KeyId": 5}', { target: 'TrentService.DescribeKey' }), 'SerializationException');
    assertError(await send('{}', { target: 'TrentService.DescribeKey' }), 'ValidationException');
    assertError(await send('{"KeyId":"alias/none"}', { target: 'TrentService.DescribeKey' }), 'NotFoundException');
    assertError(await send('{}', { target: 'TrentService.ListKeys', headers: { 'content-type': 'text/plain' } }), 'SerializationException');
  });

  it('models the key state machine and the sign limits', async () => {
    const created = await send(JSON.stringify({ KeyUsage: 'SIGN_VERIFY', KeySpec: 'ECC_NIST_P256' }), { target: 'TrentService.CreateKey' });
    assert.equal(created.status, 200);
    const keyId = (created.body.KeyMetadata as { KeyId: string }).KeyId;
    const call = (op: string, input: Record<string, unknown>) => send(JSON.stringify(input), { target: `TrentService.${op}` });
    const sign = (message: Buffer, type = 'RAW') => call('Sign', { KeyId: keyId, Message: message.toString('base64'), MessageType: type, SigningAlgorithm: 'ECDSA_SHA_256' });
    assert.equal((await sign(Buffer.alloc(4096, 1))).status, 200);
    assertError(await sign(Buffer.alloc(4097, 1)), 'ValidationException');
    assertError(await sign(Buffer.alloc(31), 'DIGEST'), 'ValidationException');
    assertError(await call('Sign', { KeyId: keyId, Message: 'AA==', SigningAlgorithm: 'RSASSA_PSS_SHA_256' }), 'InvalidKeyUsageException');
    assertError(await call('Sign', { KeyId: keyId, Message: '!!notbase64', SigningAlgorithm: 'ECDSA_SHA_256' }), 'SerializationException');
    assert.equal((await call('CreateAlias', { AliasName: 'alias/state', TargetKeyId: keyId })).status, 200);
    assertError(await call('CreateAlias', { AliasName: 'alias/state', TargetKeyId: keyId }), 'AlreadyExistsException');
    assertError(await call('CreateAlias', { AliasName: 'alias/state', TargetKeyId: 'alias/state' }), 'NotFoundException');
    assert.equal((await call('DisableKey', { KeyId: keyId })).status, 200);
    assertError(await sign(Buffer.from('x')), 'DisabledException');
    assert.equal((await call('EnableKey', { KeyId: keyId })).status, 200);
    assertError(await call('ScheduleKeyDeletion', { KeyId: keyId, PendingWindowInDays: 6 }), 'ValidationException');
    assert.equal((await call('ScheduleKeyDeletion', { KeyId: keyId, PendingWindowInDays: 7 })).status, 200);
    assert.equal(fake.keys.get(keyId)?.state, 'PendingDeletion');
    assertError(await call('ScheduleKeyDeletion', { KeyId: keyId }), 'KMSInvalidStateException');
    assertError(await sign(Buffer.from('x')), 'KMSInvalidStateException');
    assertError(await call('EnableKey', { KeyId: keyId }), 'KMSInvalidStateException');
    assert.equal((await call('CancelKeyDeletion', { KeyId: keyId })).status, 200);
    assert.equal(fake.keys.get(keyId)?.state, 'Disabled');
    assertError(await call('CancelKeyDeletion', { KeyId: keyId }), 'KMSInvalidStateException');

    // State survives a restart on the same port.
    const port = fake.port;
    await fake.restart();
    assert.equal(fake.port, port);
    const described = await call('DescribeKey', { KeyId: 'alias/state' });
    assert.equal((described.body.KeyMetadata as { KeyState: string }).KeyState, 'Disabled');
  });

  it('property: garbage bodies for every operation get 200 or a 400 with a real exception name, never a crash', async () => {
    const jsonish = fc.oneof(
      fc.string({ maxLength: 200 }),
      fc.uint8Array({ maxLength: 300 }).map((b) => Buffer.from(b).toString('latin1')),
      fc.json({ maxDepth: 3 }),
      fc
        .dictionary(
          fc.constantFrom('KeyId', 'Message', 'MessageType', 'SigningAlgorithm', 'AliasName', 'TargetKeyId', 'KeySpec', 'KeyUsage', 'Origin', 'Tags', 'Limit', 'Marker', 'PendingWindowInDays', 'Description'),
          fc.oneof(fc.string({ maxLength: 40 }), fc.integer(), fc.constant(null), fc.boolean(), fc.array(fc.anything(), { maxLength: 3 }), fc.constantFrom('alias/x', 'SIGN_VERIFY', 'ECC_NIST_P256', 'DIGEST', 'ECDSA_SHA_256', 'AAAA', '-1', '7')),
        )
        .map((d) => JSON.stringify(d)),
    );
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(...OPS), jsonish, async (op, body) => {
        const a = await send(body, { target: `TrentService.${op}` });
        if (a.status === 200) return;
        assert.equal(a.status, 400, `${op} ${body}: ${JSON.stringify(a.body)}`);
        assert.ok(REAL_NAMES.has(a.type!), `${op}: unexpected ${a.type}`);
        assert.equal(a.body.__type, a.type);
      }),
      { numRuns: 400 },
    );
    // Still serving.
    assert.equal((await send('{}', { target: 'TrentService.ListAliases' })).status, 200);
  });
});
