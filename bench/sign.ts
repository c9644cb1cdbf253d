/**
 * The signing benchmark: ECDSA P-256 (and RSA-2048) on a fresh SoftHSM token, side by side:
 *
 *   (a) raw     pkcs11js in a loop, one thread, in its own process (bench/raw-pkcs11.ts), plus the same
 *               loop on sigild's own key object, with per-call latency and verified signatures;
 *   (b) peer    the same token and key object through `p11-kit server` over a unix socket, 1 and 4 in flight;
 *   (c) sigild  as a subprocess, driven by a load generator in another process: unary at 1 and 32 in
 *               flight (and 32 from four client processes, the p11kit-4 peer's client topology),
 *               SignBatch, SignStream, and RSA-2048 unary.
 *
 *   node bench/sign.ts [--seconds N] [--out bench/results/sign.json] [--only a,b,c] [--scenarios unary-1,...]
 *                      [--channels 4] [--batch-size 128] [--batch-inflight 4] [--stream-window 256]
 *                      [--rsa-inflight 16] [--rsa-batch-size 64] [--sessions 8] [--sign-thread] [--profile DIR] [--daemon-flags "--node-flag ..."]
 *
 * --profile writes a CPU profile of the daemon (node --cpu-prof) into DIR; --daemon-flags passes Node
 * flags to the daemon only. Environment, for investigation: SIGIL_BENCH_TEE=1 copies child output to
 * stderr, SIGIL_BENCH_WORKER_FLAGS passes Node flags to the worker processes (default --max-semi-space-size=2).
 *
 * Every scenario keeps a sample of its signatures, verified here with node:crypto; a scenario with a
 * bad signature or an RPC error fails the run. The same file is also the worker processes (`--role`).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, createPublicKey, verify, type KeyObject } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { cpus, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import pkcs11js from 'pkcs11js';
import { stringify } from 'yaml';
import { credentials, type ServiceError } from '@grpc/grpc-js';
import { connect as http2Connect } from 'node:http2';
import { Algorithm, SignerClient, SignRequest, SignResponse, type SignBatchResponse, type SignStreamResponse } from '../src/gen/sigil/v1/signer.ts';
import { connect, rpc, type Clients } from '../src/cli/client.ts';
import { writeBenchPki, writePrivate } from './sigild-process.ts';
import { initSoftHsmToken, type SoftHsmToken } from '../src/dev/softhsm.ts';
import { attrText, parseKeyUri } from '../src/signers/key-uri.ts';
import { rawRate } from './raw-pkcs11.ts';
import { cpuSeconds, freePort, machineBusySeconds, percentile, rssMb } from './measure.ts';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const SELF = fileURLToPath(import.meta.url);
const P11KIT_CLIENT = '/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so';
const SHA256_DIGEST_INFO = Buffer.from('3031300d060960864801650304020105000420', 'hex');
const POOL = 256;

// ---------------------------------------------------------------------------------------------------
// Shared: the message pool, latency statistics, worker plumbing.

/** 256 fixed 32-byte messages and their SHA-256 digests; every process derives the same pool. */
function messagePool(): { msgs: Buffer[]; digests: Buffer[] } {
  const msgs: Buffer[] = [];
  const digests: Buffer[] = [];
  for (let i = 0; i < POOL; i++) {
    const m = createHash('sha256').update(`sigil-bench-${i}`).digest();
    msgs.push(m);
    digests.push(createHash('sha256').update(m).digest());
  }
  return { msgs, digests };
}

