import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, verify } from 'node:crypto';
import { TPM_ALG, TPM_ECC, TPM_GENERATED_VALUE, TPM_ST, TPMA_OBJECT } from '../../../src/tpm/constants.ts';
import { Reader, TpmFormatError, Writer } from '../../../src/tpm/marshal.ts';
import {
  hashOf,
  marshalAttest,
  marshalNvPublic,
  marshalPcrSelections,
  marshalPublic,
  marshalPublic2B,
  marshalSignature,
  objectName,
  parseAttest,
  parseNvPublic,
  parsePcrSelections,
  parsePublic,
  parsePublic2B,
  parseSignature,
  pcrDigest,
  publicKeyOf,
  spkiOf,
  type TpmPublic,
} from '../../../src/tpm/structures.ts';
import { VECTORS } from './vectors.ts';

const hex = (s: string) => Buffer.from(s, 'hex');
const isFormatError = (err: unknown) => err instanceof TpmFormatError && err.code === 'INVALID_ARGUMENT' && err.message.startsWith('malformed tpm data: ');

// ECDSA r and s arrive without leading zeros guaranteed; P1363 needs them padded to the curve size.
function p1363(r: Buffer, s: Buffer, size: number): Buffer {
  const pad = (b: Buffer) => Buffer.concat([Buffer.alloc(size - b.length), b]);
  return Buffer.concat([pad(r), pad(s)]);
}

test('Reader and Writer round-trip every wire type', () => {
  const b = new Writer().u8(0xab).u16(0xbeef).u32(0xdeadbeef).u64(0x0102030405060708n).sized(hex('cafe')).bytes(hex('ff')).finish();
  assert.equal(b.toString('hex'), 'abbeefdeadbeef01020304050607080002cafeff');
  const r = new Reader(b);
  assert.equal(r.u8(), 0xab);
  assert.equal(r.u16(), 0xbeef);
  assert.equal(r.u32(), 0xdeadbeef);
  assert.equal(r.u64(), 0x0102030405060708n);
  assert.deepEqual(r.sized(), hex('cafe'));
  assert.equal(r.remaining, 1);
  assert.throws(() => r.end(), isFormatError);
  assert.deepEqual(r.bytes(1), hex('ff'));
  r.end();
  assert.throws(() => r.u8(), isFormatError);
  assert.throws(() => new Reader(hex('0005aabb')).sized(), isFormatError);
  assert.throws(() => new Reader(hex('0003aabbcc')).sized(2), isFormatError);
});

test('Reader copies: a parsed buffer does not alias the input', () => {
  const input = hex('0002aabb');
  const got = new Reader(input).sized();
  input[2] = 0;
  assert.deepEqual(got, hex('aabb'));
});

test('RSA EK public from swtpm parses with the TCG template fields and the name tpm2-tools printed', () => {
  const ek = parsePublic2B(hex(VECTORS.EK_RSA_PUB));
  assert.equal(ek.type, TPM_ALG.RSA);
  assert.equal(ek.nameAlg, TPM_ALG.SHA256);
  assert.equal(ek.objectAttributes, 0x300b2);
  assert.equal(ek.authPolicy.toString('hex'), '837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa');
  assert.ok(ek.rsa);
  assert.equal(ek.rsa.symmetric, TPM_ALG.AES);
  assert.equal(ek.rsa.symKeyBits, 128);
  assert.equal(ek.rsa.symMode, TPM_ALG.CFB);
  assert.equal(ek.rsa.scheme, TPM_ALG.NULL);
  assert.equal(ek.rsa.keyBits, 2048);
  assert.equal(ek.rsa.exponent, 0);
  assert.equal(ek.rsa.modulus.length, 256);
  assert.equal(ek.rsa.modulus.subarray(0, 4).toString('hex'), 'a3c8720f');
  assert.deepEqual(objectName(ek), hex(VECTORS.EK_RSA_NAME));
  assert.deepEqual(marshalPublic(ek), ek.raw);
  assert.deepEqual(marshalPublic2B(ek), hex(VECTORS.EK_RSA_PUB));
  const key = publicKeyOf(ek);
  assert.equal(key.asymmetricKeyType, 'rsa');
  assert.equal(key.asymmetricKeyDetails?.modulusLength, 2048);
  assert.equal(key.asymmetricKeyDetails?.publicExponent, 65537n);
});

