import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { mkdtemp, readFile, realpath, rm } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { missingTools } from '../helpers/hw.ts';

const run = promisify(execFile);
const skip = missingTools('softhsm', 'softhsm2-util', 'openssl', 'swtpm', 'swtpm_setup');
const root = new URL('../..', import.meta.url).pathname;

test("the README's first command runs the demo: sign README.md as an operator and as an attested builder, openssl verifies both", { skip: skip ?? false }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'sigil-quickstart-'));
  try {
    const r = await run('bash', [join(root, 'scripts/dev.sh'), '--exit'], { cwd: root, env: { ...process.env, SIGIL_DEV_DIR: dir }, timeout: 120_000 });
    assert.match(r.stdout, /sigild is serving on 127\.0\.0\.1:\d+/);
    assert.match(r.stdout, /signed README\.md \(\d+ bytes\) with demo\/readme@1 \(ECDSA_P256_SHA256\)/);
    assert.equal(r.stdout.match(/^Verified OK$/gm)?.length, 2, r.stdout);
    // The demo builder enrolled with its swtpm and signed through sigil-agent.
    assert.match(r.stdout, /^spiffe id: +spiffe:\/\/sigil\.dev\/builder\/tpm\/[0-9a-f]{64}$/m);
    assert.match(r.stdout, /signed README\.md \(\d+ bytes\) with dev\/provenance@1; signature written to/);
    assert.ok(!existsSync(join(dir, 'sigild.addr')), 'the daemon stopped and removed its address file');
    assert.ok(!existsSync(join(dir, 'agent.sock')), 'the agent stopped and removed its socket');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('after set-up, npx runs each of sigil\'s programs from this checkout, without looking anything up', async () => {
  const pkg = JSON.parse(await readFile(join(root, 'package.json'), 'utf8')) as { bin: Record<string, string> };
  assert.deepEqual(Object.keys(pkg.bin).sort(), ['sigil-agent', 'sigilctl', 'sigild']);
  for (const [name, file] of Object.entries(pkg.bin)) {
    // --no-install: a program npm would have to fetch fails instead.
    const r = await run('npx', ['--no-install', name, '--help'], { cwd: root, timeout: 60_000 });
    assert.match(r.stdout, new RegExp(`^Usage: ${name} `), name);
    assert.equal(await realpath(join(root, 'node_modules/.bin', name)), await realpath(join(root, file)), name);
  }
});
