/**
 * Backend benchmark (issue 5): what sigild adds over calling each backend directly, ECDSA P-256 over a
 * SHA-256 digest, at 1 and 16 requests in flight.
 *
 *   node bench/backends.ts [--seconds 4] [--out bench/results/backends.json]
 *
 * One temp dir holds everything: the AWS KMS fake and the GCP KMS fake (each in its own child process, so
 * the service costs the same CPU whoever calls it), a swtpm, a SoftHSM token, an operator CA with admin and
 * signer certificates, and sigild as users run it (bin/sigild.js serve) with backends aws (awskms -> fake),
 * gcp (gcpkms -> fake), tpm (swtpm) and softhsm (default). Keys are made through the Admin RPC.
 *
 * Per backend, each scenario a closed loop for `--seconds` after a short warm-up:
 *   aws   (a) KMSClient.send(SignCommand) with the backend's own client options  (b) sigild unary Sign
 *   gcp   (a) KeyManagementServiceClient.asymmetricSign with CRC32C, backend's options  (b) sigild unary Sign
 *   tpm   (b) sigild unary Sign; then sigild stops (tpm2-tools cannot share swtpm with it), and on the same
 *         key (c) the tpm backend in-process, (a) tpm2_sign, one process per signature (16 in flight under
 *         flock(1): swtpm has no resource manager), and a short unserialised 16-in-flight probe whose failures
 *         are reported, not fatal
 *   softhsm  (b) sigild unary Sign only, for context (bench/sign.ts measures it against raw pkcs11js)
 * Overhead = sigild p50 - direct p50 (ms); ratio = sigild sigs/s / direct sigs/s. Samples of every scenario's
 * signatures are verified with node:crypto against the public key from GetPublicKey; a bad signature or any
 * failed call ends the run with exit 1. Markdown on stdout, JSON in --out.
 *
 * The same file is the fakes' host process (`--role fake-aws|fake-gcp`).
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { createHash, createPublicKey, verify, type KeyObject } from 'node:crypto';
import { readFileSync, rmSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { cpus, loadavg, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { SignCommand } from '@aws-sdk/client-kms';
import { KeyManagementServiceClient } from '@google-cloud/kms';
import { credentials, type ServiceError } from '@grpc/grpc-js';
import { stringify } from 'yaml';
import { connect, rpc } from '../src/cli/client.ts';
import { initSoftHsmToken } from '../src/dev/softhsm.ts';
import { Algorithm, SignerClient, type SignResponse } from '../src/gen/sigil/v1/signer.ts';
import { silentLogger } from '../src/log.ts';
import { createKmsClient } from '../src/signers/awskms/client.ts';
import { awsKmsConfigSchema } from '../src/signers/awskms/config.ts';
import { parseAwsKmsUri } from '../src/signers/awskms/key-uri.ts';
import { crc32c } from '../src/signers/gcpkms/crc32c.ts';
import { tpmConfigSchema } from '../src/signers/tpm/config.ts';
import { open as openTpm } from '../src/signers/tpm/index.ts';
import { startSwtpm, tpmKeyAuth, type Swtpm } from '../test/helpers/swtpm.ts';
import { spawnSigild, writeBenchPki, writePrivate, type SigildProcess } from './sigild-process.ts';
import { childPidNamed, cpuSeconds, freePort, machineBusySeconds, percentile } from './measure.ts';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const SELF = fileURLToPath(import.meta.url);
const POOL = 256;
const REGION = 'eu-west-1';
const AWS_CREDS = { accessKeyId: 'AKIASIGILBENCHFAKE01', secretAccessKey: 'bench-dummy-secret-not-a-credential' };
const GCP = { project: 'sigil-bench', location: 'global', keyRing: 'bench' };
const TIMEOUT_MS = 5000;
const SAMPLES = 64;

// ---------------------------------------------------------------------------------------------------
// Fake hosts: one child process per fake, alive until its stdin closes (so a killed parent leaves none).

async function fakeRole(kind: 'aws' | 'gcp'): Promise<void> {
  let stop: () => Promise<void>;
  if (kind === 'aws') {
    const { startAwsKmsFake } = await import('../test/fakes/aws-kms.ts');
    const fake = await startAwsKmsFake({ ...AWS_CREDS, region: REGION });
    // The fake records every request; a benchmark makes tens of thousands of them.
    setInterval(() => fake.requests.splice(0, fake.requests.length), 1000).unref();
    stop = () => fake.stop();
    process.stdout.write(JSON.stringify({ endpoint: fake.endpoint, port: fake.port }) + '\n');
  } else {
    const { startGcpKmsFake } = await import('../test/fakes/gcp-kms.ts');
    const fake = await startGcpKmsFake();
    stop = () => fake.stop();
    process.stdout.write(JSON.stringify({ port: fake.port }) + '\n');
  }
  process.stdin.resume();
  process.stdin.once('close', () => void stop().finally(() => process.exit(0)));
}

interface FakeProcess {
  child: ChildProcess;
  info: { endpoint?: string; port: number };
  stop(): Promise<void>;
}

async function startFake(kind: 'aws' | 'gcp'): Promise<FakeProcess> {
  const child = spawn(process.execPath, [SELF, '--role', `fake-${kind}`], { cwd: ROOT, stdio: ['pipe', 'pipe', 'pipe'], env: process.env });
  children.add(child);
  let err = '';
  child.stderr!.on('data', (d: Buffer) => (err = (err + d.toString()).slice(-5000)));
  const exited = new Promise<void>((r) => child.once('exit', () => (children.delete(child), r())));
  const line = await new Promise<string>((res, rej) => {
    const rl = createInterface({ input: child.stdout! });
    rl.once('line', (l) => res(l));
    child.once('exit', (code) => rej(new Error(`fake-${kind} exited with ${code}: ${err}`)));
  });
  return {
    child,
    info: JSON.parse(line) as FakeProcess['info'],
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.stdin!.end();
      const t = setTimeout(() => child.kill('SIGKILL'), 3000);
      await exited;
      clearTimeout(t);
    },
  };
}

// ---------------------------------------------------------------------------------------------------
// Measurement: closed loops, latency statistics, CPU per process, signature samples.

/** 256 fixed messages and their SHA-256 digests; signatures are verified over the message. */
function messagePool(): { msgs: Buffer[]; digests: Buffer[] } {
  const msgs: Buffer[] = [];
  const digests: Buffer[] = [];
  for (let i = 0; i < POOL; i++) {
    const m = createHash('sha256').update(`sigil-backend-bench-${i}`).digest();
    msgs.push(m);
    digests.push(createHash('sha256').update(m).digest());
  }
  return { msgs, digests };
}

