/**
 * Rotation and revocation under load (issue 4, scope 8).
 *
 *   node bench/rotate.ts [--steady 20] [--seconds 60] [--inflight 32] [--channels 2] [--interval 1000] [--out FILE]
 *
 * sigild runs as users run it (bin/sigild.js serve, from dist/ when built) over a fresh SoftHSM token in a temp dir,
 * on a free loopback port, with a swtpm for the builders of the revocation part. Steps:
 *   1. steady: `inflight` Sign calls in flight (closed loop, ECDSA P-256, operator signer certificate) for `--steady`
 *      seconds: the latency baseline;
 *   2. rotation: the same load for `--seconds` seconds while an admin rotates the key every `--interval` ms;
 *   3. every signature of both phases is verified against the key version it names, with the public key taken from
 *      the trusted-root document (and the document's detached signature checked with the root key), and the time it
 *      was made is checked to fall inside that version's validity window;
 *   4. revocation: an attested builder (swtpm) signs in a loop; its identity is revoked by serial, and a second
 *      builder's TPM by EK hash; the bench counts requests that were accepted after the revocation answered.
 * Floors: zero failed requests, every signature verifies, p99 during rotation <= 2 x steady p99, zero requests
 * accepted after a revocation answered.
 */
import type { ChildProcess } from 'node:child_process';
import { createHash, createPublicKey, verify as nodeVerify, X509Certificate, type KeyObject } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { stringify } from 'yaml';
import type { ServiceError } from '@grpc/grpc-js';
import { connect, rpc, type Clients } from '../src/cli/client.ts';
import { spawnSigild, writeBenchPki, writePrivate } from './sigild-process.ts';
import { Attestor, builderClients, type Identity } from '../src/cli/agent/attestor.ts';
import { initSoftHsmToken } from '../src/dev/softhsm.ts';
import { Algorithm, type SignerClient } from '../src/gen/sigil/v1/signer.ts';
import { startSwtpm } from '../test/helpers/swtpm.ts';
import { trustedKeyVersions, type TrustedKeyVersion } from './trusted-root-keys.ts';
import { freePort, rssMb } from './measure.ts';

const PCRS = [0, 1, 2, 3, 4, 5, 6, 7];
const ZEROS = Object.fromEntries(PCRS.map((i) => [String(i), '00'.repeat(32)]));
const KEY = 'ci/release';
const POOL = 256;

const { values: args } = parseArgs({
  options: {
    steady: { type: 'string', default: '20' },
    seconds: { type: 'string', default: '60' },
    inflight: { type: 'string', default: '32' },
    channels: { type: 'string', default: '2' },
    interval: { type: 'string', default: '1000' },
    out: { type: 'string' },
  },
});
const STEADY_S = Number(args.steady);
const ROTATE_S = Number(args.seconds);
const INFLIGHT = Number(args.inflight);
const CHANNELS = Number(args.channels);
const INTERVAL_MS = Number(args.interval);

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

function latencyStats(v: number[]): { n: number; p50: number; p99: number; max: number } {
  const s = Float64Array.from(v).sort();
  return { n: s.length, p50: percentile(s, 50), p99: percentile(s, 99), max: s.length ? s[s.length - 1]! : NaN };
}

interface Made {
  /** Wall time (ms since the epoch) the response arrived: the signature existed by then. */
  at: number;
  keyVersion: string;
  digest: number;
  signature: Buffer;
}

interface PhaseResult {
  latencies: number[];
  made: Made[];
  errors: string[];
  seconds: number;
}

/** `inflight` lanes, each sending a Sign as soon as its previous one answered, for `seconds`. */
function signLoad(signers: SignerClient[], digests: Buffer[], seconds: number): Promise<PhaseResult> {
  const r: PhaseResult = { latencies: [], made: [], errors: [], seconds };
  const end = performance.now() + seconds * 1000;
  let i = 0;
  let lanes = INFLIGHT;
  return new Promise((done) => {
    const issue = (lane: number): void => {
      if (performance.now() >= end) {
        if (--lanes === 0) done(r);
        return;
      }
      const d = i++ % POOL;
      const t0 = performance.now();
      signers[lane % signers.length]!.sign({ key: KEY, digest: digests[d]!, message: undefined }, (err, res) => {
        const t1 = performance.now();
        if (err) r.errors.push(`${(err as ServiceError).code}: ${(err as ServiceError).details}`);
        else {
          r.latencies.push(t1 - t0);
          r.made.push({ at: Date.now(), keyVersion: res.keyVersion, digest: d, signature: res.signature });
        }
        issue(lane);
      });
    };
    for (let k = 0; k < INFLIGHT; k++) issue(k);
  });
}

