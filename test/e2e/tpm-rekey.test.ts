// `sigild tpm rekey` on a real daemon's files with a swtpm: a key sigil made before it set an authValue, in use as
// a key version, gets a new one with the daemon stopped (refused while it runs); the act is audited, written ahead;
// the daemon signs with the key after the restart, and tpm2_sign without the authValue is refused by the TPM.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash, createPublicKey, verify } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { parse, stringify } from 'yaml';
import { after, before, describe, test } from 'node:test';
import { rpc } from '../../src/cli/client.ts';
import { Algorithm } from '../../src/gen/sigil/v1/signer.ts';
import { KeyTable } from '../../src/signers/tpm/key-table.ts';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.ts';
import { missingTools } from '../helpers/hw.ts';
import { makeEmptyAuthKey, startSwtpm, type Swtpm } from '../helpers/swtpm.ts';

const run = promisify(execFile);
const skip = missingTools('softhsm', 'softhsm2-util', 'swtpm', 'swtpm_setup', 'tpm2_sign');
const SIGILD = new URL('../../bin/sigild.js', import.meta.url).pathname;
const HANDLE = 0x81000060;
type Out = { code: number; stdout: string; stderr: string };
const sigild = (args: string[]): Promise<Out> =>
  run(process.execPath, [SIGILD, ...args]).then(
    (r) => ({ code: 0, stdout: r.stdout, stderr: r.stderr }),
    (e: Out) => ({ code: e.code, stdout: e.stdout, stderr: e.stderr }),
  );
const digest = (s: string) => createHash('sha256').update(s).digest();

describe('sigild tpm rekey', { skip: skip ?? false }, () => {
  let sw: Swtpm;
  let td: TestDaemon;
  let stateDir: string;
  let spki: Buffer;

  const toolSign = async (auth: string | null): Promise<void> => {
    const msg = join(td.dir, 'tool.msg');
    await writeFile(msg, 'signed by tpm2-tools');
    await run('tpm2_sign', ['-c', `0x${HANDLE.toString(16)}`, ...(auth === null ? [] : ['-p', `hex:${auth}`]), '-g', 'sha256', '-o', `${msg}.sig`, msg], { env: { ...process.env, TPM2TOOLS_TCTI: sw.tcti } });
  };
  const signs = async (): Promise<void> => {
    const r = await rpc.sign(td.client('signer'), { key: 'legacy/board', digest: digest('payload') });
    assert.equal(r.keyVersion, 'legacy/board@1');
    assert.ok(verify('sha256', Buffer.from('payload'), { key: createPublicKey({ key: spki, format: 'der', type: 'spki' }), dsaEncoding: 'der' }, r.signature));
  };

  before(async () => {
    sw = await startSwtpm();
    td = await startTestDaemon();
    // The key is made while nothing holds the TPM: the daemon opens a backend at its first use only.
    stateDir = join(td.dir, 'tpm-state');
    await makeEmptyAuthKey(sw, stateDir, 'legacy-board-v1', HANDLE);
  });
  after(async () => {
    await td?.stop();
    await sw?.stop();
  });

  test('the key, made with an empty authValue, is imported and signs', async () => {
    const cfg = parse(await readFile(td.configFile, 'utf8')) as { backends: Record<string, unknown> };
    cfg.backends.board = { type: 'tpm', transport: sw.tcti, stateDir, timeoutMs: 2000, createTimeoutMs: 4000 };
    await writeFile(td.configFile, stringify(cfg));
    await td.restart();
    await rpc.importKey(td.client('admin'), { name: 'legacy/board', uri: `tpm:handle=0x${HANDLE.toString(16)}`, algorithm: Algorithm.ECDSA_P256_SHA256, backend: 'board' });
    spki = (await rpc.getPublicKey(td.client('signer'), { key: 'legacy/board' })).spkiDer;
    await signs();
  });

  test('refused while the daemon runs, changing nothing', async () => {
    const r = await sigild(['tpm', 'rekey', '--config', td.configFile]);
    assert.equal(r.code, 1, r.stdout);
    assert.match(r.stderr, /^sigild: the store .*sigil\.db is in use by another sigild \(pid \d+\): stop it first\n$/);
    assert.equal((await KeyTable.open(stateDir)).get('legacy-board-v1')!.auth, undefined);
  });

  test('with the daemon stopped: --dry-run lists the key, then the key gets an authValue, audited; the daemon signs with it and the empty authValue no longer does', async () => {
    await td.stopDaemon();
    await toolSign(null);
    const dry = await sigild(['tpm', 'rekey', '--config', td.configFile, '--dry-run']);
    assert.equal(dry.code, 0, dry.stderr);
    assert.equal(dry.stdout, `would get a new authValue: board tpm:handle=0x${HANDLE.toString(16)} (legacy-board-v1, legacy/board@1)\n1 key(s) would change; run again without --dry-run\n`);
    assert.equal((await KeyTable.open(stateDir)).get('legacy-board-v1')!.auth, undefined);

    const r = await sigild(['tpm', 'rekey', '--config', td.configFile]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, `new authValue: board tpm:handle=0x${HANDLE.toString(16)} (legacy-board-v1, legacy/board@1)\n1 key(s) changed; the empty authValue no longer signs with them (what another process did with them before is not undone: see docs/operations.md)\n`);
    const auth = (await KeyTable.open(stateDir)).get('legacy-board-v1')!.auth;
    assert.match(auth ?? '', /^[0-9a-f]{64}$/);
    await assert.rejects(toolSign(null), (err: unknown) => /0x9a2|authorization failure/i.test(String((err as { stderr?: unknown }).stderr ?? err)), 'the empty authValue no longer signs');
    await toolSign(auth!);

    const again = await sigild(['tpm', 'rekey', '--config', td.configFile, '--backend', 'board']);
    assert.equal(again.stdout, 'every tpm key sigil made has an authValue: nothing to do\n');
    const other = await sigild(['tpm', 'rekey', '--config', td.configFile, '--backend', 'softhsm']);
    assert.equal(other.code, 2);
    assert.match(other.stderr, /no tpm backend named "softhsm"/);

    await td.restart();
    const acts = td.auditEntries().filter((e) => e.act === 'tpm.rekey');
    assert.deepEqual(acts.map((e) => [e.result, e.key, e.who.startsWith('local:')]), [['started', 'legacy/board@1', true], ['ok', 'legacy/board@1', true]]);
    assert.equal(acts[0]!.detail?.uri, `tpm:handle=0x${HANDLE.toString(16)}`);
    await signs();
  });
});
