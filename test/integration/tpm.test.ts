import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash, randomBytes, verify, X509Certificate } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { missingTools } from '../helpers/hw.ts';
import { startSwtpm, type Swtpm } from '../helpers/swtpm.ts';
import { activate, createAk, loadAk, quoteWithPcrs, readEk, type Ak, type Ek } from '../../src/tpm/attestation-client.ts';
import { EK_CERT_NV, EK_PERSISTENT, TPM_ALG, TPM_ECC, TPM_PT, TPM_RH, TPM_ST, TPMA_OBJECT } from '../../src/tpm/constants.ts';
import { Reader, Writer } from '../../src/tpm/marshal.ts';
import { TPM_RC, TpmError } from '../../src/tpm/rc.ts';
import {
  marshalPublic2B,
  objectName,
  parseAttest,
  parseSignature,
  pcrDigest,
  publicKeyOf,
  spkiOf,
  type PcrSelection,
  type TpmPublic,
} from '../../src/tpm/structures.ts';
import { AK_ATTRIBUTES, EK_TEMPLATE_L1, templateBytes } from '../../src/tpm/templates.ts';
import { Tpm } from '../../src/tpm/tpm.ts';
import { openTransport, type TpmTransport } from '../../src/tpm/transport.ts';

const run = promisify(execFile);
const skip = missingTools('swtpm', 'swtpm_setup', 'tpm2_checkquote', 'tpm2_makecredential', 'openssl');

let sw: Swtpm;
let tpm: Tpm;
let dir: string;
const latencies = new Map<string, number[]>();

function observe(command: string, ms: number): void {
  const l = latencies.get(command) ?? [];
  l.push(ms);
  latencies.set(command, l);
}

async function reopen(): Promise<void> {
  tpm = await Tpm.open(sw.tcti, { observe });
}

before(async () => {
  if (skip) return;
  sw = await startSwtpm();
  dir = await mkdtemp(join(tmpdir(), 'sigil-tpm-it-'));
  await reopen();
});

after(async () => {
  if (skip) return;
  await tpm.close();
  await sw.stop();
  await rm(dir, { recursive: true, force: true });
});

async function transientHandles(): Promise<number[]> {
  return tpm.getHandles(0x80000000);
}

async function withEk<T>(kind: 'rsa' | 'ecc', f: (ek: Ek) => Promise<T>): Promise<T> {
  const ek = await readEk(tpm, kind);
  try {
    return await f(ek);
  } finally {
    await tpm.flushContext(ek.handle);
  }
}

/** An AK under a temporary EK (flushed once the AK is loaded; a loaded child outlives its parent's handle). */
async function withAk<T>(alg: 'rsa' | 'ecc', f: (ak: Ak) => Promise<T>): Promise<T> {
  const ek = await readEk(tpm, 'rsa');
  let ak: Ak;
  try {
    ak = await createAk(tpm, alg, ek);
  } finally {
    await tpm.flushContext(ek.handle);
  }
  try {
    return await f(ak);
  } finally {
    await tpm.flushContext(ak.handle);
  }
}

/** An AK under the loaded EK `ek`. */
async function withAkUnder<T>(ek: Ek, alg: 'rsa' | 'ecc', f: (ak: Ak) => Promise<T>): Promise<T> {
  const ak = await createAk(tpm, alg, ek);
  try {
    return await f(ak);
  } finally {
    await tpm.flushContext(ak.handle);
  }
}

