import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, generateKeyPairSync, randomBytes, X509Certificate } from 'node:crypto';
import { execFile } from 'node:child_process';
import { stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { status as Status, type ServiceError } from '@grpc/grpc-js';
import fc from 'fast-check';
import { missingTools } from '../helpers/hw.ts';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.ts';
import { startSwtpm, type Swtpm } from '../helpers/swtpm.ts';
import { createDevCa } from '../../src/dev/pki.ts';
import { connect, rpc, type Clients } from '../../src/cli/client.ts';
import { Attestor, builderClients, type AttestorOptions } from '../../src/cli/agent/attestor.ts';
import { Agent, type AgentEvent } from '../../src/cli/agent/agent.ts';
import { openTransport } from '../../src/tpm/transport.ts';
import { Tpm } from '../../src/tpm/tpm.ts';
import { TPM_ALG, TPMA_OBJECT } from '../../src/tpm/constants.ts';
import { activate, createAk, quoteWithPcrs, readEk, type Ak, type Ek } from '../../src/tpm/attestation-client.ts';
import { AK_TEMPLATE_ECC, templateBytes } from '../../src/tpm/templates.ts';
import { buildEventLog } from '../../src/attest/eventlog.ts';
import { SqliteStore } from '../../src/store/sqlite.ts';
import type { BeginEnrollmentResponse, Quote } from '../../src/gen/sigil/v1/attestation.ts';
import { reasonOf } from '../../src/cli/error-reason.ts';

const run = promisify(execFile);
const root = new URL('../..', import.meta.url).pathname;
const skip = missingTools('swtpm', 'swtpm_setup', 'openssl', 'softhsm');
const PCRS = [0, 1, 2, 3, 4, 5, 6, 7];
const ZEROS = Object.fromEntries(PCRS.map((i) => [String(i), '00'.repeat(32)]));
// The event-log policy judges PCRs 8 and 9, which tests extend; the golden policy judges 0-7.
const LOG_EVENTS = [
  { pcr: 8, type: 0x0d /* EV_IPL */, data: Buffer.from('grub_cmd linux /vmlinuz') },
  { pcr: 9, type: 0x0d, data: Buffer.from('/boot/initrd.img') },
];

const JOIN_TOKEN = randomBytes(32).toString('base64url');

let sw: Swtpm;
let td: TestDaemon;
let anon: Clients;
// The daemon's clock runs with the wall clock, shifted by `offset` when a test needs time to pass.
let offset = 0;
const clock = { now: () => new Date(Date.now() + offset) };

const sha256 = (...parts: Buffer[]): Buffer => {
  const h = createHash('sha256');
  for (const p of parts) h.update(p);
  return h.digest();
};

before(async () => {
  if (skip) return;
  sw = await startSwtpm();
  const otherCa = await createDevCa('not the ek ca');
  const { mkdtemp } = await import('node:fs/promises');
  const { tmpdir } = await import('node:os');
  const dir = await mkdtemp(join(tmpdir(), 'sigil-att-'));
  const otherCaFile = join(dir, 'other-ca.pem');
  await writeFile(otherCaFile, otherCa.cert);
  const policy = { ekCaFiles: [sw.ekCaFile], pcrs: { bank: 'sha256', select: PCRS }, golden: [ZEROS] };
  const tokenFile = join(dir, 'join-tokens');
  await writeFile(tokenFile, `# pool ci-east\n${createHash('sha256').update(JOIN_TOKEN).digest('hex')}\n`);
  td = await startTestDaemon({
    clock,
    extraConfig: {
      identity: { trustDomain: 'sigil.test' },
      authorization: { builders: [{ keys: ['ci/*'], identities: [
        { san: 'spiffe://sigil.test/builder/tpm/*', policy: 'ci', claims: { repository: 'acme/*' } },
        { san: 'spiffe://sigil.test/builder/tpm/*', policy: 'evlog', claims: { repository: 'acme/*' } },
      ] }] },
      attestation: {
        policies: {
          ci: policy,
          'wrong-ca': { ...policy, ekCaFiles: [otherCaFile] },
          allowlist: { pcrs: policy.pcrs, golden: policy.golden, ekHashes: ['ab'.repeat(32)] },
          rsa: { ...policy, akAlgorithms: ['rsa'], identityLifetime: '5m' },
          joined: { ...policy, joinTokenFile: tokenFile },
          evlog: {
            ekCaFiles: [sw.ekCaFile],
            pcrs: { bank: 'sha256', select: [8, 9] },
            eventLog: { rules: [{ pcr: 8, type: 'EV_IPL', text: 'grub_cmd linux /vmlinuz', require: true }, { pcr: 9, type: 'EV_IPL', text: '/boot/initrd.img' }] },
          },
        },
      },
    },
  });
  anon = td.client('anonymous');
  const admin = td.client('admin');
  await rpc.createKey(admin, { name: 'ci/provenance', algorithm: 1, backend: '' });
  await rpc.createKey(admin, { name: 'release/firmware', algorithm: 1, backend: '' });
});

after(async () => {
  await td?.stop();
  await sw?.stop();
});

function agentOptions(o: Partial<AttestorOptions> = {}): AttestorOptions {
  return { addr: td.address, ca: td.ca, tpm: sw.tcti, policy: 'ci', ek: 'rsa', ak: 'ecc', claims: { repository: 'acme/widgets', ref: 'refs/heads/main' }, lifetimeSeconds: 0, ...o };
}

async function withTpm<T>(fn: (tpm: Tpm) => Promise<T>): Promise<T> {
  const tpm = new Tpm(await openTransport(sw.tcti));
  try {
    return await fn(tpm);
  } finally {
    // swtpm has no resource manager: whatever a test left loaded (also on failure) is flushed here.
    for (const h of await tpm.getHandles(0x80000000)) await tpm.flushContext(h);
    await tpm.close();
  }
}

/** Step one by hand: EK, AK (or a given one), BeginEnrollment. Leaves EK and AK loaded. */
async function begin(tpm: Tpm, policy: string, ak?: Ak): Promise<{ ek: Ek; ak: Ak; res: BeginEnrollmentResponse }> {
  const ek = await readEk(tpm, 'rsa');
  const theAk = ak ?? (await createAk(tpm, 'ecc', ek));
  const res = await rpc.beginEnrollment(anon, { policy, ekCertificate: ek.cert!, ekPublic: ek.public.raw, akPublic: theAk.public.raw, joinToken: '', renewal: false });
  return { ek, ak: theAk, res };
}

function identityKey(): { spki: Buffer } {
  const { publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  return { spki: publicKey.export({ type: 'spki', format: 'der' }) };
}

async function quote(tpm: Tpm, ak: Ak, extraData: Buffer, pcrs = PCRS, bank: number = TPM_ALG.SHA256, eventLog?: Buffer): Promise<Quote> {
  const q = await quoteWithPcrs(tpm, ak, extraData, [{ hash: bank, pcrs }]);
  return { attest: q.attest, signature: q.signature, pcrValues: Object.fromEntries(q.pcrValues), eventLog: eventLog ?? Buffer.alloc(0) };
}

async function finish(nonce: Buffer, secret: Buffer, q: Quote, spki: Buffer) {
  return rpc.finishEnrollment(anon, { nonce, activatedSecret: secret, quote: q, identityPublicKey: spki, claims: { repository: 'acme/widgets' }, lifetimeSeconds: 0 });
}

/** Asserts a gRPC refusal with `code` whose message matches `re` (and reason, when given), and that the audit log has the refusal. */
async function refused(p: Promise<unknown>, code: Status, re: RegExp, reason?: string): Promise<void> {
  const seen = td.logs().length;
  await assert.rejects(p, (err: ServiceError) => {
    assert.equal(err.code, code, `got ${Status[err.code]}: ${err.details}`);
    assert.match(err.details, re);
    if (reason !== undefined) assert.equal(reasonOf(err), reason);
    return true;
  });
  const lines = td.logs().slice(seen);
  assert.ok(
    lines.some((l) => /enrollment refused|renewal refused/.test(String(l.msg)) && re.test(String(l.detail))),
    `no refusal log entry matching ${re}: ${JSON.stringify(lines.map((l) => l.msg))}`,
  );
}

async function signAs(clients: Clients, key: string): Promise<void> {
  await rpc.sign(clients, { key, digest: sha256(Buffer.from('artifact')), message: undefined });
}

test('an ECC AK enrolls, signs with its builder identity, and the chain verifies with openssl', { skip: skip ?? false }, async () => {
  const attestor = new Attestor(agentOptions());
  const id = await attestor.enroll();
  const ekHash = await withTpm(async (tpm) => {
    const ek = await readEk(tpm, 'rsa');
    await tpm.flushContext(ek.handle);
    return createHash('sha256').update(new X509Certificate(ek.cert!).publicKey.export({ type: 'spki', format: 'der' })).digest('hex');
  });
  assert.equal(id.spiffeId, `spiffe://sigil.test/builder/tpm/${ekHash}`);
  const lifetime = id.notAfter.getTime() - clock.now().getTime();
  assert.ok(lifetime > 14 * 60_000 && lifetime <= 15 * 60_000, `lifetime ${lifetime}`);
  const dir = td.dir;
  await writeFile(join(dir, 'builder.pem'), id.certificatePem);
  await writeFile(join(dir, 'identity-ca.pem'), id.caCertificatePem);
  const { stdout } = await run('openssl', ['verify', '-CAfile', join(dir, 'identity-ca.pem'), join(dir, 'builder.pem')]);
  assert.match(stdout, /builder\.pem: OK/);

  const c = builderClients(td.address, td.ca, id);
  try {
    await signAs(c, 'ci/provenance');
    await assert.rejects(signAs(c, 'release/firmware'), (e: ServiceError) => e.code === Status.PERMISSION_DENIED && /may not use key release\/firmware/.test(e.details));
  } finally {
    c.close();
  }
  assert.ok(td.logs().some((l) => l.msg === 'builder enrolled' && l.ekHash === ekHash));
});

test('an RSA AK enrolls under a policy that accepts only RSA AKs, with its lifetime; an ECC AK is refused there', { skip: skip ?? false }, async () => {
  const id = await new Attestor(agentOptions({ ak: 'rsa', policy: 'rsa', lifetimeSeconds: 3600 })).enroll();
  assert.match(id.spiffeId, /^spiffe:\/\/sigil\.test\/builder\/tpm\/[0-9a-f]{64}$/);
  // The runner asked for an hour; the policy's identityLifetime (5m) caps it.
  const lifetime = id.notAfter.getTime() - clock.now().getTime();
  assert.ok(lifetime > 4 * 60_000 && lifetime <= 5 * 60_000, `lifetime ${lifetime}`);
  await refused(new Attestor(agentOptions({ ak: 'ecc', policy: 'rsa' })).enroll(), Status.PERMISSION_DENIED, /ak/);
});

test('renewal: a fresh quote gives a new certificate for a new key', { skip: skip ?? false }, async () => {
  const attestor = new Attestor(agentOptions());
  const first = await attestor.enroll();
  const second = await attestor.renew(first);
  assert.notEqual(second.certificatePem, first.certificatePem);
  assert.equal(second.spiffeId, first.spiffeId);
  const c = builderClients(td.address, td.ca, second);
  try {
    await signAs(c, 'ci/provenance');
  } finally {
    c.close();
  }
  assert.ok(td.logs().some((l) => l.msg === 'builder renewed'));
});

test('an EK certificate no trusted CA issued is refused', { skip: skip ?? false }, async () => {
  await refused(new Attestor(agentOptions({ policy: 'wrong-ca' })).enroll(), Status.PERMISSION_DENIED, /untrusted ek certificate/);
});

test('an EK not on the allowlist is refused', { skip: skip ?? false }, async () => {
  await refused(new Attestor(agentOptions({ policy: 'allowlist' })).enroll(), Status.PERMISSION_DENIED, /not on the allowlist/);
});

test('a policy with a join-token file needs a listed token, once', { skip: skip ?? false }, async () => {
  await refused(new Attestor(agentOptions({ policy: 'joined' })).enroll(), Status.PERMISSION_DENIED, /needs a join token/);
  await refused(new Attestor(agentOptions({ policy: 'joined', joinToken: 'not-a-token' })).enroll(), Status.PERMISSION_DENIED, /unknown join token/);
  const id = await new Attestor(agentOptions({ policy: 'joined', joinToken: JOIN_TOKEN })).enroll();
  assert.match(id.spiffeId, /builder\/tpm\//);
  await refused(new Attestor(agentOptions({ policy: 'joined', joinToken: JOIN_TOKEN })).enroll(), Status.PERMISSION_DENIED, /join token already used/);
  await refused(new Attestor(agentOptions({ policy: 'ci', joinToken: JOIN_TOKEN })).enroll(), Status.INVALID_ARGUMENT, /takes no join token/);
});

test('fuzz: mutated and random enrollment requests get clear refusals, never INTERNAL', { skip: skip ?? false }, async () => {
  const genuine = await withTpm(async (tpm) => {
    const ek = await readEk(tpm, 'rsa');
    const ak = await createAk(tpm, 'ecc', ek);
    return { ekCert: ek.cert!, ekPublic: ek.public.raw, akPublic: ak.public.raw };
  });
  const mutate = fc.tuple(fc.nat(), fc.integer({ min: 1, max: 255 })).map(([at, x]) => (b: Buffer): Buffer => {
    const c = Buffer.from(b);
    if (c.length > 0) c[at % c.length]! ^= x;
    return c;
  });
  const field = (b: Buffer) => fc.oneof(fc.constant(b), fc.uint8Array({ maxLength: 600 }).map((u) => Buffer.from(u)), mutate.map((m) => m(b)), fc.nat(b.length).map((n) => b.subarray(0, n)));
  const allowed = new Set([Status.INVALID_ARGUMENT, Status.PERMISSION_DENIED, Status.FAILED_PRECONDITION]);
  await fc.assert(
    fc.asyncProperty(field(genuine.ekCert), field(genuine.ekPublic), field(genuine.akPublic), async (ekCertificate, ekPublic, akPublic) => {
      try {
        await rpc.beginEnrollment(anon, { policy: 'ci', ekCertificate, ekPublic, akPublic, joinToken: '', renewal: false });
      } catch (err) {
        const e = err as ServiceError;
        assert.ok(allowed.has(e.code), `${Status[e.code]}: ${e.details}`);
      }
    }),
    { numRuns: 150 },
  );
  await fc.assert(
    fc.asyncProperty(fc.uint8Array({ maxLength: 64 }), fc.uint8Array({ maxLength: 400 }), fc.uint8Array({ maxLength: 300 }), async (nonce, attest, signature) => {
      const e = await finish(Buffer.from(nonce), randomBytes(32), { attest: Buffer.from(attest), signature: Buffer.from(signature), pcrValues: {}, eventLog: Buffer.alloc(0) }, identityKey().spki).then(
        () => assert.fail('a random finish was accepted'),
        (err: ServiceError) => err,
      );
      assert.ok(allowed.has(e.code), `${Status[e.code]}: ${e.details}`);
    }),
    { numRuns: 100 },
  );
  // The daemon still enrolls after all that.
  await new Attestor(agentOptions()).enroll();
});

test('an AK without restricted is refused before any credential is made', { skip: skip ?? false }, async () => {
  await withTpm(async (tpm) => {
    const ek = await readEk(tpm, 'rsa');
    const loose = { ...AK_TEMPLATE_ECC, objectAttributes: AK_TEMPLATE_ECC.objectAttributes & ~TPMA_OBJECT.restricted };
    const created = await tpm.create(ek.handle, templateBytes(loose), { parentAuth: 'endorsement-policy' });
    await tpm.flushContext(ek.handle);
    await refused(
      rpc.beginEnrollment(anon, { policy: 'ci', ekCertificate: ek.cert!, ekPublic: ek.public.raw, akPublic: created.public.raw, joinToken: '', renewal: false }),
      Status.PERMISSION_DENIED,
      /ak is not restricted/,
    );
  });
});

test('a credential made for another AK name does not activate, and a guessed secret is refused', { skip: skip ?? false }, async () => {
  await withTpm(async (tpm) => {
    // The runner claims AK "claimed" but holds only "real" in this TPM: the TPM refuses to release
    // the secret for an object whose name differs from the one the credential was made for.
    const { ek, ak: claimed, res } = await begin(tpm, 'ci');
    await tpm.flushContext(claimed.handle);
    const real = await createAk(tpm, 'ecc', ek);
    await assert.rejects(activate(tpm, ek, real, res.credentialBlob, res.encryptedSecret), /TPM_RC_INTEGRITY|0x1df/i);
    const { spki } = identityKey();
    const q = await quote(tpm, real, sha256(res.nonce, spki));
    await refused(finish(res.nonce, randomBytes(32), q, spki), Status.PERMISSION_DENIED, /activated secret does not match/);
    await tpm.flushContext(ek.handle);
    await tpm.flushContext(real.handle);
  });
});

test('replayed and expired nonces are refused', { skip: skip ?? false }, async () => {
  await withTpm(async (tpm) => {
    const { ek, ak, res } = await begin(tpm, 'ci');
    const secret = await activate(tpm, ek, ak, res.credentialBlob, res.encryptedSecret);
    const { spki } = identityKey();
    const q = await quote(tpm, ak, sha256(res.nonce, spki));
    await finish(res.nonce, secret, q, spki);
    await refused(finish(res.nonce, secret, q, spki), Status.FAILED_PRECONDITION, /unknown or already used nonce/);

    const second = await rpc.beginEnrollment(anon, { policy: 'ci', ekCertificate: ek.cert!, ekPublic: ek.public.raw, akPublic: ak.public.raw, joinToken: '', renewal: false });
    const secret2 = await activate(tpm, ek, ak, second.credentialBlob, second.encryptedSecret);
    const q2 = await quote(tpm, ak, sha256(second.nonce, spki));
    offset += 61_000;
    try {
      await refused(finish(second.nonce, secret2, q2, spki), Status.FAILED_PRECONDITION, /nonce expired/);
    } finally {
      // Certificates issued later must be valid by the wall clock too (TLS checks them with it).
      offset -= 61_000;
    }
    await tpm.flushContext(ek.handle);
    await tpm.flushContext(ak.handle);
  });
});

test('quotes that bind another identity key, cover another selection or the sha1 bank, or are not quotes are refused', { skip: skip ?? false }, async () => {
  await withTpm(async (tpm) => {
    const cases: Array<{ name: string; re: RegExp; make: (ak: Ak, nonce: Buffer, spki: Buffer) => Promise<Quote> }> = [
      { name: 'other key', re: /extraData/, make: (ak, nonce) => quote(tpm, ak, sha256(nonce, identityKey().spki)) },
      { name: 'other selection', re: /pcr selection|selection/, make: (ak, nonce, spki) => quote(tpm, ak, sha256(nonce, spki), [0, 1, 2, 3, 4, 5, 6]) },
      {
        // swtpm has only the sha256 bank active: a sha1 quote carries an empty selection, presented
        // here with the (genuine) sha256 values.
        name: 'sha1 bank',
        re: /sha1/,
        make: async (ak, nonce, spki) => {
          const q = await tpm.quote(ak.handle, sha256(nonce, spki), [{ hash: TPM_ALG.SHA1, pcrs: PCRS }]);
          const values = await tpm.pcrRead([{ hash: TPM_ALG.SHA256, pcrs: PCRS }]);
          return { attest: q.attest, signature: q.signature, pcrValues: Object.fromEntries(values), eventLog: Buffer.alloc(0) };
        },
      },
      {
        name: 'certify',
        re: /not a quote/,
        make: async (ak, nonce, spki) => {
          const c = await tpm.certify(ak.handle, ak.handle, sha256(nonce, spki));
          return { attest: c.attest, signature: c.signature, pcrValues: {}, eventLog: Buffer.alloc(0) };
        },
      },
    ];
    for (const c of cases) {
      const { ek, ak, res } = await begin(tpm, 'ci');
      const secret = await activate(tpm, ek, ak, res.credentialBlob, res.encryptedSecret);
      await tpm.flushContext(ek.handle);
      const { spki } = identityKey();
      const q = await c.make(ak, res.nonce, spki).catch((err: unknown) => {
        throw new Error(`${c.name}: ${String(err)}`);
      });
      await refused(finish(res.nonce, secret, q, spki), Status.PERMISSION_DENIED, c.re);
      await tpm.flushContext(ak.handle);
    }
  });
});

test('resetCount going backwards is refused', { skip: skip ?? false }, async () => {
  const attestor = new Attestor(agentOptions());
  const id = await attestor.enroll();
  const ekHash = id.spiffeId.split('/').pop()!;
  // Record evidence from "a later boot" than the TPM now reports, as a rolled-back TPM state would show.
  const store = new SqliteStore(join(td.dir, 'sigil.db'));
  const rec = store.getEnrollment(ekHash)!;
  try {
    store.putEnrollment({ ...rec, resetCount: rec.resetCount + 5 });
    await refused(attestor.renew(id), Status.PERMISSION_DENIED, /resetCount went backwards/, 'TPM_CLOCK_WENT_BACKWARDS');
    await refused(new Attestor(agentOptions()).enroll(), Status.PERMISSION_DENIED, /resetCount went backwards/, 'TPM_CLOCK_WENT_BACKWARDS');
    // Nothing was recorded by the refused attempts.
    assert.equal(store.getEnrollment(ekHash)!.resetCount, rec.resetCount + 5);
  } finally {
    store.putEnrollment(rec);
    store.close();
  }
});

test('an event log that replays to the quoted PCRs passes its rules; one that does not is refused', { skip: skip ?? false }, async () => {
  const log = buildEventLog(LOG_EVENTS.map((e) => ({ ...e })));
  const tampered = buildEventLog([LOG_EVENTS[0]!, { ...LOG_EVENTS[1]!, data: Buffer.from('/boot/evil.img') }]);
  await withTpm(async (tpm) => {
    // Extend the events' SHA-256 digests into swtpm's PCRs as firmware would.
    for (const e of LOG_EVENTS) await tpm.pcrExtend(e.pcr, [{ hash: TPM_ALG.SHA256, digest: sha256(e.data) }]);
  });
  const logFile = join(td.dir, 'event.log');
  const badFile = join(td.dir, 'tampered.log');
  await writeFile(logFile, log);
  await writeFile(badFile, tampered);
  const id = await new Attestor(agentOptions({ policy: 'evlog', eventLogPath: logFile })).enroll();
  assert.match(id.spiffeId, /builder\/tpm\//);
  await refused(new Attestor(agentOptions({ policy: 'evlog', eventLogPath: badFile })).enroll(), Status.PERMISSION_DENIED, /event log|replay/);
});

test('a PCR changed by PCR_Extend after enrollment makes renewal fail', { skip: skip ?? false }, async () => {
  const attestor = new Attestor(agentOptions());
  const id = await attestor.enroll();
  await withTpm((tpm) => tpm.pcrExtend(7, [{ hash: TPM_ALG.SHA256, digest: sha256(Buffer.from('a new bootloader')) }]));
  await refused(attestor.renew(id), Status.PERMISSION_DENIED, /pcr|golden/i);
});

test('the agent renews at half-life with a fresh quote and serves signatures on its socket', { skip: skip ?? false }, async () => {
  // PCR 7 was extended by the test before: enroll under the event-log policy, which judges PCRs 8-9.
  const events: AgentEvent[] = [];
  const agent = new Agent(agentOptions({ policy: 'evlog', eventLogPath: join(td.dir, 'event.log'), lifetimeSeconds: 4 }), (e) => events.push(e));
  const sock = join(td.dir, 'agent', 'agent.sock');
  try {
    const first = await agent.enroll();
    await agent.listen(sock);
    assert.equal((await stat(sock)).mode & 0o777, 0o600);
    // Renewal at half-life (2 s): wait for it rather than for a fixed time (a loaded machine is slower).
    for (const end = Date.now() + 15_000; !events.some((e) => e.event === 'renewed'); ) {
      if (Date.now() > end) assert.fail(`no renewal within 15 s: ${JSON.stringify(events)}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.deepEqual(events.slice(0, 2).map((e) => e.event), ['enrolled', 'renewed'], JSON.stringify(events));
    assert.notEqual(agent.identity!.certificatePem, first.certificatePem);
    const { stdout } = await run(process.execPath, [join(root, 'bin/sigil-agent.js'), 'sign', '--key', 'ci/provenance', '--file', join(root, 'README.md'), '--out', join(td.dir, 'readme.sig'), '--socket', sock]);
    assert.match(stdout, /signed .*README\.md .* with ci\/provenance@1/);
    const pub = await rpc.getPublicKey(td.client('signer'), { key: 'ci/provenance' });
    await writeFile(join(td.dir, 'ci.pem'), pub.pem);
    await run('openssl', ['dgst', '-sha256', '-verify', join(td.dir, 'ci.pem'), '-signature', join(td.dir, 'readme.sig'), join(root, 'README.md')]);
  } finally {
    await agent.stop();
  }
});

test('an expired builder certificate cannot renew or sign', { skip: skip ?? false }, async () => {
  // PCR 7 was extended by the test before: enroll under the event-log policy, which judges PCRs 8-9.
  const logFile = join(td.dir, 'event.log');
  const attestor = new Attestor(agentOptions({ policy: 'evlog', eventLogPath: logFile, lifetimeSeconds: 60 }));
  const id = await attestor.enroll();
  offset += 2 * 60_000;
  const c: Clients = connect({ addr: td.address, ca: td.ca, key: id.keyPem, cert: Buffer.from(id.certificatePem) });
  try {
    await assert.rejects(signAs(c, 'ci/provenance'), (e: ServiceError) => e.code === Status.UNAUTHENTICATED && /expired/.test(e.details));
  } finally {
    c.close();
  }
  await assert.rejects(attestor.renew(id), (e: ServiceError) => e.code === Status.UNAUTHENTICATED);
});
