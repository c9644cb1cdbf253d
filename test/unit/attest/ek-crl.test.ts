// EK CA CRLs (policy ekCrlFiles): CAs and EK certificates made with openssl, CRLs signed with the CAs' keys by
// @peculiar/x509 (and one by `openssl ca -gencrl`, the independent maker).
import 'reflect-metadata';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import * as x509 from '@peculiar/x509';
import fc from 'fast-check';
import { EkCrls, parseEkCrl, type EkCrlExpired } from '../../../src/attest/ek-crl.ts';
import { ekHash, trustEk } from '../../../src/attest/ek.ts';
import { loadPolicies, PolicyProblems } from '../../../src/attest/policy.ts';
import { isSigilError } from '../../../src/errors.ts';
import { missingTools } from '../../helpers/hw.ts';
import { OpensslCas, signCrl, type CrlSpec, type TestCa } from './ek-certs.ts';
import { softEk } from './soft-tpm.ts';

const skip = missingTools('openssl');
const DAY = 86400_000;
// A little after the certificates were made (their notBefore is the second they were issued).
const now = new Date(Date.now() + 60_000);
let cas: OpensslCas;
let root: TestCa;
let inter: TestCa;
/** Another CA key under the intermediate's very name: a forged CRL. */
let impostor: TestCa;
const ek = softEk('rsa');
let cert: Buffer;
let serial: string;

before(() => {
  if (skip) return;
  cas = new OpensslCas();
  root = cas.root('ek root');
  inter = cas.intermediate(root, 'ek intermediate');
  impostor = cas.root('ek intermediate');
  cert = cas.ekCert(inter, ek.key);
  serial = new X509Certificate(cert).serialNumber;
});
after(() => cas?.cleanup());

const x = (c: TestCa) => new X509Certificate(c.pem);
const crl = (spec: Omit<CrlSpec, 'now'>) => signCrl({ now, ...spec });

const pem = (der: Buffer) => `-----BEGIN X509 CRL-----\n${der.toString('base64').replace(/.{64}/g, '$&\n')}\n-----END X509 CRL-----\n`;

/** EkCrls over in-memory files; `files` may change between checks. */
function crlsOf(files: Map<string, Buffer | string>, expired: EkCrlExpired = 'refuse', caList = [x(root), x(inter)]): EkCrls {
  return new EkCrls({
    files: [...files.keys()],
    cas: caList,
    expired,
    readFile: (p) => {
      const f = files.get(p);
      if (f === undefined) throw Object.assign(new Error('no such file'), { code: 'ENOENT' });
      return Buffer.isBuffer(f) ? f : Buffer.from(f);
    },
  });
}

const anchorsWith = (ekCrls: EkCrls, hashes: string[] = []) => ({ ekCas: [x(root), x(inter)], ekHashes: new Set(hashes), ekCrls });
const denied = (m: string | RegExp) => (e: unknown) => isSigilError(e, 'PERMISSION_DENIED') && (typeof m === 'string' ? e.message === m : m.test(e.message));

