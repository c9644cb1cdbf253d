import assert from 'node:assert/strict';
import { test } from 'node:test';
import { SigilError } from '../../../src/errors.ts';
import { isHandleMissing, tpmFailure } from '../../../src/signers/tpm/errors.ts';
import { TpmFormatError } from '../../../src/tpm/marshal.ts';
import { TpmError } from '../../../src/tpm/rc.ts';

const code = (err: unknown) => tpmFailure('tpm signature with tpm:handle=0x81000100', err).code;

test('retryable warnings and exhausted tpm resources are BACKEND_UNAVAILABLE', () => {
  for (const rc of [0x922 /* RETRY */, 0x908 /* YIELDED */, 0x90a /* TESTING */, 0x902 /* OBJECT_MEMORY */, 0x903, 0x904, 0x920, 0x923]) {
    assert.equal(code(new TpmError('TPM2_Sign', rc)), 'BACKEND_UNAVAILABLE', rc.toString(16));
  }
});

test('authorization refusals are FAILED_PRECONDITION; other tpm errors BACKEND_ERROR with the rc described', () => {
  assert.equal(code(new TpmError('TPM2_Sign', 0x98e)), 'FAILED_PRECONDITION'); // AUTH_FAIL, session 1
  assert.equal(code(new TpmError('TPM2_Sign', 0x9a2)), 'FAILED_PRECONDITION'); // BAD_AUTH, session 1
  assert.equal(code(new TpmError('TPM2_Sign', 0x921)), 'FAILED_PRECONDITION'); // LOCKOUT
  const full = tpmFailure('tpm key creation for k-v9', new TpmError('TPM2_EvictControl', 0x14b)); // NV_SPACE
  assert.equal(full.code, 'FAILED_PRECONDITION');
  assert.match(full.message, /^tpm key creation for k-v9: the tpm has no room left for another persistent key \(TPM_RC_NV_SPACE\): destroy key versions/);
  const e = tpmFailure('tpm key creation for k-v1', new TpmError('TPM2_Create', 0x2c4)); // VALUE, parameter 2
  assert.equal(e.code, 'BACKEND_ERROR');
  assert.match(e.message, /^tpm key creation for k-v1: TPM2_Create failed: TPM_RC_VALUE/);
  assert.equal(code(new TpmError('TPM2_Sign', 0x101)), 'BACKEND_ERROR'); // FAILURE
});

test('malformed tpm responses are the backend\'s fault; transport and sigil errors pass through; unknown throws become BACKEND_ERROR', () => {
  assert.equal(code(new TpmFormatError('u16 needs 2 bytes, 0 left')), 'BACKEND_ERROR');
  assert.equal(code(new SigilError('BACKEND_UNAVAILABLE', 'tpm transport: connection closed by the tpm')), 'BACKEND_UNAVAILABLE');
  assert.equal(code(new SigilError('KEY_NOT_FOUND', 'no tpm key at 0x81000100')), 'KEY_NOT_FOUND');
  const e = tpmFailure('tpm key lookup', new TypeError('boom'));
  assert.equal(e.code, 'BACKEND_ERROR');
  assert.equal(e.message, 'tpm key lookup failed');
});

test('TPM_RC_HANDLE on any handle means the object is absent; other errors do not', () => {
  assert.ok(isHandleMissing(new TpmError('TPM2_ReadPublic', 0x18b)));
  assert.ok(isHandleMissing(new TpmError('TPM2_EvictControl', 0x28b)));
  assert.ok(!isHandleMissing(new TpmError('TPM2_Sign', 0x922)));
  assert.ok(!isHandleMissing(new SigilError('BACKEND_UNAVAILABLE', 'x')));
});
