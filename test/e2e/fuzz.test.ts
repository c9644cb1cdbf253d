import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { makeGenericClientConstructor, Metadata, status as Status, credentials, type ServiceError } from '@grpc/grpc-js';
import { readFileSync } from 'node:fs';
import { Algorithm } from '../../src/gen/sigil/v1/signer.ts';
import { rpc, type Clients } from '../../src/cli/client.ts';
import { missingTools } from '../helpers/hw.ts';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.ts';

const skip = missingTools('softhsm', 'softhsm2-util');
const raw = (b: Buffer): Buffer => b;

// Fuzzing over the wire: the daemon's request parsing and validation meet arbitrary bytes and fields.
describe('fuzzing requests against a live sigild', { skip: skip ?? false }, () => {
  let d: TestDaemon;
  let signer: Clients;
  let admin: Clients;

  before(async () => {
    d = await startTestDaemon({ extraConfig: { limits: { maxMessageBytes: 2048, maxBatch: 16 } } });
    signer = d.client('signer');
    admin = d.client('admin');
    await rpc.createKey(admin, { name: 'fuzz/p256', algorithm: Algorithm.ECDSA_P256_SHA256, backend: '' });
    await rpc.createKey(admin, { name: 'fuzz/ed', algorithm: Algorithm.ED25519, backend: '' });
  });
  after(async () => d?.stop());

  test('arbitrary bytes as a request never crash the daemon and never succeed by accident', async () => {
    const id = d.ids.signer;
    const creds = credentials.createSsl(readFileSync(d.ca), readFileSync(id.key), readFileSync(id.cert));
    const methods = ['Sign', 'SignBatch', 'GetPublicKey', 'ListKeys'];
    const Raw = makeGenericClientConstructor(
      Object.fromEntries(methods.map((m) => [m, { path: `/sigil.v1.Signer/${m}`, requestStream: false, responseStream: false, requestSerialize: raw, requestDeserialize: raw, responseSerialize: raw, responseDeserialize: raw }])),
      'RawSigner',
    );
    const client = new Raw(d.address, creds) as unknown as Record<string, (req: Buffer, md: Metadata, cb: (e: ServiceError | null, r?: Buffer) => void) => void>;
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(...methods), fc.uint8Array({ maxLength: 300 }), async (m, bytes) => {
        const code = await new Promise<number>((resolve) => client[m]!.call(client, Buffer.from(bytes), new Metadata(), (e) => resolve(e ? e.code : Status.OK)));
        if (m === 'Sign') assert.notEqual(code, Status.OK, 'a random message does not produce a signature');
        assert.notEqual(code, Status.UNAVAILABLE);
      }),
      { numRuns: 400 },
    );
    (client as unknown as { close(): void }).close();
    const ok = await rpc.sign(signer, { key: 'fuzz/ed', message: Buffer.from('still alive') });
    assert.equal(ok.keyVersion, 'fuzz/ed@1');
  });

  test('arbitrary sign requests get a clear client error, never INTERNAL', async () => {
    const key = fc.oneof(fc.constantFrom('fuzz/p256', 'fuzz/ed', 'fuzz/p256@1', 'fuzz/ed@2', ''), fc.string({ maxLength: 40 }));
    const bytes = fc.oneof(fc.constant(undefined), fc.uint8Array({ maxLength: 64 }).map((b) => Buffer.from(b)), fc.uint8Array({ minLength: 2000, maxLength: 2100 }).map((b) => Buffer.from(b)));
    await fc.assert(
      fc.asyncProperty(key, bytes, bytes, async (k, digest, message) => {
        try {
          const r = await rpc.sign(signer, { key: k, digest, message });
          assert.ok(r.signature.length > 0);
        } catch (err) {
          const e = err as ServiceError;
          assert.ok([Status.INVALID_ARGUMENT, Status.NOT_FOUND, Status.RESOURCE_EXHAUSTED].includes(e.code), `${Status[e.code]}: ${e.details}`);
        }
      }),
      { numRuns: 300 },
    );
  });

  test('arbitrary admin requests change nothing unless valid', async () => {
    const before = await rpc.adminListKeys(admin, { prefix: '' });
    await fc.assert(
      fc.asyncProperty(fc.string({ maxLength: 30 }).filter((s) => !/^[a-z0-9][a-z0-9._/-]*$/.test(s) || s.includes('..') || s.includes('//') || s.endsWith('/')), fc.integer({ min: -5, max: 10 }), async (name, alg) => {
        const code = await rpc.createKey(admin, { name, algorithm: alg as Algorithm, backend: '' }).then(
          () => Status.OK,
          (e: ServiceError) => e.code,
        );
        assert.equal(code, Status.INVALID_ARGUMENT);
      }),
      { numRuns: 200 },
    );
    assert.deepEqual(await rpc.adminListKeys(admin, { prefix: '' }), before);
  });
});