test('ECC EK public from swtpm is on P-384 and its name matches', () => {
  const ek = parsePublic2B(hex(VECTORS.EK_ECC_PUB));
  assert.equal(ek.type, TPM_ALG.ECC);
  assert.ok(ek.ecc);
  assert.equal(ek.ecc.curve, TPM_ECC.NIST_P384);
  assert.equal(ek.ecc.kdf, TPM_ALG.NULL);
  assert.equal(ek.ecc.x.length, 48);
  assert.deepEqual(objectName(ek), hex(VECTORS.EK_ECC_NAME));
  assert.deepEqual(marshalPublic(ek), ek.raw);
  assert.equal(publicKeyOf(ek).asymmetricKeyDetails?.namedCurve, 'secp384r1');
});

test('AK publics made by tpm2_createak parse as restricted signing keys with the names printed', () => {
  const want = TPMA_OBJECT.fixedTPM | TPMA_OBJECT.fixedParent | TPMA_OBJECT.sensitiveDataOrigin | TPMA_OBJECT.userWithAuth | TPMA_OBJECT.restricted | TPMA_OBJECT.sign;
  const ecc = parsePublic2B(hex(VECTORS.AK_ECC_PUB));
  assert.equal(ecc.objectAttributes, want);
  assert.equal(ecc.ecc?.scheme, TPM_ALG.ECDSA);
  assert.equal(ecc.ecc?.schemeHash, TPM_ALG.SHA256);
  assert.equal(ecc.ecc?.curve, TPM_ECC.NIST_P256);
  assert.deepEqual(objectName(ecc), hex(VECTORS.AK_ECC_NAME));
  const rsa = parsePublic2B(hex(VECTORS.AK_RSA_PUB));
  assert.equal(rsa.objectAttributes, want);
  assert.equal(rsa.rsa?.scheme, TPM_ALG.RSASSA);
  assert.equal(rsa.rsa?.schemeHash, TPM_ALG.SHA256);
  assert.equal(rsa.rsa?.symmetric, TPM_ALG.NULL);
  assert.equal(rsa.rsa?.symKeyBits, undefined);
  assert.deepEqual(objectName(rsa), hex(VECTORS.AK_RSA_NAME));
  // The SPKI of an EC key is the fixed P-256 prefix plus the uncompressed point.
  const spki = spkiOf(ecc);
  assert.deepEqual(spki.subarray(-64), Buffer.concat([ecc.ecc!.x, ecc.ecc!.y]));
});

test('an ECDSA quote from swtpm parses and verifies under the AK', () => {
  const ak = parsePublic2B(hex(VECTORS.AK_ECC_PUB));
  const msg = hex(VECTORS.QUOTE_ECC_MSG);
  const a = parseAttest(msg);
  assert.equal(a.magic, TPM_GENERATED_VALUE);
  assert.equal(a.type, TPM_ST.ATTEST_QUOTE);
  assert.equal(a.qualifiedSigner.toString('hex'), '000bfd2a594781f1d86cdede51e55f4c5858ad0e6fda9a580f06848f2fe59a157f2b');
  assert.equal(a.extraData.toString('hex'), '0badc0de');
  assert.equal(a.clockInfo.safe, true);
  assert.equal(a.firmwareVersion, 0x2019102300163636n);
  assert.ok('pcrSelect' in a.attested);
  assert.deepEqual(a.attested.pcrSelect, [{ hash: TPM_ALG.SHA256, pcrs: [0, 1, 2, 3, 4, 5, 6, 7, 16] }]);
  assert.equal(a.attested.pcrDigest.toString('hex'), '2d5565fb483d8ea4525a7a9229677d1038ad34b6e22c8d5152e1d7f7b9817597');
  assert.deepEqual(pcrDigest(TPM_ALG.SHA256, Array.from({ length: 9 }, () => Buffer.alloc(32))), a.attested.pcrDigest);
  assert.deepEqual(a.raw, msg);
  assert.deepEqual(marshalAttest(a), msg);

  const sig = parseSignature(hex(VECTORS.QUOTE_ECC_SIG));
  assert.equal(sig.sigAlg, TPM_ALG.ECDSA);
  assert.equal(sig.hash, TPM_ALG.SHA256);
  assert.ok(sig.ecc);
  assert.deepEqual(marshalSignature(sig), hex(VECTORS.QUOTE_ECC_SIG));
  const key = publicKeyOf(ak);
  const good = p1363(sig.ecc.r, sig.ecc.s, 32);
  assert.equal(verify('sha256', msg, { key, dsaEncoding: 'ieee-p1363' }, good), true);
  const tampered = Buffer.from(msg);
  tampered[tampered.length - 1]! ^= 1;
  assert.equal(verify('sha256', tampered, { key, dsaEncoding: 'ieee-p1363' }, good), false);
});

