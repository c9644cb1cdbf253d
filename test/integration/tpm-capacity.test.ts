import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { isSigilError } from '../../src/errors.ts';
import type { Logger } from '../../src/log.ts';
import { silentLogger } from '../../src/log.ts';
import { tpmConfigSchema } from '../../src/signers/tpm/config.ts';
import { open } from '../../src/signers/tpm/index.ts';
import { TPM_PT } from '../../src/tpm/constants.ts';
import { missingTools } from '../helpers/hw.ts';
import { startSwtpm, withTpmClient, type Swtpm } from '../helpers/swtpm.ts';

// Every key version the TPM backend makes stays persistent until destroyed, and a TPM holds a bounded number of
// persistent objects (swtpm ~60, a hardware TPM often under 10): the backend warns while there is room to act and
// refuses clearly once there is none, leaving no half-made key behind.

const skip = missingTools('swtpm', 'swtpm_setup');
let dir: string;
let sw: Swtpm;

before(async () => {
  if (skip) return;
  dir = await mkdtemp(join(tmpdir(), 'sigil-tpm-capacity-it-'));
  sw = await startSwtpm();
});
after(async () => {
  if (skip) return;
  await sw?.stop();
  await rm(dir, { recursive: true, force: true });
});

test('a tpm running out of persistent room: a warning with two slots left, then FAILED_PRECONDITION naming TPM_RC_NV_SPACE, and the key table keeps no entry for the refused key', { skip: skip ?? false }, async () => {
  const room = await withTpmClient(sw, (t) => t.getProperty(TPM_PT.HR_PERSISTENT_AVAIL));
  assert.ok(room > 3 && room < 512, `swtpm reports room for ${room} persistent objects`);
  const warnings: Array<Record<string, unknown>> = [];
  const base = silentLogger();
  const log = Object.assign(Object.create(base) as Logger, {
    warn: (o: Record<string, unknown>, msg: string) => warnings.push({ ...o, msg }),
    child: () => log,
  });
  const c = tpmConfigSchema.parse({ type: 'tpm', transport: sw.tcti, stateDir: join(dir, 'state'), handleRange: { first: 0x81000100, last: 0x810003ff } });
  const b = await open(c, { name: 'swtpm', log, production: false });
  try {
    const made: string[] = [];
    for (let i = 1; i <= room; i++) {
      made.push((await b.createKey({ label: `full-v${i}`, algorithm: 'ECDSA_P256_SHA256' })).uri);
      const left = room - i;
      assert.equal(warnings.length, left <= 2 ? 3 - left : 0, `after key ${i} (${left} left): ${JSON.stringify(warnings)}`);
    }
    assert.equal(warnings.at(-1)!.persistentSlotsLeft, 0);
    await assert.rejects(b.createKey({ label: 'one-too-many-v1', algorithm: 'ECDSA_P256_SHA256' }), (e) => {
      assert.ok(isSigilError(e, 'FAILED_PRECONDITION'), String(e));
      assert.match(e.message, /no room left for another persistent key \(TPM_RC_NV_SPACE\)/);
      return true;
    });
    assert.equal(await b.findKeyByLabel('one-too-many-v1'), null, 'nothing of the refused key is left to find');
    // Destroying one makes room again.
    await b.destroyKey(made[0]!);
    await b.createKey({ label: 'one-too-many-v1', algorithm: 'ECDSA_P256_SHA256' });
    for (const uri of made.slice(1)) await b.destroyKey(uri);
  } finally {
    await b.close();
  }
});
