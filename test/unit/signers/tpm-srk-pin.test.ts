import assert from 'node:assert/strict';
import { createECDH } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { isSigilError } from '../../../src/errors.ts';
import { SRK_PIN_FILE, SrkPin } from '../../../src/signers/tpm/srk-pin.ts';
import { TPM_ALG } from '../../../src/tpm/constants.ts';
import { marshalPublic, objectName, parsePublic, type TpmPublic } from '../../../src/tpm/structures.ts';
import { AK_TEMPLATE_RSA, SRK_TEMPLATE_ECC } from '../../../src/tpm/templates.ts';

let root: string;
let n = 0;
before(async () => {
  root = await mkdtemp(join(tmpdir(), 'sigil-srk-pin-'));
});
after(async () => {
  await rm(root, { recursive: true, force: true });
});

async function freshDir(): Promise<string> {
  const d = join(root, `d${n++}`);
  await mkdir(d, { mode: 0o700 });
  return d;
}

/** An SRK public area as a TPM would return it: the standard template with a real P-256 point. */
function srk(): TpmPublic {
  const k = createECDH('prime256v1');
  k.generateKeys();
  const p = k.getPublicKey();
  return parsePublic(marshalPublic({ ...SRK_TEMPLATE_ECC, ecc: { ...SRK_TEMPLATE_ECC.ecc!, x: p.subarray(1, 33), y: p.subarray(33) } }));
}

test('the first check pins the srk (0600 file, name and public area); a reopen holds to it; the same key passes', async () => {
  const dir = await freshDir();
  const a = srk();
  const pin = await SrkPin.open(dir);
  assert.equal(pin.pinned, undefined);
  const first = await pin.check(a);
  assert.equal(first.recorded, true);
  assert.deepEqual(first.pinned.name, objectName(a));
  assert.equal((await stat(join(dir, SRK_PIN_FILE))).mode & 0o777, 0o600);
  assert.deepEqual(await readdir(dir), [SRK_PIN_FILE], 'no temporary file left');
  const again = await SrkPin.open(dir);
  assert.deepEqual(again.pinned?.name, objectName(a));
  assert.deepEqual(again.pinned?.public.raw, a.raw);
  const second = await again.check(a);
  assert.equal(second.recorded, false);
});

test('another srk is refused with FAILED_PRECONDITION naming both names and the file, and the pin stays', async () => {
  const dir = await freshDir();
  const a = srk();
  const b = srk();
  await (await SrkPin.open(dir)).check(a);
  const before = await readFile(join(dir, SRK_PIN_FILE), 'utf8');
  const pin = await SrkPin.open(dir);
  await assert.rejects(pin.check(b), (e) => {
    assert.ok(isSigilError(e, 'FAILED_PRECONDITION'), String(e));
    assert.ok(e.message.includes(objectName(a).toString('hex')) && e.message.includes(objectName(b).toString('hex')), e.message);
    assert.ok(e.message.includes(join(dir, SRK_PIN_FILE)) && !/\.$/.test(e.message), e.message);
    return true;
  });
  assert.equal(await readFile(join(dir, SRK_PIN_FILE), 'utf8'), before);
  assert.deepEqual(pin.pinned?.name, objectName(a));
});

test('a first answer that is not an ecc p-256 key with a sha-256 name is not pinned', async () => {
  const dir = await freshDir();
  const rsa = parsePublic(marshalPublic({ ...AK_TEMPLATE_RSA, rsa: { ...AK_TEMPLATE_RSA.rsa!, modulus: Buffer.alloc(256, 0xc3) } }));
  await assert.rejects((await SrkPin.open(dir)).check(rsa), (e) => isSigilError(e, 'BACKEND_ERROR'));
  const p384 = parsePublic(marshalPublic({ ...SRK_TEMPLATE_ECC, nameAlg: TPM_ALG.SHA384 }));
  await assert.rejects((await SrkPin.open(dir)).check(p384), (e) => isSigilError(e, 'BACKEND_ERROR'));
  assert.deepEqual(await readdir(dir), []);
});

test('a corrupt pin (bad json, foreign version, name that does not match the public area, not p-256) refuses to open', async () => {
  const a = srk();
  const good = { version: 1, name: objectName(a).toString('hex'), public: a.raw.toString('hex'), pinnedAt: '2026-01-01T00:00:00.000Z' };
  const other = srk();
  const texts = [
    '{',
    JSON.stringify({ ...good, version: 2 }),
    JSON.stringify({ ...good, name: objectName(other).toString('hex') }),
    JSON.stringify({ ...good, public: 'zz' }),
    JSON.stringify({ ...good, extra: 1 }),
    JSON.stringify({ ...good, public: a.raw.subarray(0, 20).toString('hex') }),
  ];
  for (const text of texts) {
    const dir = await freshDir();
    await writeFile(join(dir, SRK_PIN_FILE), text);
    await assert.rejects(SrkPin.open(dir), (e) => isSigilError(e, 'BACKEND_ERROR') && /is corrupt$/.test(e.message), text);
  }
  const dir = await freshDir();
  await writeFile(join(dir, SRK_PIN_FILE), JSON.stringify(good));
  assert.deepEqual((await SrkPin.open(dir)).pinned?.name, objectName(a), 'the good one opens');
});