test('an RSASSA quote from swtpm parses and verifies under the AK', () => {
  const ak = parsePublic2B(hex(VECTORS.AK_RSA_PUB));
  const msg = hex(VECTORS.QUOTE_RSA_MSG);
  const a = parseAttest(msg);
  assert.equal(a.extraData.toString('hex'), 'cafe');
  assert.ok('pcrSelect' in a.attested);
  assert.deepEqual(a.attested.pcrSelect, [{ hash: TPM_ALG.SHA256, pcrs: [0, 7, 23] }]);
  assert.deepEqual(a.qualifiedSigner.subarray(0, 2), hex('000b'));
  const sig = parseSignature(hex(VECTORS.QUOTE_RSA_SIG));
  assert.equal(sig.sigAlg, TPM_ALG.RSASSA);
  assert.equal(sig.rsa?.length, 256);
  assert.equal(verify('sha256', msg, publicKeyOf(ak), sig.rsa!), true);
  assert.deepEqual(marshalSignature(sig), hex(VECTORS.QUOTE_RSA_SIG));
});

test('every truncation of a captured structure is a TpmFormatError', () => {
  const cases: Array<[string, (b: Buffer) => unknown]> = [
    [VECTORS.EK_RSA_PUB, parsePublic2B],
    [VECTORS.EK_ECC_PUB, parsePublic2B],
    [VECTORS.AK_ECC_PUB.slice(4), parsePublic],
    [VECTORS.QUOTE_ECC_MSG, parseAttest],
    [VECTORS.QUOTE_RSA_MSG, parseAttest],
    [VECTORS.QUOTE_ECC_SIG, parseSignature],
    [VECTORS.QUOTE_RSA_SIG, parseSignature],
  ];
  for (const [h, parse] of cases) {
    const b = hex(h);
    parse(b);
    for (let n = 0; n < b.length; n++) assert.throws(() => parse(b.subarray(0, n)), isFormatError, `${h.slice(0, 8)} cut at ${n}`);
    assert.throws(() => parse(Buffer.concat([b, hex('00')])), isFormatError);
  }
});

test('PCR selections round-trip and reject indices beyond 23', () => {
  const sel = [
    { hash: TPM_ALG.SHA256, pcrs: [0, 1, 7, 8, 15, 16, 23] },
    { hash: TPM_ALG.SHA1, pcrs: [] },
  ];
  const b = marshalPcrSelections(sel);
  assert.equal(b.toString('hex'), '00000002000b03838181000403000000');
  const r = new Reader(b);
  assert.deepEqual(parsePcrSelections(r), sel);
  r.end();
  assert.throws(() => marshalPcrSelections([{ hash: TPM_ALG.SHA256, pcrs: [24] }]), isFormatError);
  assert.throws(() => parsePcrSelections(new Reader(hex('00000001000b0400000001'))), isFormatError);
  // A 4-byte bitmap is acceptable while its fourth byte is empty.
  assert.deepEqual(parsePcrSelections(new Reader(hex('00000001000b0401000000'))), [{ hash: TPM_ALG.SHA256, pcrs: [0] }]);
  assert.throws(() => parsePcrSelections(new Reader(hex('ffffffff'))), isFormatError);
});

