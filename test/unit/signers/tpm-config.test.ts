import assert from 'node:assert/strict';
import { test } from 'node:test';
import { backendConfigSchema } from '../../../src/signers/config.ts';
import { tpmConfigSchema } from '../../../src/signers/tpm/config.ts';

test('defaults: handle range 0x81000100-0x810001ff, 5 s calls, 60 s key creation', () => {
  const c = tpmConfigSchema.parse({ type: 'tpm', transport: 'device:/dev/tpmrm0', stateDir: '/var/lib/sigil/tpm' });
  assert.deepEqual(c.handleRange, { first: 0x81000100, last: 0x810001ff });
  assert.equal(c.timeoutMs, 5000);
  assert.equal(c.createTimeoutMs, 60000);
});

test('handles are taken as numbers (YAML 0x literals) or hex text, and reach the backend union', () => {
  const c = backendConfigSchema.parse({ type: 'tpm', transport: 'swtpm:host=127.0.0.1,port=2321', stateDir: 's', handleRange: { first: '0x81000200', last: 0x810002ff } });
  assert.equal(c.type, 'tpm');
  if (c.type === 'tpm') assert.deepEqual(c.handleRange, { first: 0x81000200, last: 0x810002ff });
});

test('refuses bad ranges, unknown keys and out-of-bounds timeouts', () => {
  const base = { type: 'tpm', transport: 'device:/dev/tpmrm0', stateDir: 's' };
  for (const bad of [
    { ...base, handleRange: { first: 0x810001ff, last: 0x81000100 } },
    { ...base, handleRange: { first: 0x80000000, last: 0x81000100 } },
    { ...base, handleRange: { first: 0x81000100, last: 0x81800000 } },
    { ...base, handleRange: { first: '0x8100010', last: '0x810001ff' } },
    { ...base, handleRange: { first: 0x81000100 } },
    { ...base, timeoutMs: 50 },
    { ...base, timeoutMs: 1.5 },
    { ...base, createTimeoutMs: 10 },
    { ...base, pinFile: '/x' },
    { type: 'tpm', transport: '', stateDir: 's' },
    { type: 'tpm', transport: 'device:/dev/tpmrm0' },
  ]) {
    assert.equal(tpmConfigSchema.safeParse(bad).success, false, JSON.stringify(bad));
  }
});
