import 'reflect-metadata';
import { execFileSync } from 'node:child_process';
import { createPrivateKey, generateKeyPairSync, webcrypto, type KeyObject } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as x509 from '@peculiar/x509';

x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[1]);
const DAY = 86400_000;

/** A CA made with openssl: its PEM certificate and key file. */
export interface TestCa {
  pem: string;
  keyFile: string;
  certFile: string;
}

/** Makes EK-style certificates with the openssl command line in a temp dir. */
export class OpensslCas {
  readonly dir = mkdtempSync(join(tmpdir(), 'sigil-ekca-'));
  #n = 0;

  #run(args: string[]): void {
    execFileSync('openssl', args, { cwd: this.dir, stdio: ['ignore', 'pipe', 'pipe'] });
  }

  #key(): string {
    const f = join(this.dir, `k${this.#n++}.pem`);
    writeFileSync(f, generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'pkcs8', format: 'pem' }));
    return f;
  }

  /** A self-signed root CA (or, with `ca: false`, a self-signed non-CA certificate). */
  root(cn: string, opts: { ca?: boolean } = {}): TestCa {
    const keyFile = this.#key();
    const certFile = join(this.dir, `c${this.#n++}.pem`);
    const bc = opts.ca === false ? 'basicConstraints=critical,CA:FALSE' : 'basicConstraints=critical,CA:TRUE';
    this.#run(['req', '-x509', '-new', '-key', keyFile, '-subj', `/CN=${cn}`, '-days', '3650', '-addext', bc, '-addext', 'keyUsage=critical,keyCertSign,cRLSign,digitalSignature', '-out', certFile]);
    return { pem: readFileSync(certFile, 'utf8'), keyFile, certFile };
  }

  /** A CA (or with `ca: false` a plain certificate) issued by `parent`. */
  intermediate(parent: TestCa, cn: string, opts: { ca?: boolean; keyCertSign?: boolean } = {}): TestCa {
    const keyFile = this.#key();
    const ext = join(this.dir, `e${this.#n++}.cnf`);
    const usage = opts.keyCertSign === false ? 'digitalSignature' : 'keyCertSign,cRLSign,digitalSignature';
    writeFileSync(ext, `basicConstraints=critical,CA:${opts.ca === false ? 'FALSE' : 'TRUE'}\nkeyUsage=critical,${usage}\n`);
    const csr = join(this.dir, `r${this.#n++}.csr`);
    const certFile = join(this.dir, `c${this.#n++}.pem`);
    this.#run(['req', '-new', '-key', keyFile, '-subj', `/CN=${cn}`, '-out', csr]);
    this.#run(['x509', '-req', '-in', csr, '-CA', parent.certFile, '-CAkey', parent.keyFile, '-CAcreateserial', '-days', '3650', '-extfile', ext, '-out', certFile]);
    return { pem: readFileSync(certFile, 'utf8'), keyFile, certFile };
  }

  /** An EK certificate for `ekKey` (private key) as swtpm_localca makes them: keyEncipherment, critical SAN with a DirName. DER. */
  ekCert(issuer: TestCa, ekKey: KeyObject): Buffer {
    const keyFile = join(this.dir, `ek${this.#n++}.pem`);
    writeFileSync(keyFile, ekKey.export({ type: 'pkcs8', format: 'pem' }));
    const ext = join(this.dir, `e${this.#n++}.cnf`);
    writeFileSync(
      ext,
      [
        '[ek]',
        'basicConstraints=critical,CA:FALSE',
        'keyUsage=critical,keyEncipherment',
        'subjectAltName=critical,dirName:tpm_dir',
        '[tpm_dir]',
        // swtpm puts TCG TPM manufacturer/model/version attributes here; openssl's config cannot name them.
        'O=tpm manufacturer',
        'OU=tpm model',
        'CN=tpm version',
        '',
      ].join('\n'),
    );
    const csr = join(this.dir, `r${this.#n++}.csr`);
    const der = join(this.dir, `c${this.#n++}.der`);
    this.#run(['req', '-new', '-key', keyFile, '-subj', '/CN=ek', '-out', csr]);
    this.#run(['x509', '-req', '-in', csr, '-CA', issuer.certFile, '-CAkey', issuer.keyFile, '-CAcreateserial', '-days', '3650', '-extfile', ext, '-extensions', 'ek', '-outform', 'DER', '-out', der]);
    return readFileSync(der);
  }

  cleanup(): void {
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** A CRL to sign: by which CA, listing which serials (hex), dated around `now` unless given. */
export interface CrlSpec {
  now: Date;
  by: TestCa;
  serials?: { serial: string; reason?: x509.X509CrlReason }[];
  thisUpdate?: Date;
  nextUpdate?: Date;
  extensions?: x509.Extension[];
}

/** A CRL signed with `by`'s key by @peculiar/x509, naming `by`'s subject as issuer: DER. */
export async function signCrl(spec: CrlSpec): Promise<Buffer> {
  const pkcs8 = createPrivateKey(readFileSync(spec.by.keyFile)).export({ type: 'pkcs8', format: 'der' });
  const key = await webcrypto.subtle.importKey('pkcs8', pkcs8, { name: 'ECDSA', namedCurve: 'P-256' }, false, ['sign']);
  const c = await x509.X509CrlGenerator.create({
    issuer: new x509.X509Certificate(spec.by.pem).subjectName,
    thisUpdate: spec.thisUpdate ?? new Date(spec.now.getTime() - DAY),
    nextUpdate: spec.nextUpdate ?? new Date(spec.now.getTime() + 7 * DAY),
    entries: (spec.serials ?? []).map((s) => ({ serialNumber: s.serial, revocationDate: new Date(spec.now.getTime() - DAY), ...(s.reason !== undefined ? { reason: s.reason } : {}) })),
    ...(spec.extensions ? { extensions: spec.extensions } : {}),
    signingAlgorithm: { name: 'ECDSA', hash: 'SHA-256' },
    signingKey: key,
  });
  return Buffer.from(c.rawData);
}
