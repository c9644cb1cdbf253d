// Machine-readable error reasons on the wire (real daemon over a SoftHSM token, grpc-js as the client): every
// error status sigild sends carries grpc-status-details-bin, a google.rpc.Status with the call's code and message
// and one google.rpc.ErrorInfo (domain sigil.v1) whose reason is precise where the error names one, else sigil's
// error code; on unary calls, streams and the transport's own errors (trailers after messages: test/unit/server/h2.test.ts).
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { Client, credentials, status as Status, type ServiceError } from '@grpc/grpc-js';
import { missingTools } from '../helpers/hw.ts';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.ts';
import { Algorithm } from '../../src/gen/sigil/v1/signer.ts';
import { rpc } from '../../src/cli/client.ts';
import { decodeStatusDetails, type StatusWithInfo } from '../../src/status-details.ts';
import { reasonOf } from '../../src/cli/error-reason.ts';

const skip = missingTools('softhsm', 'softhsm2-util');

/** The decoded grpc-status-details-bin of a failed call, checked against its status: same code, same message, sigil's domain. */
function detailsOf(err: ServiceError): StatusWithInfo {
  const values = err.metadata.get('grpc-status-details-bin');
  assert.equal(values.length, 1, `one grpc-status-details-bin trailer on ${Status[err.code]}: ${err.details}`);
  assert.ok(Buffer.isBuffer(values[0]));
  const s = decodeStatusDetails(values[0]);
  assert.ok(s !== undefined, 'a google.rpc.Status with an ErrorInfo');
  assert.equal(s.code, err.code, 'Status.code is the grpc-status');
  assert.equal(s.message, err.details, 'Status.message is the grpc-message');
  assert.equal(s.info.domain, 'sigil.v1');
  return s;
}

async function failure(p: Promise<unknown>): Promise<ServiceError> {
  try {
    await p;
  } catch (err) {
    return err as ServiceError;
  }
  return assert.fail('the call succeeded');
}

describe('ErrorInfo on every error status', { skip: skip ?? false }, () => {
  let td: TestDaemon;
  const digest = randomBytes(32);

  before(async () => {
    td = await startTestDaemon();
    const admin = td.client('admin');
    await rpc.createKey(admin, { name: 'errinfo/k', algorithm: Algorithm.ECDSA_P256_SHA256, backend: '' });
    await rpc.rotateKey(admin, { name: 'errinfo/k' });
    await rpc.disableKeyVersion(admin, { key: 'errinfo/k@1', compromised: false, compromiseTime: undefined });
  });
  after(async () => td?.stop());

  test('a unary refusal with a precise reason: KEY_VERSION_DISABLED with the version, code FAILED_PRECONDITION', async () => {
    const err = await failure(rpc.sign(td.client('signer'), { key: 'errinfo/k@1', digest, message: undefined }));
    assert.equal(err.code, Status.FAILED_PRECONDITION);
    const s = detailsOf(err);
    assert.equal(s.info.reason, 'KEY_VERSION_DISABLED');
    assert.deepEqual(s.info.metadata, { key_version: 'errinfo/k@1', state: 'DISABLED' });
    assert.equal(reasonOf(err), 'KEY_VERSION_DISABLED', 'the shared client reader agrees');
  });

  test('an error without a precise reason has its sigil error code: KEY_NOT_FOUND, PERMISSION_DENIED, UNAUTHENTICATED', async () => {
    const nf = await failure(rpc.sign(td.client('signer'), { key: 'errinfo/absent', digest, message: undefined }));
    assert.equal(nf.code, Status.NOT_FOUND);
    assert.equal(detailsOf(nf).info.reason, 'KEY_NOT_FOUND');
    const denied = await failure(rpc.sign(td.client('nobody'), { key: 'errinfo/k', digest, message: undefined }));
    assert.equal(denied.code, Status.PERMISSION_DENIED);
    assert.deepEqual(detailsOf(denied).info, { reason: 'PERMISSION_DENIED', domain: 'sigil.v1', metadata: {} });
    const anon = await failure(rpc.sign(td.client('anonymous'), { key: 'errinfo/k', digest, message: undefined }));
    assert.equal(anon.code, Status.UNAUTHENTICATED);
    assert.equal(detailsOf(anon).info.reason, 'UNAUTHENTICATED');
  });

  test('a message that grpc-message percent-encodes arrives whole in Status.message', async () => {
    const err = await failure(rpc.createKey(td.client('admin'), { name: 'errinfo/k', algorithm: Algorithm.ECDSA_P256_SHA256, backend: '' }));
    assert.equal(err.code, Status.ALREADY_EXISTS);
    assert.equal(detailsOf(err).info.reason, 'KEY_EXISTS');
    const odd = await failure(rpc.getPublicKey(td.client('signer'), { key: 'errinfo/ü%20\u00e9' }));
    assert.equal(odd.code, Status.INVALID_ARGUMENT);
    assert.match(odd.details, /ü%20é/, 'the message names the key as given');
    assert.equal(detailsOf(odd).info.reason, 'INVALID_ARGUMENT');
  });

  test('SignBatch: each failed item carries the reason beside sigil\'s error code', async () => {
    const res = await rpc.signBatch(td.client('signer'), {
      requests: [
        { key: 'errinfo/k', digest, message: undefined },
        { key: 'errinfo/k@1', digest, message: undefined },
        { key: 'errinfo/absent', digest, message: undefined },
      ],
    });
    assert.ok(res.results[0]!.signature);
    assert.deepEqual(res.results[1]!.error, { code: Status.FAILED_PRECONDITION, message: res.results[1]!.error!.message, reason: 'FAILED_PRECONDITION', errorInfoReason: 'KEY_VERSION_DISABLED' });
    assert.equal(res.results[2]!.error!.reason, 'KEY_NOT_FOUND');
    assert.equal(res.results[2]!.error!.errorInfoReason, 'KEY_NOT_FOUND');
  });

  test('SignStream: a refusal before any message (Trailers-Only) carries the ErrorInfo', async () => {
    const call = td.client('nobody').signer.signStream();
    const err = await new Promise<ServiceError>((resolve) => {
      call.on('error', resolve);
      call.on('data', () => {});
    });
    assert.equal(err.code, Status.PERMISSION_DENIED);
    assert.equal(detailsOf(err).info.reason, 'PERMISSION_DENIED');
  });

  test('an unknown method (the transport\'s own UNIMPLEMENTED) carries it', async () => {
    const c = new Client(td.daemon.address, credentials.createSsl(readFileSync(td.ca)));
    try {
      const err = await new Promise<ServiceError>((resolve, reject) =>
        c.makeUnaryRequest('/sigil.v1.Signer/NoSuchMethod', (b: Buffer) => b, (b: Buffer) => b, Buffer.alloc(0), (e) => (e ? resolve(e) : reject(new Error('answered')))),
      );
      assert.equal(err.code, Status.UNIMPLEMENTED);
      assert.equal(detailsOf(err).info.reason, 'UNIMPLEMENTED');
    } finally {
      c.close();
    }
  });
});
