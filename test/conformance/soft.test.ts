import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { silentLogger } from '../../src/log.ts';
import { open } from '../../src/signers/soft/index.ts';
import { runConformance } from './suite.ts';

runConformance('soft', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'sigil-soft-'));
  const backend = await open({ type: 'soft', dir }, { name: 'soft', log: silentLogger(), production: false });
  return { backend, cleanup: () => rm(dir, { recursive: true, force: true }) };
});
