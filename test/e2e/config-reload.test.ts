// A config reload (Daemon.reload, which SIGHUP calls) on a real daemon over SoftHSM: role changes reach
// connections that are already open at their next call (and an open SignStream at its next request), an invalid
// file changes nothing, changes that need a restart are reported and ignored, and every reload is audited and
// counted. The last test runs `sigild serve` as a program and sends it a real SIGHUP.
import 'reflect-metadata';
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, X509Certificate } from 'node:crypto';
import { connect as tlsConnect } from 'node:tls';
import { join } from 'node:path';
import { createDevCa, issueLeaf } from '../../src/dev/pki.ts';
import { readFileSync, writeFileSync } from 'node:fs';
import { spawn, type ChildProcess } from 'node:child_process';
import { parse, stringify } from 'yaml';
import { status as Status } from '@grpc/grpc-js';
import { rejectsWith } from '../helpers/assert.ts';
import { missingTools } from '../helpers/hw.ts';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.ts';
import { rpc, connect, type Clients } from '../../src/cli/client.ts';
import type { SignStreamResponse } from '../../src/gen/sigil/v1/signer.ts';

const skip = missingTools('softhsm', 'softhsm2-util');
const bin = (n: string): string => new URL(`../../bin/${n}.js`, import.meta.url).pathname;

type Cfg = Record<string, unknown> & { auth: { roles: Record<string, string[]> }; limits?: Record<string, unknown> };