test('hashOf maps TPM hashes and rejects others with TpmFormatError', () => {
  assert.equal(hashOf(TPM_ALG.SHA1), 'sha1');
  assert.equal(hashOf(TPM_ALG.SHA256), 'sha256');
  assert.equal(hashOf(TPM_ALG.SHA384), 'sha384');
  assert.equal(hashOf(TPM_ALG.SHA512), 'sha512');
  assert.throws(() => hashOf(TPM_ALG.NULL), isFormatError);
  assert.throws(() => hashOf(TPM_ALG.SM3_256), isFormatError);
  assert.throws(() => pcrDigest(TPM_ALG.RSA, []), isFormatError);
});

test('public areas of every type round-trip through marshalPublic and parsePublic', () => {
  const areas: Array<Omit<TpmPublic, 'raw'>> = [
    {
      type: TPM_ALG.ECC, nameAlg: TPM_ALG.SHA256, objectAttributes: 0x30072, authPolicy: Buffer.alloc(0),
      ecc: { scheme: TPM_ALG.NULL, schemeHash: TPM_ALG.NULL, symmetric: TPM_ALG.AES, symKeyBits: 128, symMode: TPM_ALG.CFB, curve: TPM_ECC.NIST_P256, kdf: TPM_ALG.NULL, x: Buffer.alloc(0), y: Buffer.alloc(0) },
    },
    {
      type: TPM_ALG.ECC, nameAlg: TPM_ALG.SHA384, objectAttributes: 0, authPolicy: Buffer.alloc(48, 1),
      ecc: { scheme: TPM_ALG.ECDAA, schemeHash: TPM_ALG.SHA256, schemeCount: 7, symmetric: TPM_ALG.NULL, curve: TPM_ECC.BN_P256, kdf: TPM_ALG.KDF2, kdfHash: TPM_ALG.SHA256, x: Buffer.alloc(32, 2), y: Buffer.alloc(32, 3) },
    },
    {
      type: TPM_ALG.RSA, nameAlg: TPM_ALG.SHA1, objectAttributes: 0x60072, authPolicy: Buffer.alloc(0),
      rsa: { scheme: TPM_ALG.RSAES, schemeHash: TPM_ALG.NULL, symmetric: TPM_ALG.NULL, keyBits: 3072, exponent: 3, modulus: Buffer.alloc(384, 9) },
    },
    {
      type: TPM_ALG.KEYEDHASH, nameAlg: TPM_ALG.SHA256, objectAttributes: 0x40000, authPolicy: Buffer.alloc(0),
      keyedHash: { scheme: TPM_ALG.XOR, schemeHash: TPM_ALG.SHA256, kdf: TPM_ALG.KDF1_SP800_108, unique: Buffer.alloc(32, 5) },
    },
    {
      type: TPM_ALG.KEYEDHASH, nameAlg: TPM_ALG.SHA256, objectAttributes: 0x40000, authPolicy: Buffer.alloc(0),
      keyedHash: { scheme: TPM_ALG.HMAC, schemeHash: TPM_ALG.SHA384, kdf: TPM_ALG.NULL, unique: Buffer.alloc(0) },
    },
    {
      type: TPM_ALG.SYMCIPHER, nameAlg: TPM_ALG.SHA256, objectAttributes: 0x20000, authPolicy: Buffer.alloc(0),
      symcipher: { algorithm: TPM_ALG.AES, keyBits: 256, mode: TPM_ALG.CFB, unique: Buffer.alloc(32) },
    },
  ];
  for (const a of areas) {
    const b = marshalPublic(a);
    const p = parsePublic(b);
    assert.deepEqual(p, { ...a, raw: b });
    assert.deepEqual(parsePublic2B(marshalPublic2B(a)), p);
    assert.deepEqual(objectName(p).subarray(2), createHash(hashOf(a.nameAlg)).update(b).digest());
  }
});

