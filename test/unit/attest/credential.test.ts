import assert from 'node:assert/strict';
import { createHash, createHmac } from 'node:crypto';
import { test } from 'node:test';
import { makeCredential, tpm2ToolsCredentialFile } from '../../../src/attest/credential.ts';
import { kdfa } from '../../../src/tpm/kdf.ts';
import { isSigilError } from '../../../src/errors.ts';
import { objectName } from '../../../src/tpm/structures.ts';
import { softActivate, softAk, softEk } from './soft-tpm.ts';

// The swtpm integration test is the real check (tpm2_activatecredential on these blobs); this one
// covers shapes and the name binding quickly, with a software ActivateCredential.

test('kdfa is SP 800-108 counter mode with HMAC, truncated to the bits asked', () => {
  const key = Buffer.alloc(32, 1);
  const ctx = Buffer.from('ctx');
  const block = (i: number) =>
    createHmac('sha256', key)
      .update(Buffer.from([0, 0, 0, i]))
      .update(Buffer.from('STORAGE\0'))
      .update(ctx)
      .update(Buffer.from([0, 0, 0x01, 0x80])) // 384 bits
      .digest();
  const out = kdfa('sha256', key, 'STORAGE', ctx, Buffer.alloc(0), 384);
  assert.deepEqual(out, Buffer.concat([block(1), block(2)]).subarray(0, 48));
});

for (const kind of ['rsa', 'p256', 'p384'] as const) {
  test(`${kind} ek: the credential activates for the named ak only`, () => {
    const ek = softEk(kind);
    const ak = softAk('ecdsa');
    const secret = createHash('sha256').update(kind).digest();
    const cred = makeCredential(ek.pub, objectName(ak.pub), secret);
    assert.deepEqual(softActivate(ek, objectName(ak.pub), cred), secret);
    assert.throws(() => softActivate(ek, objectName(softAk('ecdsa').pub), cred), /integrity/);
    const size = kind === 'p384' ? 48 : 32;
    // TPM2B_DIGEST hmac then encIdentity (TPM2B secret).
    assert.equal(cred.credentialBlob.readUInt16BE(0), size);
    assert.equal(cred.credentialBlob.length, 2 + size + 2 + secret.length);
    assert.equal(cred.encryptedSecret.length, kind === 'rsa' ? 256 : 2 * (2 + size));
  });
}

test('tpm2-tools credential file: magic, version, two TPM2Bs', () => {
  const ek = softEk('rsa');
  const cred = makeCredential(ek.pub, objectName(softAk().pub), Buffer.alloc(16, 3));
  const f = tpm2ToolsCredentialFile(cred);
  assert.equal(f.readUInt32BE(0), 0xbadcc0de);
  assert.equal(f.readUInt32BE(4), 1);
  assert.equal(f.readUInt16BE(8), cred.credentialBlob.length);
  assert.deepEqual(f.subarray(10 + cred.credentialBlob.length + 2), cred.encryptedSecret);
});

test('a secret longer than the ek name digest, or an ek without aes-cfb, is refused', () => {
  const ek = softEk('rsa');
  assert.throws(() => makeCredential(ek.pub, objectName(softAk().pub), Buffer.alloc(33)), (e: unknown) => isSigilError(e, 'INVALID_ARGUMENT'));
  const ak = softAk('ecdsa');
  assert.throws(() => makeCredential(ak.pub, objectName(ak.pub), Buffer.alloc(32)), /no aes-cfb symmetric definition/);
});
