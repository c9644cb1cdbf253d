/**
 * TPM signing throughput on swtpm: sigil's tpm backend (one connection, commands serialised by the
 * transport) against `tpm2_sign` run in a loop (one tool process per signature, what a shell script
 * does) on the same swtpm and the same persistent P-256 key.
 *
 *   node bench/tpm-sign.ts [--seconds 3] [--tool-runs 200] [--inflight 16]
 *
 * Prints one JSON line per measurement: {"what":..,"alg":..,"sigsPerSec":..,"meanMs":..}. Every
 * measured backend signature of the last batch and the last tpm2_sign signature are verified with
 * node:crypto; a failure ends the run with exit 1.
 */
import { execFile } from 'node:child_process';
import { createHash, createPublicKey, randomBytes, verify, type KeyObject } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs, promisify } from 'node:util';
import { silentLogger } from '../src/log.ts';
import { tpmConfigSchema } from '../src/signers/tpm/config.ts';
import { open } from '../src/signers/tpm/index.ts';
import type { Algorithm, KeySigner } from '../src/signers/signer.ts';
import { startSwtpm, tpmKeyAuth } from '../test/helpers/swtpm.ts';

const run = promisify(execFile);
const { values } = parseArgs({ options: { seconds: { type: 'string', default: '3' }, 'tool-runs': { type: 'string', default: '200' }, inflight: { type: 'string', default: '16' } } });
const seconds = Number(values.seconds);
const toolRuns = Number(values['tool-runs']);
const inflight = Number(values.inflight);

function emit(what: string, alg: string, n: number, ms: number): void {
  console.log(JSON.stringify({ what, alg, n, sigsPerSec: Math.round((n / ms) * 1000), meanMs: Number((ms / n).toFixed(3)) }));
}

function check(ok: boolean, what: string): void {
  if (!ok) {
    console.error(`verification failed: ${what}`);
    process.exit(1);
  }
}

// Keeps `width` signatures in flight for `seconds`; returns how many completed and the last batch.
async function measure(signer: KeySigner, width: number): Promise<{ n: number; ms: number; last: Array<[Buffer, Buffer]> }> {
  const digest = createHash('sha256').update('warm-up').digest();
  for (let i = 0; i < 20; i++) await signer.sign(digest);
  const end = performance.now() + seconds * 1000;
  const t0 = performance.now();
  let n = 0;
  let last: Array<[Buffer, Buffer]> = [];
  await Promise.all(
    Array.from({ length: width }, async () => {
      while (performance.now() < end) {
        const msg = randomBytes(32);
        const sig = await signer.sign(createHash('sha256').update(msg).digest());
        n++;
        last.push([msg, sig]);
        if (last.length > 64) last = last.slice(-32);
      }
    }),
  );
  return { n, ms: performance.now() - t0, last };
}

function verifies(alg: Algorithm, key: KeyObject, msg: Buffer, sig: Buffer): boolean {
  return alg === 'RSA_PKCS1_SHA256' ? verify('sha256', msg, key, sig) : verify('sha256', msg, { key, dsaEncoding: 'der' }, sig);
}

const sw = await startSwtpm();
const dir = await mkdtemp(join(tmpdir(), 'sigil-bench-tpm-'));
try {
  const config = tpmConfigSchema.parse({ type: 'tpm', transport: sw.tcti, stateDir: join(dir, 'state') });
  const backend = await open(config, { name: 'bench', log: silentLogger(), production: false });
  const ec = await backend.createKey({ label: 'bench-ec-v1', algorithm: 'ECDSA_P256_SHA256' });
  const rsa = await backend.createKey({ label: 'bench-rsa-v1', algorithm: 'RSA_PKCS1_SHA256' });
  for (const [k, alg] of [[ec, 'ECDSA_P256_SHA256'], [rsa, 'RSA_PKCS1_SHA256']] as const) {
    const signer = await backend.signer(k.uri, alg);
    const key = createPublicKey({ key: k.spki, format: 'der', type: 'spki' });
    for (const width of [1, inflight]) {
      const r = await measure(signer, width);
      for (const [msg, sig] of r.last) check(verifies(alg, key, msg, sig), `backend ${alg}`);
      emit(`sigil tpm backend, ${width} in flight`, alg, r.n, r.ms);
    }
  }
  await backend.close();

  // swtpm takes one connection at a time: the tools run once the backend has let go of it.
  const env = { ...process.env, TPM2TOOLS_TCTI: sw.tcti };
  const handle = ec.uri.slice('tpm:handle='.length);
  const msg = Buffer.from('tpm2_sign loop');
  await writeFile(join(dir, 'digest.bin'), createHash('sha256').update(msg).digest());
  const tool = ['-c', handle, '-p', `hex:${await tpmKeyAuth(join(dir, 'state'), handle)}`, '-g', 'sha256', '-s', 'ecdsa', '-d', '-f', 'plain', '-o', join(dir, 'sig.der'), join(dir, 'digest.bin')];
  for (let i = 0; i < 5; i++) await run('tpm2_sign', tool, { env });
  const t0 = performance.now();
  for (let i = 0; i < toolRuns; i++) await run('tpm2_sign', tool, { env });
  emit('tpm2_sign loop (one process per signature)', 'ECDSA_P256_SHA256', toolRuns, performance.now() - t0);
  check(verify('sha256', msg, { key: createPublicKey({ key: ec.spki, format: 'der', type: 'spki' }), dsaEncoding: 'der' }, await readFile(join(dir, 'sig.der'))), 'tpm2_sign');
} finally {
  await sw.stop();
  await rm(dir, { recursive: true, force: true });
}