test('structural errors name what is wrong', () => {
  assert.throws(() => parsePublic(hex('0099000b00000000000000')), /unknown public area type 0x0099/);
  // RSA with an unknown scheme 0x0099.
  assert.throws(() => parsePublic(hex('0001000b00000000000000100099')), /unknown key scheme 0x0099/);
  assert.throws(() => parseSignature(hex('0099')), /unknown signature algorithm/);
  assert.throws(() => parseSignature(hex('0005009900')), /unknown hash algorithm/);
  const a = parseAttest(hex(VECTORS.QUOTE_ECC_MSG));
  const badType = Buffer.from(a.raw);
  badType.writeUInt16BE(0x8099, 4);
  assert.throws(() => parseAttest(badType), /unknown attestation type 0x8099/);
  const badSafe = marshalAttest({ ...a, clockInfo: { ...a.clockInfo, safe: true } });
  const safeAt = 4 + 2 + 2 + a.qualifiedSigner.length + 2 + a.extraData.length + 16;
  badSafe[safeAt] = 2;
  assert.throws(() => parseAttest(badSafe), /clock safe flag 2/);
});

test('certify and creation attestations round-trip; other types keep their body', () => {
  const base = {
    magic: TPM_GENERATED_VALUE, qualifiedSigner: hex('000b' + '11'.repeat(32)), extraData: hex('01'),
    clockInfo: { clock: 5n, resetCount: 1, restartCount: 2, safe: false }, firmwareVersion: 7n,
  };
  const certify = { ...base, type: TPM_ST.ATTEST_CERTIFY, attested: { type: TPM_ST.ATTEST_CERTIFY, name: hex('000b' + '22'.repeat(32)), qualifiedName: hex('000b' + '33'.repeat(32)) } };
  const creation = { ...base, type: TPM_ST.ATTEST_CREATION, attested: { type: TPM_ST.ATTEST_CREATION, objectName: hex('000b' + '44'.repeat(32)), creationHash: hex('55'.repeat(32)) } };
  const time = { ...base, type: TPM_ST.ATTEST_TIME, attested: { type: TPM_ST.ATTEST_TIME, other: hex('0102030405') } };
  for (const x of [certify, creation, time]) {
    const b = marshalAttest(x);
    assert.deepEqual(parseAttest(b), { ...x, raw: b });
  }
});

test('publicKeyOf rejects points off the curve, unknown curves and symmetric objects', () => {
  const ak = parsePublic2B(hex(VECTORS.AK_ECC_PUB));
  const off = { ...ak, ecc: { ...ak.ecc!, y: Buffer.alloc(32, 1) } };
  assert.throws(() => publicKeyOf(off), isFormatError);
  const bn = { ...ak, ecc: { ...ak.ecc!, curve: TPM_ECC.BN_P256 } };
  assert.throws(() => publicKeyOf(bn), /unsupported curve/);
  const tooLong = { ...ak, ecc: { ...ak.ecc!, x: Buffer.alloc(33, 1) } };
  assert.throws(() => publicKeyOf(tooLong), isFormatError);
  const rsa = parsePublic2B(hex(VECTORS.AK_RSA_PUB));
  assert.throws(() => publicKeyOf({ ...rsa, rsa: { ...rsa.rsa!, modulus: Buffer.alloc(0) } }), isFormatError);
  const sym = parsePublic(marshalPublic({ type: TPM_ALG.SYMCIPHER, nameAlg: TPM_ALG.SHA256, objectAttributes: 0, authPolicy: Buffer.alloc(0), symcipher: { algorithm: TPM_ALG.AES, keyBits: 128, mode: TPM_ALG.CFB, unique: Buffer.alloc(0) } }));
  assert.throws(() => publicKeyOf(sym), /not an asymmetric key/);
});

test('NV public round-trips', () => {
  const nv = { nvIndex: 0x01c00002, nameAlg: TPM_ALG.SHA256, attributes: 0x62072801, authPolicy: Buffer.alloc(0), dataSize: 1016 };
  const b = marshalNvPublic(nv);
  assert.equal(b.toString('hex'), '01c00002000b620728010000' + '03f8');
  assert.deepEqual(parseNvPublic(b), nv);
  assert.throws(() => parseNvPublic(b.subarray(1)), isFormatError);
});
