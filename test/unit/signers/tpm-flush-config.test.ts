import assert from 'node:assert/strict';
import { test } from 'node:test';
import { flushesTransients, throughResourceManager, tpmConfigSchema } from '../../../src/signers/tpm/config.ts';

// flushTransientsOnOpen: on by default where no resource manager stands between sigild and the TPM,
// ignored where one does.

const cfg = (transport: string, flushTransientsOnOpen?: unknown) =>
  tpmConfigSchema.parse({ type: 'tpm', transport, stateDir: 's', ...(flushTransientsOnOpen === undefined ? {} : { flushTransientsOnOpen }) });

test('resource managers are recognised: the kernel tpmrm devices and tpm2-abrmd', () => {
  for (const t of ['device:/dev/tpmrm0', '/dev/tpmrm0', '/dev/tpmrm12', 'tcti:device:/dev/tpmrm0', 'tcti:tabrmd', 'tcti:tabrmd:bus_type=session']) {
    assert.equal(throughResourceManager(t), true, t);
  }
  for (const t of ['swtpm:host=127.0.0.1,port=2321', 'device:/dev/tpm0', '/dev/tpm0', 'tcti:swtpm:port=2321', 'tcti:device:/dev/tpm0', 'tcti:mssim', '/dev/tpmrm0x']) {
    assert.equal(throughResourceManager(t), false, t);
  }
});

test('default: flush over swtpm tcp and a raw device; never through a resource manager, even when asked', () => {
  assert.equal(cfg('swtpm:host=127.0.0.1,port=2321').flushTransientsOnOpen, undefined);
  assert.equal(flushesTransients(cfg('swtpm:host=127.0.0.1,port=2321')), true);
  assert.equal(flushesTransients(cfg('/dev/tpm0')), true);
  assert.equal(flushesTransients(cfg('swtpm:host=127.0.0.1,port=2321', false)), false);
  assert.equal(flushesTransients(cfg('device:/dev/tpmrm0')), false);
  assert.equal(flushesTransients(cfg('device:/dev/tpmrm0', true)), false);
});

test('the option takes a boolean only', () => {
  for (const bad of ['yes', 1, null]) {
    assert.equal(tpmConfigSchema.safeParse({ type: 'tpm', transport: '/dev/tpm0', stateDir: 's', flushTransientsOnOpen: bad }).success, false, String(bad));
  }
});