// A transport smoke test shared by every transport: random bytes, a property, serialized concurrent
// commands and a TPM error decoded.
async function smoke(t: TpmTransport): Promise<void> {
  const local = new Tpm(t);
  const [a, b] = await Promise.all([local.getRandom(32), local.getRandom(32)]);
  assert.equal(a.length, 32);
  assert.notDeepEqual(a, b);
  assert.ok((await local.getProperty(TPM_PT.NV_BUFFER_MAX)) >= 512);
  const many = await Promise.all(Array.from({ length: 8 }, () => local.getRandom(8)));
  assert.equal(new Set(many.map((x) => x.toString('hex'))).size, 8);
  // A command code no TPM implements comes back as TPM_RC_COMMAND_CODE.
  const bogus = new Writer().u16(TPM_ST.NO_SESSIONS).u32(10).u32(0x1ff).finish();
  const rsp = await t.send(bogus);
  assert.equal(rsp.readUInt32BE(6), TPM_RC.COMMAND_CODE);
  assert.equal((await local.getPcrBanks()).some((s) => s.hash === TPM_ALG.SHA256 && s.pcrs.length === 24), true);
}

test('swtpm TCP transport passes the smoke test', { skip: skip ?? false }, async () => {
  await smoke(tpm.transport);
});

test('EK from CreatePrimary(L-1) matches its NV certificate, which chains to the EK CA', { skip: skip ?? false }, async () => {
  await withEk('rsa', async (ek) => {
    assert.equal(ek.certIndex, EK_CERT_NV.RSA2048);
    assert.ok(ek.cert);
    const cert = new X509Certificate(ek.cert);
    assert.deepEqual(cert.publicKey.export({ type: 'spki', format: 'der' }), spkiOf(ek.public));
    // The persisted EK swtpm_setup made is the same key.
    const persisted = await tpm.readPublic(EK_PERSISTENT.RSA);
    assert.deepEqual(persisted.public.raw, ek.public.raw);
    assert.deepEqual(objectName(ek.public), persisted.name);
    const pem = join(dir, 'ek-rsa.pem');
    await writeFile(pem, cert.toString());
    const { stdout } = await run('openssl', ['verify', '-CAfile', sw.ekCaFile, pem]);
    assert.match(stdout, /: OK/);
    // The same certificate does not verify against an unrelated CA.
    await run('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', join(dir, 'other.key'), '-out', join(dir, 'other.pem'), '-subj', '/CN=other', '-days', '1']);
    await assert.rejects(run('openssl', ['verify', '-CAfile', join(dir, 'other.pem'), pem]));
  });
});

test('ECC EK on swtpm is H-3 (P-384) and matches its certificate', { skip: skip ?? false }, async () => {
  await withEk('ecc', async (ek) => {
    assert.equal(ek.certIndex, EK_CERT_NV.ECC_P384);
    assert.equal(ek.public.ecc?.curve, TPM_ECC.NIST_P384);
    assert.ok(ek.cert);
    const cert = new X509Certificate(ek.cert);
    assert.deepEqual(cert.publicKey.export({ type: 'spki', format: 'der' }), spkiOf(ek.public));
    assert.deepEqual((await tpm.readPublic(EK_PERSISTENT.SWTPM_ECC_P384)).public.raw, ek.public.raw);
  });
});

test('NV reads in chunks give the same bytes; the certificate is trimmed to its DER', { skip: skip ?? false }, async () => {
  const before = latencies.get('TPM2_NV_Read')?.length ?? 0;
  const whole = await tpm.nvRead(EK_CERT_NV.RSA2048);
  const afterWhole = latencies.get('TPM2_NV_Read')!.length;
  const chunked = await tpm.nvRead(EK_CERT_NV.RSA2048, { chunk: 100 });
  const afterChunked = latencies.get('TPM2_NV_Read')!.length;
  assert.deepEqual(chunked, whole);
  const { public: nv } = await tpm.nvReadPublic(EK_CERT_NV.RSA2048);
  assert.equal(whole.length, nv.dataSize);
  assert.equal(afterWhole - before, Math.ceil(nv.dataSize / (await tpm.nvBufferMax())));
  assert.equal(afterChunked - afterWhole, Math.ceil(nv.dataSize / 100));
  const ek = await readEk(tpm, 'rsa');
  await tpm.flushContext(ek.handle);
  assert.ok(ek.cert && ek.cert.length <= whole.length);
  assert.deepEqual(ek.cert, whole.subarray(0, ek.cert.length));
  assert.doesNotThrow(() => new X509Certificate(ek.cert!));
});

