import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { TPM_CC, TPM_RH, TPMA_OBJECT } from '../../../src/tpm/constants.ts';
import { Writer } from '../../../src/tpm/marshal.ts';
import { parsePublic } from '../../../src/tpm/structures.ts';
import {
  AK_TEMPLATE_ECC,
  AK_TEMPLATE_RSA,
  EK_POLICY_SHA256,
  EK_TEMPLATE_H3,
  EK_TEMPLATE_L1,
  EK_TEMPLATE_L2,
  SRK_TEMPLATE_ECC,
  templateBytes,
} from '../../../src/tpm/templates.ts';
import { VECTORS } from './vectors.ts';

test('the EK authPolicy is PolicySecret(TPM_RH_ENDORSEMENT) computed per Part 3, 23.4', () => {
  // policyDigest' = H(H(0...0 || TPM_CC_PolicySecret || authName) || policyRef), policyRef empty;
  // the name of a permanent handle is the handle itself.
  const step1 = createHash('sha256')
    .update(Buffer.alloc(32))
    .update(new Writer().u32(TPM_CC.PolicySecret).u32(TPM_RH.ENDORSEMENT).finish())
    .digest();
  assert.deepEqual(createHash('sha256').update(step1).digest(), EK_POLICY_SHA256);
});

test('L-1 marshals to the template part of the swtpm RSA EK (everything but the modulus)', () => {
  const swtpm = parsePublic(Buffer.from(VECTORS.EK_RSA_PUB, 'hex').subarray(2));
  const ours = parsePublic(templateBytes(EK_TEMPLATE_L1));
  assert.deepEqual({ ...ours, raw: undefined, rsa: { ...ours.rsa, modulus: undefined } }, { ...swtpm, raw: undefined, rsa: { ...swtpm.rsa, modulus: undefined } });
  assert.equal(ours.rsa?.modulus.length, 256);
});

test('H-3 marshals to the template part of the swtpm P-384 EK', () => {
  const swtpm = parsePublic(Buffer.from(VECTORS.EK_ECC_PUB, 'hex').subarray(2));
  const ours = parsePublic(templateBytes(EK_TEMPLATE_H3));
  const strip = (p: typeof ours) => ({ ...p, raw: undefined, ecc: { ...p.ecc, x: undefined, y: undefined } });
  assert.deepEqual(strip(ours), strip(swtpm));
});

test('AK templates are restricted signing keys without decrypt; SRK and EKs are restricted decrypt keys', () => {
  for (const t of [AK_TEMPLATE_RSA, AK_TEMPLATE_ECC]) {
    const a = t.objectAttributes;
    for (const bit of [TPMA_OBJECT.restricted, TPMA_OBJECT.sign, TPMA_OBJECT.fixedTPM, TPMA_OBJECT.fixedParent, TPMA_OBJECT.sensitiveDataOrigin, TPMA_OBJECT.userWithAuth]) assert.ok(a & bit);
    assert.equal(a & TPMA_OBJECT.decrypt, 0);
  }
  for (const t of [SRK_TEMPLATE_ECC, EK_TEMPLATE_L1, EK_TEMPLATE_L2, EK_TEMPLATE_H3]) {
    assert.ok(t.objectAttributes & TPMA_OBJECT.restricted && t.objectAttributes & TPMA_OBJECT.decrypt);
    assert.equal(t.objectAttributes & TPMA_OBJECT.sign, 0);
  }
  assert.equal(EK_TEMPLATE_L2.objectAttributes, 0x300b2);
  assert.equal(SRK_TEMPLATE_ECC.objectAttributes, 0x30472);
});