/** What one closed loop measured. */
interface LoopResult {
  sigs: number;
  seconds: number;
  p50: number;
  p99: number;
  errors: number;
  firstError?: string;
  samples: Array<[number, Buffer]>;
}

/**
 * `inflight` lanes, each issuing the next call as soon as its previous one answered, for `seconds`.
 * `call(i)` signs message `i % POOL` and resolves to the DER signature.
 */
async function closedLoop(inflight: number, seconds: number, call: (i: number) => Promise<Buffer>): Promise<LoopResult> {
  const lat: number[] = [];
  const samples: Array<[number, Buffer]> = [];
  let seq = 0;
  let errors = 0;
  let firstError: string | undefined;
  const start = performance.now();
  const end = start + seconds * 1000;
  let last = start;
  await Promise.all(
    Array.from({ length: inflight }, async () => {
      while (performance.now() < end) {
        const i = seq++;
        const t0 = performance.now();
        try {
          const sig = await call(i);
          last = performance.now();
          lat.push(last - t0);
          // Sampled calls: the first 8 (slow paths make few calls), then every 97th.
          if ((i < 8 || i % 97 === 0) && samples.length < SAMPLES) samples.push([i % POOL, sig]);
        } catch (err) {
          last = performance.now();
          errors++;
          firstError ??= errText(err);
        }
      }
    }),
  );
  const sorted = Float64Array.from(lat).sort();
  return { sigs: lat.length, seconds: (last - start) / 1000, p50: percentile(sorted, 50), p99: percentile(sorted, 99), errors, firstError, samples };
}

