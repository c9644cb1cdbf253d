import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash, generateKeyPairSync, X509Certificate } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { makeCredential, tpm2ToolsCredentialFile } from '../../src/attest/credential.ts';
import { ekHash, trustEk } from '../../src/attest/ek.ts';
import { buildEventLog, EV, type EventSpec } from '../../src/attest/eventlog.ts';
import { MemoryEnrollmentRecords } from '../../src/attest/enrollment-records.ts';
import type { AttestationPolicy } from '../../src/attest/policy.ts';
import { akQualifiedName, Verifier, type Attestation } from '../../src/attest/verifier.ts';
import { isSigilError } from '../../src/errors.ts';
import { TPM_ALG } from '../../src/tpm/constants.ts';
import { objectName, parseAttest, parsePublic2B, type TpmPublic } from '../../src/tpm/structures.ts';
import { missingTools } from '../helpers/hw.ts';
import { startSwtpm, type Swtpm } from '../helpers/swtpm.ts';

const skip = missingTools(
  'swtpm', 'swtpm_setup', 'openssl', 'tpm2_createek', 'tpm2_createak', 'tpm2_activatecredential', 'tpm2_startauthsession',
  'tpm2_policysecret', 'tpm2_policyor', 'tpm2_flushcontext', 'tpm2_quote', 'tpm2_certify', 'tpm2_pcrextend', 'tpm2_nvread',
  'tpm2_readpublic', 'tpm2_createprimary', 'tpm2_create', 'tpm2_load',
);
const run = promisify(execFile);
const SELECT = [0, 1, 2, 3, 4, 5, 6, 7];
const zeros = new Map(SELECT.map((p) => [p, Buffer.alloc(32)]));

// The TCG EK profile's PolicyA and PolicyC (SHA-384), the branches of the P-384 EK's PolicyOR.
const POLICY_A_SHA384 = '8bbf2266537c171cb56e403c4dc1d4b64f432611dc386e6f532050c3278c930e143e8bb1133824ccb431053871c6db53';
const POLICY_C_SHA384 = 'd6032ce61f2fb3c240eb3cf6a33237ef2b6a16f4293c22b455e261cffd217ad5b4947c2d73e63005eed2dc2b3593d165';

type AkKind = 'ecdsa' | 'rsassa' | 'rsapss';

/** A runner driven by tpm2-tools on one swtpm: the independent client of the verifier. */
class Runner {
  readonly tpm: Swtpm;
  readonly dir: string;
  constructor(tpm: Swtpm, dir: string) {
    this.tpm = tpm;
    this.dir = dir;
  }

  static async start(): Promise<Runner> {
    const tpm = await startSwtpm();
    return new Runner(tpm, await mkdtemp(join(tmpdir(), 'sigil-attest-')));
  }

  async stop(): Promise<void> {
    await this.tpm.stop();
    await rm(this.dir, { recursive: true, force: true });
  }

  // swtpm has no resource manager: flush what each tool leaves loaded (NOTES).
  async sh(cmd: string, args: string[]): Promise<string> {
    try {
      const { stdout } = await run(cmd, args, { cwd: this.dir, env: { ...process.env, TPM2TOOLS_TCTI: this.tpm.tcti } });
      return stdout;
    } finally {
      await run('tpm2_flushcontext', ['-t'], { cwd: this.dir, env: { ...process.env, TPM2TOOLS_TCTI: this.tpm.tcti } });
      await run('tpm2_flushcontext', ['-s'], { cwd: this.dir, env: { ...process.env, TPM2TOOLS_TCTI: this.tpm.tcti } });
    }
  }

  file(name: string): string {
    return join(this.dir, name);
  }

  async ek(kind: 'rsa' | 'ecc' | 'ecc384' = 'rsa'): Promise<{ pub: TpmPublic; cert: Buffer }> {
    await this.sh('tpm2_createek', ['-c', `ek-${kind}.ctx`, '-G', kind, '-u', `ek-${kind}.pub`]);
    const nv = kind === 'rsa' ? '0x01c00002' : kind === 'ecc384' ? '0x01c00016' : undefined;
    if (nv !== undefined) await this.sh('tpm2_nvread', [nv, '-o', `ek-${kind}.der`]);
    return { pub: parsePublic2B(await readFile(this.file(`ek-${kind}.pub`))), cert: nv ? await readFile(this.file(`ek-${kind}.der`)) : Buffer.alloc(0) };
  }

