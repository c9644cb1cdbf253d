/**
 * What a unary gRPC call costs before any signing: sigild's own gRPC server (`src/server/h2/`, mutual TLS,
 * the same framing, limits and protobuf codec as the daemon) with a Sign handler that answers a fixed
 * signature at once, driven by the same load generator as bench/sign.ts at 32 in flight. It measures the
 * floor under every sigild unary row: CPU per call of the server and of the client, with nothing else
 * (no SoftHSM, no key lookup, no authorization, no audit entry).
 *
 *   node bench/transport.ts [--seconds N] [--out bench/results/transport.json]
 *
 * Each row checks its sampled answers against the fixed signature and fails on any RPC error.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm, writeFile, mkdir } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { GrpcH2Server } from '../src/server/h2/server.ts';
import { Algorithm, SignerService, type SignRequest, type SignResponse } from '../src/gen/sigil/v1/signer.ts';
import { writeBenchPki } from './sigild-process.ts';
import { cpuSeconds, machineBusySeconds } from './measure.ts';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const SELF = fileURLToPath(import.meta.url);
/** The answer of every call: the size of a DER ECDSA P-256 signature. */
const FIXED = Buffer.alloc(71, 0x5a);

interface Row {
  id: string;
  title: string;
  mode: 'h2unary' | 'unary';
  processes: number;
}

const ROWS: Row[] = [
  { id: 'noop-h2', title: 'no-op Sign, 32 in flight over 4 connections, lean HTTP/2 client', mode: 'h2unary', processes: 1 },
  { id: 'noop-h2-4proc', title: 'no-op Sign, 32 in flight from 4 client processes, lean HTTP/2 client', mode: 'h2unary', processes: 4 },
  { id: 'noop-grpcjs', title: 'no-op Sign, 32 in flight over 4 connections, grpc-js client', mode: 'unary', processes: 1 },
];

interface Result {
  id: string;
  title: string;
  callsPerSec: number;
  p50: number;
  p99: number;
  serverCores: number;
  clientCores: number;
  machineCores: number;
  serverUsPerCall: number;
  clientUsPerCall: number;
}

/** The server role: a GrpcH2Server with the Signer service, Sign answering FIXED; prints its port. */
async function serve(cert: string, key: string, ca: string): Promise<void> {
  const server = new GrpcH2Server({ cert: readFileSync(cert), key: readFileSync(key), clientCa: readFileSync(ca), maxReceiveMessageBytes: 4 << 20, maxSendMessageBytes: 4 << 20 });
  const answer: SignResponse = { signature: FIXED, keyVersion: 'noop@1', algorithm: Algorithm.ECDSA_P256_SHA256 };
  const unimplemented = (): never => {
    throw new Error('not part of this benchmark');
  };
  server.addService(SignerService, {
    sign: (_call: unknown, cb: (err: null, res: SignResponse) => void) => cb(null, answer),
    signBatch: unimplemented,
    signStream: unimplemented,
    getPublicKey: unimplemented,
    listKeys: unimplemented,
  });
  process.stdout.write(`${await server.bind('127.0.0.1', 0)}\n`);
}

/** A child process with its stdout as lines. */
function child(args: string[]): { proc: ChildProcess; next: () => Promise<string> } {
  const proc = spawn(process.execPath, ['--max-semi-space-size=2', ...args], { cwd: ROOT, stdio: ['pipe', 'pipe', 'inherit'] });
  const lines = createInterface({ input: proc.stdout! })[Symbol.asyncIterator]();
  return {
    proc,
    next: async () => {
      const r = await lines.next();
      if (r.done) throw new Error(`${args.join(' ')} ended early`);
      return r.value.trim();
    },
  };
}