interface Daemon {
  child: ChildProcess;
  addr: string;
  caFile: string;
  admin: Clients;
  signerFiles: { cert: string; key: string };
  stop(): Promise<void>;
}

async function startDaemon(dir: string, ekCaFile: string): Promise<Daemon> {
  const token = await initSoftHsmToken({ dir: join(dir, 'hsm'), label: 'bench' });
  const files = await writeBenchPki(dir, 'sigil rotation bench CA');
  const caFile = files.ca;
  const addr = `127.0.0.1:${await freePort()}`;
  const config = {
    mode: 'development',
    listen: addr,
    tls: { certFile: files.serverCert, keyFile: files.serverKey, clientCaFile: caFile },
    auth: { roles: { admin: ['cn:bench-admin'], signer: ['cn:bench-signer'] } },
    store: { sqlite: { path: join(dir, 'sigil.db') } },
    backends: { softhsm: { type: 'pkcs11', module: token.module, token: token.label, pinFile: token.pinFile, softhsmConf: token.conf } },
    defaultBackend: 'softhsm',
    identity: { trustDomain: 'sigil.bench' },
    authorization: { builders: [{ keys: ['ci/*'], identities: [{ san: 'spiffe://sigil.bench/builder/tpm/*' }] }] },
    attestation: { policies: { bench: { ekCaFiles: [ekCaFile], pcrs: { bank: 'sha256', select: PCRS }, golden: [ZEROS] } } },
    log: { level: 'warn' },
  };
  const configFile = await writePrivate(dir, 'config.yaml', stringify(config));
  const sigild = await spawnSigild(configFile, { addr, ca: caFile, cert: files.adminCert, key: files.adminKey });
  const c = connect({ addr, ca: caFile, cert: files.adminCert, key: files.adminKey });
  return {
    child: sigild.child,
    addr,
    caFile,
    admin: c,
    signerFiles: { cert: files.signerCert, key: files.signerKey },
    async stop() {
      c.close();
      await sigild.stop();
      const { exitCode, signalCode } = sigild.child;
      if (exitCode !== 0 && signalCode !== 'SIGTERM') process.stderr.write(`sigild exit ${exitCode}/${signalCode}:\n${sigild.output()}\n`);
    },
  };
}

/** Verifies every signature against the trusted root's public key of the version it names, inside its window. */
function verifyAll(made: Made[], messages: Buffer[], versions: Map<string, TrustedKeyVersion>): { ok: number; bad: string[] } {
  const keys = new Map<string, KeyObject>();
  const bad: string[] = [];
  let ok = 0;
  for (const m of made) {
    const v = versions.get(m.keyVersion);
    if (!v) {
      if (bad.length < 10) bad.push(`${m.keyVersion}: not in the trusted root`);
      continue;
    }
    let k = keys.get(m.keyVersion);
    if (!k) keys.set(m.keyVersion, (k = createPublicKey({ key: v.spki, format: 'der', type: 'spki' })));
    // The digest signed is SHA-256 of the kept message: openssl-equivalent ECDSA-SHA256 verification.
    const good = nodeVerify('sha256', messages[m.digest]!, { key: k, dsaEncoding: 'der' }, m.signature);
    // The window is checked with a second of slack for the clock read after the response.
    const inWindow = m.at >= v.start.getTime() - 1000 && (v.end === null || m.at <= v.end.getTime() + 1000);
    if (good && inWindow) ok++;
    else if (bad.length < 10) bad.push(`${m.keyVersion}: ${good ? 'outside its validity window' : 'signature does not verify'}`);
  }
  return { ok, bad };
}