  async ak(kind: AkKind, ek = 'rsa'): Promise<TpmPublic> {
    const g = kind === 'ecdsa' ? 'ecc' : 'rsa';
    await this.sh('tpm2_createak', ['-C', `ek-${ek}.ctx`, '-c', `ak-${kind}.ctx`, '-G', g, '-g', 'sha256', '-s', kind, '-u', `ak-${kind}.pub`, '-n', `ak-${kind}.name`]);
    const pub = parsePublic2B(await readFile(this.file(`ak-${kind}.pub`)));
    assert.deepEqual(objectName(pub), await readFile(this.file(`ak-${kind}.name`)));
    return pub;
  }

  /** tpm2_activatecredential under the EK's policy; the released secret. */
  async activate(cred: { credentialBlob: Buffer; encryptedSecret: Buffer }, ak: string, ek = 'rsa'): Promise<Buffer> {
    await writeFile(this.file('cred.bin'), tpm2ToolsCredentialFile(cred));
    const env = { ...process.env, TPM2TOOLS_TCTI: this.tpm.tcti };
    // The session has to survive between tools, so these run without the per-tool flush.
    const raw = (cmd: string, args: string[]) => run(cmd, args, { cwd: this.dir, env });
    try {
      await raw('tpm2_startauthsession', ['--policy-session', '-S', 'ek-session.ctx', '-g', ek === 'ecc384' ? 'sha384' : 'sha256']);
      await raw('tpm2_policysecret', ['-S', 'ek-session.ctx', '-c', 'e']);
      if (ek === 'ecc384') {
        await writeFile(this.file('pa.bin'), Buffer.from(POLICY_A_SHA384, 'hex'));
        await writeFile(this.file('pc.bin'), Buffer.from(POLICY_C_SHA384, 'hex'));
        await raw('tpm2_policyor', ['-S', 'ek-session.ctx', '-l', 'sha384:pa.bin,pc.bin']);
      }
      await raw('tpm2_activatecredential', ['-c', `ak-${ak}.ctx`, '-C', `ek-${ek}.ctx`, '-i', 'cred.bin', '-o', 'secret.bin', '-P', 'session:ek-session.ctx']);
    } finally {
      await raw('tpm2_flushcontext', ['-t']);
      await raw('tpm2_flushcontext', ['-s']);
    }
    return readFile(this.file('secret.bin'));
  }

  /** tpm2_quote over `extraData` with the AK's own scheme; returns the wire forms the verifier takes. */
  async quote(ak: AkKind, extraData: Buffer, pcrList = `sha256:${SELECT.join(',')}`) {
    await this.sh('tpm2_quote', [
      '-c', `ak-${ak}.ctx`, '-l', pcrList, '-q', extraData.toString('hex'), '-m', 'quote.msg', '-s', 'quote.sig',
      '-o', 'quote.pcrs', '-F', 'values', '--scheme', ak, '-g', 'sha256',
    ]);
    const values = await readFile(this.file('quote.pcrs'));
    const pcrValues = new Map<number, Buffer>();
    if (values.length === SELECT.length * 32) SELECT.forEach((p, i) => pcrValues.set(p, values.subarray(i * 32, i * 32 + 32)));
    return { quote: await readFile(this.file('quote.msg')), quoteSignature: await readFile(this.file('quote.sig')), pcrValues };
  }

  async extend(pcr: number, digest: Buffer): Promise<void> {
    await this.sh('tpm2_pcrextend', [`${pcr}:sha256=${digest.toString('hex')}`]);
  }
}

function identity(): Buffer {
  return generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ type: 'spki', format: 'der' });
}

function bind(nonce: Buffer, spki: Buffer): Buffer {
  return createHash('sha256').update(nonce).update(spki).digest();
}

