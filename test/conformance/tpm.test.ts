import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { silentLogger } from '../../src/log.ts';
import { tpmConfigSchema } from '../../src/signers/tpm/config.ts';
import { open } from '../../src/signers/tpm/index.ts';
import { missingTools } from '../helpers/hw.ts';
import { startSwtpm } from '../helpers/swtpm.ts';
import { runConformance } from './suite.ts';

const skip = missingTools('swtpm', 'swtpm_setup');

if (skip === null) {
  runConformance('tpm (swtpm)', async () => {
    const sw = await startSwtpm();
    const stateDir = await mkdtemp(join(tmpdir(), 'sigil-tpm-keys-'));
    const cleanup = async () => {
      await sw.stop();
      await rm(stateDir, { recursive: true, force: true });
    };
    try {
      const config = tpmConfigSchema.parse({ type: 'tpm', transport: sw.tcti, stateDir });
      const backend = await open(config, { name: 'swtpm', log: silentLogger(), production: false });
      // In the owner range and well-formed, but nothing is persisted there.
      return { backend, cleanup, unknownUri: 'tpm:handle=0x817fff00' };
    } catch (err) {
      await cleanup();
      throw err;
    }
  });
} else {
  const { test } = await import('node:test');
  test('tpm (swtpm) backend conformance', { skip }, () => {});
}
