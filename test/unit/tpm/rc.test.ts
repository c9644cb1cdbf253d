import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SigilError } from '../../../src/errors.ts';
import {
  baseRc,
  describeRc,
  isRetryable,
  RC_FMT1_CODES,
  RC_VER1_CODES,
  RC_WARN_CODES,
  TPM_RC,
  TpmError,
  TSS_BASE_CODES,
} from '../../../src/tpm/rc.ts';

test('codes measured on swtpm decode to their names and positions', () => {
  assert.equal(describeRc(0x1df), 'TPM_RC_INTEGRITY: integrity check failed (parameter 1) [0x1df]');
  assert.equal(describeRc(0x902), 'TPM_RC_OBJECT_MEMORY: out of memory for object contexts [0x902]');
  assert.equal(describeRc(0x98e), 'TPM_RC_AUTH_FAIL: the authorization HMAC check failed and DA counter incremented (session 1) [0x98e]');
  assert.equal(describeRc(0x99d), 'TPM_RC_POLICY_FAIL: a policy check failed (session 1) [0x99d]');
  assert.equal(describeRc(0x28b), 'TPM_RC_HANDLE: the handle is not correct for the use (handle 2) [0x28b]');
  assert.equal(describeRc(0x18b), 'TPM_RC_HANDLE: the handle is not correct for the use (handle 1) [0x18b]');
  assert.equal(describeRc(0x2c4), 'TPM_RC_VALUE: value is out of range or is not correct for the context (parameter 2) [0x2c4]');
  assert.equal(describeRc(0xac4).includes('parameter 10'), true);
  assert.equal(describeRc(0x09f), 'TPM_RC_INTEGRITY: integrity check failed [0x9f]');
  assert.equal(describeRc(0x149), 'TPM_RC_NV_AUTHORIZATION: NV access authorization fails in command actions [0x149]');
  assert.equal(describeRc(0), 'TPM_RC_SUCCESS [0x0]');
});

test('every code of the included tables decodes to its own name in every position', () => {
  for (const [n, [name]] of RC_VER1_CODES) {
    assert.ok(describeRc(0x100 + n).startsWith(`${name}: `), name);
    assert.equal(baseRc(0x100 + n), 0x100 + n);
  }
  for (const [n, [name]] of RC_WARN_CODES) assert.ok(describeRc(0x900 + n).startsWith(`${name}: `), name);
  for (const [n, [name]] of RC_FMT1_CODES) {
    const plain = 0x80 + n;
    assert.ok(describeRc(plain).startsWith(`${name}: `), name);
    for (let k = 1; k <= 15; k++) {
      const rc = plain | 0x40 | (k << 8);
      assert.ok(describeRc(rc).includes(`${name}: `) && describeRc(rc).includes(`(parameter ${k})`), `${name} p${k}`);
      assert.equal(baseRc(rc), plain);
    }
    for (let k = 1; k <= 7; k++) {
      assert.ok(describeRc(plain | (k << 8)).endsWith(`(handle ${k}) [0x${(plain | (k << 8)).toString(16)}]`), `${name} h${k}`);
      assert.ok(describeRc(plain | 0x800 | (k << 8)).includes(`(session ${k})`), `${name} s${k}`);
      assert.equal(baseRc(plain | 0x800 | (k << 8)), plain);
    }
  }
  for (const [n, name] of TSS_BASE_CODES) assert.equal(describeRc((10 << 16) | n), `tcti: ${name} [0x${((10 << 16) | n).toString(16)}]`);
});

test('tables cover the spec numbering without duplicates', () => {
  const names = [...RC_VER1_CODES.values(), ...RC_FMT1_CODES.values(), ...RC_WARN_CODES.values()].map(([n]) => n);
  assert.equal(new Set(names).size, names.length);
  assert.equal(RC_VER1_CODES.size, 34);
  assert.equal(RC_FMT1_CODES.size, 33);
  assert.equal(RC_WARN_CODES.size, 29);
});

test('unknown, vendor, 1.2 and layered codes are still described', () => {
  assert.equal(describeRc(0x0be), 'unknown format-one error 0xbe [0xbe]');
  assert.equal(describeRc(0x17f), 'unknown error 0x17f [0x17f]');
  assert.equal(describeRc(0x97e), 'unknown warning 0x97e [0x97e]');
  assert.equal(describeRc(0x500), 'vendor-defined response code 0x500 [0x500]');
  assert.equal(describeRc(0x00e), 'tpm 1.2 response code 0xe [0xe]');
  assert.equal(describeRc(0x000a000a), 'tcti: TSS2_BASE_RC_IO_ERROR [0xa000a]');
  assert.equal(describeRc(0x00070063), 'esapi: code 0x63 [0x70063]');
  assert.equal(describeRc(0x00630001), 'layer 99: TSS2_BASE_RC_GENERAL_FAILURE [0x630001]');
  assert.equal(describeRc(0x000c0902), 'resource manager (tpm): TPM_RC_OBJECT_MEMORY: out of memory for object contexts [0xc0902]');
});

test('TpmError carries code, rc and command', () => {
  const e = new TpmError('TPM2_ActivateCredential', 0x1df);
  assert.ok(e instanceof SigilError);
  assert.equal(e.code, 'TPM_ERROR');
  assert.equal(e.rc, 0x1df);
  assert.equal(e.command, 'TPM2_ActivateCredential');
  assert.equal(e.baseCode, TPM_RC.INTEGRITY);
  assert.equal(e.message, 'TPM2_ActivateCredential failed: TPM_RC_INTEGRITY: integrity check failed (parameter 1) [0x1df]');
  assert.equal(isRetryable(TPM_RC.RETRY), true);
  assert.equal(isRetryable(0x908), true);
  assert.equal(isRetryable(TPM_RC.OBJECT_MEMORY), false);
});