function policy(name: string, over: Partial<AttestationPolicy>): AttestationPolicy {
  return {
    name,
    ekCas: [],
    ekHashes: new Set(),
    pcrs: { bank: 'sha256', hashAlg: TPM_ALG.SHA256, select: SELECT },
    golden: [zeros],
    akAlgorithms: new Set(['rsa', 'ecc']),
    ...over,
  };
}

function caBundle(pem: string): X509Certificate[] {
  return (pem.match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g) ?? []).map((p) => new X509Certificate(p));
}

const denied = (m: string | RegExp) => (e: unknown) => isSigilError(e, 'PERMISSION_DENIED') && (typeof m === 'string' ? e.message === m : m.test(e.message));

describe('attestation against swtpm and tpm2-tools', { skip: skip ?? false }, () => {
  let r: Runner;
  let ek: { pub: TpmPublic; cert: Buffer };
  let cas: X509Certificate[];
  let records: MemoryEnrollmentRecords;
  let verifier: Verifier;
  const cpu: number[] = [];

  before(async () => {
    r = await Runner.start();
    ek = await r.ek('rsa');
    cas = caBundle(await readFile(r.tpm.ekCaFile, 'utf8'));
    records = new MemoryEnrollmentRecords();
    verifier = new Verifier({
      policies: new Map([
        ['ci', policy('ci', { ekCas: cas })],
        ['rsa-only', policy('rsa-only', { ekCas: cas, akAlgorithms: new Set(['rsa']) })],
      ]),
      clock: { now: () => new Date() },
      records,
    });
  });
  after(async () => {
    await r?.stop();
    if (cpu.length) {
      const sorted = [...cpu].sort((a, b) => a - b);
      console.log(`# verifier cpu per enrollment (begin+finish), ms: median ${sorted[sorted.length >> 1]!.toFixed(2)}, min ${sorted[0]!.toFixed(2)}, max ${sorted.at(-1)!.toFixed(2)}, n=${cpu.length}`);
    }
  });

  /** One whole enrollment; `tamper` may alter the evidence before finish. */
  async function enroll(akKind: AkKind, opts: { policy?: string; ekCert?: Buffer | null; certOnly?: boolean; tamper?: (ev: Parameters<Verifier['finish']>[0]) => void; measure?: boolean } = {}): Promise<Attestation> {
    const ak = await r.ak(akKind);
    const c0 = process.cpuUsage();
    const ch = await verifier.begin({ policy: opts.policy ?? 'ci', ...(opts.ekCert !== null ? { ekCert: opts.ekCert ?? ek.cert } : {}), ...(opts.certOnly ? {} : { ekPublic: ek.pub.raw }), akPublic: ak.raw });
    let used = process.cpuUsage(c0);
    const activatedSecret = await r.activate(ch, akKind);
    const spki = identity();
    const q = await r.quote(akKind, bind(ch.nonce, spki));
    const ev = { nonce: ch.nonce, activatedSecret, ...q, identitySpki: spki };
    opts.tamper?.(ev);
    const c1 = process.cpuUsage();
    try {
      return await verifier.finish(ev);
    } finally {
      const f = process.cpuUsage(c1);
      used = { user: used.user + f.user, system: used.system + f.system };
      if (opts.measure) cpu.push((used.user + used.system) / 1000);
    }
  }

  test('enrollment with ecdsa, rsassa and rsapss aks is accepted', async () => {
    for (const kind of ['ecdsa', 'rsassa', 'rsapss'] as const) {
      const a = await enroll(kind, { measure: true });
      assert.equal(a.ekHash, ekHash(new X509Certificate(ek.cert).publicKey.export({ type: 'spki', format: 'der' })));
      assert.equal(a.akName, (await readFile(r.file(`ak-${kind}.name`))).toString('hex'));
      assert.equal(a.policy, 'ci');
      assert.deepEqual(a.pcrSelection, { hash: TPM_ALG.SHA256, pcrs: SELECT });
      assert.equal(a.pcrDigest, createHash('sha256').update(Buffer.alloc(32 * 8)).digest('hex'));
      const rec = await records.get(a.ekHash);
      assert.equal(rec?.akName, a.akName);
      assert.equal(rec?.resetCount, a.clockInfo.resetCount);
    }
  });

  test('an ek certificate alone suffices: the default ek template is assumed', async () => {
    const a = await enroll('rsassa', { certOnly: true });
    assert.equal(a.policy, 'ci');
    // Exactly the TPM's EK public area (template L-1; H-3 for swtpm's P-384 EK): its name feeds the qualifiedSigner check.
    assert.deepEqual((await records.get(a.ekHash))!.ekPublic, ek.pub.raw);
    const p384 = await r.ek('ecc384');
    assert.deepEqual(trustEk({ ekCert: p384.cert }, { ekCas: cas, ekHashes: new Set() }, new Date()).ekPublic.raw, p384.pub.raw);
  });

  test('cpu per enrollment, measured over more runs', async () => {
    for (let i = 0; i < 8; i++) await enroll(i % 2 ? 'rsassa' : 'ecdsa', { measure: true });
    const sorted = [...cpu].sort((a, b) => a - b);
    assert.ok(sorted[sorted.length >> 1]! < 50, `median ${sorted[sorted.length >> 1]} ms`);
  });

  test('renewal: a fresh quote with the enrolled ak', async () => {
    const a = await enroll('ecdsa');
    const nonce = await verifier.renewChallenge({ ekHash: a.ekHash, akName: a.akName });
    const spki = identity();
    const q = await r.quote('ecdsa', bind(nonce, spki));
    const b = await verifier.renew({ nonce, ...q, identitySpki: spki });
    assert.equal(b.akName, a.akName);
    await assert.rejects(verifier.renew({ nonce, ...q, identitySpki: spki }), (e: unknown) => isSigilError(e, 'FAILED_PRECONDITION'));
    // Another AK of the same TPM, never enrolled, gets no challenge.
    const other = await r.ak('rsassa');
    await assert.rejects(verifier.renewChallenge({ ekHash: a.ekHash, akName: objectName(other).toString('hex') }), denied('no enrollment for this ek and ak'));
  });

  test('a wrong activated secret, a quote over another identity key, a replayed nonce are refused', async () => {
    await assert.rejects(enroll('ecdsa', { tamper: (ev) => void (ev.activatedSecret = Buffer.alloc(ev.activatedSecret.length)) }), denied('activated secret does not match the credential'));
    await assert.rejects(enroll('ecdsa', { tamper: (ev) => void (ev.identitySpki = identity()) }), denied('quote extraData does not bind the nonce and identity key'));
    let saved: Parameters<Verifier['finish']>[0] | undefined;
    await enroll('ecdsa', { tamper: (ev) => void (saved = { ...ev }) });
    await assert.rejects(verifier.finish(saved!), (e: unknown) => isSigilError(e, 'FAILED_PRECONDITION') && e.message === 'unknown or already used nonce');
  });

  test('a tpm2_certify attestation presented as a quote is refused by its type', async () => {
    const ak = await r.ak('ecdsa');
    const ch = await verifier.begin({ policy: 'ci', ekCert: ek.cert, ekPublic: ek.pub.raw, akPublic: ak.raw });
    const activatedSecret = await r.activate(ch, 'ecdsa');
    // The AK certifies itself: a genuine TPMS_ATTEST signed by the AK, of type ATTEST_CERTIFY.
    await r.sh('tpm2_certify', ['-c', 'ak-ecdsa.ctx', '-C', 'ak-ecdsa.ctx', '-g', 'sha256', '-o', 'certify.attest', '-s', 'certify.sig']);
    await assert.rejects(
      verifier.finish({
        nonce: ch.nonce, activatedSecret, identitySpki: identity(), pcrValues: zeros,
        quote: await readFile(r.file('certify.attest')), quoteSignature: await readFile(r.file('certify.sig')),
      }),
      denied('attestation of type 0x8017 is not a quote'),
    );
  });

  test('a quote over the inactive sha1 bank is refused by its selection', async () => {
    const ak = await r.ak('ecdsa');
    const ch = await verifier.begin({ policy: 'ci', ekCert: ek.cert, ekPublic: ek.pub.raw, akPublic: ak.raw });
    const activatedSecret = await r.activate(ch, 'ecdsa');
    const spki = identity();
    const q = await r.quote('ecdsa', bind(ch.nonce, spki), `sha1:${SELECT.join(',')}`);
    await assert.rejects(
      verifier.finish({ nonce: ch.nonce, activatedSecret, identitySpki: spki, quote: q.quote, quoteSignature: q.quoteSignature, pcrValues: zeros }),
      denied('quote covers pcr selection sha1:[] but policy wants sha256:[0,1,2,3,4,5,6,7]'),
    );
  });

  test('ek trust: another ca, not on the allowlist, on the allowlist', async () => {
    const { OpensslCas } = await import('../unit/attest/ek-certs.ts');
    const other = new OpensslCas();
    try {
      const otherCa = new X509Certificate(other.root('other ek ca').pem);
      const v = new Verifier({
        policies: new Map([
          ['other-ca', policy('other-ca', { ekCas: [otherCa] })],
          ['list', policy('list', { ekHashes: new Set(['00'.repeat(32)]) })],
          ['listed', policy('listed', { ekCas: [otherCa], ekHashes: new Set([ekHash(new X509Certificate(ek.cert).publicKey.export({ type: 'spki', format: 'der' }))]) })],
        ]),
        clock: { now: () => new Date() },
        records: new MemoryEnrollmentRecords(),
      });
      const ak = await r.ak('ecdsa');
      await assert.rejects(v.begin({ policy: 'other-ca', ekCert: ek.cert, ekPublic: ek.pub.raw, akPublic: ak.raw }), denied(/^untrusted ek certificate: no trusted ca issued/));
      await assert.rejects(v.begin({ policy: 'list', ekPublic: ek.pub.raw, akPublic: ak.raw }), denied('ek not on the allowlist'));
      await assert.rejects(v.begin({ policy: 'nope', ekPublic: ek.pub.raw, akPublic: ak.raw }), (e: unknown) => isSigilError(e, 'FAILED_PRECONDITION'));
      // On the allowlist, even with a certificate no CA of the policy trusts; and with the public area only.
      for (const ekCert of [ek.cert, undefined]) {
        const ch = await v.begin({ policy: 'listed', ...(ekCert ? { ekCert } : {}), ekPublic: ek.pub.raw, akPublic: ak.raw });
        const activatedSecret = await r.activate(ch, 'ecdsa');
        const spki = identity();
        const q = await r.quote('ecdsa', bind(ch.nonce, spki));
        const a = await v.finish({ nonce: ch.nonce, activatedSecret, identitySpki: spki, ...q });
        assert.equal(a.policy, 'listed');
      }
      // The policy's AK types: an ecc AK under an rsa-only policy.
      await assert.rejects(verifier.begin({ policy: 'rsa-only', ekCert: ek.cert, akPublic: ak.raw }), denied('the policy does not accept ecc aks'));
    } finally {
      other.cleanup();
    }
  });

  test('resetCount going backwards is refused and nothing is recorded', async () => {
    const a = await enroll('ecdsa');
    const rec = (await records.get(a.ekHash))!;
    await records.put({ ...rec, resetCount: rec.resetCount + 1000 });
    await assert.rejects(enroll('ecdsa'), denied(`tpm resetCount went backwards (the tpm was cleared, or its state rolled back): if this runner was re-imaged, an admin can let it enroll again with sigilctl enrollment forget ${a.ekHash}`));
    assert.equal((await records.get(a.ekHash))!.resetCount, rec.resetCount + 1000);
    await records.put({ ...rec, restartCount: rec.restartCount + 1 });
    await assert.rejects(enroll('ecdsa'), denied(/^tpm restartCount went backwards \(the tpm was cleared, or its state rolled back\): .* sigilctl enrollment forget [0-9a-f]{64}$/));
    await records.put(rec);
    await enroll('ecdsa');
  });

  test('qualifiedSigner: the verifier computes the qn tpm2_readpublic reports and the quote carries; an ak under the srk is refused', async () => {
    for (const kind of ['rsa', 'ecc384'] as const) {
      const e = await r.ek(kind);
      const ak = await r.ak('ecdsa', kind);
      const out = await r.sh('tpm2_readpublic', ['-c', 'ak-ecdsa.ctx']);
      const reported = /^qualified name: ([0-9a-f]+)$/m.exec(out)?.[1];
      assert.ok(reported, out);
      assert.equal(akQualifiedName(e.pub, ak).toString('hex'), reported, `ek ${kind}`);
      const q = await r.quote('ecdsa', Buffer.alloc(32, 1));
      assert.equal(parseAttest(q.quote).qualifiedSigner.toString('hex'), reported, `the quote by the ak under ek ${kind}`);
    }
    await r.ek('rsa');
    // A restricted signing key a runner made under an SRK (owner hierarchy) instead of the EK: credential
    // activation works (it needs only the object loaded in the EK's TPM), the quote's qualifiedSigner does not.
    await r.sh('tpm2_createprimary', ['-C', 'o', '-g', 'sha256', '-G', 'ecc', '-c', 'srk.ctx']);
    await r.sh('tpm2_create', ['-C', 'srk.ctx', '-G', 'ecc:ecdsa-sha256:null', '-g', 'sha256', '-a', 'fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign', '-u', 'ak-srk.pub', '-r', 'ak-srk.priv']);
    await r.sh('tpm2_load', ['-C', 'srk.ctx', '-u', 'ak-srk.pub', '-r', 'ak-srk.priv', '-c', 'ak-srk.ctx']);
    const srkAk = parsePublic2B(await readFile(r.file('ak-srk.pub')));
    const ch = await verifier.begin({ policy: 'ci', ekCert: ek.cert, ekPublic: ek.pub.raw, akPublic: srkAk.raw });
    const activatedSecret = await r.activate(ch, 'srk');
    const spki = identity();
    await r.sh('tpm2_quote', ['-c', 'ak-srk.ctx', '-l', `sha256:${SELECT.join(',')}`, '-q', bind(ch.nonce, spki).toString('hex'), '-m', 'quote.msg', '-s', 'quote.sig', '-o', 'quote.pcrs', '-F', 'values', '--scheme', 'ecdsa', '-g', 'sha256']);
    const values = await readFile(r.file('quote.pcrs'));
    const pcrValues = new Map(SELECT.map((p, i) => [p, values.subarray(i * 32, i * 32 + 32)]));
    await assert.rejects(
      verifier.finish({ nonce: ch.nonce, activatedSecret, quote: await readFile(r.file('quote.msg')), quoteSignature: await readFile(r.file('quote.sig')), pcrValues, identitySpki: spki }),
      denied('quote qualifiedSigner is not the qualified name of the ak as a child of the enrolled ek'),
    );
  });

  test('the credential activates for ecc p-256 and p-384 eks, and fails TPM_RC_INTEGRITY for another name', async () => {
    for (const kind of ['ecc', 'ecc384'] as const) {
      const e = await r.ek(kind);
      const ak = await r.ak('ecdsa', kind);
      const secret = createHash('sha256').update(kind).digest();
      assert.deepEqual(await r.activate(makeCredential(e.pub, objectName(ak), secret), 'ecdsa', kind), secret);
    }
    await r.ak('ecdsa');
    const other = Buffer.concat([Buffer.from([0, 0x0b]), createHash('sha256').update('another object').digest()]);
    await assert.rejects(r.activate(makeCredential(ek.pub, other, Buffer.alloc(32, 5)), 'ecdsa'), (e: { stderr?: string }) => /0x1DF/i.test(e.stderr ?? ''));
  });

  // Last in this describe: it changes PCR 7 for good.
  test('a pcr extended after the golden values were recorded is refused', async () => {
    await r.extend(7, createHash('sha256').update('after golden').digest());
    await assert.rejects(enroll('ecdsa'), denied("pcr values match none of the policy's golden sets (pcr 7 match no set)"));
  });
});