for (const alg of ['rsa', 'ecc'] as const) {
  test(`${alg} AK: created under the EK (endorsement hierarchy), attributes as the verifier demands, reloadable`, { skip: skip ?? false }, async () => {
    const start = await transientHandles();
    await withEk('rsa', async (ek) => {
      const saved = await withAkUnder(ek, alg, async (ak) => {
        assert.equal(ak.public.objectAttributes, AK_ATTRIBUTES);
        assert.equal(ak.public.objectAttributes & TPMA_OBJECT.decrypt, 0);
        assert.deepEqual(ak.name, objectName(ak.public));
        assert.deepEqual(ak.publicBytes, ak.public.raw);
        if (alg === 'rsa') {
          assert.equal(ak.public.rsa?.keyBits, 2048);
          assert.equal(ak.public.rsa?.scheme, TPM_ALG.RSASSA);
        } else {
          assert.equal(ak.public.ecc?.curve, TPM_ECC.NIST_P256);
          assert.equal(ak.public.ecc?.scheme, TPM_ALG.ECDSA);
        }
        // Only the EK and the AK are loaded.
        const loaded = await transientHandles();
        assert.equal(loaded.length, start.length + 2);
        assert.ok(loaded.includes(ek.handle) && loaded.includes(ak.handle));
        return { private: ak.private, publicBytes: ak.publicBytes, name: ak.name };
      });
      const again = await loadAk(tpm, saved, ek);
      try {
        assert.deepEqual(again.name, saved.name);
      } finally {
        await tpm.flushContext(again.handle);
      }
    });
    assert.deepEqual(await transientHandles(), start);
  });
}

// tpm2-tools 5.4 `-f` PCR file of tpm2_checkquote (what tpm2_quote -o writes): the C structs in host
// (little-endian) order: TPML_PCR_SELECTION (count + 16 TPMS_PCR_SELECTION of 8 bytes: hash, sizeofSelect,
// pcrSelect[4], padding), a u32 count of TPML_DIGEST, then each TPML_DIGEST (count + 8 TPM2B_DIGEST of 66 bytes).
function tpm2ToolsPcrFile(sel: PcrSelection, values: Map<number, Buffer>): Buffer {
  const s = Buffer.alloc(4 + 16 * 8);
  s.writeUInt32LE(1, 0);
  s.writeUInt16LE(sel.hash, 4);
  s.writeUInt8(3, 6);
  for (const p of sel.pcrs) s[7 + (p >> 3)]! |= 1 << (p & 7);
  const digests = sel.pcrs.map((p) => values.get(p)!);
  const lists: Buffer[] = [];
  for (let i = 0; i < digests.length; i += 8) {
    const chunk = digests.slice(i, i + 8);
    const l = Buffer.alloc(4 + 8 * 66);
    l.writeUInt32LE(chunk.length, 0);
    chunk.forEach((d, j) => {
      l.writeUInt16LE(d.length, 4 + j * 66);
      d.copy(l, 4 + j * 66 + 2);
    });
    lists.push(l);
  }
  const n = Buffer.alloc(4);
  n.writeUInt32LE(lists.length);
  return Buffer.concat([s, n, ...lists]);
}

function verifyLocally(akPub: TpmPublic, attest: Buffer, signature: Buffer): boolean {
  const sig = parseSignature(signature);
  const key = publicKeyOf(akPub);
  if (sig.ecc) {
    const pad = (b: Buffer) => Buffer.concat([Buffer.alloc(32 - b.length), b]);
    return verify('sha256', attest, { key, dsaEncoding: 'ieee-p1363' }, Buffer.concat([pad(sig.ecc.r), pad(sig.ecc.s)]));
  }
  return verify('sha256', attest, key, sig.rsa!);
}

