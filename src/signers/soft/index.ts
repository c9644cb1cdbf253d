import {
  constants,
  createHash,
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  privateDecrypt,
  privateEncrypt,
  randomBytes,
  randomUUID,
  sign as cryptoSign,
  type KeyObject,
} from 'node:crypto';
import { mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { p256, p384 } from '@noble/curves/nist.js';
import { SigilError } from '../../errors.ts';
import type { Logger } from '../../log.ts';
import { attrText, formatKeyUri, parseKeyUri } from '../key-uri.ts';
import {
  ALGORITHM_INFO,
  ALGORITHMS,
  keyTypeOfSpki,
  type Algorithm,
  type Backend,
  type BackendContext,
  type BackendKey,
  type KeyCreator,
  type KeyDestroyer,
  type KeySigner,
  type KeySpec,
  type KeyType,
} from '../signer.ts';
import type { SoftConfig } from './config.ts';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
// DER DigestInfo prefix for SHA-256 (RFC 8017 section 9.2, note 1).
const SHA256_DIGEST_INFO = Buffer.from('3031300d060960864801650304020105000420', 'hex');

interface SoftKey {
  uri: string;
  keyType: KeyType;
  spki: Buffer;
  key: KeyObject;
  /** ECDSA only: the private scalar, as @noble/curves takes it. */
  scalar: Uint8Array | null;
  /** RSA only: modulus bits. */
  modulusBits: number;
}

/**
 * Opens the software backend: keys in PKCS#8 PEM files, for tests and development only. Production
 * mode refuses it.
 */
export async function open(config: SoftConfig, ctx: BackendContext): Promise<Backend & KeyCreator & KeyDestroyer> {
  if (ctx.production) throw new SigilError('CONFIG_INVALID', 'the soft backend is for tests and development; production mode refuses it');
  await mkdir(config.dir, { recursive: true, mode: 0o700 });
  return new SoftBackend(config.dir, ctx.log);
}

class SoftBackend implements Backend, KeyCreator, KeyDestroyer {
  readonly kind = 'soft';
  readonly algorithms: readonly Algorithm[] = ALGORITHMS;
  readonly #dir: string;
  readonly #log: Logger;
  readonly #keys = new Map<string, SoftKey>();

  constructor(dir: string, log: Logger) {
    this.#dir = dir;
    this.#log = log;
  }

  async createKey(spec: KeySpec): Promise<BackendKey> {
    const info = ALGORITHM_INFO[spec.algorithm];
    if (info === undefined) throw new SigilError('UNSUPPORTED_ALGORITHM', `unknown algorithm ${JSON.stringify(String(spec.algorithm))}`);
    const { privateKey } = generate(info.keyType);
    const id = randomUUID();
    const pem = privateKey.export({ format: 'pem', type: 'pkcs8' }) as string;
    // The label first: a crash before the key file leaves a label naming nothing, which findKeyByLabel ignores.
    await writeFile(join(this.#dir, `${id}.label`), spec.label, { mode: 0o600, flag: 'wx' });
    await writeFile(join(this.#dir, `${id}.pem`), pem, { mode: 0o600, flag: 'wx' });
    const k = loadKey(id, privateKey);
    this.#keys.set(id, k);
    this.#log.info({ uri: k.uri, algorithm: spec.algorithm, label: spec.label }, 'soft key created');
    return { uri: k.uri, spki: k.spki, keyType: k.keyType };
  }

  async getKey(uri: string): Promise<BackendKey> {
    const k = await this.#lookup(uri);
    return { uri: k.uri, spki: k.spki, keyType: k.keyType };
  }

  async signer(uri: string, algorithm: Algorithm): Promise<KeySigner> {
    const info = ALGORITHM_INFO[algorithm];
    if (info === undefined) throw new SigilError('UNSUPPORTED_ALGORITHM', `unknown algorithm ${JSON.stringify(String(algorithm))}`);
    const k = await this.#lookup(uri);
    if (k.keyType !== info.keyType) throw new SigilError('INVALID_ARGUMENT', `key ${k.uri} is a ${k.keyType} key and cannot sign ${algorithm}`);
    return { algorithm, sign: signFunction(k, algorithm) };
  }

  async close(): Promise<void> {
    this.#keys.clear();
  }

  async destroyKey(uri: string): Promise<void> {
    const id = this.#id(uri);
    this.#keys.delete(id);
    // The key file goes first: once it is gone the key cannot sign, whatever happens to the label file.
    await rm(join(this.#dir, `${id}.pem`), { force: true });
    await rm(join(this.#dir, `${id}.label`), { force: true });
    this.#log.info({ uri }, 'soft key destroyed');
  }

  async findKeyByLabel(label: string): Promise<string | null> {
    for (const f of await readdir(this.#dir)) {
      if (!f.endsWith('.label')) continue;
      const id = f.slice(0, -'.label'.length);
      if (!UUID.test(id)) continue;
      if ((await readFile(join(this.#dir, f), 'utf8')) !== label) continue;
      return formatKeyUri('soft', [['id', id]]);
    }
    return null;
  }

  #id(uri: string): string {
    const parsed = parseKeyUri(uri);
    if (parsed.scheme !== 'soft') throw new SigilError('INVALID_ARGUMENT', `not a soft key uri: scheme ${parsed.scheme}`);
    const id = attrText(parsed, 'id');
    if (parsed.path !== null || parsed.attrs.size !== 1 || id === undefined || !UUID.test(id)) {
      throw new SigilError('INVALID_ARGUMENT', 'a soft key uri is soft:id=<uuid>');
    }
    return id;
  }

  async #lookup(uri: string): Promise<SoftKey> {
    const id = this.#id(uri);
    const cached = this.#keys.get(id);
    if (cached !== undefined) return cached;
    let pem: string;
    try {
      pem = await readFile(join(this.#dir, `${id}.pem`), 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new SigilError('KEY_NOT_FOUND', `no soft key ${uri}`);
      throw new SigilError('BACKEND_ERROR', `cannot read soft key ${uri}`, { cause: err });
    }
    let k: SoftKey;
    try {
      k = loadKey(id, createPrivateKey(pem));
    } catch (err) {
      throw new SigilError('BACKEND_ERROR', `soft key ${uri} is unreadable`, { cause: err });
    }
    this.#keys.set(id, k);
    return k;
  }
}

function generate(keyType: KeyType): { privateKey: KeyObject } {
  switch (keyType) {
    case 'EC_P256':
      return generateKeyPairSync('ec', { namedCurve: 'P-256' });
    case 'EC_P384':
      return generateKeyPairSync('ec', { namedCurve: 'P-384' });
    case 'RSA':
      return generateKeyPairSync('rsa', { modulusLength: 2048, publicExponent: 65537 });
    case 'ED25519':
      return generateKeyPairSync('ed25519');
  }
}

function loadKey(id: string, key: KeyObject): SoftKey {
  const spki = createPublicKey(key).export({ format: 'der', type: 'spki' });
  const keyType = keyTypeOfSpki(spki);
  if (keyType === null) throw new Error('unsupported key type');
  const jwk = keyType === 'EC_P256' || keyType === 'EC_P384' ? key.export({ format: 'jwk' }) : null;
  return {
    uri: formatKeyUri('soft', [['id', id]]),
    keyType,
    spki,
    key,
    scalar: jwk?.d !== undefined ? Buffer.from(jwk.d, 'base64url') : null,
    modulusBits: key.asymmetricKeyDetails?.modulusLength ?? 0,
  };
}

function checkLength(algorithm: Algorithm, input: Buffer): void {
  const want = ALGORITHM_INFO[algorithm].digestLength;
  if (want !== 0 && input.length !== want) throw new SigilError('INVALID_ARGUMENT', `${algorithm} signs a ${want}-byte digest, got ${input.length} bytes`);
}

function signFunction(k: SoftKey, algorithm: Algorithm): (input: Buffer) => Promise<Buffer> {
  switch (algorithm) {
    case 'ECDSA_P256_SHA256':
    case 'ECDSA_P384_SHA384': {
      const curve = algorithm === 'ECDSA_P256_SHA256' ? p256 : p384;
      const scalar = k.scalar!;
      return async (input) => {
        checkLength(algorithm, input);
        return Buffer.from(curve.sign(input, scalar, { prehash: false, format: 'der' }));
      };
    }
    case 'RSA_PKCS1_SHA256':
      return async (input) => {
        checkLength(algorithm, input);
        return privateEncrypt({ key: k.key, padding: constants.RSA_PKCS1_PADDING }, Buffer.concat([SHA256_DIGEST_INFO, input]));
      };
    case 'RSA_PSS_SHA256':
      return async (input) => {
        checkLength(algorithm, input);
        const em = emsaPssEncode(input, k.modulusBits - 1);
        // RSASP1 (RFC 8017 section 5.2.1) is raw RSA: "decrypting" EM without padding.
        return privateDecrypt({ key: k.key, padding: constants.RSA_NO_PADDING }, em);
      };
    case 'ED25519':
      return async (input) => cryptoSign(null, input, k.key);
  }
}

/**
 * EMSA-PSS-ENCODE (RFC 8017 section 9.1.1) of a SHA-256 digest with MGF1-SHA256 and a 32-byte salt,
 * left-padded to the modulus length so raw RSA takes it.
 */
export function emsaPssEncode(mHash: Buffer, emBits: number): Buffer {
  const hLen = 32;
  const sLen = 32;
  const emLen = Math.ceil(emBits / 8);
  if (emLen < hLen + sLen + 2) throw new SigilError('INVALID_ARGUMENT', 'rsa key too small for pss with sha-256');
  const salt = randomBytes(sLen);
  const h = createHash('sha256').update(Buffer.alloc(8)).update(mHash).update(salt).digest();
  const dbLen = emLen - hLen - 1;
  const db = Buffer.alloc(dbLen);
  db[dbLen - sLen - 1] = 0x01;
  salt.copy(db, dbLen - sLen);
  const mask = mgf1Sha256(h, dbLen);
  for (let i = 0; i < dbLen; i++) db[i]! ^= mask[i]!;
  db[0]! &= 0xff >> (8 * emLen - emBits);
  const k = Math.ceil((emBits + 1) / 8);
  const out = Buffer.alloc(k);
  const off = k - emLen;
  db.copy(out, off);
  h.copy(out, off + dbLen);
  out[k - 1] = 0xbc;
  return out;
}

function mgf1Sha256(seed: Buffer, len: number): Buffer {
  const out = Buffer.alloc(len);
  const counter = Buffer.alloc(4);
  for (let i = 0, off = 0; off < len; i++, off += 32) {
    counter.writeUInt32BE(i);
    createHash('sha256').update(seed).update(counter).digest().copy(out, off);
  }
  return out;
}