/** A growable list of latencies in milliseconds. */
class Latencies {
  #a = new Float64Array(1 << 16);
  n = 0;
  push(ms: number): void {
    if (this.n === this.#a.length) {
      const b = new Float64Array(this.#a.length * 2);
      b.set(this.#a);
      this.#a = b;
    }
    this.#a[this.n++] = ms;
  }
  values(): Float64Array {
    return this.#a.subarray(0, this.n);
  }
}

/** p50/p99/max of latencies (ms). */
function stats(values: Float64Array): { p50: number; p99: number; max: number } {
  const s = Float64Array.from(values).sort();
  return { p50: percentile(s, 50), p99: percentile(s, 99), max: s.length ? s[s.length - 1]! : NaN };
}

/** A signature kept for verification: index into the message pool and the signature bytes. */
type Sample = [number, string];

/** What every worker prints as its last line. */
interface WorkerResult {
  sigs: number;
  seconds: number;
  /** Latencies in ms (one per request: a signature, a batch, or a stream item), only when asked to return them. */
  latencies?: number[];
  p50?: number;
  p99?: number;
  errors: number;
  firstError?: string;
  samples: Sample[];
  /** Encoding of the sampled signatures. */
  encoding: 'der' | 'ieee-p1363' | 'rsa';
  /** The worker's CPU seconds since it started, when it reported. */
  cpuSeconds?: number;
}

function send(obj: unknown): void {
  // A result carries the worker's own CPU total: the worker may have exited before the orchestrator reads /proc.
  const o = typeof obj === 'object' && obj !== null && 'sigs' in obj ? { ...obj, cpuSeconds: (process.cpuUsage().user + process.cpuUsage().system) / 1e6 } : obj;
  process.stdout.write(JSON.stringify(o) + '\n');
}

/** Waits for the orchestrator's `go` line on stdin. */
function waitGo(): Promise<void> {
  return new Promise((resolveGo) => {
    const rl = createInterface({ input: process.stdin });
    rl.once('line', () => {
      rl.close();
      // A socket stdin keeps the process alive otherwise.
      process.stdin.destroy();
      resolveGo();
    });
  });
}

// ---------------------------------------------------------------------------------------------------
// Worker: a pkcs11js loop (raw SoftHSM or the p11-kit client), synchronous, one session.

interface P11Args {
  module: string;
  label: string;
  pinFile: string;
  keyLabel: string;
  alg: 'ec' | 'rsa';
  seconds: number;
  warmup: number;
  /** 1: a synchronous loop; more: that many sessions, each SignInit + C_SignAsync (libuv threadpool). */
  inflight: number;
}

async function p11Worker(a: P11Args): Promise<void> {
  const pin = (await readFile(a.pinFile, 'utf8')).replace(/\r?\n$/, '');
  const pk = new pkcs11js.PKCS11();
  pk.load(a.module);
  pk.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
  try {
    // Through p11-kit's client module the token list comes from the server; with four clients connecting at
    // once one of them now and then sees no token (seen once in session 8): start the module again, a few times.
    const findSlot = (): Buffer | undefined => pk.C_GetSlotList(true).find((s) => pk.C_GetTokenInfo(s).label.trim() === a.label);
    let slot = findSlot();
    for (let attempt = 1; slot === undefined && attempt < 5; attempt++) {
      pk.C_Finalize();
      await new Promise((r) => setTimeout(r, 200 * attempt));
      pk.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
      slot = findSlot();
    }
    if (slot === undefined) throw new Error(`token ${a.label} not found through ${a.module}`);
    const sessions = Array.from({ length: a.inflight }, () => pk.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION));
    const session = sessions[0]!;
    try {
      pk.C_Login(session, pkcs11js.CKU_USER, pin);
    } catch (err) {
      if (!(err instanceof pkcs11js.Pkcs11Error && err.code === 0x100)) throw err; // CKR_USER_ALREADY_LOGGED_IN
    }
    pk.C_FindObjectsInit(session, [
      { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY },
      { type: pkcs11js.CKA_LABEL, value: a.keyLabel },
    ]);
    const found = pk.C_FindObjects(session, 2);
    pk.C_FindObjectsFinal(session);
    if (found.length !== 1) throw new Error(`expected one private key labelled ${a.keyLabel}, found ${found.length}`);
    const key = found[0]!;
    const ec = a.alg === 'ec';
    const mech = { mechanism: ec ? pkcs11js.CKM_ECDSA : pkcs11js.CKM_RSA_PKCS };
    const { digests } = messagePool();
    const inputs = ec ? digests : digests.map((d) => Buffer.concat([SHA256_DIGEST_INFO, d]));
    const out = Buffer.alloc(ec ? 64 : 256);
    const signOnce = (i: number): Buffer => {
      pk.C_SignInit(session, mech, key);
      return pk.C_Sign(session, inputs[i & (POOL - 1)]!, out);
    };
    const warmEnd = performance.now() + a.warmup * 1000;
    for (let i = 0; performance.now() < warmEnd; i++) signOnce(i);
    send({ ready: true });
    await waitGo();

    const lat = new Latencies();
    const samples: Sample[] = [];
    const start = performance.now();
    const end = start + a.seconds * 1000;
    let n = 0;
    let t = start;
    if (a.inflight > 1) {
      // Several sessions, each with one C_SignAsync in flight.
      let last = start;
      await Promise.all(
        sessions.map(async (ses) => {
          const buf = Buffer.alloc(ec ? 64 : 256);
          while (performance.now() < end) {
            const i = n++;
            const t0 = performance.now();
            pk.C_SignInit(ses, mech, key);
            const sig = await pk.C_SignAsync(ses, inputs[i & (POOL - 1)]!, buf);
            last = performance.now();
            lat.push(last - t0);
            if (i % 499 === 0 && samples.length < 64) samples.push([i & (POOL - 1), Buffer.from(sig).toString('base64')]);
          }
        }),
      );
      t = last;
    }
    while (t < end) {
      const sig = signOnce(n);
      const t1 = performance.now();
      lat.push(t1 - t);
      t = t1;
      if (n % 499 === 0 && samples.length < 64) samples.push([n & (POOL - 1), Buffer.from(sig).toString('base64')]);
      n++;
    }
    const seconds = (t - start) / 1000;
    pk.C_Logout(session);
    for (const x of sessions) pk.C_CloseSession(x);
    const st = stats(lat.values());
    send({ sigs: n, seconds, p50: st.p50, p99: st.p99, latencies: sampleLatencies(lat.values()), errors: 0, samples, encoding: ec ? 'ieee-p1363' : 'rsa' } satisfies WorkerResult);
  } finally {
    pk.C_Finalize();
  }
}

/** Up to 20k latencies, evenly spaced, so that several workers' latencies can be merged. */
function sampleLatencies(v: Float64Array): number[] {
  const step = Math.max(1, Math.floor(v.length / 20000));
  const out: number[] = [];
  for (let i = 0; i < v.length; i += step) out.push(v[i]!);
  return out;
}

// ---------------------------------------------------------------------------------------------------
// Worker: the gRPC load generator against sigild.

interface LoadArgs {
  addr: string;
  ca: string;
  cert: string;
  key: string;
  keyName: string;
  /** h2unary: unary Sign over node:http2 directly, a lean gRPC client (like ghz or grpc-go) instead of grpc-js. */
  mode: 'unary' | 'h2unary' | 'batch' | 'stream';
  /** unary: requests in flight; batch: batches in flight; stream: window. */
  inflight: number;
  batch: number;
  /** Unary only: connections (HTTP/2 sessions) the requests in flight are spread over. */
  channels: number;
  seconds: number;
  warmup: number;
}

async function loadWorker(a: LoadArgs): Promise<void> {
  const creds = credentials.createSsl(readFileSync(a.ca), readFileSync(a.key), readFileSync(a.cert));
  // A local subchannel pool per client: each is its own TCP+TLS connection.
  const signers = Array.from({ length: Math.max(1, a.channels) }, () => new SignerClient(a.addr, creds, { 'grpc.use_local_subchannel_pool': 1 }));
  const c = connect({ addr: a.addr, ca: a.ca, cert: a.cert, key: a.key });
  const { digests } = messagePool();
  const reqs: SignRequest[] = digests.map((digest) => ({ key: a.keyName, digest }));
  try {
    // Connect and resolve the key before the clock starts.
    await rpc.sign(c, reqs[0]!);
    await run(c, signers, a, reqs, a.warmup, false);
    send({ ready: true });
    await waitGo();
    send(await run(c, signers, a, reqs, a.seconds, true));
  } finally {
    c.close();
    for (const x of signers) x.close();
  }
}

async function run(c: Clients, signers: SignerClient[], a: LoadArgs, reqs: SignRequest[], seconds: number, record: boolean): Promise<WorkerResult> {
  switch (a.mode) {
    case 'unary':
      return runUnary(signers, a.inflight, reqs, seconds, record);
    case 'h2unary':
      return runH2Unary(a, reqs, seconds, record);
    case 'batch':
      return runBatch(c, a.inflight, a.batch, reqs, seconds, record);
    case 'stream':
      return runStream(c, a.inflight, reqs, seconds, record);
  }
}

/**
 * One call's outcome in a closed loop: an error that failed `failed` signatures (1 by default), or `ok` signatures
 * (plus per-item errors) and a way to take a sample when the call is one to be sampled.
 */
type Outcome = { error: string; failed?: number } | { ok: number; errors?: number; firstError?: string; sample: () => Sample | undefined };

/**
 * A closed loop of calls: `inflight` lanes each issue a call as soon as the previous one answered, until
 * `seconds` have passed; latency per call, a sample from every `sampleEvery`-th call (up to 64).
 */
function closedLoop(
  inflight: number,
  seconds: number,
  record: boolean,
  sampleEvery: number,
  call: (i: number, lane: number, done: (o: Outcome) => void) => void,
  onEnd = (): void => {},
): Promise<WorkerResult> {
  return new Promise((resolve) => {
    const lat = new Latencies();
    const samples: Sample[] = [];
    let seq = 0;
    let sigs = 0;
    let errors = 0;
    let firstError: string | undefined;
    let active = 0;
    let last = 0;
    const start = performance.now();
    const end = start + seconds * 1000;
    const issue = (lane: number): void => {
      const i = seq++;
      const t0 = performance.now();
      active++;
      call(i, lane, (o) => {
        const t1 = performance.now();
        active--;
        last = t1;
        if ('error' in o) {
          errors += o.failed ?? 1;
          firstError ??= o.error;
        } else {
          sigs += o.ok;
          errors += o.errors ?? 0;
          firstError ??= o.firstError;
          lat.push(t1 - t0);
          if (record && i % sampleEvery === 0 && samples.length < 64) {
            const smp = o.sample();
            if (smp) samples.push(smp);
          }
        }
        if (t1 < end) issue(lane);
        else if (active === 0) {
          onEnd();
          const st = stats(lat.values());
          resolve({ sigs, seconds: (last - start) / 1000, p50: st.p50, p99: st.p99, latencies: sampleLatencies(lat.values()), errors, firstError, samples, encoding: 'der' });
        }
      });
    };
    for (let k = 0; k < inflight; k++) issue(k);
  });
}

function runUnary(signers: SignerClient[], inflight: number, reqs: SignRequest[], seconds: number, record: boolean): Promise<WorkerResult> {
  return closedLoop(inflight, seconds, record, 499, (i, lane, done) => {
    signers[lane % signers.length]!.sign(reqs[i & (POOL - 1)]!, (err: ServiceError | null, res: SignResponse) =>
      done(err ? { error: `${err.code} ${err.details}` } : { ok: 1, sample: () => [i & (POOL - 1), Buffer.from(res.signature).toString('base64')] }),
    );
  });
}

/**
 * Unary Sign calls framed by hand over node:http2 with mutual TLS: the same bytes on the wire as a grpc-js
 * client (length-prefixed protobuf, `te: trailers`, grpc-status in the trailers), at about half the client CPU,
 * so more of the two cores is left to the daemon, as with a Go or C client.
 */
function runH2Unary(a: LoadArgs, reqs: SignRequest[], seconds: number, record: boolean): Promise<WorkerResult> {
  const tls = { ca: readFileSync(a.ca), cert: readFileSync(a.cert), key: readFileSync(a.key) };
  const sessions = Array.from({ length: Math.max(1, a.channels) }, () => http2Connect(`https://${a.addr}`, tls));
  const frames = reqs.map((r) => {
    const body = SignRequest.encode(r).finish();
    const f = Buffer.alloc(5 + body.length);
    f.writeUInt32BE(body.length, 1);
    f.set(body, 5);
    return f;
  });
  const headers = { ':method': 'POST', ':path': '/sigil.v1.Signer/Sign', 'content-type': 'application/grpc', te: 'trailers' };
  const call = (i: number, lane: number, done: (o: Outcome) => void): void => {
    const st = sessions[lane % sessions.length]!.request(headers);
    const chunks: Buffer[] = [];
    let grpcStatus = '';
    let message = '';
    st.on('data', (b: Buffer) => chunks.push(b));
    st.on('trailers', (t) => {
      grpcStatus = String(t['grpc-status'] ?? '');
      message = String(t['grpc-message'] ?? '');
    });
    st.on('close', () => {
      const body = Buffer.concat(chunks);
      if (grpcStatus !== '0' || body.length < 5) done({ error: `${grpcStatus} ${decodeURIComponent(message)}` });
      else done({ ok: 1, sample: () => [i & (POOL - 1), Buffer.from(SignResponse.decode(body.subarray(5, 5 + body.readUInt32BE(1))).signature).toString('base64')] });
    });
    st.end(frames[i & (POOL - 1)]);
  };
  return closedLoop(a.inflight, seconds, record, 499, call, () => {
    for (const x of sessions) x.close();
  });
}

function runBatch(c: Clients, inflight: number, size: number, reqs: SignRequest[], seconds: number, record: boolean): Promise<WorkerResult> {
  // A few fixed batches, cycled: request building is not what is measured.
  const batches = Array.from({ length: 4 }, (_, b) => ({ requests: Array.from({ length: size }, (_, j) => reqs[(b * size + j) & (POOL - 1)]!) }));
  const firstIndex = (b: number): number => (b * size) & (POOL - 1);
  return closedLoop(inflight, seconds, record, 7, (i, _lane, done) => {
    const b = i & 3;
    c.signer.signBatch(batches[b]!, (err: ServiceError | null, res: SignBatchResponse) => {
      if (err) return done({ error: `${err.code} ${err.details}`, failed: size });
      let ok = 0;
      let firstError: string | undefined;
      for (const r of res.results) {
        if (r.signature) ok++;
        else firstError ??= `${r.error?.code} ${r.error?.message}`;
      }
      done({
        ok,
        errors: res.results.length - ok,
        firstError,
        sample: () => {
          const j = i % size;
          const s = res.results[j]?.signature;
          return s ? [(firstIndex(b) + j) & (POOL - 1), Buffer.from(s.signature).toString('base64')] : undefined;
        },
      });
    });
  });
}

function runStream(c: Clients, window: number, reqs: SignRequest[], seconds: number, record: boolean): Promise<WorkerResult> {
  return new Promise((done, fail) => {
    const call = c.signer.signStream();
    const RING = 1 << 16;
    const sent = new Float64Array(RING);
    const lat = new Latencies();
    const samples: Sample[] = [];
    let id = 0;
    let pending = 0;
    let sigs = 0;
    let errors = 0;
    let firstError: string | undefined;
    let last = 0;
    let ending = false;
    let waitingDrain = false;
    const start = performance.now();
    const end = start + seconds * 1000;
    const pump = (): void => {
      while (!ending && !waitingDrain && pending < window) {
        const i = id++;
        sent[i & (RING - 1)] = performance.now();
        pending++;
        if (!call.write({ id: i, request: reqs[i & (POOL - 1)] })) {
          waitingDrain = true;
          call.once('drain', () => {
            waitingDrain = false;
            pump();
          });
        }
      }
    };
    call.on('data', (m: SignStreamResponse) => {
      const t1 = performance.now();
      last = t1;
      pending--;
      if (m.result?.signature) {
        sigs++;
        lat.push(t1 - sent[m.id & (RING - 1)]!);
        if (record && m.id % 499 === 0 && samples.length < 64) samples.push([m.id & (POOL - 1), Buffer.from(m.result.signature.signature).toString('base64')]);
      } else {
        errors++;
        firstError ??= `${m.result?.error?.code} ${m.result?.error?.message}`;
      }
      if (t1 >= end && !ending) {
        ending = true;
        call.end();
      }
      pump();
    });
    call.on('error', (err: ServiceError) => fail(new Error(`SignStream failed: ${err.code} ${err.details}`)));
    call.on('end', () => {
      const st = stats(lat.values());
      done({ sigs, seconds: (last - start) / 1000, p50: st.p50, p99: st.p99, errors: errors + pending, firstError, samples, encoding: 'der' });
    });
    pump();
  });
}

// ---------------------------------------------------------------------------------------------------
// Worker: bench/raw-pkcs11.ts's loop on a fresh token-object key of the same token.

async function rawWorker(a: { module: string; conf: string; label: string; pinFile: string; seconds: number }): Promise<void> {
  const rates = await rawRate({ seconds: a.seconds, token: { module: a.module, conf: a.conf, label: a.label, pinFile: a.pinFile } });
  send({ rates });
}

// ---------------------------------------------------------------------------------------------------
// The orchestrator.

interface Scenario {
  id: string;
  group: 'a' | 'b' | 'c';
  title: string;
  alg: 'ECDSA P-256' | 'RSA-2048';
  sigsPerSec: number;
  p50: number | null;
  p99: number | null;
  errors: number;
  verified: string;
  /** CPU cores busy during the measurement: the measured process(es), the daemon, the load generator. */
  cpu?: Record<string, number>;
  daemonRssMb?: number;
  note?: string;
}

const children = new Set<ChildProcess>();

/** A worker or helper process, with its stdout lines, stderr kept for errors. */
function start(cmd: string, args: string[], env: NodeJS.ProcessEnv, name: string): {
  child: ChildProcess;
  lines: AsyncIterator<string>;
  stderr: () => string;
  exited: Promise<number | null>;
} {
  const child = spawn(cmd, args, { env, stdio: ['pipe', 'pipe', 'pipe'], cwd: ROOT });
  children.add(child);
  let err = '';
  child.stderr!.on('data', (d: Buffer) => {
    if (process.env.SIGIL_BENCH_TEE) process.stderr.write(d);
    err += d.toString();
    if (err.length > 20000) err = err.slice(-20000);
  });
  const exited = new Promise<number | null>((r) =>
    child.on('exit', (code) => {
      children.delete(child);
      r(code);
    }),
  );
  if (process.env.SIGIL_BENCH_TEE) child.stdout!.on('data', (d: Buffer) => process.stderr.write(d));
  const lines = createInterface({ input: child.stdout! })[Symbol.asyncIterator]();
  return { child, lines, stderr: () => `${name}: ${err.trim().split('\n').slice(-15).join('\n')}`, exited };
}

async function nextJson(w: ReturnType<typeof start>, what: string): Promise<Record<string, unknown>> {
  for (;;) {
    const r = await w.lines.next();
    if (r.done) {
      await w.exited;
      throw new Error(`${what} ended without a result\n${w.stderr()}`);
    }
    const line = r.value.trim();
    if (line.startsWith('{')) return JSON.parse(line) as Record<string, unknown>;
  }
}

/** Cumulative user+system CPU seconds of a process and its live descendants (p11-kit server forks one per client). */
function treeCpuSeconds(pid: number): number {
  let total = cpuSeconds(pid);
  for (const child of childPids(pid)) total += treeCpuSeconds(child);
  return total;
}

function childPids(pid: number): number[] {
  const out: number[] = [];
  for (const tid of safeReaddir(`/proc/${pid}/task`)) {
    try {
      for (const c of readFileSync(`/proc/${pid}/task/${tid}/children`, 'utf8').trim().split(/\s+/)) if (c) out.push(Number(c));
    } catch {
      // The task ended.
    }
  }
  return out;
}

function safeReaddir(p: string): string[] {
  try {
    return readdirSync(p);
  } catch {
    return [];
  }
}

/** Runs workers that report `ready`, starts them together, and collects their results with CPU use. */
async function runWorkers(
  specs: Array<{ args: string[]; env: NodeJS.ProcessEnv; name: string }>,
  watch: Array<{ name: string; pid: number }>,
): Promise<{ results: WorkerResult[]; cpu: Record<string, number> }> {
  // The load generator is a Node process too: with Node's default young generation its own scavenges
  // (10-20 ms) land in the latencies it measures. A small young generation keeps its pauses short, so
  // the p99 reported is the daemon's, not the client's GC. SIGIL_BENCH_WORKER_FLAGS='' restores defaults.
  const flags = (process.env.SIGIL_BENCH_WORKER_FLAGS ?? '--max-semi-space-size=2').split(' ').filter(Boolean);
  const ws = specs.map((s) => start(process.execPath, [...flags, SELF, ...s.args], s.env, s.name));
  try {
    for (let i = 0; i < ws.length; i++) {
      const r = await nextJson(ws[i]!, specs[i]!.name);
      if (!r.ready) throw new Error(`${specs[i]!.name}: unexpected ${JSON.stringify(r)}`);
    }
    const pids = [...watch, ...ws.map((w, i) => ({ name: specs[i]!.name, pid: w.child.pid! }))];
    // Descendants exist only once clients have connected (p11-kit server forks per connection).
    const before = pids.map((p) => treeCpuSeconds(p.pid));
    const machine0 = machineBusySeconds();
    const t0 = performance.now();
    for (const w of ws) w.child.stdin!.write('go\n');
    const results = (await Promise.all(ws.map((w, i) => nextJson(w, specs[i]!.name)))) as unknown as WorkerResult[];
    const wall = (performance.now() - t0) / 1000;
    const cpu: Record<string, number> = {};
    pids.forEach((p, i) => {
      const key = p.name.replace(/#\d+$/, '');
      let now = treeCpuSeconds(p.pid);
      // A worker that already exited: its own count at the time it reported.
      if (Number.isNaN(now) && i >= watch.length) now = results[i - watch.length]!.cpuSeconds ?? NaN;
      cpu[key] = round2((cpu[key] ?? 0) + (now - before[i]!) / wall);
    });
    cpu.machine = round2((machineBusySeconds() - machine0) / wall);
    await Promise.race([Promise.all(ws.map((w) => w.exited)), new Promise((r) => setTimeout(r, 5000))]);
    return { results, cpu };
  } finally {
    for (const w of ws) if (w.child.exitCode === null) w.child.kill('SIGKILL');
  }
}

/** Merges worker results: signatures add up; latencies merge from the returned samples when present. */
function merge(results: WorkerResult[]): { sigsPerSec: number; p50: number | null; p99: number | null; errors: number; firstError?: string } {
  const sigsPerSec = results.reduce((s, r) => s + r.sigs / r.seconds, 0);
  const errors = results.reduce((s, r) => s + r.errors, 0);
  const firstError = results.find((r) => r.firstError)?.firstError;
  if (results.length === 1) return { sigsPerSec, p50: results[0]!.p50 ?? null, p99: results[0]!.p99 ?? null, errors, firstError };
  const all = Float64Array.from(results.flatMap((r) => r.latencies ?? []));
  const st = stats(all);
  return { sigsPerSec, p50: st.p50, p99: st.p99, errors, firstError };
}

function verifySamples(results: WorkerResult[], spki: Buffer, msgs: Buffer[]): string {
  const key: KeyObject = createPublicKey({ key: spki, format: 'der', type: 'spki' });
  let ok = 0;
  let bad = 0;
  for (const r of results) {
    for (const [i, sigB64] of r.samples) {
      const sig = Buffer.from(sigB64, 'base64');
      const good =
        r.encoding === 'rsa' ? verify('sha256', msgs[i]!, key, sig) : verify('sha256', msgs[i]!, { key, dsaEncoding: r.encoding }, sig);
      if (good) ok++;
      else bad++;
    }
  }
  if (ok + bad === 0) return 'none sampled';
  return bad === 0 ? `${ok}/${ok} ok` : `${bad}/${ok + bad} BAD`;
}

function round2(x: number): number {
  return Math.round(x * 100) / 100;
}

async function waitFor(cond: () => Promise<boolean> | boolean, ms: number, what: string, alive?: () => boolean): Promise<void> {
  const deadline = Date.now() + ms;
  for (;;) {
    if (await cond()) return;
    if (alive && !alive()) throw new Error(`${what}: the process exited`);
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function version(cmd: string, args: string[]): string {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8' }).trim().split('\n')[0]!;
  } catch {
    return 'unknown';
  }
}

async function orchestrate(): Promise<void> {
  const { values } = parseArgs({
    options: {
      seconds: { type: 'string', default: '5' },
      out: { type: 'string', default: 'bench/results/sign.json' },
      only: { type: 'string', default: 'a,b,c' },
      profile: { type: 'string' },
      'batch-size': { type: 'string', default: '128' },
      'batch-inflight': { type: 'string', default: '4' },
      'stream-window': { type: 'string', default: '256' },
      'rsa-inflight': { type: 'string', default: '16' },
      'rsa-batch-size': { type: 'string', default: '64' },
      channels: { type: 'string', default: '4' },
      sessions: { type: 'string', default: '8' },
      'sign-thread': { type: 'boolean', default: false },
      scenarios: { type: 'string' },
      'daemon-flags': { type: 'string' },
    },
  });
  const seconds = Number(values.seconds);
  const warmup = Math.min(1, seconds / 5);
  const only = new Set(values.only.split(','));
  const batchSize = Number(values['batch-size']);
  const batchInflight = Number(values['batch-inflight']);
  const streamWindow = Number(values['stream-window']);
  const rsaInflight = Number(values['rsa-inflight']);
  const rsaBatchSize = Number(values['rsa-batch-size']);
  const t0 = Date.now();

  const dir = await mkdtemp(join(tmpdir(), 'sigil-bench-'));
  let daemon: ReturnType<typeof start> | null = null;
  let p11kit: ReturnType<typeof start> | null = null;
  const onSignal = (): void => {
    for (const c of children) c.kill('SIGKILL');
    void rm(dir, { recursive: true, force: true }).finally(() => process.exit(130));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  // Last resort (an uncaught error, e.g. EPIPE when stdout is piped into `head`): finally blocks do not run then.
  process.once('exit', () => {
    for (const c of children) c.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });
  const scenarios: Scenario[] = [];
  const machine = {
    nproc: cpus().length,
    cpu: cpus()[0]?.model ?? 'unknown',
    node: process.version,
    softhsm: version('softhsm2-util', ['--version']),
    kernel: version('uname', ['-r']),
    p11kit: version('dpkg-query', ['-W', '-f', '${Version}', 'p11-kit']),
    grpcJs: JSON.parse(readFileSync(join(ROOT, 'node_modules/@grpc/grpc-js/package.json'), 'utf8')).version as string,
    pkcs11js: JSON.parse(readFileSync(join(ROOT, 'node_modules/pkcs11js/package.json'), 'utf8')).version as string,
  };
  let daemonRssMax = 0;
  let daemonRssReady = 0;
  let rssTimer: NodeJS.Timeout | null = null;
  let scenarioRss = 0;
  try {
    // A fresh token, an operator CA, and the daemon's config, all under `dir`.
    const token: SoftHsmToken = await initSoftHsmToken({ dir: join(dir, 'hsm'), label: 'bench' });
    const pki = await writeBenchPki(dir, 'sigil bench CA');
    const port = await freePort();
    const addr = `127.0.0.1:${port}`;
    const config = {
      mode: 'development',
      listen: addr,
      tls: { certFile: pki.serverCert, keyFile: pki.serverKey, clientCaFile: pki.ca },
      auth: { roles: { admin: ['cn:bench-admin'], signer: ['cn:bench-signer'] } },
      store: { sqlite: { path: join(dir, 'sigil.db') } },
      backends: {
        softhsm: { type: 'pkcs11', module: token.module, token: token.label, pinFile: token.pinFile, sessions: Number(values.sessions), signThread: values['sign-thread'] === true, softhsmConf: token.conf },
      },
      defaultBackend: 'softhsm',
      log: { level: 'warn' },
    };
    const configFile = await writePrivate(dir, 'config.yaml', stringify(config));

    // The daemon, as users run it.
    const nodeFlags = [
      ...(values.profile ? ['--cpu-prof', '--cpu-prof-dir', resolve(values.profile)] : []),
      ...(values['daemon-flags'] ?? '').split(' ').filter(Boolean),
    ];
    if (values.profile) await mkdir(resolve(values.profile), { recursive: true });
    daemon = start(process.execPath, [...nodeFlags, join(ROOT, 'bin/sigild.js'), 'serve', '--config', configFile], { ...process.env }, 'sigild');
    const daemonPid = daemon.child.pid!;
    rssTimer = setInterval(() => {
      const r = rssMb(daemonPid);
      if (r > daemonRssMax) daemonRssMax = r;
      if (r > scenarioRss) scenarioRss = r;
    }, 100);
    const admin = connect({ addr, ca: pki.ca, cert: pki.adminCert, key: pki.adminKey });
    const d = daemon;
    await waitFor(
      () => rpc.adminListKeys(admin, { prefix: '' }).then(() => true, () => false),
      20000,
      'sigild to answer',
      () => d.child.exitCode === null,
    );
    const ecKey = await rpc.createKey(admin, { name: 'bench/ec', algorithm: Algorithm.ECDSA_P256_SHA256, backend: '' });
    const rsaKey = await rpc.createKey(admin, { name: 'bench/rsa', algorithm: Algorithm.RSA_PKCS1_SHA256, backend: '' });
    const signerClients = connect({ addr, ca: pki.ca, cert: pki.signerCert, key: pki.signerKey });
    const ecPub = (await rpc.getPublicKey(signerClients, { key: 'bench/ec' })).spkiDer;
    const rsaPub = (await rpc.getPublicKey(signerClients, { key: 'bench/rsa' })).spkiDer;
    signerClients.close();
    admin.close();
    const labelOf = (k: typeof ecKey): string => attrText(parseKeyUri(k.key!.versions[0]!.uri), 'object')!;
    const ecLabel = labelOf(ecKey);
    const rsaLabel = labelOf(rsaKey);
    const { msgs } = messagePool();
    daemonRssReady = rssMb(daemonPid);
    process.stderr.write(`sigild ready, pid ${daemonPid}, RSS ${daemonRssReady.toFixed(1)} MB\n`);
    if (process.env.SIGIL_BENCH_PAUSE) await new Promise((r) => setTimeout(r, Number(process.env.SIGIL_BENCH_PAUSE) * 1000));
    const hsmEnv = { ...process.env, SOFTHSM2_CONF: token.conf };
    const p11Args = (module: string, keyLabel: string, alg: 'ec' | 'rsa', inflight = 1): string[] => [
      '--role', 'p11', '--module', module, '--label', token.label, '--pin-file', token.pinFile,
      '--key-label', keyLabel, '--alg', alg, '--seconds', String(seconds), '--warmup', String(warmup), '--inflight', String(inflight),
    ];
    const log = (s: Scenario): void => {
      scenarios.push(s);
      process.stderr.write(`  ${s.id.padEnd(16)} ${fmtInt(s.sigsPerSec).padStart(8)} sigs/s  p50 ${fmtMs(s.p50)}  p99 ${fmtMs(s.p99)}  verify ${s.verified}  cpu ${JSON.stringify(s.cpu ?? {})}\n`);
    };
    const watchDaemon = [{ name: 'sigild', pid: daemonPid }];

    // (a) the raw in-process limit, in child processes with the daemon idle.
    if (only.has('a')) {
      process.stderr.write('(a) raw pkcs11js, one thread\n');
      const w = start(
        process.execPath,
        [SELF, '--role', 'raw', '--module', token.module, '--conf', token.conf, '--label', token.label, '--pin-file', token.pinFile, '--seconds', String(seconds)],
        hsmEnv,
        'raw',
      );
      const res = (await nextJson(w, 'raw')) as { rates: Array<{ alg: string; sigsPerSec: number }> };
      await w.exited;
      const ec = res.rates.find((r) => r.alg === 'ECDSA_P256')!;
      const rsa = res.rates.find((r) => r.alg === 'RSA_PKCS1_2048')!;
      log({ id: 'raw', group: 'a', title: '(a) raw pkcs11js loop, 1 thread (bench/raw-pkcs11.ts)', alg: 'ECDSA P-256', sigsPerSec: ec.sigsPerSec, p50: null, p99: null, errors: 0, verified: 'n/a (reused loop)' });
      log({ id: 'raw-rsa', group: 'a', title: '(a) raw pkcs11js loop, 1 thread (bench/raw-pkcs11.ts)', alg: 'RSA-2048', sigsPerSec: rsa.sigsPerSec, p50: null, p99: null, errors: 0, verified: 'n/a (reused loop)' });
      const same = await runWorkers([{ args: p11Args(token.module, ecLabel, 'ec'), env: hsmEnv, name: 'raw' }], watchDaemon);
      const m = merge(same.results);
      log({
        id: 'raw-samekey', group: 'a', title: "(a') raw loop on sigild's own key object, per-call timing", alg: 'ECDSA P-256',
        sigsPerSec: m.sigsPerSec, p50: m.p50, p99: m.p99, errors: m.errors, verified: verifySamples(same.results, ecPub, msgs), cpu: same.cpu,
      });
    }

    // (b) the peer: p11-kit server over a unix socket, same token, same key object.
    if (only.has('b')) {
      process.stderr.write('(b) p11-kit server over a unix socket\n');
      const sock = join(dir, 'p11kit.sock');
      p11kit = start('p11-kit', ['server', '-f', '--provider', token.module, '-n', sock, `pkcs11:token=${token.label}`], hsmEnv, 'p11-kit server');
      const pk = p11kit;
      await waitFor(() => existsSync(sock), 10000, 'p11-kit server socket', () => pk.child.exitCode === null);
      const clientEnv = { ...process.env, P11_KIT_SERVER_ADDRESS: `unix:path=${sock}` };
      const watch = [...watchDaemon, { name: 'p11-kit', pid: p11kit.child.pid! }];
      const variants = [
        { id: 'p11kit-1', procs: 1, inflight: 1, title: '(b) p11-kit server, 1 in flight (sync loop)' },
        { id: 'p11kit-4-async', procs: 1, inflight: 4, title: '(b) p11-kit server, 4 in flight (1 client process, 4 sessions, C_SignAsync)' },
        { id: 'p11kit-4', procs: 4, inflight: 1, title: '(b) p11-kit server, 4 in flight (4 client processes, sync loops)' },
      ];
      for (const v of variants) {
        const r = await runWorkers(
          Array.from({ length: v.procs }, (_, i) => ({ args: p11Args(P11KIT_CLIENT, ecLabel, 'ec', v.inflight), env: clientEnv, name: `client#${i}` })),
          watch,
        );
        const m = merge(r.results);
        log({
          id: v.id, group: 'b', title: v.title, alg: 'ECDSA P-256',
          sigsPerSec: m.sigsPerSec, p50: m.p50, p99: m.p99, errors: m.errors, verified: verifySamples(r.results, ecPub, msgs), cpu: r.cpu,
        });
      }
      p11kit.child.kill('SIGTERM');
      await p11kit.exited;
      p11kit = null;
    }

    // (c) sigild as a subprocess, the load generator in another.
    if (only.has('c')) {
      process.stderr.write('(c) sigild, load generator in another process\n');
      const channels = Number(values.channels);
      const loadArgs = (keyName: string, mode: LoadArgs['mode'], inflight: number, batch = 0, conns = 1): string[] => [
        '--role', 'load', '--addr', addr, '--ca', pki.ca, '--cert', pki.signerCert, '--key', pki.signerKey,
        '--key-name', keyName, '--mode', mode, '--inflight', String(inflight), '--batch', String(batch), '--channels', String(conns),
        '--seconds', String(seconds), '--warmup', String(warmup),
      ];
      // `procs` > 1 splits the in-flight requests over that many load generator processes, one connection each.
      const runs: Array<{ id: string; title: string; alg: Scenario['alg']; args: string[]; pub: Buffer; procs?: number }> = [
        { id: 'unary-1', title: '(c) sigild Sign, 1 in flight', alg: 'ECDSA P-256', args: loadArgs('bench/ec', 'unary', 1), pub: ecPub },
        { id: 'unary-32-1conn', title: '(c) sigild Sign, 32 in flight on 1 connection', alg: 'ECDSA P-256', args: loadArgs('bench/ec', 'unary', 32), pub: ecPub },
        {
          id: 'unary-32', title: `(c) sigild Sign, 32 in flight over ${channels} connections`, alg: 'ECDSA P-256',
          args: loadArgs('bench/ec', 'unary', 32, 0, channels), pub: ecPub,
        },
        {
          id: 'unary-32-h2', title: `(c) sigild Sign, 32 in flight over ${channels} connections, lean HTTP/2 client`, alg: 'ECDSA P-256',
          args: loadArgs('bench/ec', 'h2unary', 32, 0, channels), pub: ecPub,
        },
        {
          // The client topology of the p11kit-4 peer row: four client processes, so both sides may use both cores.
          id: 'unary-32-h2-4proc', title: '(c) sigild Sign, 32 in flight from 4 client processes (8 each, 1 connection each), lean HTTP/2 client', alg: 'ECDSA P-256',
          args: loadArgs('bench/ec', 'h2unary', 8, 0, 1), pub: ecPub, procs: 4,
        },
        {
          id: 'batch', title: `(c) sigild SignBatch, ${batchSize} per batch, ${batchInflight} batches in flight`, alg: 'ECDSA P-256',
          args: loadArgs('bench/ec', 'batch', batchInflight, batchSize), pub: ecPub,
        },
        { id: 'stream', title: `(c) sigild SignStream, window ${streamWindow}`, alg: 'ECDSA P-256', args: loadArgs('bench/ec', 'stream', streamWindow), pub: ecPub },
        {
          id: 'rsa-unary', title: `(c) sigild Sign RSA-2048, ${rsaInflight} in flight over ${channels} connections`, alg: 'RSA-2048',
          args: loadArgs('bench/rsa', 'unary', rsaInflight, 0, channels), pub: rsaPub,
        },
        {
          // RSA through SignBatch: the per-request gRPC cost is paid once per batch, so both cores go to RSA.
          // 64 per batch keeps the thread pool busy across batch boundaries (16 per batch: 1.28-1.55 x raw).
          id: 'rsa-batch', title: `(c) sigild SignBatch RSA-2048, ${rsaBatchSize} per batch, 2 batches in flight`, alg: 'RSA-2048',
          args: loadArgs('bench/rsa', 'batch', 2, rsaBatchSize), pub: rsaPub,
        },
      ];
      const pick = values.scenarios ? new Set(values.scenarios.split(',')) : null;
      for (const s of runs) {
        if (pick && !pick.has(s.id)) continue;
        scenarioRss = 0;
        const specs = Array.from({ length: s.procs ?? 1 }, (_, i) => ({ args: s.args, env: { ...process.env }, name: s.procs ? `loadgen#${i}` : 'loadgen' }));
        const r = await runWorkers(specs, watchDaemon);
        const m = merge(r.results);
        log({
          id: s.id, group: 'c', title: s.title, alg: s.alg, sigsPerSec: m.sigsPerSec, p50: m.p50, p99: m.p99, errors: m.errors,
          verified: verifySamples(r.results, s.pub, msgs), cpu: r.cpu, daemonRssMb: Math.round(scenarioRss),
          note: s.id === 'batch' ? 'latency is per batch' : m.firstError,
        });
      }
    }
    if (rssTimer) clearInterval(rssTimer);
    rssTimer = null;

    // Stop the daemon gracefully (a CPU profile is written on exit).
    daemon.child.kill('SIGTERM');
    const code = await Promise.race([daemon.exited, new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), 15000))]);
    if (code === 'timeout') {
      daemon.child.kill('SIGKILL');
      process.stderr.write('sigild did not stop within 15 s of SIGTERM; killed\n');
    }
    daemon = null;

    const summary = evaluate(scenarios, daemonRssMax);
    const report = {
      date: new Date().toISOString(),
      command: `node bench/sign.ts ${process.argv.slice(2).join(' ')}`.trim(),
      secondsPerScenario: seconds,
      machine,
      settings: { batchSize, batchInflight, streamWindow, rsaInflight, channels: Number(values.channels), sessions: Number(values.sessions), signThread: values['sign-thread'] === true, daemonFlags: values['daemon-flags'] ?? '' },
      scenarios,
      daemonRssReadyMb: round2(daemonRssReady),
      daemonRssMaxMb: round2(daemonRssMax),
      floors: summary.floors,
      wallSeconds: Math.round((Date.now() - t0) / 1000),
    };
    const out = resolve(ROOT, values.out);
    await mkdir(dirname(out), { recursive: true });
    await writeFile(out, JSON.stringify(report, null, 2) + '\n');
    process.stdout.write(markdown(report));
    process.stdout.write(`\nJSON: ${out}\n`);
    const bad = scenarios.filter((s) => s.errors > 0 || s.verified.includes('BAD'));
    if (bad.length > 0) {
      process.stderr.write(`FAILED: errors or bad signatures in ${bad.map((s) => s.id).join(', ')}\n`);
      process.exitCode = 1;
    }
  } catch (err) {
    if (daemon) process.stderr.write(`${daemon.stderr()}\n`);
    throw err;
  } finally {
    if (rssTimer) clearInterval(rssTimer);
    for (const c of children) c.kill('SIGKILL');
    await rm(dir, { recursive: true, force: true });
  }
}

function fmtInt(x: number): string {
  return Number.isFinite(x) ? Math.round(x).toLocaleString('en-US') : '-';
}

function fmtMs(x: number | null): string {
  return x === null || !Number.isFinite(x) ? '-' : `${x < 1 ? x.toFixed(3) : x < 10 ? x.toFixed(2) : x.toFixed(1)} ms`;
}

interface Floor {
  name: string;
  measured: string;
  required: string;
  met: boolean | null;
}

function evaluate(s: Scenario[], rss: number): { floors: Floor[] } {
  const by = (id: string): Scenario | undefined => s.find((x) => x.id === id);
  const raw = by('raw');
  const rawRsa = by('raw-rsa');
  const peer = [by('p11kit-1'), by('p11kit-4-async'), by('p11kit-4')].filter((x) => x !== undefined).sort((a, b) => b.sigsPerSec - a.sigsPerSec)[0];
  const floors: Floor[] = [];
  const bestBulk = [by('batch'), by('stream')].filter((x) => x !== undefined).sort((a, b) => b.sigsPerSec - a.sigsPerSec)[0];
  if (raw && bestBulk) {
    const r = bestBulk.sigsPerSec / raw.sigsPerSec;
    floors.push({ name: `SignStream or SignBatch >= 0.5 x raw (aim 0.7)`, measured: `${bestBulk.id} ${r.toFixed(2)} x raw`, required: '>= 0.50', met: r >= 0.5 });
  }
  const p1 = by('p11kit-1');
  const p4async = by('p11kit-4-async');
  const p4proc = by('p11kit-4');
  for (const u32 of [by('unary-32'), by('unary-32-1conn'), by('unary-32-h2'), by('unary-32-h2-4proc')]) {
    if (u32 === undefined) continue;
    if (peer) {
      const r = u32.sigsPerSec / peer.sigsPerSec;
      floors.push({ name: `${u32.id} >= p11-kit peer (best variant)`, measured: `${r.toFixed(2)} x ${peer.id}`, required: '>= 1.00', met: r >= 1 });
    }
    // The same client topology on both sides: one client process against p11kit-4-async, four against p11kit-4.
    const twin = u32.id.endsWith('-4proc') ? p4proc : p4async;
    if (twin && twin !== peer) {
      const r = u32.sigsPerSec / twin.sigsPerSec;
      floors.push({ name: `(context) ${u32.id} vs the peer with the same client processes`, measured: `${r.toFixed(2)} x ${twin.id}`, required: '-', met: null });
    }
    if (p1 && p1 !== peer) {
      const r = u32.sigsPerSec / p1.sigsPerSec;
      floors.push({ name: `(context) ${u32.id} vs p11-kit 1 in flight`, measured: `${r.toFixed(2)} x p11kit-1`, required: '-', met: null });
    }
    floors.push({ name: `${u32.id} p99 < 20 ms`, measured: fmtMs(u32.p99), required: '< 20 ms', met: (u32.p99 ?? Infinity) < 20 });
  }
  // The RSA floor asks for both cores on RSA; the better of sigild's unary and batch paths counts, both are shown.
  const rsaRuns = [by('rsa-unary'), by('rsa-batch')].filter((x): x is Scenario => x !== undefined);
  if (rsaRuns.length && rawRsa) {
    const best = rsaRuns.reduce((a, b) => (b.sigsPerSec > a.sigsPerSec ? b : a));
    for (const x of rsaRuns) {
      if (x !== best) floors.push({ name: `(context) ${x.id} vs single-thread SoftHSM`, measured: `${(x.sigsPerSec / rawRsa.sigsPerSec).toFixed(2)} x raw-rsa`, required: '-', met: null });
    }
    const r = best.sigsPerSec / rawRsa.sigsPerSec;
    floors.push({ name: `RSA-2048 >= 1.4 x single-thread SoftHSM (aim 1.7), best sigild path: ${best.id}`, measured: `${r.toFixed(2)} x raw-rsa`, required: '>= 1.40', met: r >= 1.4 });
  }
  if (s.some((x) => x.group === 'c')) floors.push({ name: 'daemon RSS < 150 MB', measured: `${rss.toFixed(1)} MB`, required: '< 150 MB', met: rss < 150 });
  return { floors };
}

function markdown(r: {
  scenarios: Scenario[];
  floors: Floor[];
  machine: Record<string, unknown>;
  command: string;
  daemonRssMaxMb: number;
  daemonRssReadyMb: number;
}): string {
  const by = (id: string): Scenario | undefined => r.scenarios.find((x) => x.id === id);
  const raw = by('raw');
  const rawRsa = by('raw-rsa');
  const peer = [by('p11kit-1'), by('p11kit-4-async'), by('p11kit-4')].filter((x) => x !== undefined).sort((a, b) => b.sigsPerSec - a.sigsPerSec)[0];
  const ratio = (s: Scenario, base: Scenario | undefined): string => (base ? `${(s.sigsPerSec / base.sigsPerSec).toFixed(2)}` : '-');
  const lines = [
    `| scenario | alg | sigs/s | p50 | p99 | x (a) raw | x (b) peer | verified | CPU cores busy (per process, machine) | CPU us/sig sigild / loadgen |`,
    `|---|---|---:|---:|---:|---:|---:|---|---|---|`,
  ];
  for (const s of r.scenarios) {
    const base = s.alg === 'RSA-2048' ? rawRsa : raw;
    const cpu = s.cpu ? Object.entries(s.cpu).filter(([k, v]) => !(k === 'sigild' && s.group !== 'c' && v < 0.02)).map(([k, v]) => `${k} ${v.toFixed(2)}`).join(', ') : '-';
    const perSig = s.group === 'c' && s.cpu ? `${Math.round((s.cpu.sigild! * 1e6) / s.sigsPerSec)} / ${Math.round((s.cpu.loadgen! * 1e6) / s.sigsPerSec)}` : '-';
    lines.push(
      `| ${s.title} | ${s.alg} | ${fmtInt(s.sigsPerSec)} | ${fmtMs(s.p50)} | ${fmtMs(s.p99)} | ${ratio(s, base)} | ${s.alg === 'RSA-2048' ? '-' : ratio(s, peer)} | ${s.verified} | ${cpu} | ${perSig} |`,
    );
  }
  lines.push('', `Daemon RSS: ${r.daemonRssReadyMb.toFixed(1)} MB once ready (keys created), ${r.daemonRssMaxMb.toFixed(1)} MB max over the run (VmRSS, sampled every 100 ms)`, '', '| floor | measured | required | met |', '|---|---|---|---|');
  for (const f of r.floors) lines.push(`| ${f.name} | ${f.measured} | ${f.required} | ${f.met === null ? '-' : f.met ? 'yes' : '**no**'} |`);
  return lines.join('\n') + '\n';
}

// ---------------------------------------------------------------------------------------------------

if (import.meta.main) {
  const argv = process.argv.slice(2);
  const role = argv[argv.indexOf('--role') + 1];
  if (argv.includes('--role')) {
    const v = new Map<string, string>();
    for (let i = 0; i + 1 < argv.length; i += 2) v.set(argv[i]!.replace(/^--/, ''), argv[i + 1]!);
    const s = (k: string): string => {
      const x = v.get(k);
      if (x === undefined) throw new Error(`worker argument --${k} is missing`);
      return x;
    };
    if (role === 'p11') {
      await p11Worker({
        module: s('module'), label: s('label'), pinFile: s('pin-file'), keyLabel: s('key-label'), alg: s('alg') as 'ec' | 'rsa',
        seconds: Number(s('seconds')), warmup: Number(s('warmup')), inflight: Number(s('inflight')),
      });
    } else if (role === 'load') {
      await loadWorker({
        addr: s('addr'), ca: s('ca'), cert: s('cert'), key: s('key'), keyName: s('key-name'), mode: s('mode') as LoadArgs['mode'],
        inflight: Number(s('inflight')), batch: Number(s('batch')), channels: Number(s('channels')), seconds: Number(s('seconds')), warmup: Number(s('warmup')),
      });
    } else if (role === 'raw') {
      await rawWorker({ module: s('module'), conf: s('conf'), label: s('label'), pinFile: s('pin-file'), seconds: Number(s('seconds')) });
    } else {
      throw new Error(`unknown role ${role}`);
    }
  } else {
    await orchestrate();
  }
}
