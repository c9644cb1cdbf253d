import assert from 'node:assert/strict';
import { test } from 'node:test';
import { checkAk } from '../../../src/attest/ak.ts';
import { isSigilError } from '../../../src/errors.ts';
import { TPM_ALG, TPM_ECC, TPMA_OBJECT } from '../../../src/tpm/constants.ts';
import { softAk } from './soft-tpm.ts';

const denied = (message: string) => (e: unknown) => isSigilError(e, 'PERMISSION_DENIED') && e.message === message;

test('tpm2_createak-shaped aks pass', () => {
  for (const kind of ['rsassa', 'rsapss', 'ecdsa'] as const) checkAk(softAk(kind).pub);
});

test('each missing or wrong attribute is named', () => {
  const clear = (bit: number) => softAk('ecdsa', (a) => void (a.objectAttributes &= ~bit)).pub;
  assert.throws(() => checkAk(clear(TPMA_OBJECT.restricted)), denied('ak is not restricted'));
  assert.throws(() => checkAk(clear(TPMA_OBJECT.sign)), denied('ak is not a signing key'));
  assert.throws(() => checkAk(clear(TPMA_OBJECT.fixedTPM)), denied('ak is not fixedTPM'));
  assert.throws(() => checkAk(clear(TPMA_OBJECT.fixedParent)), denied('ak is not fixedParent'));
  assert.throws(() => checkAk(clear(TPMA_OBJECT.sensitiveDataOrigin)), denied('ak is not sensitiveDataOrigin'));
  assert.throws(() => checkAk(softAk('ecdsa', (a) => void (a.objectAttributes |= TPMA_OBJECT.decrypt)).pub), denied('ak is a decryption key'));
  assert.throws(() => checkAk(softAk('ecdsa', (a) => void (a.nameAlg = TPM_ALG.SHA1)).pub), denied('ak name algorithm 0x4 is not sha256'));
  assert.throws(() => checkAk(softAk('ecdsa', (a) => void (a.ecc!.schemeHash = TPM_ALG.SHA384)).pub), denied('ak signature hash is not sha256'));
  assert.throws(() => checkAk(softAk('ecdsa', (a) => void (a.ecc!.scheme = TPM_ALG.ECDAA)).pub), denied('ak ecc scheme is not ecdsa'));
  assert.throws(() => checkAk(softAk('rsassa', (a) => void (a.rsa!.scheme = TPM_ALG.NULL)).pub), denied('ak rsa scheme is neither rsassa nor rsapss'));
  assert.throws(() => checkAk(softAk('rsassa', (a) => void (a.rsa!.schemeHash = TPM_ALG.SHA1)).pub), denied('ak signature hash is not sha256'));
  assert.throws(
    () => checkAk(softAk('rsassa', (a) => { a.rsa!.keyBits = 1024; a.rsa!.modulus = a.rsa!.modulus.subarray(0, 128); }).pub),
    denied('ak rsa key of 1024 bits is shorter than 2048'),
  );
  assert.throws(() => checkAk(softAk('ecdsa', (a) => void (a.ecc!.curve = TPM_ECC.NIST_P384)).pub), denied('ak curve is not nist p-256'));
  assert.throws(() => checkAk(softAk('ecdsa', (a) => void (a.ecc!.x = Buffer.alloc(32, 1))).pub), denied('ak public key is not a valid key'));
});

test('the policy chooses the ak key types', () => {
  assert.throws(() => checkAk(softAk('rsassa').pub, new Set(['ecc'])), denied('the policy does not accept rsa aks'));
  assert.throws(() => checkAk(softAk('ecdsa').pub, new Set(['rsa'])), denied('the policy does not accept ecc aks'));
});