for (const alg of ['ecc', 'rsa'] as const) {
  test(`a ${alg} quote from sigil passes tpm2_checkquote`, { skip: skip ?? false }, async () => {
    await withAk(alg, async (ak) => {
      const sel = { hash: TPM_ALG.SHA256, pcrs: [0, 1, 2, 3, 4, 5, 6, 7, 9, 16, 23] };
      await tpm.pcrExtend(9, [{ hash: TPM_ALG.SHA256, digest: randomBytes(32) }]);
      const nonce = randomBytes(20);
      const q = await quoteWithPcrs(tpm, ak, nonce, [sel]);
      assert.equal(q.pcrValues.size, sel.pcrs.length);
      assert.ok(!q.pcrValues.get(9)!.equals(Buffer.alloc(32)));
      const a = parseAttest(q.attest);
      assert.equal(a.type, TPM_ST.ATTEST_QUOTE);
      assert.deepEqual(a.extraData, nonce);
      assert.ok('pcrDigest' in a.attested);
      assert.deepEqual(a.attested.pcrDigest, pcrDigest(TPM_ALG.SHA256, sel.pcrs.map((p) => q.pcrValues.get(p)!)));
      assert.equal(verifyLocally(ak.public, q.attest, q.signature), true);

      const files = {
        pub: join(dir, `ak-${alg}.pem`),
        msg: join(dir, `quote-${alg}.msg`),
        sig: join(dir, `quote-${alg}.sig`),
        pcrs: join(dir, `quote-${alg}.pcrs`),
      };
      await writeFile(files.pub, publicKeyOf(ak.public).export({ type: 'spki', format: 'pem' }));
      await writeFile(files.msg, q.attest);
      await writeFile(files.sig, q.signature);
      await writeFile(files.pcrs, tpm2ToolsPcrFile(sel, q.pcrValues));
      const args = ['-u', files.pub, '-m', files.msg, '-s', files.sig, '-f', files.pcrs, '-g', 'sha256'];
      const { stdout } = await run('tpm2_checkquote', [...args, '-q', nonce.toString('hex')]);
      assert.match(stdout, /pcrs:/);
      // The same files with another nonce, or with a PCR value changed, fail.
      await assert.rejects(run('tpm2_checkquote', [...args, '-q', randomBytes(20).toString('hex')]));
      const changed = new Map(q.pcrValues);
      changed.set(0, Buffer.alloc(32, 1));
      await writeFile(files.pcrs, tpm2ToolsPcrFile(sel, changed));
      await assert.rejects(run('tpm2_checkquote', [...args, '-q', nonce.toString('hex')]));
    });
  });
}

test('certify yields a genuine non-quote TPMS_ATTEST signed by the AK', { skip: skip ?? false }, async () => {
  await withAk('ecc', async (ak) => {
    const c = await tpm.certify(ak.handle, ak.handle, Buffer.from('sigil'));
    const a = parseAttest(c.attest);
    assert.equal(a.type, TPM_ST.ATTEST_CERTIFY);
    assert.ok('qualifiedName' in a.attested);
    assert.deepEqual(a.attested.name, ak.name);
    assert.equal(verifyLocally(ak.public, c.attest, c.signature), true);
  });
});

// The tpm2-tools credential file: magic 0xbadcc0de, version 1, TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET.
async function makeCredential(ekPub: TpmPublic, akName: Buffer, secret: Buffer): Promise<{ blob: Buffer; encryptedSecret: Buffer }> {
  const tag = randomBytes(4).toString('hex');
  const ekFile = join(dir, `ek-${tag}.pub`);
  const secretFile = join(dir, `secret-${tag}`);
  const out = join(dir, `cred-${tag}.out`);
  await writeFile(ekFile, marshalPublic2B(ekPub));
  await writeFile(secretFile, secret);
  await run('tpm2_makecredential', ['-T', 'none', '-u', ekFile, '-s', secretFile, '-n', akName.toString('hex'), '-o', out]);
  const r = new Reader(await readFile(out));
  assert.equal(r.u32(), 0xbadcc0de);
  assert.equal(r.u32(), 1);
  const blob = r.sized();
  const encryptedSecret = r.sized();
  r.end();
  return { blob, encryptedSecret };
}