describe('event log replay against swtpm pcrs', { skip: skip ?? false }, () => {
  let r: Runner;
  let ek: { pub: TpmPublic; cert: Buffer };
  let verifier: Verifier;
  const events: EventSpec[] = [
    { pcr: 0, type: EV.EV_S_CRTM_VERSION!, data: Buffer.from('sigil test crtm 1.0\0') },
    { pcr: 0, type: EV.EV_SEPARATOR!, data: Buffer.alloc(4) },
    { pcr: 4, type: EV.EV_EFI_BOOT_SERVICES_APPLICATION!, data: Buffer.from('\\EFI\\BOOT\\BOOTX64.EFI') },
    { pcr: 4, type: EV.EV_SEPARATOR!, data: Buffer.alloc(4) },
    { pcr: 7, type: EV.EV_EFI_VARIABLE_DRIVER_CONFIG!, data: Buffer.from('SecureBoot=1') },
    { pcr: 7, type: EV.EV_SEPARATOR!, data: Buffer.alloc(4) },
  ];

  before(async () => {
    r = await Runner.start();
    ek = await r.ek('rsa');
    for (const e of events) await r.extend(e.pcr, createHash('sha256').update(e.data).digest());
    verifier = new Verifier({
      policies: new Map([
        [
          'boot',
          policy('boot', {
            ekCas: caBundle(await readFile(r.tpm.ekCaFile, 'utf8')),
            golden: undefined,
            eventLog: {
              rules: [
                { pcrs: [0], type: EV.EV_S_CRTM_VERSION!, require: true },
                { pcrs: [4], type: EV.EV_EFI_BOOT_SERVICES_APPLICATION!, digest: createHash('sha256').update(events[2]!.data).digest(), require: true },
                { pcrs: [7], type: EV.EV_EFI_VARIABLE_DRIVER_CONFIG!, data: Buffer.from('SecureBoot=1'), require: true },
                { type: EV.EV_SEPARATOR!, data: Buffer.alloc(4), require: false },
              ],
            },
          }),
        ],
      ]),
      clock: { now: () => new Date() },
      records: new MemoryEnrollmentRecords(),
    });
  });
  after(async () => r?.stop());

  async function enrollWith(eventLog: Buffer | undefined): Promise<Attestation> {
    const ak = await r.ak('ecdsa');
    const ch = await verifier.begin({ policy: 'boot', ekCert: ek.cert, ekPublic: ek.pub.raw, akPublic: ak.raw });
    const activatedSecret = await r.activate(ch, 'ecdsa');
    const spki = identity();
    const q = await r.quote('ecdsa', bind(ch.nonce, spki));
    return verifier.finish({ nonce: ch.nonce, activatedSecret, identitySpki: spki, ...q, ...(eventLog ? { eventLog } : {}) });
  }

  test('a synthetic log extended into the pcrs replays and passes', async () => {
    const a = await enrollWith(buildEventLog(events, { locality: 0 }));
    assert.equal(a.policy, 'boot');
  });

  test('a tampered or missing log is refused', async () => {
    const tampered = events.map((e) => (e.pcr === 4 && e.type === EV.EV_EFI_BOOT_SERVICES_APPLICATION ? { ...e, data: Buffer.from('\\EFI\\BOOT\\EVIL.EFI') } : e));
    await assert.rejects(enrollWith(buildEventLog(tampered)), denied('event log replay of pcr 4 does not match the quoted value'));
    // The same bytes with the digest kept but the data changed: replay passes, the digest rule does not... the data rule for pcr 7 does.
    const relabeled = events.map((e) => (e.pcr === 7 && e.type === EV.EV_EFI_VARIABLE_DRIVER_CONFIG ? { ...e, data: Buffer.from('SecureBoot=0'), digests: new Map([[TPM_ALG.SHA256, createHash('sha256').update(e.data).digest()]]) } : e));
    await assert.rejects(enrollWith(buildEventLog(relabeled)), denied('event log event 5 (pcr 7, EV_EFI_VARIABLE_DRIVER_CONFIG) matches no rule'));
    await assert.rejects(enrollWith(undefined), denied('policy boot requires an event log'));
    await assert.rejects(enrollWith(Buffer.from('garbage')), (e: unknown) => isSigilError(e, 'INVALID_ARGUMENT'));
  });
});