describe('ek ca crls', { skip: skip ?? false }, () => {
  test('a serial the ca revoked is refused with serial and reason, pem and der alike; another serial passes', async () => {
    const revoking = await crl({ by: inter, serials: [{ serial, reason: x509.X509CrlReason.keyCompromise }] });
    const msg = `ek certificate revoked by its ca (serial ${serial.toUpperCase()}, reason keyCompromise)`;
    for (const data of [revoking, pem(revoking)]) {
      assert.throws(() => trustEk({ ekCert: cert }, anchorsWith(crlsOf(new Map([['/crl', data]]))), now), denied(msg));
    }
    // Revocation wins over the allowlist: the CA's word is newer than the operator's list.
    assert.throws(() => trustEk({ ekCert: cert }, anchorsWith(crlsOf(new Map([['/crl', revoking]])), [ekHash(new X509Certificate(cert).publicKey.export({ type: 'spki', format: 'der' }))]), now), denied(msg));
    // No reason code in the entry.
    const bare = await crl({ by: inter, serials: [{ serial }] });
    assert.throws(() => trustEk({ ekCert: cert }, anchorsWith(crlsOf(new Map([['/crl', bare]]))), now), denied(/reason not given\)$/));

    const other = await crl({ by: inter, serials: [{ serial: '0badc0de', reason: x509.X509CrlReason.keyCompromise }] });
    const ok = trustEk({ ekCert: cert }, anchorsWith(crlsOf(new Map([['/crl', other]]))), now);
    assert.equal(ok.via, 'certificate');
    assert.equal(ok.warnings, undefined);
  });

  test('a pem bundle of several crls is read whole: a revocation in its second crl counts; one bad block refuses the file', async () => {
    const fromRoot = await crl({ by: root, serials: [] });
    const fromInter = await crl({ by: inter, serials: [{ serial, reason: x509.X509CrlReason.keyCompromise }] });
    const bundle = Buffer.from(pem(fromRoot) + pem(fromInter));
    assert.throws(() => trustEk({ ekCert: cert }, anchorsWith(crlsOf(new Map([['/bundle', bundle]]))), now), denied(/^ek certificate revoked by its ca \(serial /));
    const parsed = parseEkCrl('/bundle', bundle, [x(root), x(inter)]);
    assert.ok(Array.isArray(parsed) && parsed.length === 2 && parsed.every((c) => c.file === '/bundle'));
    const forged = await crl({ by: impostor, serials: [] });
    assert.match(parseEkCrl('/b2', Buffer.from(pem(fromRoot) + pem(forged)), [x(root), x(inter)]) as string, /^\/b2 \(crl 2 of 2\): the crl signature does not verify/);
    assert.match(parseEkCrl('/b3', Buffer.from(pem(fromRoot) + root.pem), [x(root), x(inter)]) as string, /^\/b3 holds a pem certificate besides its crls: give crls only$/);
    // The bundle cut short before the end of its second crl (a copy caught half-way): refused whole, not read as the first crl alone.
    const cut = pem(fromRoot) + pem(fromInter).replace(/-----END X509 CRL-----\n$/, '');
    assert.equal(parseEkCrl('/b4', Buffer.from(cut), [x(root), x(inter)]), '/b4 holds a pem block without its end line (cut short?)');
  });

  test('a crl made by openssl ca -gencrl is read too', async () => {
    const dir = cas.dir;
    writeFileSync(join(dir, 'index.txt'), '');
    writeFileSync(join(dir, 'crlnumber'), '01\n');
    writeFileSync(join(dir, 'ca.cnf'), `[ca]\ndefault_ca = c\n[c]\ndatabase = ${join(dir, 'index.txt')}\ncrlnumber = ${join(dir, 'crlnumber')}\ndefault_md = sha256\ndefault_crl_days = 7\n`);
    const leafFile = join(dir, 'ek.der');
    writeFileSync(leafFile, cert);
    const leafPem = join(dir, 'ek.pem');
    execFileSync('openssl', ['x509', '-inform', 'DER', '-in', leafFile, '-out', leafPem]);
    const run = (args: string[]) => execFileSync('openssl', ['ca', '-config', join(dir, 'ca.cnf'), '-keyfile', inter.keyFile, '-cert', inter.certFile, ...args], { stdio: 'pipe' });
    run(['-revoke', leafPem, '-crl_reason', 'cessationOfOperation']);
    run(['-gencrl', '-out', join(dir, 'openssl.crl')]);
    const data = readFileSync(join(dir, 'openssl.crl'));
    assert.throws(() => trustEk({ ekCert: cert }, anchorsWith(crlsOf(new Map([['/crl', data]]))), now), denied(/reason cessationOfOperation\)$/));
  });

  test('an intermediate the root revoked is refused too', async () => {
    const byRoot = await crl({ by: root, serials: [{ serial: x(inter).serialNumber, reason: x509.X509CrlReason.cACompromise }] });
    assert.throws(() => trustEk({ ekCert: cert }, anchorsWith(crlsOf(new Map([['/crl', byRoot]]))), now), denied(/^ek ca CN=ek intermediate revoked by its ca \(serial [0-9A-F]+, reason cACompromise\)$/));
  });

  test('a crl whose signature does not verify with the ca key, or of no policy ca, is refused loudly, never skipped', async () => {
    const forged = await crl({ by: impostor, serials: [] });
    assert.match(parseEkCrl('/forged', forged, [x(root), x(inter)]) as string, /^\/forged: the crl signature does not verify with the key of ek ca CN=ek intermediate$/);
    const stranger = cas.root('stranger');
    assert.match(parseEkCrl('/s', await crl({ by: stranger }), [x(root), x(inter)]) as string, /^\/s is issued by CN=stranger, which is not one of the policy's ek cas$/);
    assert.match(parseEkCrl('/g', Buffer.from('not a crl'), [x(root)]) as string, /^\/g is not a der or pem x509 crl$/);
    assert.match(parseEkCrl('/p', Buffer.from(root.pem), [x(root)]) as string, /^\/p holds no pem x509 crl$/);
    // At enrollment: the check fails closed, the problem (with the path) is the cause for the log.
    assert.throws(
      () => trustEk({ ekCert: cert }, anchorsWith(crlsOf(new Map([['/forged', forged]]))), now),
      (e: unknown) => isSigilError(e, 'INTERNAL') && /does not verify/.test(String((e.cause as Error).message)),
    );
    // A file gone missing at run time, likewise.
    const files = new Map<string, Buffer | string>([['/crl', await crl({ by: inter })]]);
    const crls = crlsOf(files);
    assert.equal(trustEk({ ekCert: cert }, anchorsWith(crls), now).via, 'certificate');
    files.delete('/crl');
    assert.throws(() => trustEk({ ekCert: cert }, anchorsWith(crls), now), (e: unknown) => isSigilError(e, 'INTERNAL') && /cannot read \/crl: ENOENT/.test(String((e.cause as Error).message)));
  });

  test('delta and other crls with an unsupported critical extension are refused', async () => {
    const delta = await crl({ by: inter, extensions: [new x509.Extension('2.5.29.27', true, Buffer.from('020101', 'hex'))] });
    assert.match(parseEkCrl('/d', delta, [x(inter)]) as string, /critical extension 2\.5\.29\.27 .*give a full crl\)$/);
  });

  test('an out-of-date crl: refused by default with what to do, or used with a warning under ekCrlExpired: warn', async () => {
    const stale = await crl({ by: inter, thisUpdate: new Date(now.getTime() - 10 * DAY), nextUpdate: new Date(now.getTime() - DAY) });
    assert.throws(
      () => trustEk({ ekCert: cert }, anchorsWith(crlsOf(new Map([['/old', stale]]))), now),
      (e: unknown) => isSigilError(e, 'FAILED_PRECONDITION') && /^the ek crl of CN=ek intermediate is out of date \(next update was .*\): the operator must refresh the policy's ekCrlFiles$/.test(e.message),
    );
    const warned = trustEk({ ekCert: cert }, anchorsWith(crlsOf(new Map([['/old', stale]]), 'warn')), now);
    assert.equal(warned.via, 'certificate');
    assert.match(warned.warnings![0]!, /out of date .*: refresh \/old$/);
    // Still consulted when out of date: a revoked serial is refused in warn mode too.
    const staleRevoking = await crl({ by: inter, serials: [{ serial }], thisUpdate: new Date(now.getTime() - 10 * DAY), nextUpdate: new Date(now.getTime() - DAY) });
    assert.throws(() => trustEk({ ekCert: cert }, anchorsWith(crlsOf(new Map([['/old', staleRevoking]]), 'warn')), now), denied(/^ek certificate revoked/));
    // A fresh crl of the same ca next to the old one: the newest counts.
    const fresh = await crl({ by: inter });
    assert.equal(trustEk({ ekCert: cert }, anchorsWith(crlsOf(new Map([['/old', stale], ['/new', fresh]]))), now).via, 'certificate');
    // Only CAs with a crl are checked: the root has none here, which is no problem.
  });

  test('a crl dropped in at run time is read at the next check', async () => {
    const files = new Map<string, Buffer | string>([['/crl', await crl({ by: inter })]]);
    const crls = crlsOf(files);
    assert.equal(trustEk({ ekCert: cert }, anchorsWith(crls), now).via, 'certificate');
    files.set('/crl', pem(await crl({ by: inter, serials: [{ serial, reason: x509.X509CrlReason.superseded }] })));
    assert.throws(() => trustEk({ ekCert: cert }, anchorsWith(crls), now), denied(/reason superseded\)$/));
  });

  test('policies: ekCrlFiles are checked at load, with the path, and need ekCaFiles', async () => {
    const good = await crl({ by: inter, serials: [{ serial }] });
    const files: Record<string, string | Buffer> = { '/ca.pem': root.pem + inter.pem, '/good.crl': good, '/forged.crl': await crl({ by: impostor }), '/junk.crl': 'junk' };
    const readFile = (p: string) => {
      const f = files[p];
      if (f === undefined) throw Object.assign(new Error('no such file'), { code: 'ENOENT' });
      return f;
    };
    const base = { pcrs: { bank: 'sha256', select: [0] }, golden: [{ 0: '00'.repeat(32) }] };
    const p = loadPolicies({ ci: { ...base, ekCaFiles: ['/ca.pem'], ekCrlFiles: ['/good.crl'] } }, readFile).get('ci')!;
    assert.throws(() => trustEk({ ekCert: cert }, p, now), denied(/^ek certificate revoked by its ca/));
    assert.equal(trustEk({ ekCert: cert }, loadPolicies({ ci: { ...base, ekCaFiles: ['/ca.pem'] } }, readFile).get('ci')!, now).via, 'certificate');

    let err: unknown;
    try {
      loadPolicies(
        {
          ci: { ...base, ekCaFiles: ['/ca.pem'], ekCrlFiles: ['/good.crl', '/forged.crl', '/junk.crl', '/gone.crl'], ekCrlExpired: 'sometimes' },
          lab: { ...base, ekHashes: ['ab'.repeat(32)], ekCrlFiles: ['/good.crl'] },
        },
        readFile,
      );
    } catch (e) {
      err = e;
    }
    assert.ok(err instanceof PolicyProblems);
    const text = err.problems.join('\n');
    assert.match(text, /ci\.ekCrlFiles\.1: \/forged\.crl: the crl signature does not verify/);
    assert.match(text, /ci\.ekCrlFiles\.2: \/junk\.crl is not a der or pem x509 crl/);
    assert.match(text, /ci\.ekCrlFiles\.3: cannot read \/gone\.crl: ENOENT/);
    assert.match(text, /ci\.ekCrlExpired: /);
    assert.match(text, /lab\.ekCrlFiles: needs ekCaFiles/);
    assert.doesNotMatch(text, /good\.crl/);
  });

  test('fuzz: untrusted crl bytes give a crl or a problem line, never a throw', async () => {
    const good = await crl({ by: inter, serials: [{ serial, reason: 1 }, { serial: '01' }] });
    const caList = [x(root), x(inter)];
    fc.assert(
      fc.property(
        fc.oneof(
          fc.uint8Array({ maxLength: 600 }),
          // The real CRL with a few bytes changed, cut short, or wrapped as PEM.
          fc.tuple(fc.array(fc.tuple(fc.nat(good.length - 1), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 4 }), fc.boolean()).map(([edits, asPem]) => {
            const b = Buffer.from(good);
            for (const [i, v] of edits) b[i] = v;
            return asPem ? Buffer.from(pem(b)) : b;
          }),
          fc.nat(good.length).map((n) => good.subarray(0, n)),
        ),
        (bytes) => {
          const r = parseEkCrl('/f', Buffer.from(bytes), caList);
          assert.ok(typeof r === 'string' ? r.includes('/f') : r.length > 0 && r.every((c) => c.issuer !== undefined));
        },
      ),
      { numRuns: 400 },
    );
  });
});
