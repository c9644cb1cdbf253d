import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createSecureContext } from 'node:tls';
import { SigilError } from '../errors.ts';
import type { Config } from './schema.ts';

/** The server's TLS material as read from the config's files. */
export interface ServerTls {
  cert: Buffer;
  key: Buffer;
  clientCa: Buffer;
}

/** Config key of each TLS file, as a reload names what it applied. */
export const TLS_KEYS = { cert: 'tls.certFile', key: 'tls.keyFile', clientCa: 'tls.clientCaFile' } as const;

/**
 * Reads the server's TLS files and checks they can serve: the certificate parses and the key is its key (a TLS
 * context is built from them). CONFIG_INVALID naming the file otherwise; never the key's contents.
 */
export function readServerTls(tls: Config['tls']): ServerTls {
  const read = (path: string, key: string): Buffer => {
    try {
      return readFileSync(path);
    } catch (err) {
      throw new SigilError('CONFIG_INVALID', `${key}: cannot read ${path} (${(err as NodeJS.ErrnoException).code ?? 'error'})`);
    }
  };
  const out = { cert: read(tls.certFile, TLS_KEYS.cert), key: read(tls.keyFile, TLS_KEYS.key), clientCa: read(tls.clientCaFile, TLS_KEYS.clientCa) };
  try {
    new X509Certificate(out.cert);
  } catch {
    throw new SigilError('CONFIG_INVALID', `${TLS_KEYS.cert}: ${tls.certFile} is not a pem certificate`);
  }
  try {
    createSecureContext({ cert: out.cert, key: out.key });
  } catch {
    throw new SigilError('CONFIG_INVALID', `${TLS_KEYS.key}: ${tls.keyFile} is not the private key of ${tls.certFile} (or does not parse)`);
  }
  // createSecureContext takes an empty or junk bundle without a word (and then trusts no one): check it block by block.
  const problem = bundleProblem(out.clientCa);
  if (problem !== null) throw new SigilError('CONFIG_INVALID', `${TLS_KEYS.clientCa}: ${tls.clientCaFile} ${problem}`);
  return out;
}

/** What is wrong with a PEM CA bundle (no certificate, a block cut short, another kind of block, one that does not parse), or null. */
export function bundleProblem(pem: Buffer): string | null {
  const text = pem.toString('latin1');
  const begins = text.match(/-----BEGIN [^-]*-----/g)?.length ?? 0;
  const blocks = [...text.matchAll(/-----BEGIN ([A-Z0-9 ]+)-----([\s\S]*?)-----END \1-----/g)];
  if (blocks.length === 0) return 'holds no pem certificate';
  if (begins !== blocks.length) return 'holds a pem block without its end line (cut short?)';
  for (const [i, b] of blocks.entries()) {
    if (b[1] !== 'CERTIFICATE') return `holds a pem ${b[1]!.toLowerCase()} (block ${i + 1}): give certificates only`;
    try {
      new X509Certificate(b[0]);
    } catch {
      return `holds a certificate that does not parse (block ${i + 1})`;
    }
  }
  return null;
}
