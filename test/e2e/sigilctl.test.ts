import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createServer, type AddressInfo } from 'node:net';
import { missingTools } from '../helpers/hw.ts';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.ts';

const run = promisify(execFile);
const skip = missingTools('softhsm', 'softhsm2-util', 'openssl', 'pkcs11-tool');
const SIGILCTL = new URL('../../bin/sigilctl.js', import.meta.url).pathname;

describe('sigilctl against a running sigild', { skip: skip ?? false }, () => {
  let d: TestDaemon;
  let env: NodeJS.ProcessEnv;

  // The daemon runs in this process, so the CLI must run asynchronously (a sync spawn would block the server).
  const ctl = async (args: string[], who: 'admin' | 'signer' | 'auditor' = 'admin'): Promise<{ stdout: string; stderr: string; code: number }> => {
    try {
      const r = await run(process.execPath, [SIGILCTL, ...args], {
        env: { ...env, SIGIL_CLIENT_CERT: d.ids[who].cert, SIGIL_CLIENT_KEY: d.ids[who].key },
        maxBuffer: 16 * 1024 * 1024,
      });
      return { ...r, code: 0 };
    } catch (err) {
      const e = err as { stdout: string; stderr: string; code: number };
      return { stdout: e.stdout, stderr: e.stderr, code: e.code };
    }
  };
  const openssl = async (args: string[]): Promise<string> => (await run('openssl', args)).stdout;

  before(async () => {
    // A small message limit: an Ed25519 file over it is refused without a GB file (digests are unaffected).
    d = await startTestDaemon({ extraConfig: { limits: { maxMessageBytes: 1024 * 1024 } } });
    env = { ...process.env, SIGIL_ADDR: d.address, SIGIL_CACERT: d.ca };
  });
  after(async () => d?.stop());

  test('create, sign a file and verify with the openssl command each algorithm documents', async () => {
    const file = join(d.dir, 'artifact.bin');
    writeFileSync(file, randomBytes(3 * 1024 * 1024 + 17));
    const cases: Array<[string, string, string[]]> = [
      ['p256', 'ECDSA_P256_SHA256', ['dgst', '-sha256']],
      ['p384', 'ecdsa-p384-sha384', ['dgst', '-sha384']],
      ['rsa', 'RSA_PKCS1_SHA256', ['dgst', '-sha256']],
      ['pss', 'rsa-pss', ['dgst', '-sha256', '-sigopt', 'rsa_padding_mode:pss']],
    ];
    for (const [name, alg, verifyArgs] of cases) {
      const c = await ctl(['key', 'create', `cli/${name}`, '--alg', alg]);
      assert.equal(c.code, 0, c.stderr);
      assert.match(c.stdout, new RegExp(`created cli/${name} `));
      const pub = join(d.dir, `${name}.pem`);
      { const pk = await ctl(["key", "pubkey", `cli/${name}`, "--out", pub]); assert.equal(pk.code, 0, pk.stderr); }
      const sig = join(d.dir, `${name}.sig`);
      const s = await ctl(['sign', '--key', `cli/${name}`, '--file', file, '--out', sig], 'signer');
      assert.equal(s.code, 0, s.stderr);
      assert.match(s.stdout, new RegExp(`with cli/${name}@1`));
      assert.match(await openssl([...verifyArgs, '-verify', pub, '-signature', sig, file]), /Verified OK/);
    }
  });

  test('Ed25519 sends the whole file and verifies with openssl pkeyutl -rawin', async () => {
    const file = join(d.dir, 'firmware.img');
    writeFileSync(file, randomBytes(200_000));
    assert.equal((await ctl(['key', 'create', 'cli/ed', '--alg', 'ED25519'])).code, 0);
    const pub = join(d.dir, 'ed.pem');
    await ctl(['key', 'pubkey', 'cli/ed@1', '--out', pub]);
    const sig = join(d.dir, 'ed.sig');
    const s = await ctl(['--output', 'json', 'sign', '--key', 'cli/ed', '--file', file, '--out', sig], 'signer');
    assert.equal(s.code, 0, s.stderr);
    const j = JSON.parse(s.stdout) as { keyVersion: string; algorithm: string; bytes: number };
    assert.deepEqual([j.keyVersion, j.algorithm, j.bytes], ['cli/ed@1', 'ED25519', 200_000]);
    assert.equal(readFileSync(sig).length, 64);
    assert.match(await openssl(['pkeyutl', '-verify', '-pubin', '-inkey', pub, '-rawin', '-in', file, '-sigfile', sig]), /Signature Verified Successfully/);
  });

  test('list, show and pubkey print text and json', async () => {
    await ctl(['key', 'create', 'cli/listed', '--alg', 'p256']);
    const list = await ctl(['--output', 'json', 'key', 'list', '--prefix', 'cli/listed']);
    const keys = JSON.parse(list.stdout) as Array<{ name: string; algorithm: string; primaryVersion: number; versions: Array<{ uri: string; state: string }> }>;
    assert.equal(keys.length, 1);
    assert.equal(keys[0]!.algorithm, 'ECDSA_P256_SHA256');
    assert.equal(keys[0]!.versions[0]!.state, 'ENABLED');
    assert.match(keys[0]!.versions[0]!.uri, /^pkcs11:token=sigil;object=sigil-cli-listed-v1;id=/);
    const show = await ctl(['key', 'show', 'cli/listed']);
    assert.match(show.stdout, /^cli\/listed {2}ECDSA_P256_SHA256 {2}backend=softhsm {2}primary=cli\/listed@1\n {2}policy: min-sign=1 min-verify=1 auto-rotate=off destroy-approval=off\n {2}@1 {2}ENABLED {2}generated/);
    const pem = await ctl(['key', 'pubkey', 'cli/listed']);
    assert.match(pem.stdout, /^-----BEGIN PUBLIC KEY-----\n[\s\S]+-----END PUBLIC KEY-----\n$/);
  });

  test('a key made by pkcs11-tool is imported with key import and signs', async () => {
    const pin = readFileSync(d.token.pinFile, 'utf8').trim();
    await run('pkcs11-tool', ['--module', d.token.module, '--token-label', 'sigil', '--login', '--pin', pin, '--keypairgen', '--key-type', 'EC:secp384r1', '--label', 'ops-p384', '--id', '0102'], {
      env: { ...process.env, SOFTHSM2_CONF: d.token.conf },
    });
    const imp = await ctl(['--output', 'json', 'key', 'import', 'ops/p384', '--uri', 'pkcs11:token=sigil;object=ops-p384']);
    assert.equal(imp.code, 0, imp.stderr);
    assert.equal((JSON.parse(imp.stdout) as { algorithm: string }).algorithm, 'ECDSA_P384_SHA384');
    // The same key again under another name: the refusal names the key that has it.
    const again = await ctl(['key', 'import', 'ops/again', '--uri', 'pkcs11:token=sigil;object=ops-p384']);
    assert.equal(again.code, 1);
    assert.match(again.stderr, /^sigilctl: ALREADY_EXISTS: the key at pkcs11:token=sigil;object=ops-p384;id=%01%02 is already registered as ops\/p384@1\n$/);
    const file = join(d.dir, 'imported.txt');
    writeFileSync(file, 'signed with an imported key\n');
    const pub = join(d.dir, 'ops.pem');
    await ctl(['key', 'pubkey', 'ops/p384', '--out', pub]);
    const sig = join(d.dir, 'ops.sig');
    assert.equal((await ctl(['sign', '--key', 'ops/p384', '--file', file, '--out', sig], 'signer')).code, 0);
    assert.match(await openssl(['dgst', '-sha384', '-verify', pub, '-signature', sig, file]), /Verified OK/);
  });

  test('on a terminal, sign shows hashing progress on stderr and still writes a good signature', { skip: missingTools('script') ?? false }, async () => {
    const file = join(d.dir, 'big.img');
    writeFileSync(file, randomBytes(48 * 1024 * 1024));
    const pub = join(d.dir, 'big.pem');
    await ctl(['key', 'pubkey', 'cli/p256', '--out', pub]);
    const sig = join(d.dir, 'big.sig');
    // script(1) gives sigilctl a pseudo-terminal, as a person at a shell would have.
    const cmd = [process.execPath, SIGILCTL, 'sign', '--key', 'cli/p256', '--file', file, '--out', sig].map((a) => `'${a}'`).join(' ');
    const r = await run('script', ['-qec', cmd, '/dev/null'], {
      env: { ...env, SIGIL_CLIENT_CERT: d.ids.signer.cert, SIGIL_CLIENT_KEY: d.ids.signer.key, TERM: 'xterm' },
      maxBuffer: 16 * 1024 * 1024,
    });
    assert.match(r.stdout, /hashing \|[^|]*\| \d+% [\d.]+\/48 MiB/);
    assert.match(r.stdout, /signed .*big\.img \(50331648 bytes\) with cli\/p256@1/);
    assert.match(await openssl(['dgst', '-sha256', '-verify', pub, '-signature', sig, file]), /Verified OK/);
  });

  test('errors are clear, name the status, and exit non-zero', async () => {
    const nf = await ctl(['key', 'show', 'no/such']);
    assert.equal(nf.code, 1);
    assert.equal(nf.stderr, 'sigilctl: NOT_FOUND: no key named no/such\n');
    const bad = await ctl(['key', 'create', 'x', '--alg', 'dsa']);
    assert.equal(bad.code, 2);
    assert.equal(bad.stderr, 'sigilctl: unknown algorithm dsa: one of ECDSA_P256_SHA256, ECDSA_P384_SHA384, RSA_PKCS1_SHA256, RSA_PSS_SHA256, ED25519\n');
    // ts-proto's sentinel for values it does not know is not an algorithm one may ask for.
    assert.equal((await ctl(['key', 'create', 'x', '--alg', 'UNRECOGNIZED'])).code, 2);
    const denied = await ctl(['key', 'create', 'x', '--alg', 'p256'], 'signer');
    assert.equal(denied.code, 1);
    assert.match(denied.stderr, /^sigilctl: PERMISSION_DENIED: CN=ci-signer-1 lacks the role admin\n$/);
    const missing = await ctl(['sign', '--key', 'cli/p256', '--file', join(d.dir, 'absent'), '--out', join(d.dir, 'x.sig')], 'signer');
    assert.equal(missing.code, 2);
    assert.equal(missing.stderr, `sigilctl: cannot read ${join(d.dir, 'absent')} (--file): no such file or directory\n`);
    const dir = await ctl(['sign', '--key', 'cli/p256', '--file', d.dir, '--out', join(d.dir, 'x.sig')], 'signer');
    assert.equal(dir.code, 2);
    assert.equal(dir.stderr, `sigilctl: --file ${d.dir} is a directory: sign one file at a time\n`);
    const noDir = await ctl(['sign', '--key', 'cli/p256', '--file', join(d.dir, 'artifact.bin'), '--out', join(d.dir, 'none', 'x.sig')], 'signer');
    assert.equal(noDir.code, 2);
    assert.equal(noDir.stderr, `sigilctl: cannot write ${join(d.dir, 'none', 'x.sig')} (--out): no such file or directory\n`);
    const noAddr = await run(process.execPath, [SIGILCTL, 'key', 'list'], { env: { PATH: process.env.PATH } }).catch((e: { code: number; stderr: string }) => e);
    assert.equal((noAddr as { code: number }).code, 2);
    assert.match((noAddr as { stderr: string }).stderr, /--addr \(or SIGIL_ADDR\) is required/);
  });

  test('with --output json an error is a json document on stdout with the code, sigild\'s reason and the message', async () => {
    for (const args of [['key', 'create', 'cli/json', '--alg', 'p256'], ['key', 'rotate', 'cli/json'], ['key', 'disable', 'cli/json@1']]) {
      const r = await ctl(args);
      assert.equal(r.code, 0, r.stderr);
    }
    const file = join(d.dir, 'json.bin');
    writeFileSync(file, 'payload');
    const disabled = await ctl(['--output', 'json', 'sign', '--key', 'cli/json@1', '--file', file, '--out', join(d.dir, 'json.sig')], 'signer');
    assert.equal(disabled.code, 1);
    assert.equal(disabled.stderr, '');
    assert.deepEqual(JSON.parse(disabled.stdout), {
      error: { code: 'FAILED_PRECONDITION', reason: 'KEY_VERSION_DISABLED', message: 'key cli/json@1 is DISABLED and cannot sign', metadata: { key_version: 'cli/json@1', state: 'DISABLED' } },
    });
    // The option after the command too; an error without a precise reason has sigil's error code.
    const nf = await ctl(['key', 'show', 'no/such', '-o', 'json']);
    assert.equal(nf.code, 1);
    assert.deepEqual(JSON.parse(nf.stdout), { error: { code: 'NOT_FOUND', reason: 'KEY_NOT_FOUND', message: 'no key named no/such' } });
    // A mistake in the command line has no reason: it never reached sigild.
    const bad = await ctl(['-o', 'json', 'key', 'create', 'x', '--alg', 'dsa']);
    assert.equal(bad.code, 2);
    assert.equal(JSON.parse(bad.stdout).error.code, 'INVALID_ARGUMENT');
    assert.equal(JSON.parse(bad.stdout).error.reason, undefined);
    // Text output is as it was.
    const text = await ctl(['sign', '--key', 'cli/json@1', '--file', file, '--out', join(d.dir, 'json.sig')], 'signer');
    assert.equal(text.stderr, 'sigilctl: FAILED_PRECONDITION: key cli/json@1 is DISABLED and cannot sign\n');
  });

  test('connection and credential problems say what to check, with the option that set it', async () => {
    const as = async (over: NodeJS.ProcessEnv): Promise<{ code: number; stderr: string }> => {
      const r = await run(process.execPath, [SIGILCTL, 'key', 'list'], { env: { ...env, SIGIL_CLIENT_CERT: d.ids.admin.cert, SIGIL_CLIENT_KEY: d.ids.admin.key, ...over } }).then(
        () => ({ code: 0, stderr: '' }),
        (e: { code: number; stderr: string }) => e,
      );
      return { code: r.code, stderr: r.stderr };
    };
    const closed = await new Promise<number>((res) => {
      const srv = createServer().listen(0, '127.0.0.1', () => {
        const p = (srv.address() as AddressInfo).port;
        srv.close(() => res(p));
      });
    });
    assert.deepEqual(await as({ SIGIL_ADDR: `127.0.0.1:${closed}` }), { code: 1, stderr: `sigilctl: UNAVAILABLE: cannot reach sigild at 127.0.0.1:${closed}: connection refused (is sigild running there?)\n` });
    // A CA bundle that did not sign the daemon's certificate (a certificate of another CA).
    assert.deepEqual(await as({ SIGIL_CACERT: d.ids.outsider.cert }), {
      code: 1,
      stderr: `sigilctl: UNAVAILABLE: cannot reach sigild at ${d.address}: its certificate is not signed by the CA bundle given with --ca (SIGIL_CACERT)\n`,
    });
    assert.deepEqual(await as({ SIGIL_CLIENT_KEY: d.ids.signer.key }), { code: 2, stderr: `sigilctl: the client key ${d.ids.signer.key} does not belong to the client certificate ${d.ids.admin.cert}\n` });
    assert.deepEqual(await as({ SIGIL_CLIENT_KEY: join(d.dir, 'absent-key.pem') }), {
      code: 2,
      stderr: `sigilctl: cannot read the client key ${join(d.dir, 'absent-key.pem')} (--key, SIGIL_CLIENT_KEY): no such file or directory\n`,
    });
    assert.deepEqual(await as({ SIGIL_CLIENT_KEY: '' }), { code: 2, stderr: 'sigilctl: --cert (SIGIL_CLIENT_CERT) and --key (SIGIL_CLIENT_KEY) go together\n' });
    assert.deepEqual(await as({ SIGIL_ADDR: 'localhost:99999' }), { code: 2, stderr: 'sigilctl: --addr (SIGIL_ADDR) must be host:port with a port from 1 to 65535, got "localhost:99999"\n' });
  });

  /** The `sign` entries of the audit log, read with `sigilctl audit tail -o json` (json lines). */
  const signEntries = async (): Promise<number> => {
    const t = await ctl(['-o', 'json', 'audit', 'tail', '-n', '100000']);
    assert.equal(t.code, 0, t.stderr);
    return t.stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l) as { entry: { act: string } }).filter((e) => e.entry.act === 'sign').length;
  };
  /** Files left in `dir` whose name says they are sign's temporary files. */
  const temps = (dir: string): string[] => readdirSync(dir).filter((f) => f.endsWith('.tmp'));

  test('a bad --out fails before anything is hashed or signed, names --out, and leaves no file', async () => {
    const file = join(d.dir, 'out-check.bin');
    writeFileSync(file, 'to be signed\n');
    assert.equal((await ctl(['key', 'create', 'cli/out', '--alg', 'p256'])).code, 0);
    const before = await signEntries();
    const cases: Array<[string[], string]> = [
      [['--out', join(d.dir, 'none', 'x.sig')], `sigilctl: cannot write ${join(d.dir, 'none', 'x.sig')} (--out): no such file or directory\n`],
      [['--out', d.dir], `sigilctl: cannot write ${d.dir} (--out): it is a directory\n`],
      [['--dsse', '--out', join(d.dir, 'none', 'x.json')], `sigilctl: cannot write ${join(d.dir, 'none', 'x.json')} (--out): no such file or directory\n`],
    ];
    for (const [extra, stderr] of cases) {
      const r = await ctl(['sign', '--key', 'cli/out', '--file', file, ...extra], 'signer');
      assert.deepEqual({ code: r.code, stderr: r.stderr }, { code: 2, stderr });
    }
    assert.equal(await signEntries(), before, 'nothing was signed');
    // A failed signature leaves an existing --out as it was, and no temporary file beside it.
    const sig = join(d.dir, 'kept.sig');
    writeFileSync(sig, 'the previous signature');
    const refused = await ctl(['sign', '--key', 'cli/out@9', '--file', file, '--out', sig], 'signer');
    assert.deepEqual({ code: refused.code, stderr: refused.stderr }, { code: 1, stderr: 'sigilctl: NOT_FOUND: key cli/out has no version 9\n' });
    assert.equal(readFileSync(sig, 'utf8'), 'the previous signature');
    assert.deepEqual(temps(d.dir), []);
    // A good one replaces it whole.
    const good = await ctl(['sign', '--key', 'cli/out@1', '--file', file, '--out', sig], 'signer');
    assert.equal(good.code, 0, good.stderr);
    const pub = join(d.dir, 'out.pem');
    assert.equal((await ctl(['key', 'pubkey', 'cli/out@1', '--out', pub])).code, 0);
    assert.match(await openssl(['dgst', '-sha256', '-verify', pub, '-signature', sig, file]), /Verified OK/);
    assert.deepEqual(temps(d.dir), []);
    // From a pipe (no size to stat): the bytes read are reported, and the signature is of them.
    const piped = await run('bash', ['-c', 'exec "$0" "$1" sign --key cli/out --file /dev/stdin --out "$2" < "$3"', process.execPath, SIGILCTL, sig, file], {
      env: { ...env, SIGIL_CLIENT_CERT: d.ids.signer.cert, SIGIL_CLIENT_KEY: d.ids.signer.key },
    });
    assert.match(piped.stdout, /^signed \/dev\/stdin \(13 bytes\) with cli\/out@1/);
    assert.match(await openssl(['dgst', '-sha256', '-verify', pub, '-signature', sig, file]), /Verified OK/);
  });

  test('an Ed25519 file over the daemon\'s limits.maxMessageBytes fails before it is read, naming the limit', async () => {
    assert.equal((await ctl(['key', 'create', 'cli/ed-big', '--alg', 'ED25519'])).code, 0);
    const big = join(d.dir, 'big-ed.img');
    writeFileSync(big, randomBytes(1024 * 1024 + 1));
    const before = await signEntries();
    const out = join(d.dir, 'big-ed.sig');
    const r = await ctl(['sign', '--key', 'cli/ed-big', '--file', big, '--out', out], 'signer');
    assert.equal(r.code, 2);
    assert.equal(
      r.stderr,
      `sigilctl: --file ${big} is ${1024 * 1024 + 1} bytes: an Ed25519 key signs the whole file and sigild takes at most ${1024 * 1024} bytes (limits.maxMessageBytes); use an ECDSA or RSA key for large images\n`,
    );
    assert.equal(await signEntries(), before);
    assert.ok(!existsSync(out));
    assert.deepEqual(temps(d.dir), []);
    // At the limit it signs, and openssl verifies.
    const edge = join(d.dir, 'edge-ed.img');
    writeFileSync(edge, randomBytes(1024 * 1024));
    const ok = await ctl(['sign', '--key', 'cli/ed-big', '--file', edge, '--out', out], 'signer');
    assert.equal(ok.code, 0, ok.stderr);
    const pub = join(d.dir, 'ed-big.pem');
    await ctl(['key', 'pubkey', 'cli/ed-big', '--out', pub]);
    assert.match(await openssl(['pkeyutl', '-verify', '-pubin', '-inkey', pub, '-rawin', '-in', edge, '-sigfile', out]), /Signature Verified Successfully/);
  });

  test('command-line mistakes are one line with exit 2; refusals name what would have worked', async () => {
    // A missing required option: one line, no usage dump.
    const noKey = await ctl(['sign', '--file', join(d.dir, 'artifact.bin'), '--out', join(d.dir, 'x.sig')], 'signer');
    assert.deepEqual({ code: noKey.code, stderr: noKey.stderr }, { code: 2, stderr: "sigilctl: required option '--key <key>' not specified (see --help)\n" });
    // The same with --output json: a json document on stdout, as for every other error.
    const noKeyJson = await ctl(['-o', 'json', 'sign', '--file', join(d.dir, 'artifact.bin'), '--out', join(d.dir, 'x.sig')], 'signer');
    assert.equal(noKeyJson.code, 2);
    assert.deepEqual(JSON.parse(noKeyJson.stdout), { error: { code: 'INVALID_ARGUMENT', message: "required option '--key <key>' not specified (see --help)" } });
    // A global option after the command.
    const late = await ctl(['approvals', 'list', '--cert', d.ids.admin.cert]);
    assert.equal(late.code, 2);
    assert.equal(late.stderr, "sigilctl: unknown option '--cert': --addr, --ca, --cert, --key are global options and go before the command, e.g. sigilctl --cert ... COMMAND\n");
    const lateKey = await ctl(['approvals', 'list', '--key', d.ids.admin.key]);
    assert.equal(lateKey.code, 2);
    assert.match(lateKey.stderr, /^sigilctl: --key \S+admin-key\.pem after the command filters by key name; the client key goes before the command: sigilctl --cert FILE --key \S+ approvals list\n$/);
    // A command that takes a key name, given name@N.
    for (const cmd of [['key', 'show'], ['key', 'rotate']]) {
      const r = await ctl([...cmd, 'cli/p256@2']);
      assert.deepEqual({ code: r.code, stderr: r.stderr }, { code: 2, stderr: `sigilctl: sigilctl ${cmd.join(' ')} takes a key name without @N (got cli/p256@2): e.g. sigilctl ${cmd.join(' ')} cli/p256\n` });
    }
    // audit verify --key takes an audit public key: not a private key, not an RSA key.
    const priv = await ctl(['audit', 'verify', '--key', d.ids.admin.key]);
    assert.equal(priv.code, 2);
    assert.match(priv.stderr, /^sigilctl: --key \S+admin-key\.pem is a private key: pin an audit public key \(sigilctl audit keys prints them\).*\n$/);
    const rsaPub = join(d.dir, 'rsa-pub.pem');
    await ctl(['key', 'pubkey', 'cli/rsa', '--out', rsaPub]);
    const rsa = await ctl(['audit', 'verify', '--key', rsaPub]);
    assert.deepEqual({ code: rsa.code, stderr: rsa.stderr }, { code: 2, stderr: `sigilctl: --key ${rsaPub} is an rsa key, not an audit public key (Ed25519, or ECDSA P-256): sigilctl audit keys prints them\n` });
    // An auditor signing is told the roles that sign, not that admin would do.
    const file = join(d.dir, 'artifact.bin');
    const auditor = await ctl(['sign', '--key', 'cli/p256', '--file', file, '--out', join(d.dir, 'auditor.sig')], 'auditor');
    assert.deepEqual(
      { code: auditor.code, stderr: auditor.stderr },
      { code: 1, stderr: 'sigilctl: PERMISSION_DENIED: CN=test-auditor lacks the role signer or builder (to sign) or admin (to read public keys)\n' },
    );
    const admin = await ctl(['sign', '--key', 'cli/p256', '--file', file, '--out', join(d.dir, 'admin.sig')]);
    assert.deepEqual({ code: admin.code, stderr: admin.stderr }, { code: 1, stderr: 'sigilctl: PERMISSION_DENIED: CN=test-admin lacks the role signer or builder\n' });
  });

  test('audit tail -o json prints json lines: one compact object per line', async () => {
    const t = await ctl(['-o', 'json', 'audit', 'tail', '-n', '3']);
    assert.equal(t.code, 0, t.stderr);
    const lines = t.stdout.split('\n');
    assert.equal(lines.pop(), '');
    assert.equal(lines.length, 3);
    for (const l of lines) {
      const e = JSON.parse(l) as { index: number; entry: { act: string } };
      assert.equal(typeof e.index, 'number');
      assert.equal(typeof e.entry.act, 'string');
      assert.equal(JSON.stringify(e), l);
    }
  });

  test('an address that is not sigild\'s gRPC port, and a --ca with no certificate, say so', async () => {
    const metrics = d.daemon.metricsAddress!;
    const r = await run(process.execPath, [SIGILCTL, 'key', 'list'], { env: { ...env, SIGIL_ADDR: metrics, SIGIL_CLIENT_CERT: d.ids.admin.cert, SIGIL_CLIENT_KEY: d.ids.admin.key } }).catch((e: { code: number; stderr: string }) => e);
    assert.deepEqual(
      { code: (r as { code: number }).code, stderr: (r as { stderr: string }).stderr },
      { code: 1, stderr: `sigilctl: UNAVAILABLE: cannot reach sigild at ${metrics}: it does not answer with TLS there: give sigild's gRPC address (listen), not its metrics port\n` },
    );
    const notCa = join(d.dir, 'not-a-ca.md');
    writeFileSync(notCa, '# just text\n');
    const ca = await run(process.execPath, [SIGILCTL, 'key', 'list'], { env: { ...env, SIGIL_CACERT: notCa, SIGIL_CLIENT_CERT: d.ids.admin.cert, SIGIL_CLIENT_KEY: d.ids.admin.key } }).catch((e: { code: number; stderr: string }) => e);
    assert.deepEqual(
      { code: (ca as { code: number }).code, stderr: (ca as { stderr: string }).stderr },
      { code: 2, stderr: `sigilctl: the CA bundle ${notCa} (--ca, SIGIL_CACERT) holds no PEM certificate\n` },
    );
  });
});