async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'sigil-bench-rotate-'));
  const sw = await startSwtpm();
  let d: Daemon | null = null;
  const opened: Clients[] = [];
  try {
    d = await startDaemon(dir, sw.ekCaFile);
    const created = await rpc.createKey(d.admin, { name: KEY, algorithm: Algorithm.ECDSA_P256_SHA256, backend: '' });
    process.stderr.write(`key ${created.key!.name}@${created.key!.primaryVersion} created; sigild pid ${d.child.pid}\n`);
    const messages = Array.from({ length: POOL }, (_, i) => Buffer.from(`artifact ${i}`));
    const digests = messages.map((m) => createHash('sha256').update(m).digest());
    const signers: SignerClient[] = [];
    for (let k = 0; k < CHANNELS; k++) {
      // Distinct channel options so grpc-js opens one connection per client.
      const c = connect({ addr: d.addr, ca: d.caFile, cert: d.signerFiles.cert, key: d.signerFiles.key, maxSendBytes: 80 * 1024 * 1024 + k });
      opened.push(c);
      signers.push(c.signer);
    }
    // Warm-up: sessions, handles, JIT.
    await signLoad(signers, digests, 3);
    process.stderr.write(`steady: ${INFLIGHT} in flight for ${STEADY_S} s\n`);
    const steady = await signLoad(signers, digests, STEADY_S);

    process.stderr.write(`rotation: same load for ${ROTATE_S} s, rotating every ${INTERVAL_MS} ms\n`);
    const rotations: { ms: number; version: string }[] = [];
    const rotationErrors: string[] = [];
    let rotating = true;
    const rotator = (async () => {
      let next = performance.now() + INTERVAL_MS;
      while (rotating) {
        await sleep(Math.max(0, next - performance.now()));
        if (!rotating) break;
        next += INTERVAL_MS;
        const t0 = performance.now();
        try {
          const r = await rpc.rotateKey(d!.admin, { name: KEY });
          rotations.push({ ms: performance.now() - t0, version: `${r.key!.name}@${r.key!.primaryVersion}` });
        } catch (err) {
          rotationErrors.push(`${(err as ServiceError).code}: ${(err as ServiceError).details}`);
        }
      }
    })();
    const rssBefore = rssMb(d.child.pid!);
    const during = await signLoad(signers, digests, ROTATE_S);
    rotating = false;
    await rotator;
    const rssAfter = rssMb(d.child.pid!);

    // Every signature against the trusted root, fetched without a client certificate.
    const anon = connect({ addr: d.addr, ca: d.caFile });
    opened.push(anon);
    const tr = await rpc.getTrustedRoot(anon, {});
    const rootKey = createPublicKey(tr.publicKeyPem);
    const docOk = nodeVerify('sha256', tr.json, rootKey, tr.signature);
    const versions = trustedKeyVersions(JSON.parse(tr.json.toString('utf8')) as unknown, KEY);
    const all = [...steady.made, ...during.made];
    const checked = verifyAll(all, messages, versions);
    const byVersion = new Map<string, number>();
    for (const m of during.made) byVersion.set(m.keyVersion, (byVersion.get(m.keyVersion) ?? 0) + 1);

    // Revocation: the very next request after the revocation answered is refused.
    process.stderr.write('revocation: enrolling two builders on the swtpm\n');
    const revocation = await revocationRun(d, sw.tcti, opened);

    const s = latencyStats(steady.latencies);
    const r = latencyStats(during.latencies);
    const rot = latencyStats(rotations.map((x) => x.ms));
    const result = {
      machine: { cpus: cpus().length, model: cpus()[0]?.model, node: process.version },
      settings: { steadySeconds: STEADY_S, rotationSeconds: ROTATE_S, inflight: INFLIGHT, channels: CHANNELS, intervalMs: INTERVAL_MS },
      steady: { sigsPerSec: s.n / STEADY_S, p50Ms: s.p50, p99Ms: s.p99, maxMs: s.max, errors: steady.errors.length },
      rotation: {
        sigsPerSec: r.n / ROTATE_S,
        p50Ms: r.p50,
        p99Ms: r.p99,
        maxMs: r.max,
        errors: during.errors.length,
        firstErrors: during.errors.slice(0, 5),
        rotations: rotations.length,
        rotationErrors: rotationErrors.slice(0, 5),
        rotateMs: { p50: rot.p50, p99: rot.p99, max: rot.max },
        versionsUsed: byVersion.size,
      },
      verification: { signatures: all.length, verified: checked.ok, problems: checked.bad, trustedRootSignature: docOk },
      revocation,
      rssMb: { beforeRotation: rssBefore, afterRotation: rssAfter },
    };
    const floors = [
      { floor: 'failed requests during rotation', measured: during.errors.length + steady.errors.length, required: '0', met: during.errors.length + steady.errors.length === 0 && rotationErrors.length === 0 },
      { floor: 'signatures verified against the trusted root', measured: `${checked.ok}/${all.length}`, required: 'all', met: checked.ok === all.length && docOk },
      { floor: 'p99 during rotation / steady p99', measured: +(r.p99 / s.p99).toFixed(2), required: '<= 2', met: r.p99 <= 2 * s.p99 },
      { floor: 'requests accepted after a revocation answered', measured: revocation.acceptedAfterRevoke, required: '0', met: revocation.acceptedAfterRevoke === 0 && revocation.nextRefused },
    ];
    const out = JSON.stringify({ ...result, floors }, null, 2);
    process.stdout.write(`${out}\n`);
    if (args.out) await writeFile(args.out, out);
    for (const f of floors) process.stderr.write(`${f.met ? 'met    ' : 'NOT MET'}  ${f.floor}: ${f.measured} (required ${f.required})\n`);
  } finally {
    for (const c of opened) c.close();
    await d?.stop();
    await sw.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

interface RevocationResult {
  /** Sign requests that started after a revocation answered and were still accepted. */
  acceptedAfterRevoke: number;
  /** The first request after each revocation was refused. */
  nextRefused: boolean;
  refusals: string[];
  /** Requests accepted before the revocation answered, by the builder that was revoked under load. */
  acceptedBefore: number;
  renewalAfterBuilderRevoke: string;
}

/** Two attested builders: one revoked by certificate serial while it signs with 8 in flight, one by EK hash. */
async function revocationRun(d: Daemon, tcti: string, opened: Clients[]): Promise<RevocationResult> {
  const attestor = new Attestor({ addr: d.addr, ca: d.caFile, tpm: tcti, policy: 'bench', ek: 'rsa', ak: 'ecc', claims: {}, lifetimeSeconds: 0 });
  const one: Identity = await attestor.enroll();
  const c1 = builderClients(d.addr, d.caFile, one);
  opened.push(c1);
  const digest = createHash('sha256').update('revocation').digest();
  await rpc.sign(c1, { key: KEY, digest, message: undefined });

  // Under load: 8 lanes sign continuously; the revocation lands in the middle.
  let revokedAt = Infinity;
  let acceptedAfter = 0;
  let acceptedBefore = 0;
  const refusals: string[] = [];
  let stop = false;
  // A bound, so a revocation that never takes effect ends the run (and fails the floor) instead of hanging it.
  const giveUp = performance.now() + 15_000;
  const lane = async (): Promise<void> => {
    while (!stop && performance.now() < giveUp) {
      const started = performance.now();
      try {
        await rpc.sign(c1, { key: KEY, digest, message: undefined });
        if (started > revokedAt) acceptedAfter++;
        else acceptedBefore++;
      } catch (err) {
        if (refusals.length < 3) refusals.push(`${(err as ServiceError).code}: ${(err as ServiceError).details}`);
        if (started > revokedAt) stop = true;
      }
    }
  };
  const lanes = Array.from({ length: 8 }, () => lane());
  await sleep(1000);
  process.stderr.write(`revocation: builder signed ${acceptedBefore} times under load (${refusals.length ? refusals[0] : 'no refusals'}); revoking its identity\n`);
  const serial = new X509Certificate(one.certificatePem).serialNumber;
  await rpc.revokeIdentity(d.admin, { serial, reason: 'keyCompromise' });
  revokedAt = performance.now();
  await Promise.all(lanes);

  // Sequential: the very next request after RevokeBuilder answered.
  const two: Identity = await attestor.enroll();
  const c2 = builderClients(d.addr, d.caFile, two);
  opened.push(c2);
  await rpc.sign(c2, { key: KEY, digest, message: undefined });
  const ekHash = two.spiffeId.slice(two.spiffeId.lastIndexOf('/') + 1);
  await rpc.revokeBuilder(d.admin, { ekHash, akName: '', reason: 'cessationOfOperation' });
  let nextRefused = false;
  try {
    await rpc.sign(c2, { key: KEY, digest, message: undefined });
    acceptedAfter++;
  } catch (err) {
    nextRefused = true;
    refusals.push(`${(err as ServiceError).code}: ${(err as ServiceError).details}`);
  }
  let renewal = 'accepted';
  try {
    await attestor.renew(two);
  } catch (err) {
    renewal = `refused: ${(err as ServiceError).code ?? ''} ${(err as ServiceError).details ?? (err as Error).message}`;
  }
  return { acceptedAfterRevoke: acceptedAfter, nextRefused, refusals, acceptedBefore, renewalAfterBuilderRevoke: renewal };
}

await main();