async function runRow(row: Row, addr: string, pki: { ca: string; signerCert: string; signerKey: string }, serverPid: number, seconds: number): Promise<Result> {
  const workers = Array.from({ length: row.processes }, () =>
    child([
      join(ROOT, 'bench/sign.ts'), '--role', 'load', '--addr', addr, '--ca', pki.ca, '--cert', pki.signerCert, '--key', pki.signerKey,
      '--key-name', 'noop', '--mode', row.mode, '--inflight', String(32 / row.processes), '--batch', '1',
      '--channels', String(row.processes === 1 ? 4 : 1), '--seconds', String(seconds), '--warmup', '1',
    ]),
  );
  try {
    for (const w of workers) if (!(await w.next()).includes('"ready"')) throw new Error('a load worker did not get ready');
    const server0 = cpuSeconds(serverPid, false);
    const clients0 = workers.reduce((a, w) => a + cpuSeconds(w.proc.pid!, false), 0);
    const machine0 = machineBusySeconds();
    const t0 = performance.now();
    for (const w of workers) w.proc.stdin!.write('go\n');
    const results = await Promise.all(workers.map(async (w) => JSON.parse(await w.next()) as { sigs: number; errors: number; firstError?: string; p50: number; p99: number; samples: Array<[number, string]>; cpuSeconds: number; latencies?: number[] }));
    const wall = (performance.now() - t0) / 1000;
    const serverCores = (cpuSeconds(serverPid, false) - server0) / wall;
    const machineCores = (machineBusySeconds() - machine0) / wall;
    const calls = results.reduce((a, r) => a + r.sigs, 0);
    const errors = results.reduce((a, r) => a + r.errors, 0);
    if (errors > 0) throw new Error(`${row.id}: ${errors} calls failed, e.g. ${results.find((r) => r.firstError)?.firstError}`);
    for (const r of results) for (const [, sig] of r.samples) if (sig !== FIXED.toString('base64')) throw new Error(`${row.id}: an answer was not the fixed signature`);
    if (results.every((r) => r.samples.length === 0)) throw new Error(`${row.id}: no answer was sampled`);
    // A worker reports its CPU total since it started (it may exit before /proc is read): less what it had used by `go`.
    const clientCores = (results.reduce((a, r) => a + r.cpuSeconds, 0) - clients0) / wall;
    const rate = calls / wall;
    // Latency: the worst worker's percentiles (a one-process row has one worker).
    return {
      id: row.id,
      title: row.title,
      callsPerSec: Math.round(rate),
      p50: Math.max(...results.map((r) => r.p50)),
      p99: Math.max(...results.map((r) => r.p99)),
      serverCores: round2(serverCores),
      clientCores: round2(clientCores),
      machineCores: round2(machineCores),
      serverUsPerCall: Math.round((serverCores * 1e6) / rate),
      clientUsPerCall: Math.round((clientCores * 1e6) / rate),
    };
  } finally {
    for (const w of workers) w.proc.kill();
  }
}

const round2 = (x: number): number => Math.round(x * 100) / 100;

async function orchestrate(): Promise<void> {
  const { values } = parseArgs({ options: { seconds: { type: 'string', default: '5' }, out: { type: 'string', default: join(ROOT, 'bench/results/transport.json') } } });
  const seconds = Number(values.seconds);
  const dir = await mkdtemp(join(tmpdir(), 'sigil-bench-transport-'));
  let server: ReturnType<typeof child> | undefined;
  try {
    const pki = await writeBenchPki(dir, 'sigil transport bench CA');
    server = child([SELF, '--role', 'serve', pki.serverCert, pki.serverKey, pki.ca]);
    const addr = `127.0.0.1:${await server.next()}`;
    const out: Result[] = [];
    for (const row of ROWS) {
      const r = await runRow(row, addr, pki, server.proc.pid!, seconds);
      out.push(r);
      console.log(`${r.id.padEnd(14)} ${r.callsPerSec.toLocaleString('en-US').padStart(7)} calls/s  p50 ${r.p50.toFixed(2)} ms  p99 ${r.p99.toFixed(2)} ms  µs/call server ${r.serverUsPerCall} client ${r.clientUsPerCall}  cores server ${r.serverCores} client ${r.clientCores} machine ${r.machineCores}`);
    }
    await mkdir(dirname(values.out!), { recursive: true });
    await writeFile(values.out!, JSON.stringify({ command: `node bench/transport.ts --seconds ${seconds}`, date: new Date().toISOString(), node: process.version, rows: out }, null, 2) + '\n');
    console.log(`\n| row | calls/s | p50 | p99 | µs of CPU per call: server / client | cores busy: server, client, machine |\n|---|---:|---:|---:|---|---|`);
    for (const r of out) console.log(`| ${r.title} | ${r.callsPerSec.toLocaleString('en-US')} | ${r.p50.toFixed(2)} ms | ${r.p99.toFixed(2)} ms | ${r.serverUsPerCall} / ${r.clientUsPerCall} | ${r.serverCores}, ${r.clientCores}, ${r.machineCores} |`);
  } finally {
    server?.proc.kill();
    await rm(dir, { recursive: true, force: true });
  }
}

if (import.meta.main) {
  const argv = process.argv.slice(2);
  if (argv[0] === '--role' && argv[1] === 'serve') await serve(argv[2]!, argv[3]!, argv[4]!);
  else await orchestrate();
}
