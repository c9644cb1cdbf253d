import { createHash, createPublicKey, verify, constants, type KeyObject } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Algorithm } from '../../src/gen/sigil/v1/signer.ts';

/** The hash of each contract algorithm, null for Ed25519. */
export const HASH: Record<number, 'sha256' | 'sha384' | null> = {
  [Algorithm.ECDSA_P256_SHA256]: 'sha256',
  [Algorithm.ECDSA_P384_SHA384]: 'sha384',
  [Algorithm.RSA_PKCS1_SHA256]: 'sha256',
  [Algorithm.RSA_PSS_SHA256]: 'sha256',
  [Algorithm.ED25519]: null,
};

/** The digest (or, for Ed25519, the message itself) to send for `message`. */
export function inputFor(alg: number, message: Buffer): { digest?: Buffer; message?: Buffer } {
  const h = HASH[alg];
  return h ? { digest: createHash(h).update(message).digest() } : { message };
}

/** Verifies a signature over `message` with node:crypto, as any verifier of the algorithm would. */
export function verifyWithNode(alg: number, spkiDer: Buffer, message: Buffer, signature: Buffer): boolean {
  const key: KeyObject = createPublicKey({ key: spkiDer, format: 'der', type: 'spki' });
  switch (alg) {
    case Algorithm.ED25519:
      return verify(null, message, key, signature);
    case Algorithm.RSA_PSS_SHA256:
      return verify('sha256', message, { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 }, signature);
    case Algorithm.ECDSA_P384_SHA384:
      return verify('sha384', message, { key, dsaEncoding: 'der' }, signature);
    default:
      return verify('sha256', message, { key, dsaEncoding: 'der' }, signature);
  }
}

/** Verifies with the openssl command line, the way the docs tell users to; returns openssl's verdict. */
export function verifyWithOpenssl(alg: number, pem: string, message: Buffer, signature: Buffer): boolean {
  const dir = mkdtempSync(join(tmpdir(), 'sigil-ossl-'));
  try {
    const pub = join(dir, 'pub.pem');
    const msg = join(dir, 'msg');
    const sig = join(dir, 'sig');
    writeFileSync(pub, pem);
    writeFileSync(msg, message);
    writeFileSync(sig, signature);
    const args =
      alg === Algorithm.ED25519
        ? ['pkeyutl', '-verify', '-pubin', '-inkey', pub, '-rawin', '-in', msg, '-sigfile', sig]
        : [
            'dgst',
            alg === Algorithm.ECDSA_P384_SHA384 ? '-sha384' : '-sha256',
            ...(alg === Algorithm.RSA_PSS_SHA256 ? ['-sigopt', 'rsa_padding_mode:pss'] : []),
            '-verify',
            pub,
            '-signature',
            sig,
            msg,
          ];
    try {
      const out = execFileSync('openssl', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
      return /Verified OK|Signature Verified Successfully/.test(out);
    } catch {
      return false;
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
