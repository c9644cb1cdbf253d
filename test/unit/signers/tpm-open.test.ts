import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { isSigilError } from '../../../src/errors.ts';
import { silentLogger } from '../../../src/log.ts';
import { tpmConfigSchema } from '../../../src/signers/tpm/config.ts';
import { open } from '../../../src/signers/tpm/index.ts';

// Opening without a TPM: transport specs are checked and an absent TPM is BACKEND_UNAVAILABLE at once.

let dir: string;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'sigil-tpm-open-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

const ctx = { name: 'tpm', log: silentLogger(), production: false };
const cfg = (transport: string) => tpmConfigSchema.parse({ type: 'tpm', transport, stateDir: join(dir, 'state'), timeoutMs: 500 });

function closedPort(): Promise<number> {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as { port: number };
      srv.close(() => resolve(port));
    });
  });
}

test('a bad swtpm spec is CONFIG_INVALID', async () => {
  for (const spec of ['swtpm:host=127.0.0.1,port=0', 'swtpm:port=70000', 'swtpm:port=12x', 'swtpm:bogus=1', 'swtpm:host', 'nonsense:1']) {
    await assert.rejects(open(cfg(spec), ctx), (e) => isSigilError(e, 'CONFIG_INVALID'), spec);
  }
});

test('a tpm that is not listening is BACKEND_UNAVAILABLE, promptly', async () => {
  const port = await closedPort();
  const t0 = performance.now();
  await assert.rejects(open(cfg(`swtpm:host=127.0.0.1,port=${port}`), ctx), (e) => isSigilError(e, 'BACKEND_UNAVAILABLE'));
  assert.ok(performance.now() - t0 < 500);
  await assert.rejects(open(cfg(join(dir, 'no-such-tpm-device')), ctx), (e) => isSigilError(e, 'BACKEND_UNAVAILABLE'));
});
