import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { isSigilError } from '../../../src/errors.ts';
import { KeyTable, type KeyEntry } from '../../../src/signers/tpm/key-table.ts';

let root: string;
before(async () => {
  root = await mkdtemp(join(tmpdir(), 'sigil-tpm-table-'));
});
after(async () => {
  await rm(root, { recursive: true, force: true });
});

const entry = (label: string, handle: number): KeyEntry => ({ label, handle, name: `000b${'cd'.repeat(32)}`, algorithm: 'ECDSA_P256_SHA256', createdAt: '2025-01-01T00:00:00.000Z' });

test('entries survive a reopen; the directory is 0700 and the file 0600', async () => {
  const dir = join(root, 'a', 'state');
  const t = await KeyTable.open(dir);
  await t.put(entry('k-v1', 0x81000100));
  await t.put(entry('k-v2', 0x81000101));
  await t.delete('k-v1');
  await t.delete('never-there');
  assert.equal((await stat(dir)).mode & 0o777, 0o700);
  assert.equal((await stat(join(dir, 'keys.json'))).mode & 0o777, 0o600);
  const again = await KeyTable.open(dir);
  assert.equal(again.get('k-v1'), undefined);
  assert.deepEqual(again.get('k-v2'), entry('k-v2', 0x81000101));
  assert.equal(again.byHandle(0x81000101)?.label, 'k-v2');
  assert.deepEqual([...again.handles()], [0x81000101]);
});

test('a corrupt or foreign table refuses to open rather than forgetting keys', async () => {
  for (const [i, text] of ['{', '[]', JSON.stringify({ version: 2, keys: [] }), JSON.stringify({ version: 1, keys: [{ ...entry('x', 0x80000001) }] })].entries()) {
    const dir = join(root, `bad-${i}`);
    await KeyTable.open(dir);
    await writeFile(join(dir, 'keys.json'), text);
    await assert.rejects(KeyTable.open(dir), (e) => isSigilError(e, 'BACKEND_ERROR') && /corrupt/.test(e.message));
    assert.equal(await readFile(join(dir, 'keys.json'), 'utf8'), text, 'left as found');
  }
});

test('a failed write leaves the in-memory table as it was', async () => {
  const dir = join(root, 'gone');
  const t = await KeyTable.open(dir);
  await t.put(entry('k-v1', 0x81000100));
  await rm(dir, { recursive: true });
  await assert.rejects(t.put(entry('k-v2', 0x81000101)), (e) => isSigilError(e, 'BACKEND_ERROR'));
  assert.equal(t.get('k-v2'), undefined);
  await assert.rejects(t.delete('k-v1'), (e) => isSigilError(e, 'BACKEND_ERROR'));
  assert.deepEqual(t.get('k-v1'), entry('k-v1', 0x81000100));
});

test('pinned names: a table written before pins existed opens; pins survive a reopen and are dropped by unpin', async () => {
  const dir = join(root, 'pins');
  await KeyTable.open(dir);
  const old = { version: 1, keys: [entry('k-v1', 0x81000100)] };
  await writeFile(join(dir, 'keys.json'), JSON.stringify(old));
  const t = await KeyTable.open(dir);
  assert.equal(t.pinnedName(0x81000800), undefined);
  await t.put(entry('k-v2', 0x81000101));
  assert.equal('pinned' in JSON.parse(await readFile(join(dir, 'keys.json'), 'utf8')), false, 'without pins the file keeps the version-1 shape');
  await t.pin(0x81000800, `000b${'ef'.repeat(32)}`);
  await assert.rejects(t.pin(0x81000801, 'NOT-HEX'), (e) => isSigilError(e, 'INVALID_ARGUMENT'));
  const again = await KeyTable.open(dir);
  assert.equal(again.pinnedName(0x81000800), `000b${'ef'.repeat(32)}`);
  assert.equal(again.pinnedName(0x81000801), undefined);
  assert.equal(again.get('k-v1')?.handle, 0x81000100);
  await again.unpin(0x81000800);
  await again.unpin(0x81000800);
  assert.equal((await KeyTable.open(dir)).pinnedName(0x81000800), undefined);
});