function errText(err: unknown): string {
  const e = err as Partial<ServiceError> & { name?: string; message?: string };
  if (typeof e?.code === 'number' && typeof e.details === 'string') return `grpc ${e.code} ${e.details}`;
  return `${e?.name ?? 'Error'}: ${String(e?.message ?? err).slice(0, 300)}`;
}

/** One measured scenario, as reported. */
interface Scenario {
  id: string;
  backend: 'aws' | 'gcp' | 'tpm' | 'softhsm';
  path: 'direct' | 'sigild' | 'in-process';
  title: string;
  inflight: number;
  sigsPerSec: number;
  p50: number;
  p99: number;
  errors: number;
  firstError?: string;
  verified: string;
  /** CPU cores busy on average, per process, and for the whole machine ("other" = not ours). */
  cpu: Record<string, number>;
}

/** The processes whose CPU a scenario reports. */
type Watch = Array<{ name: string; pid: number | null | undefined }>;

function verifySamples(samples: Array<[number, Buffer]>, key: KeyObject, msgs: Buffer[]): { text: string; bad: boolean } {
  let ok = 0;
  for (const [i, sig] of samples) if (verify('sha256', msgs[i]!, { key, dsaEncoding: 'der' }, sig)) ok++;
  const n = samples.length;
  if (n === 0) return { text: 'none sampled', bad: true };
  return ok === n ? { text: `${ok}/${n} ok`, bad: false } : { text: `${n - ok}/${n} BAD`, bad: true };
}

const round = (x: number, d = 2): number => (Number.isFinite(x) ? Math.round(x * 10 ** d) / 10 ** d : x);

// ---------------------------------------------------------------------------------------------------
// The run.

const children = new Set<ChildProcess>();

function execTool(cmd: string, args: string[], env: NodeJS.ProcessEnv): Promise<void> {
  return new Promise((res, rej) =>
    execFile(cmd, args, { env }, (err, _out, stderr) => (err ? rej(new Error(`${cmd} failed: ${String(stderr).trim().slice(0, 300) || err.message}`)) : res())),
  );
}