for (const [kind, alg] of [['rsa', 'ecc'], ['rsa', 'rsa'], ['ecc', 'ecc']] as const) {
  test(`ActivateCredential (${kind} EK, ${alg} AK) recovers a tpm2_makecredential secret`, { skip: skip ?? false }, async () => {
    const start = await transientHandles();
    await withEk(kind, async (ek) => {
      await withAkUnder(ek, alg, async (ak) => {
        const secret = randomBytes(32);
        const cred = await makeCredential(ek.public, ak.name, secret);
        const got = await activate(tpm, ek, ak, cred.blob, cred.encryptedSecret);
        assert.deepEqual(got, secret);
      });
    });
    // The policy session and every object are gone again.
    assert.deepEqual(await transientHandles(), start);
  });
}

test('a credential made for another AK name fails with TPM_RC_INTEGRITY, decoded', { skip: skip ?? false }, async () => {
  await withEk('rsa', async (ek) => {
    await withAkUnder(ek, 'ecc', async (ak) => {
      const otherName = Buffer.concat([Buffer.from('000b', 'hex'), createHash('sha256').update('someone else').digest()]);
      const cred = await makeCredential(ek.public, otherName, randomBytes(32));
      const err = await activate(tpm, ek, ak, cred.blob, cred.encryptedSecret).then(
        () => assert.fail('activation succeeded'),
        (e: unknown) => e,
      );
      assert.ok(err instanceof TpmError);
      assert.equal(err.code, 'TPM_ERROR');
      assert.equal(err.rc, 0x1df);
      assert.equal(err.baseCode, TPM_RC.INTEGRITY);
      assert.equal(err.command, 'TPM2_ActivateCredential');
      assert.match(err.message, /TPM_RC_INTEGRITY: integrity check failed \(parameter 1\) \[0x1df\]/);
      // The failed command left its policy session loaded; activateCredential flushed it.
      assert.deepEqual((await tpm.getHandles(0x03000000)).length, 0);
    });
  });
});

test('the EK refuses ActivateCredential by password: its user role needs the PolicySecret session (TPM_RC_AUTH_UNAVAILABLE)', { skip: skip ?? false }, async () => {
  await withEk('rsa', async (ek) => {
    await withAkUnder(ek, 'ecc', async (ak) => {
      const cred = await makeCredential(ek.public, ak.name, randomBytes(16));
      const err = await tpm.activateCredential(ak.handle, ek.handle, cred.blob, cred.encryptedSecret, { ekAuth: 'password' }).then(
        () => assert.fail('activation succeeded'),
        (e: unknown) => e,
      );
      assert.ok(err instanceof TpmError);
      assert.match(err.message, /^TPM2_ActivateCredential failed: TPM_RC_AUTH_UNAVAILABLE/);
    });
  });
});

test('pcrExtend changes what pcrRead returns, by the extend rule', { skip: skip ?? false }, async () => {
  const sel = [{ hash: TPM_ALG.SHA256, pcrs: [16] }];
  const before = (await tpm.pcrRead(sel)).get(16)!;
  const d = randomBytes(32);
  await tpm.pcrExtend(16, [{ hash: TPM_ALG.SHA256, digest: d }]);
  const afterValue = (await tpm.pcrRead(sel)).get(16)!;
  assert.deepEqual(afterValue, createHash('sha256').update(Buffer.concat([before, d])).digest());
  // All 24 PCRs come back although one PCR_Read returns at most 8.
  const all = await tpm.pcrRead([{ hash: TPM_ALG.SHA256, pcrs: [...Array(24).keys()] }]);
  assert.equal(all.size, 24);
  assert.deepEqual(all.get(16), afterValue);
  // The inactive sha1 bank cannot be read.
  await assert.rejects(tpm.pcrRead([{ hash: TPM_ALG.SHA1, pcrs: [0] }]), /bank not active/);
  await assert.rejects(tpm.pcrExtend(16, [{ hash: TPM_ALG.SHA256, digest: Buffer.alloc(20) }]), /digest of 20 bytes/);
});