describe('config reload', { skip: skip ?? false }, () => {
  let td: TestDaemon;
  let original: string;
  const edit = (fn: (cfg: Cfg) => void): string => {
    const cfg = parse(readFileSync(td.configFile, 'utf8')) as Cfg;
    fn(cfg);
    const text = stringify(cfg);
    writeFileSync(td.configFile, text);
    return createHash('sha256').update(text).digest('hex');
  };
  const reloads = () => td.auditEntries().filter((e) => e.act === 'config.reload');
  const metric = async (result: string): Promise<number> => {
    const text = await (await fetch(`http://${td.daemon.metricsAddress}/metrics`)).text();
    const m = new RegExp(`^sigil_config_reloads_total\\{result="${result}"\\} (\\d+)$`, 'm').exec(text);
    return m ? Number(m[1]) : 0;
  };

  before(async () => {
    if (skip) return;
    td = await startTestDaemon();
    original = readFileSync(td.configFile, 'utf8');
    await rpc.createKey(td.client('admin'), { name: 'ci/app', algorithm: 1, backend: '' });
  });
  after(async () => {
    await td?.stop();
  });

  test('a role taken away and one given take effect on the next call of connections already open; audited and counted', async () => {
    const admin2 = td.client('admin2');
    const nobody = td.client('nobody');
    // Both connections open, and the role decisions cached, before the reload.
    await rpc.adminListKeys(admin2, { prefix: '' });
    await rejectsWith(rpc.adminListKeys(nobody, { prefix: '' }), Status.PERMISSION_DENIED, /lacks the role admin/);
    const sha = edit((c) => void (c.auth.roles.admin = ['cn:test-admin', 'cn:nobody']));

    const out = await td.daemon.reload();
    assert.deepEqual(out, { result: 'ok', sha256: sha, applied: ['auth.roles'], ignored: [], problems: [] });
    await rejectsWith(rpc.adminListKeys(admin2, { prefix: '' }), Status.PERMISSION_DENIED, /CN=test-admin-2 lacks the role admin/);
    const listed = await rpc.adminListKeys(nobody, { prefix: '' });
    assert.ok(listed.keys.some((k) => k.name === 'ci/app'));
    // Untouched: the first admin keeps its role.
    await rpc.adminListKeys(td.client('admin'), { prefix: '' });

    const e = reloads().at(-1)!;
    assert.equal(e.who, 'sigild');
    assert.equal(e.result, 'ok');
    assert.deepEqual(e.detail, { file: td.configFile, sha256: sha, applied: ['auth.roles'], ignored: [] });
    assert.equal(await metric('ok'), 1);
    const line = td.logs().find((l) => l.msg === 'config reloaded: auth.roles');
    assert.ok(line, 'the reload is logged');
    assert.equal(line.sha256, sha);
  });

  test('an open SignStream loses the signer role at its next request after the reload', async () => {
    writeFileSync(td.configFile, original);
    await td.daemon.reload();
    const stream = td.client('signer').signer.signStream();
    const got: SignStreamResponse[] = [];
    const done = new Promise<void>((resolve, reject) => {
      stream.on('data', (r: SignStreamResponse) => got.push(r));
      stream.on('end', resolve);
      stream.on('error', reject);
    });
    const req = (id: number) => ({ id, request: { key: 'ci/app', digest: createHash('sha256').update(`m${id}`).digest() } });
    stream.write(req(1));
    while (got.length < 1) await new Promise((r) => setTimeout(r, 10));
    assert.ok(got[0]!.result!.signature, 'signed before the reload');
    edit((c) => void (c.auth.roles.signer = []));
    assert.equal((await td.daemon.reload()).result, 'ok');
    stream.write(req(2));
    stream.end();
    await done;
    assert.equal(got[1]!.id, 2);
    assert.equal(got[1]!.result!.error?.code, Status.PERMISSION_DENIED, 'the second request is refused');
    assert.match(got[1]!.result!.error!.message, /lacks the role signer/);
    assert.ok(td.auditEntries().some((e) => e.act === 'request.refused' && e.who === 'CN=ci-signer-1' && (e.detail as { rpc?: string }).rpc === 'SignStream'), 'the refusal is audited');
  });

  test('an invalid file changes nothing: every problem logged and audited, the old roles stay', async () => {
    writeFileSync(td.configFile, original);
    await td.daemon.reload();
    const before = await metric('invalid');
    const sha = edit((c) => {
      c.auth.roles.admin = ['test-admin-2'];
      c.auth.roles.signer = [];
      c.colour = 'blue';
    });
    const admin = td.client('admin');
    const signer = td.client('signer');
    const out = await td.daemon.reload();
    assert.equal(out.result, 'invalid');
    assert.equal(out.sha256, sha);
    assert.equal(out.problems.length, 2, out.problems.join('; '));
    assert.ok(out.problems.some((p) => /^auth\.roles\.admin\.0: must start with cn:/.test(p)));
    assert.ok(out.problems.some((p) => /unrecognized key.*colour/i.test(p)));
    // The signer role removal in the same file did not apply either.
    await rpc.sign(signer, { key: 'ci/app', digest: Buffer.alloc(32, 1), message: undefined });
    await rpc.adminListKeys(admin, { prefix: '' });
    await rpc.adminListKeys(td.client('admin2'), { prefix: '' });

    const e = reloads().at(-1)!;
    assert.equal(e.result, 'refused');
    assert.equal(e.reason, 'CONFIG_INVALID');
    assert.equal((e.detail as { sha256: string }).sha256, sha);
    assert.equal((e.detail as { problems: string[] }).problems.length, 2);
    assert.equal(await metric('invalid'), before + 1);
    const line = td.logs().find((l) => typeof l.msg === 'string' && l.msg.startsWith('config reload refused, nothing changed: 2 problems'));
    assert.ok(line, 'the refusal is logged with its problems');
    assert.match(String(line.msg), /auth\.roles\.admin\.0: must start with cn:/);

    // An unreadable file is refused the same way.
    const file = td.configFile;
    writeFileSync(file, ': not yaml: [');
    assert.equal((await td.daemon.reload()).result, 'invalid');
    await rpc.adminListKeys(admin, { prefix: '' });
  });

  test('changes that need a restart are reported by key path and ignored; the reloadable ones apply', async () => {
    writeFileSync(td.configFile, original);
    await td.daemon.reload();
    const address = td.daemon.address;
    edit((c) => {
      c.listen = '127.0.0.1:1';
      c.limits = { maxBatch: 2 };
      c.auth.roles.auditor = ['cn:nobody'];
    });
    const nobody0 = td.client('nobody');
    await rejectsWith(new Promise((resolve, reject) => nobody0.audit.getCheckpoint({ treeSize: 0 }, (err, res) => (err ? reject(err) : resolve(res)))), Status.PERMISSION_DENIED);
    const out = await td.daemon.reload();
    assert.equal(out.result, 'partial');
    assert.deepEqual(out.applied, ['auth.roles']);
    assert.deepEqual(out.ignored, ['limits.maxBatch', 'listen']);
    assert.equal(td.daemon.address, address);
    // limits.maxBatch stays 1024: a batch of 3 is fine; the auditor role given to nobody applies.
    const nobody = td.client('nobody');
    const checkpoint = (): Promise<unknown> => new Promise((resolve, reject) => nobody.audit.getCheckpoint({ treeSize: 0 }, (err, res) => (err ? reject(err) : resolve(res))));
    await checkpoint();
    const r = await rpc.signBatch(td.client('signer'), { requests: [1, 2, 3].map((i) => ({ key: 'ci/app', digest: Buffer.alloc(32, i), message: undefined })) });
    assert.equal(r.results.length, 3);
    const e = reloads().at(-1)!;
    assert.equal(e.result, 'ok');
    assert.deepEqual((e.detail as { ignored: string[] }).ignored, ['limits.maxBatch', 'listen']);
    assert.ok(await metric('partial') >= 1);
    const line = td.logs().find((l) => l.msg === 'config reloaded; not applied, restart sigild for: limits.maxBatch, listen');
    assert.ok(line, 'a warning names each ignored key');
    assert.equal(line.level, 40);
    // Reloading the same file again: the ignored changes are still reported, nothing more applies.
    const again = await td.daemon.reload();
    assert.deepEqual([again.applied, again.ignored], [[], ['limits.maxBatch', 'listen']]);
  });

  test('the tls files are read again at each reload: a renewed server certificate serves at once, a key that is not its key changes nothing, a new client ca closes open connections', async () => {
    writeFileSync(td.configFile, original);
    await td.daemon.reload();
    const certFile = join(td.dir, 'server.pem');
    const keyFile = join(td.dir, 'server-key.pem');
    const caFile = td.ca;
    const saved = { cert: readFileSync(certFile), key: readFileSync(keyFile), ca: readFileSync(caFile) };
    const served = (): Promise<string> =>
      new Promise((resolve, reject) => {
        const [host, port] = td.daemon.address.split(':');
        const s = tlsConnect({ host, port: Number(port), rejectUnauthorized: false, ALPNProtocols: ['h2'] }, () => {
          resolve(s.getPeerX509Certificate()!.fingerprint256);
          s.destroy();
        });
        s.on('error', reject);
      });
    const fingerprint = (pem: string | Buffer): string => new X509Certificate(pem).fingerprint256;
    assert.equal(await served(), fingerprint(saved.cert));
    try {
      // A renewed certificate (here from another CA, so that it cannot be mistaken for the first) written in place.
      const otherCa = await createDevCa('sigil test server ca 2');
      const renewed = await issueLeaf(otherCa, { cn: 'sigild', usage: 'server', dns: ['localhost'], ips: ['127.0.0.1'] });
      writeFileSync(certFile, renewed.cert);
      writeFileSync(keyFile, renewed.key);
      const out = await td.daemon.reload();
      assert.equal(out.result, 'ok', out.problems.join('; '));
      assert.deepEqual(out.applied, ['tls.certFile', 'tls.keyFile']);
      assert.equal(await served(), fingerprint(renewed.cert));
      assert.deepEqual((reloads().at(-1)!.detail as { applied: string[] }).applied, ['tls.certFile', 'tls.keyFile']);

      // A key that is not the certificate's: refused, nothing changes, the renewed certificate still serves.
      const stranger = await issueLeaf(otherCa, { cn: 'someone', usage: 'server', dns: ['localhost'] });
      writeFileSync(keyFile, stranger.key);
      const bad = await td.daemon.reload();
      assert.equal(bad.result, 'invalid');
      assert.match(bad.problems.join('\n'), /^tls\.keyFile: .*server-key\.pem is not the private key of .*server\.pem/m);
      assert.ok(!bad.problems.join('\n').includes('PRIVATE KEY'), 'no key material in the problem');
      assert.equal(await served(), fingerprint(renewed.cert));

      // Back to the first certificate, then a client CA bundle without the operator CA: the open connection is
      // closed, and its client certificate is refused at the next handshake.
      writeFileSync(certFile, saved.cert);
      writeFileSync(keyFile, saved.key);
      assert.deepEqual((await td.daemon.reload()).applied, ['tls.certFile', 'tls.keyFile']);
      const admin = td.client('admin');
      await rpc.adminListKeys(admin, { prefix: '' });
      // A SignStream opened before: it may finish what is in flight, then its connection is cut.
      const stream = td.client('signer').signer.signStream();
      const got: SignStreamResponse[] = [];
      const ended = new Promise<Error | null>((resolve) => {
        stream.on('data', (r: SignStreamResponse) => got.push(r));
        stream.on('end', () => resolve(null));
        stream.on('error', (err: Error) => resolve(err));
      });
      stream.write({ id: 1, request: { key: 'ci/app', digest: Buffer.alloc(32, 1) } });
      while (got.length < 1) await new Promise((r) => setTimeout(r, 10));
      writeFileSync(caFile, otherCa.cert);
      assert.deepEqual((await td.daemon.reload()).applied, ['tls.clientCaFile']);
      await rejectsWith(rpc.adminListKeys(admin, { prefix: '' }), Status.UNAUTHENTICATED);
      const cutAt = Date.now();
      const err = await Promise.race([ended, new Promise<string>((r) => setTimeout(() => r('still open'), 10_000))]);
      assert.notEqual(err, 'still open', 'the stream was cut');
      assert.ok(Date.now() - cutAt < 8000);
      stream.write({ id: 2, request: { key: 'ci/app', digest: Buffer.alloc(32, 2) } });
      assert.equal(got.filter((r) => r.result?.signature !== undefined).length, 1, 'nothing was signed after the cut');
      // An empty (or half-copied) bundle is refused: nobody is locked out.
      writeFileSync(caFile, '');
      const empty = await td.daemon.reload();
      assert.equal(empty.result, 'invalid');
      assert.match(empty.problems.join('\n'), /^tls\.clientCaFile: .* holds no pem certificate$/m);
    } finally {
      writeFileSync(certFile, saved.cert);
      writeFileSync(keyFile, saved.key);
      writeFileSync(caFile, saved.ca);
      await td.daemon.reload();
    }
    await rpc.adminListKeys(td.client('admin'), { prefix: '' });
  });

  test('sigild serve reloads on SIGHUP', async () => {
    writeFileSync(td.configFile, original);
    edit((c) => void (c.log = { level: 'info' }));
    const earlier = reloads().length;
    await td.stopDaemon();
    const child: ChildProcess = spawn(process.execPath, [bin('sigild'), 'serve', '--config', td.configFile], { stdio: ['ignore', 'ignore', 'pipe'] });
    let log = '';
    child.stderr!.on('data', (b: Buffer) => (log += b.toString()));
    const waitLog = async (re: RegExp): Promise<void> => {
      const end = Date.now() + 30_000;
      while (!re.test(log) && Date.now() < end && child.exitCode === null) await new Promise((r) => setTimeout(r, 50));
      assert.match(log, re);
    };
    let c: Clients | undefined;
    try {
      await waitLog(/sigild serving/);
      const { address } = JSON.parse(log.split('\n').find((l) => l.includes('sigild serving'))!) as { address: string };
      c = connect({ addr: address, ca: td.ca, cert: td.ids.admin2.cert, key: td.ids.admin2.key });
      await rpc.adminListKeys(c, { prefix: '' });
      edit((cfg) => void (cfg.auth.roles.admin = ['cn:test-admin']));
      child.kill('SIGHUP');
      await waitLog(/config reloaded: auth\.roles/);
      await rejectsWith(rpc.adminListKeys(c, { prefix: '' }), Status.PERMISSION_DENIED, /lacks the role admin/);
    } finally {
      c?.close();
      if (child.exitCode === null) {
        const gone = new Promise((r) => child.once('exit', r));
        child.kill('SIGTERM');
        await gone;
      }
    }
    assert.equal(child.exitCode, 0, log);
    await td.restart();
    const made = reloads().slice(earlier);
    assert.equal(made.length, 1, 'the subprocess audited its one reload');
    assert.deepEqual([made[0]!.who, made[0]!.result, (made[0]!.detail as { applied: string[] }).applied], ['sigild', 'ok', ['auth.roles']]);
  });
});