async function orchestrate(): Promise<void> {
  const { values } = parseArgs({ options: { seconds: { type: 'string', default: '4' }, out: { type: 'string', default: 'bench/results/backends.json' } } });
  const seconds = Number(values.seconds);
  if (!Number.isFinite(seconds) || seconds <= 0 || seconds > 600) throw new Error('--seconds must be a number of seconds in (0, 600]');
  const warmup = Math.min(1, seconds / 4);
  process.env.AWS_EC2_METADATA_DISABLED = 'true';
  process.env.METADATA_SERVER_DETECTION = 'none';
  const t0 = Date.now();
  const load0 = loadavg();
  const dir = await mkdtemp(join(tmpdir(), 'sigil-bench-backends-'));
  let sigild: SigildProcess | null = null;
  let sw: Swtpm | null = null;
  const fakes: FakeProcess[] = [];
  const cleanupSync = (): void => {
    for (const c of children) c.kill('SIGKILL');
    sigild?.child.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  };
  const onSignal = (): void => {
    cleanupSync();
    process.exit(130);
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  process.once('exit', cleanupSync);

  const scenarios: Scenario[] = [];
  const { msgs, digests } = messagePool();
  const pubKeys = new Map<string, KeyObject>();
  let failed = false;

  const measure = async (
    s: Omit<Scenario, 'sigsPerSec' | 'p50' | 'p99' | 'errors' | 'verified' | 'cpu' | 'firstError'>,
    watch: Watch,
    call: (i: number) => Promise<Buffer>,
  ): Promise<void> => {
    await closedLoop(s.inflight, warmup, call);
    const pids = watch.filter((w): w is { name: string; pid: number } => typeof w.pid === 'number');
    const before = pids.map((p) => cpuSeconds(p.pid));
    const m0 = machineBusySeconds();
    const w0 = performance.now();
    const r = await closedLoop(s.inflight, seconds, call);
    const wall = (performance.now() - w0) / 1000;
    const cpu: Record<string, number> = {};
    let ours = 0;
    pids.forEach((p, k) => {
      const used = (cpuSeconds(p.pid) - before[k]!) / wall;
      cpu[p.name] = round(used);
      ours += used;
    });
    const machine = (machineBusySeconds() - m0) / wall;
    cpu.machine = round(machine);
    cpu.other = round(Math.max(0, machine - ours));
    const v = verifySamples(r.samples, pubKeys.get(s.backend)!, msgs);
    const sc: Scenario = { ...s, sigsPerSec: round(r.sigs / r.seconds, 1), p50: round(r.p50, 3), p99: round(r.p99, 3), errors: r.errors, verified: v.text, cpu };
    if (r.firstError !== undefined) sc.firstError = r.firstError;
    if (v.bad || r.errors > 0) failed = true;
    scenarios.push(sc);
    process.stderr.write(
      `  ${s.id.padEnd(22)} ${fmtInt(sc.sigsPerSec).padStart(7)} sigs/s  p50 ${fmtMs(sc.p50)}  p99 ${fmtMs(sc.p99)}  errors ${sc.errors}  verify ${sc.verified}  cpu ${JSON.stringify(cpu)}${sc.firstError ? `  first error: ${sc.firstError}` : ''}\n`,
    );
  };

  try {
    // The services.
    process.stderr.write('starting fakes, swtpm, softhsm token, sigild\n');
    const [aws, gcp] = await Promise.all([startFake('aws'), startFake('gcp')]);
    fakes.push(aws, gcp);
    sw = await startSwtpm();
    const swPid = childPidNamed('swtpm');
    const token = await initSoftHsmToken({ dir: join(dir, 'hsm'), label: 'bench' });

    // Operator PKI and sigild's config.
    const f = { ...(await writeBenchPki(dir, 'sigil backend bench CA')), awsCreds: await writePrivate(dir, 'aws-credentials.json', JSON.stringify(AWS_CREDS)) };
    const tpmState = join(dir, 'tpm-state');
    await mkdir(tpmState, { mode: 0o700 });
    const awsBackend = { type: 'awskms', region: REGION, endpoint: aws.info.endpoint!, credentialsFile: f.awsCreds, timeoutMs: TIMEOUT_MS };
    const gcpBackend = { type: 'gcpkms', ...GCP, apiEndpoint: '127.0.0.1', port: gcp.info.port, insecure: true, protectionLevel: 'SOFTWARE', timeoutMs: TIMEOUT_MS };
    const addr = `127.0.0.1:${await freePort()}`;
    const config = {
      mode: 'development',
      listen: addr,
      tls: { certFile: f.serverCert, keyFile: f.serverKey, clientCaFile: f.ca },
      auth: { roles: { admin: ['cn:bench-admin'], signer: ['cn:bench-signer'] } },
      store: { sqlite: { path: join(dir, 'sigil.db') } },
      backends: {
        softhsm: { type: 'pkcs11', module: token.module, token: token.label, pinFile: token.pinFile, softhsmConf: token.conf },
        aws: awsBackend,
        gcp: gcpBackend,
        tpm: { type: 'tpm', transport: sw.tcti, stateDir: tpmState, timeoutMs: TIMEOUT_MS },
      },
      defaultBackend: 'softhsm',
      log: { level: 'warn' },
    };
    const configFile = await writePrivate(dir, 'config.yaml', stringify(config));
    sigild = await spawnSigild(configFile, { addr, ca: f.ca, cert: f.adminCert, key: f.adminKey });
    const sigildPid = sigild.child.pid!;

    // Keys through the Admin RPC, public keys through the Signer RPC.
    const admin = connect({ addr, ca: f.ca, cert: f.adminCert, key: f.adminKey });
    const signerRpc = connect({ addr, ca: f.ca, cert: f.signerCert, key: f.signerKey });
    const uris = new Map<string, string>();
    try {
      for (const b of ['aws', 'gcp', 'tpm', 'softhsm'] as const) {
        const res = await rpc.createKey(admin, { name: `bench/${b}`, algorithm: Algorithm.ECDSA_P256_SHA256, backend: b });
        const uri = res.key?.versions[0]?.uri;
        if (!uri) throw new Error(`createKey on backend ${b} returned no version uri`);
        uris.set(b, uri);
        const pub = await rpc.getPublicKey(signerRpc, { key: `bench/${b}` });
        pubKeys.set(b, createPublicKey({ key: pub.spkiDer, format: 'der', type: 'spki' }));
        process.stderr.write(`  key bench/${b}: ${uri}\n`);
      }
    } finally {
      admin.close();
      signerRpc.close();
    }

    // sigild's unary Sign, through the generated client over mTLS (one HTTP/2 connection).
    const signer = new SignerClient(addr, credentials.createSsl(readFileSync(f.ca), readFileSync(f.signerKey), readFileSync(f.signerCert)));
    const sigildSign = (key: string) => (i: number): Promise<Buffer> =>
      new Promise((res, rej) => signer.sign({ key, digest: digests[i % POOL]! }, (err: ServiceError | null, r: SignResponse) => (err ? rej(err) : res(r.signature))));
    const selfW = { name: 'bench', pid: process.pid };
    const sigildW = { name: 'sigild', pid: sigildPid };

    try {
      // AWS KMS: the SDK client built exactly as the backend builds it.
      process.stderr.write('aws kms (fake)\n');
      const awsClient = createKmsClient(awsKmsConfigSchema.parse(awsBackend), AWS_CREDS, silentLogger());
      const keyId = parseAwsKmsUri(uris.get('aws')!).keyId;
      const awsDirect = async (i: number): Promise<Buffer> => {
        const out = await awsClient.send(new SignCommand({ KeyId: keyId, Message: digests[i % POOL]!, MessageType: 'DIGEST', SigningAlgorithm: 'ECDSA_SHA_256' }));
        if (!out.Signature) throw new Error('aws sign answer without a signature');
        return Buffer.from(out.Signature);
      };
      const awsFakeW = { name: 'fake', pid: aws.child.pid };
      try {
        for (const n of [1, 16]) {
          await measure({ id: `aws-direct-${n}`, backend: 'aws', path: 'direct', title: 'SDK SignCommand', inflight: n }, [selfW, awsFakeW, sigildW], awsDirect);
          await measure({ id: `aws-sigild-${n}`, backend: 'aws', path: 'sigild', title: 'sigild unary Sign', inflight: n }, [selfW, awsFakeW, sigildW], sigildSign('bench/aws'));
        }
      } finally {
        awsClient.destroy();
      }

      // Cloud KMS: the client options and per-call options of the backend (src/signers/gcpkms/index.ts).
      process.stderr.write('gcp kms (fake)\n');
      const gcpClient = new KeyManagementServiceClient({
        apiEndpoint: '127.0.0.1',
        port: gcp.info.port,
        sslCreds: credentials.createInsecure(),
        universeDomain: 'googleapis.com',
        'grpc.initial_reconnect_backoff_ms': 100,
        'grpc.max_reconnect_backoff_ms': 1000,
      });
      const gcpName = uris.get('gcp')!.slice('gcpkms:'.length);
      const gcpDirect = async (i: number): Promise<Buffer> => {
        const d = digests[i % POOL]!;
        const [res] = await gcpClient.asymmetricSign({ name: gcpName, digest: { sha256: d }, digestCrc32c: { value: crc32c(d) } }, { timeout: TIMEOUT_MS, retry: null });
        const sig = Buffer.from(res.signature ?? new Uint8Array(0));
        // The integrity checks Google asks every client to make, as the backend makes them.
        if (res.verifiedDigestCrc32c !== true || Number(res.signatureCrc32c?.value) !== crc32c(sig)) throw new Error('gcp sign: crc32c check failed');
        return sig;
      };
      const gcpFakeW = { name: 'fake', pid: gcp.child.pid };
      try {
        for (const n of [1, 16]) {
          await measure({ id: `gcp-direct-${n}`, backend: 'gcp', path: 'direct', title: 'SDK asymmetricSign', inflight: n }, [selfW, gcpFakeW, sigildW], gcpDirect);
          await measure({ id: `gcp-sigild-${n}`, backend: 'gcp', path: 'sigild', title: 'sigild unary Sign', inflight: n }, [selfW, gcpFakeW, sigildW], sigildSign('bench/gcp'));
        }
      } finally {
        await gcpClient.close();
      }

      // TPM and SoftHSM through sigild, while it holds swtpm's one connection.
      process.stderr.write('tpm (swtpm) and softhsm through sigild\n');
      const swW = { name: 'swtpm', pid: swPid };
      for (const n of [1, 16]) await measure({ id: `tpm-sigild-${n}`, backend: 'tpm', path: 'sigild', title: 'sigild unary Sign', inflight: n }, [selfW, swW, sigildW], sigildSign('bench/tpm'));
      for (const n of [1, 16]) await measure({ id: `softhsm-sigild-${n}`, backend: 'softhsm', path: 'sigild', title: 'sigild unary Sign', inflight: n }, [selfW, sigildW], sigildSign('bench/softhsm'));
    } finally {
      signer.close();
    }

    // sigild lets go of swtpm; then the tpm backend in-process, then tpm2_sign, on the same key.
    await sigild.stop();
    if (sigild.child.exitCode !== 0 && sigild.child.signalCode !== 'SIGTERM') process.stderr.write(`sigild exit ${sigild.child.exitCode}:\n${sigild.output()}\n`);
    sigild = null;
    const tpmUri = uris.get('tpm')!;
    // sigild's own state directory: its key table holds the key's authValue.
    const inproc = await openTpm(tpmConfigSchema.parse({ type: 'tpm', transport: sw.tcti, stateDir: tpmState, timeoutMs: TIMEOUT_MS }), {
      name: 'bench',
      log: silentLogger(),
      production: false,
    });
    try {
      const ks = await inproc.signer(tpmUri, 'ECDSA_P256_SHA256');
      for (const n of [1, 16]) {
        await measure({ id: `tpm-inprocess-${n}`, backend: 'tpm', path: 'in-process', title: 'tpm backend in-process', inflight: n }, [selfW, { name: 'swtpm', pid: swPid }], (i) => ks.sign(digests[i % POOL]!));
      }
    } finally {
      await inproc.close();
    }

    // tpm2_sign: one process per signature (what a script does). Its swtpm TCTI connects per command and swtpm
    // has no resource manager, so concurrent runs interleave their commands and run out of session slots:
    // 16 in flight are serialised with flock(1), as a script sharing the TPM would; an unserialised probe
    // afterwards records how that fails (it is last because failed runs leave their sessions loaded).
    const handle = tpmUri.slice('tpm:handle='.length);
    const auth = await tpmKeyAuth(tpmState, handle);
    const toolEnv = { ...process.env, TPM2TOOLS_TCTI: sw.tcti };
    const dig = join(dir, 'digests');
    await mkdir(dig);
    await Promise.all(digests.map((d, i) => writeFile(join(dig, `${i}.bin`), d)));
    const lockFile = join(dir, 'tpm.lock');
    const tpmSign = (locked: boolean) => async (i: number): Promise<Buffer> => {
      const out = join(dig, `sig-${i}.der`);
      const tool = ['tpm2_sign', '-c', handle, '-p', `hex:${auth}`, '-g', 'sha256', '-s', 'ecdsa', '-d', '-f', 'plain', '-o', out, join(dig, `${i % POOL}.bin`)];
      await (locked ? execTool('flock', [lockFile, ...tool], toolEnv) : execTool(tool[0]!, tool.slice(1), toolEnv));
      const sig = await readFile(out);
      await rm(out, { force: true });
      return sig;
    };
    const swtpmW = { name: 'swtpm', pid: swPid };
    await measure({ id: 'tpm-tpm2_sign-1', backend: 'tpm', path: 'direct', title: 'tpm2_sign, a process per signature', inflight: 1 }, [selfW, swtpmW], tpmSign(false));
    await measure(
      { id: 'tpm-tpm2_sign-16', backend: 'tpm', path: 'direct', title: 'tpm2_sign, a process per signature, under flock', inflight: 16 },
      [selfW, swtpmW],
      tpmSign(true),
    );
    const probe = await closedLoop(16, Math.min(1, seconds), tpmSign(false));
    const unserialised = {
      what: '16 tpm2_sign processes in flight on swtpm without serialisation (no resource manager)',
      seconds: round(probe.seconds),
      succeeded: probe.sigs,
      failed: probe.errors,
      tpmRc: /ErrorCode \((0x[0-9a-f]+)\)/i.exec(probe.firstError ?? '')?.[1] ?? null,
      verified: verifySamples(probe.samples, pubKeys.get('tpm')!, msgs).text,
    };
    process.stderr.write(`  unserialised tpm2_sign x16: ${probe.sigs} ok, ${probe.errors} failed${unserialised.tpmRc ? ` (first TPM RC ${unserialised.tpmRc})` : ''}\n`);
    // Signatures that did come back must still verify.
    if (unserialised.verified.includes('BAD')) failed = true;

    // Report.
    const machine = {
      nproc: cpus().length,
      cpu: cpus()[0]?.model ?? 'unknown',
      node: process.version,
      loadavgAtStart: load0.map((x) => round(x)),
      loadavgAtEnd: loadavg().map((x) => round(x)),
      packages: Object.fromEntries(
        ['@aws-sdk/client-kms', '@google-cloud/kms', '@grpc/grpc-js'].map((p) => [p, (JSON.parse(readFileSync(join(ROOT, 'node_modules', p, 'package.json'), 'utf8')) as { version: string }).version]),
      ),
    };
    const comparisons = compare(scenarios);
    const report = {
      date: new Date().toISOString(),
      command: `node bench/backends.ts ${process.argv.slice(2).join(' ')}`.trim(),
      secondsPerScenario: seconds,
      warmupSeconds: warmup,
      machine,
      scenarios,
      comparisons,
      unserialisedTpm2Sign: unserialised,
      wallSeconds: Math.round((Date.now() - t0) / 1000),
    };
    const outFile = resolve(ROOT, values.out);
    await mkdir(dirname(outFile), { recursive: true });
    await writeFile(outFile, JSON.stringify(report, null, 2) + '\n');
    process.stdout.write(markdown(report));
    process.stdout.write(`\nJSON: ${outFile}\n`);
    if (failed) {
      const bad = scenarios.filter((s) => s.errors > 0 || s.verified.includes('BAD') || s.verified === 'none sampled');
      process.stderr.write(`FAILED: errors or bad signatures in ${bad.map((s) => s.id).join(', ')}\n`);
      process.exitCode = 1;
    }
  } catch (err) {
    if (sigild) process.stderr.write(`sigild output:\n${sigild.output()}\n`);
    throw err;
  } finally {
    await sigild?.stop().catch(() => {});
    await Promise.all(fakes.map((x) => x.stop().catch(() => {})));
    await sw?.stop().catch(() => {});
    await rm(dir, { recursive: true, force: true });
  }
}

/** sigild against the direct path (and, for the TPM, against the backend in-process) at each width. */
interface Comparison {
  backend: string;
  inflight: number;
  direct: string;
  directSigsPerSec: number;
  directP50: number;
  sigildSigsPerSec: number;
  sigildP50: number;
  /** sigild p50 - direct p50, ms. */
  overheadP50Ms: number;
  /** sigild sigs/s over direct sigs/s. */
  throughputRatio: number;
  /** CPU per signature of the direct path's client (this process, tool runs included), microseconds. */
  directClientCpuUsPerSig: number;
  /** CPU per signature of sigild, microseconds. */
  sigildCpuUsPerSig: number;
}

function compare(s: Scenario[]): Comparison[] {
  const out: Comparison[] = [];
  for (const backend of ['aws', 'gcp', 'tpm'] as const) {
    for (const n of [1, 16]) {
      const sig = s.find((x) => x.backend === backend && x.path === 'sigild' && x.inflight === n);
      if (!sig) continue;
      for (const d of s.filter((x) => x.backend === backend && x.path !== 'sigild' && x.inflight === n)) {
        out.push({
          backend,
          inflight: n,
          direct: d.title,
          directSigsPerSec: d.sigsPerSec,
          directP50: d.p50,
          sigildSigsPerSec: sig.sigsPerSec,
          sigildP50: sig.p50,
          overheadP50Ms: round(sig.p50 - d.p50, 3),
          throughputRatio: round(sig.sigsPerSec / d.sigsPerSec, 2),
          directClientCpuUsPerSig: Math.round(((d.cpu.bench ?? NaN) * 1e6) / d.sigsPerSec),
          sigildCpuUsPerSig: Math.round(((sig.cpu.sigild ?? NaN) * 1e6) / sig.sigsPerSec),
        });
      }
    }
  }
  return out;
}

function fmtInt(x: number): string {
  return Number.isFinite(x) ? Math.round(x).toLocaleString('en-US') : '-';
}

function fmtMs(x: number): string {
  return Number.isFinite(x) ? `${x < 1 ? x.toFixed(3) : x < 10 ? x.toFixed(2) : x.toFixed(1)} ms` : '-';
}

function markdown(r: {
  scenarios: Scenario[];
  comparisons: Comparison[];
  command: string;
  machine: { loadavgAtStart: number[]; loadavgAtEnd: number[] };
  unserialisedTpm2Sign: { what: string; seconds: number; succeeded: number; failed: number; tpmRc: string | null };
}): string {
  const lines = [
    '| backend | direct path | in flight | direct sigs/s | direct p50 | sigild sigs/s | sigild p50 | overhead p50 | sigild/direct | CPU us/sig: direct client / sigild |',
    '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|',
  ];
  for (const c of r.comparisons) {
    const sign = c.overheadP50Ms >= 0 ? '+' : '';
    lines.push(
      `| ${c.backend} | ${c.direct} | ${c.inflight} | ${fmtInt(c.directSigsPerSec)} | ${fmtMs(c.directP50)} | ${fmtInt(c.sigildSigsPerSec)} | ${fmtMs(c.sigildP50)} | ${sign}${c.overheadP50Ms.toFixed(3)} ms | ${c.throughputRatio.toFixed(2)} | ${fmtInt(c.directClientCpuUsPerSig)} / ${fmtInt(c.sigildCpuUsPerSig)} |`,
    );
  }
  lines.push('', '| scenario | backend | path | in flight | sigs/s | p50 | p99 | errors | verified | CPU cores busy |', '|---|---|---|---:|---:|---:|---:|---:|---|---|');
  for (const s of r.scenarios) {
    const cpu = Object.entries(s.cpu).map(([k, v]) => `${k} ${v.toFixed(2)}`).join(', ');
    lines.push(`| ${s.id} | ${s.backend} | ${s.title} | ${s.inflight} | ${fmtInt(s.sigsPerSec)} | ${fmtMs(s.p50)} | ${fmtMs(s.p99)} | ${s.errors} | ${s.verified} | ${cpu} |`);
  }
  const u = r.unserialisedTpm2Sign;
  lines.push('', `${u.what}: ${u.succeeded} signed, ${u.failed} failed in ${u.seconds} s${u.tpmRc ? ` (TPM RC ${u.tpmRc})` : ''}.`);
  lines.push('', `Load average at start ${r.machine.loadavgAtStart.join(' ')}, at end ${r.machine.loadavgAtEnd.join(' ')} ("other" CPU is work outside this benchmark's processes).`);
  return lines.join('\n') + '\n';
}

// ---------------------------------------------------------------------------------------------------

if (import.meta.main) {
  const i = process.argv.indexOf('--role');
  if (i >= 0) {
    const role = process.argv[i + 1];
    if (role === 'fake-aws') await fakeRole('aws');
    else if (role === 'fake-gcp') await fakeRole('gcp');
    else throw new Error(`unknown role ${String(role)}`);
  } else {
    await orchestrate();
  }
}