test('errors from swtpm come back decoded: unknown handle, out of object memory', { skip: skip ?? false }, async () => {
  await assert.rejects(tpm.readPublic(0x81000fff), (e: unknown) => e instanceof TpmError && /TPM_RC_HANDLE/.test(e.message) && e.command === 'TPM2_ReadPublic');
  const start = await transientHandles();
  const made: number[] = [];
  try {
    let err: unknown;
    for (let i = 0; i < 5 && err === undefined; i++) {
      try {
        made.push((await tpm.createPrimary(TPM_RH.ENDORSEMENT, templateBytes(EK_TEMPLATE_L1))).handle);
      } catch (e) {
        err = e;
      }
    }
    assert.ok(err instanceof TpmError);
    assert.equal(err.rc, TPM_RC.OBJECT_MEMORY);
    assert.match(err.message, /TPM_RC_OBJECT_MEMORY: out of memory for object contexts \[0x902\]/);
    assert.equal(start.length + made.length, 3);
  } finally {
    for (const h of made) await tpm.flushContext(h);
  }
});

test('tcti transport (libtss2-tctildr through koffi) passes the smoke test', { skip: skip ?? false }, async () => {
  // swtpm serves one connection at a time: hand it over to the TCTI and back.
  await tpm.close();
  try {
    const t = await openTransport(`tcti:${sw.tcti}`);
    try {
      await smoke(t);
      // A whole attestation round over the TCTI too.
      const viaTcti = new Tpm(t);
      const ek = await readEk(viaTcti, 'rsa');
      const ak = await createAk(viaTcti, 'ecc', ek);
      const secret = randomBytes(16);
      const cred = await makeCredential(ek.public, ak.name, secret);
      assert.deepEqual(await activate(viaTcti, ek, ak, cred.blob, cred.encryptedSecret), secret);
      await viaTcti.flushContext(ak.handle);
      await viaTcti.flushContext(ek.handle);
    } finally {
      await t.close();
    }
    await assert.rejects(openTransport('tcti:swtpm:host=127.0.0.1,port=1'), /tcti: cannot initialize/);
  } finally {
    await reopen();
  }
});

test('transport specs are checked', { skip: skip ?? false }, async () => {
  await assert.rejects(openTransport('nonsense'), /unknown spec/);
  await assert.rejects(openTransport('swtpm:host=127.0.0.1,port=0'), /bad port/);
  await assert.rejects(openTransport('swtpm:host=127.0.0.1,prot=1'), /unknown swtpm option/);
  await assert.rejects(openTransport('device:/nonexistent/tpmrm0'), /cannot open \/nonexistent\/tpmrm0/);
});

test('device transport on /dev/tpmrm0 passes the smoke test', { skip: existsSync('/dev/tpmrm0') ? false : 'no /dev/tpmrm0 on this machine' }, async () => {
  const t = await openTransport('device:/dev/tpmrm0');
  try {
    await smoke(t);
  } finally {
    await t.close();
  }
});

test('per-command latency against swtpm (diagnostic)', { skip: skip ?? false }, async (t) => {
  for (const [name, ms] of [...latencies].sort()) {
    const sorted = [...ms].sort((a, b) => a - b);
    const med = sorted[Math.floor(sorted.length / 2)]!;
    t.diagnostic(`${name}: n=${ms.length} median=${med.toFixed(2)}ms max=${sorted.at(-1)!.toFixed(2)}ms`);
  }
  assert.ok(latencies.has('TPM2_Quote') && latencies.has('TPM2_ActivateCredential') && latencies.has('TPM2_CreatePrimary'));
});
