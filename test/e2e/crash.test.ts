import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { promisify } from 'node:util';
import { mkdtemp, rm, writeFile, readFile } from 'node:fs/promises';
import { createHash, createPublicKey, verify } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { missingTools } from '../helpers/hw.ts';
import { tempToken, type TempToken } from '../helpers/softhsm.ts';
import { createDevCa, issueLeaf } from '../../src/dev/pki.ts';
import { connect, rpc, type Clients } from '../../src/cli/client.ts';
import { KeyVersionState as S, type Key } from '../../src/gen/sigil/v1/signer.ts';
import { backendLabel } from '../../src/keys/names.ts';

const SIGILCTL = new URL('../../bin/sigilctl.js', import.meta.url).pathname;

const run = promisify(execFile);
const skip = missingTools('softhsm', 'softhsm2-util', 'pkcs11-tool', 'openssl');
const SIGILD = new URL('../../bin/sigild.js', import.meta.url).pathname;
const SEED = Number(process.env.SIGIL_CRASH_SEED ?? 20260301);
const OPS = 50;
const KEY = 'crash/k';

/** mulberry32: a small seeded PRNG, so a failing run can be replayed with SIGIL_CRASH_SEED. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

describe('crash safety: sigild SIGKILLed at random moments during lifecycle acts', { skip: skip ?? false }, () => {
  let dir: string;
  let token: TempToken;
  let configFile: string;
  let child: ChildProcess | null = null;
  let clients: Clients | null = null;
  let ca: string;
  let admin: { cert: string; key: string };
  let signer: { cert: string; key: string };
  let pin: string;
  let address = '';
  const rand = prng(SEED);
  const stats = { kills: 0, starts: 0, ok: 0, refused: 0, cut: 0, recoveries: 0, tornObjects: 0 };

  const start = async (): Promise<Clients> => {
    const c = spawn(process.execPath, [SIGILD, 'serve', '--config', configFile], { stdio: ['ignore', 'ignore', 'pipe'] });
    child = c;
    stats.starts++;
    let log = '';
    c.stderr!.on('data', (b: Buffer) => (log += b.toString()));
    const end = Date.now() + 30_000;
    while (!/sigild serving/.test(log)) {
      if (c.exitCode !== null) throw new Error(`sigild exited with ${c.exitCode}: ${log.slice(-2000)}`);
      if (Date.now() > end) throw new Error('sigild did not start');
      await new Promise((r) => setTimeout(r, 20));
    }
    const line = JSON.parse(log.split('\n').find((l) => l.includes('sigild serving'))!) as { address: string };
    address = line.address;
    if (log.includes('key lifecycle recovery pass')) stats.recoveries++;
    clients?.close();
    clients = connect({ addr: line.address, ca, cert: admin.cert, key: admin.key });
    return clients;
  };
  const kill = async (): Promise<void> => {
    const c = child;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    const gone = new Promise((r) => c.once('exit', r));
    c.kill('SIGKILL');
    await gone;
    stats.kills++;
    child = null;
  };
  /** Labels of the token's objects of one type, and how many have no label at all. */
  const tokenObjects = async (type: 'privkey' | 'pubkey'): Promise<{ labels: string[]; unlabeled: number }> => {
    const r = await run('pkcs11-tool', ['--module', token.module, '--token-label', token.label, '--login', '--pin', pin, '--list-objects', '--type', type], {
      env: { ...process.env, SOFTHSM2_CONF: token.conf },
    });
    // One block per object, each starting with its class line (`Private Key Object; EC` ...).
    const blocks = r.stdout.split(/\n(?=\S)/).filter((b) => /Key Object/.test(b));
    const labels: string[] = [];
    let unlabeled = 0;
    for (const b of blocks) {
      const m = /^\s*label:[ \t]*(\S+)[ \t]*$/m.exec(b);
      if (m) labels.push(m[1]!);
      else unlabeled++;
    }
    return { labels: labels.sort(), unlabeled };
  };

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'sigil-crash-'));
    token = await tempToken('sigil');
    pin = (await readFile(token.pinFile, 'utf8')).trim();
    const dev = await createDevCa('crash test ca');
    const server = await issueLeaf(dev, { cn: 'sigild', usage: 'server', ips: ['127.0.0.1'] });
    const adm = await issueLeaf(dev, { cn: 'admin', usage: 'client' });
    const sig = await issueLeaf(dev, { cn: 'ci-signer', usage: 'client' });
    ca = join(dir, 'ca.pem');
    await writeFile(ca, dev.cert);
    for (const [n, p] of [['server', server], ['admin', adm], ['signer', sig]] as const) {
      await writeFile(join(dir, `${n}.pem`), p.cert);
      await writeFile(join(dir, `${n}-key.pem`), p.key, { mode: 0o600 });
    }
    admin = { cert: join(dir, 'admin.pem'), key: join(dir, 'admin-key.pem') };
    signer = { cert: join(dir, 'signer.pem'), key: join(dir, 'signer-key.pem') };
    configFile = join(dir, 'config.yaml');
    await writeFile(
      configFile,
      stringify({
        mode: 'development',
        listen: '127.0.0.1:0',
        tls: { certFile: join(dir, 'server.pem'), keyFile: join(dir, 'server-key.pem'), clientCaFile: ca },
        auth: { roles: { admin: ['cn:admin'], signer: ['cn:ci-*'] } },
        store: { sqlite: { path: join(dir, 'sigil.db') } },
        backends: { hsm: token.config },
        defaultBackend: 'hsm',
        // Short dev windows so destructions by the clock happen (and get killed) during the run.
        keys: { minDestroyWindow: '1s', defaultDestroyWindow: '1s', approvalTtl: '1h', schedulerInterval: '100ms' },
        log: { level: 'info' },
      }),
    );
  });
  after(async () => {
    await kill();
    clients?.close();
    await token?.cleanup();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  test(`${OPS} rotate/disable/enable/schedule-destroy acts with random SIGKILLs (seed ${SEED}) leave store and token in agreement`, { timeout: 180_000 }, async () => {
    let c = await start();
    await rpc.createKey(c, { name: KEY, algorithm: 1, backend: '' });
    for (let i = 0; i < OPS; i++) {
      if (!child) c = await start();
      const key = (await rpc.getKey(c, { name: KEY })).key!;
      const others = key.versions.filter((v) => v.version !== key.primaryVersion);
      const pick = <T>(xs: T[]): T | undefined => xs[Math.floor(rand() * xs.length)];
      const r = rand();
      let act: Promise<unknown>;
      if (r < 0.35 || others.length === 0) act = rpc.rotateKey(c, { name: KEY });
      else if (r < 0.55) {
        const v = pick(others.filter((x) => x.state === S.ENABLED)) ?? pick(others)!;
        act = rpc.disableKeyVersion(c, { key: `${KEY}@${v.version}`, compromised: false, compromiseTime: undefined });
      } else if (r < 0.7) {
        const v = pick(others.filter((x) => x.state === S.DISABLED)) ?? pick(others)!;
        act = rpc.enableKeyVersion(c, { key: `${KEY}@${v.version}` });
      } else {
        const v = pick(others.filter((x) => x.state === S.ENABLED || x.state === S.DISABLED)) ?? pick(others)!;
        act = rpc.scheduleDestroyKeyVersion(c, { key: `${KEY}@${v.version}`, windowSeconds: 1 });
      }
      const outcome = act.then(
        () => 'ok' as const,
        (e: { code?: number }) => (e.code === 9 /* FAILED_PRECONDITION */ || e.code === 3 ? ('refused' as const) : ('cut' as const)),
      );
      if (rand() < 0.45) {
        // Kill at a random moment: during the act, or later while the scheduler destroys something.
        await new Promise((res) => setTimeout(res, Math.floor(rand() * 60)));
        await kill();
      }
      stats[await outcome]++;
      if (rand() < 0.15) await new Promise((res) => setTimeout(res, 1100)); // let some windows end
    }
    await kill();
    c = await start(); // the recovery pass runs before "sigild serving"
    // Windows of 1 s that ended while sigild was down are destroyed by its scheduler right after the start: wait
    // for that, or the token would change between the listings check() compares.
    let key = (await rpc.getKey(c, { name: KEY })).key!;
    for (const deadline = Date.now() + 30_000; key.versions.some((v) => v.state === S.DESTROY_SCHEDULED); ) {
      assert.ok(Date.now() < deadline, `versions still scheduled for destruction 30 s after the start: ${JSON.stringify(key.versions)}`);
      await new Promise((res) => setTimeout(res, 100));
      key = (await rpc.getKey(c, { name: KEY })).key!;
    }
    await check(key);

    // The audit log survived every kill: it verifies against its latest signed checkpoint, and it holds the acts.
    const verified = await run(process.execPath, [SIGILCTL, '--addr', address, '--ca', ca, '--cert', admin.cert, '--key', admin.key, '-o', 'json', 'audit', 'verify']);
    const report = JSON.parse(verified.stdout) as { ok: boolean; size: number };
    assert.equal(report.ok, true, verified.stdout);
    const tail = await run(process.execPath, [SIGILCTL, '--addr', address, '--ca', ca, '--cert', admin.cert, '--key', admin.key, 'audit', 'tail', '-n', String(report.size)]);
    const acts = new Set(tail.stdout.split('\n').filter(Boolean).map((l) => (JSON.parse(l.slice(l.indexOf('\t') + 1)) as { act: string }).act));
    assert.ok(acts.has('key.create') && acts.has('key.rotate'), `acts in the log: ${[...acts].join(', ')}`);
    await kill();
    console.log(JSON.stringify({ seed: SEED, ...stats, versions: key.versions.length }));
  });

  /** Store and token agree exactly; versions are 1..N with none lost or half-made; every ENABLED version signs and verifies. */
  async function check(key: Key): Promise<void> {
    const numbers = key.versions.map((v) => v.version);
    assert.deepEqual(numbers, numbers.map((_, i) => i + 1), 'versions are contiguous: none lost');
    for (const v of key.versions) {
      assert.notEqual(v.state, S.PENDING, `@${v.version} left PENDING after recovery`);
      assert.notEqual(v.state, S.DESTROYING, `@${v.version} left DESTROYING after recovery`);
    }
    const primary = key.versions.find((v) => v.version === key.primaryVersion)!;
    assert.equal(primary.state, S.ENABLED, 'the primary is always ENABLED');
    // The daemon's own keys (audit, trusted root) are on the token too: every key's live versions count.
    const all = (await rpc.adminListKeys(clients!, { prefix: '' })).keys;
    const live = all.flatMap((k) => k.versions.filter((v) => v.state !== S.DESTROYED).map((v) => backendLabel(k.name, v.version))).sort();
    const priv = await tokenObjects('privkey');
    const pub = await tokenObjects('pubkey');
    assert.deepEqual(priv.labels, live, 'private objects on the token == versions not destroyed');
    assert.deepEqual(pub.labels, live, 'public objects on the token == versions not destroyed');
    // SoftHSM runs inside the killed process and writes a new object's attributes one at a time: a kill in
    // C_GenerateKeyPair can leave a torn object file without its label (seen with a public key), which no
    // version names and recovery cannot find. It is counted and reported, not hidden: an HSM that creates
    // objects atomically never leaves one. Every labeled object must match a version exactly (above).
    stats.tornObjects = priv.unlabeled + pub.unlabeled;
    const s = connect({ addr: address, ca, cert: signer.cert, key: signer.key });
    try {
      const digest = createHash('sha256').update('crash test').digest();
      for (const v of key.versions.filter((x) => x.state === S.ENABLED)) {
        const ref = `${KEY}@${v.version}`;
        const sig = await rpc.sign(s, { key: ref, digest, message: undefined });
        const pub = await rpc.getPublicKey(s, { key: ref });
        assert.ok(verify('sha256', Buffer.from('crash test'), { key: createPublicKey({ key: pub.spkiDer, format: 'der', type: 'spki' }), dsaEncoding: 'der' }, sig.signature), ref);
      }
      for (const v of key.versions.filter((x) => x.state !== S.ENABLED)) {
        await assert.rejects(rpc.sign(s, { key: `${KEY}@${v.version}`, digest, message: undefined }), (e: { code?: number }) => e.code === 9);
      }
    } finally {
      s.close();
    }
  }
});
