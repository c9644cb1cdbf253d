import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { constants, createHash, createPublicKey, randomBytes, randomUUID, verify, type KeyObject } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it, type TestContext } from 'node:test';
import { promisify } from 'node:util';
import { isSigilError } from '../../src/errors.ts';
import {
  ALGORITHM_INFO,
  ALGORITHMS,
  type Algorithm,
  type Backend,
  type BackendKey,
  type KeyCreator,
} from '../../src/signers/signer.ts';
import { missingTools } from '../helpers/hw.ts';
import { assertCode } from '../helpers/assert.ts';

const run = promisify(execFile);

/** What a conformance run gets from its backend factory. */
export interface ConformanceTarget {
  backend: Backend & Partial<KeyCreator>;
  /** Removes what the factory set up; the suite closes the backend itself first. */
  cleanup(): Promise<void>;
  /** Existing key URIs by algorithm, for backends that cannot create keys. */
  keys?: Partial<Record<Algorithm, string>>;
  /** A well-formed URI naming no key; defaults to `<kind>:id=<random uuid>`. */
  unknownUri?: string;
}

/**
 * The shared signer conformance suite every backend runs: key creation and lookup, signatures that
 * node:crypto and openssl verify, refusals with the right error codes, and concurrent signing.
 */
export function runConformance(name: string, makeBackend: () => Promise<ConformanceTarget>): void {
  describe(`${name} backend conformance`, () => {
    let target: ConformanceTarget;
    let backend: Backend & Partial<KeyCreator>;
    let work: string;
    const keys = new Map<Algorithm, BackendKey>();
    const opensslSkip = missingTools('openssl');

    before(async () => {
      target = await makeBackend();
      backend = target.backend;
      work = await mkdtemp(join(tmpdir(), 'sigil-conformance-'));
    });

    after(async () => {
      await backend?.close();
      await target?.cleanup();
      if (work) await rm(work, { recursive: true, force: true });
    });

    /** The key for `alg`, created on first use (or taken from the target); null when the backend lacks it. */
    async function keyFor(t: TestContext, alg: Algorithm): Promise<BackendKey | null> {
      if (!backend.algorithms.includes(alg)) {
        t.skip(`${name} does not offer ${alg}`);
        return null;
      }
      const known = keys.get(alg);
      if (known) return known;
      let k: BackendKey;
      const given = target.keys?.[alg];
      if (given !== undefined) k = await backend.getKey(given);
      else if (backend.createKey) k = await backend.createKey({ label: `conformance-${alg.toLowerCase()}-${randomUUID().slice(0, 8)}`, algorithm: alg });
      else {
        t.skip(`${name} cannot create keys and has no ${alg} key`);
        return null;
      }
      keys.set(alg, k);
      return k;
    }

    for (const alg of ALGORITHMS) {
      const info = ALGORITHM_INFO[alg];

      describe(alg, () => {
        it('creates a key that getKey finds with the same public key and type', async (t) => {
          const k = await keyFor(t, alg);
          if (!k) return;
          assert.equal(k.keyType, info.keyType);
          assert.equal(publicKey(k).asymmetricKeyType, info.keyType === 'RSA' ? 'rsa' : info.keyType === 'ED25519' ? 'ed25519' : 'ec');
          const again = await backend.getKey(k.uri);
          assert.equal(again.uri, k.uri);
          assert.equal(again.keyType, k.keyType);
          assert.deepEqual(again.spki, k.spki);
        });

        it('signs what node:crypto verifies', async (t) => {
          const k = await keyFor(t, alg);
          if (!k) return;
          const signer = await backend.signer(k.uri, alg);
          assert.equal(signer.algorithm, alg);
          for (const msg of [Buffer.from('hello sigil'), randomBytes(1000)]) {
            const sig = await signer.sign(inputFor(alg, msg));
            assert.ok(verifies(alg, publicKey(k), msg, sig), 'signature verifies');
            if (info.keyType === 'EC_P256' || info.keyType === 'EC_P384') assertDerEcdsa(sig, info.digestLength);
            if (info.keyType === 'RSA') assert.equal(sig.length, 256);
            if (info.keyType === 'ED25519') assert.equal(sig.length, 64);
          }
        });

        if (alg === 'ED25519') {
          it('signs the empty message', async (t) => {
            const k = await keyFor(t, alg);
            if (!k) return;
            const sig = await (await backend.signer(k.uri, alg)).sign(Buffer.alloc(0));
            assert.ok(verifies(alg, publicKey(k), Buffer.alloc(0), sig));
          });
        } else {
          it('refuses a digest of the wrong length and keeps working', async (t) => {
            const k = await keyFor(t, alg);
            if (!k) return;
            const signer = await backend.signer(k.uri, alg);
            for (const len of [0, 1, info.digestLength - 1, info.digestLength + 1, 600]) {
              await assert.rejects(signer.sign(Buffer.alloc(len, 7)), (e) => isSigilError(e) && ['INVALID_ARGUMENT', 'BACKEND_ERROR'].includes(e.code));
            }
            const msg = Buffer.from('after the refusals');
            assert.ok(verifies(alg, publicKey(k), msg, await signer.sign(inputFor(alg, msg))));
          });
        }

        it('signs what openssl verifies', { skip: opensslSkip ?? false }, async (t) => {
          const k = await keyFor(t, alg);
          if (!k) return;
          const msg = Buffer.from(`openssl check ${alg}`);
          const sig = await (await backend.signer(k.uri, alg)).sign(inputFor(alg, msg));
          const base = join(work, `${alg}-${randomUUID().slice(0, 8)}`);
          await writeFile(`${base}.pub.pem`, publicKey(k).export({ format: 'pem', type: 'spki' }));
          await writeFile(`${base}.msg`, msg);
          await writeFile(`${base}.sig`, sig);
          const args =
            alg === 'ED25519'
              ? ['pkeyutl', '-verify', '-pubin', '-inkey', `${base}.pub.pem`, '-rawin', '-in', `${base}.msg`, '-sigfile', `${base}.sig`]
              : [
                  'dgst', `-${info.hash}`, '-verify', `${base}.pub.pem`, '-signature', `${base}.sig`,
                  ...(alg === 'RSA_PSS_SHA256' ? ['-sigopt', 'rsa_padding_mode:pss', '-sigopt', 'rsa_pss_saltlen:32'] : []),
                  `${base}.msg`,
                ];
          const { stdout } = await run('openssl', args);
          assert.match(stdout, /Verified OK|Signature Verified Successfully/);
        });

        it('refuses a signer for an algorithm of another key type', async (t) => {
          const k = await keyFor(t, alg);
          if (!k) return;
          for (const other of ALGORITHMS.filter((a) => ALGORITHM_INFO[a].keyType !== info.keyType && backend.algorithms.includes(a))) {
            await assertCode(backend.signer(k.uri, other), 'INVALID_ARGUMENT');
          }
        });

        it('signs 200 requests at once, all of which verify', async (t) => {
          const k = await keyFor(t, alg);
          if (!k) return;
          const signer = await backend.signer(k.uri, alg);
          const msgs = Array.from({ length: 200 }, (_, i) => Buffer.from(`concurrent ${i} ${randomUUID()}`));
          const sigs = await Promise.all(msgs.map((m) => signer.sign(inputFor(alg, m))));
          const pub = publicKey(k);
          sigs.forEach((sig, i) => assert.ok(verifies(alg, pub, msgs[i]!, sig), `signature ${i} verifies`));
        });
      });
    }

    it('refuses an algorithm it does not offer, clearly, at creation', async (t) => {
      const lacking = ALGORITHMS.filter((a) => !backend.algorithms.includes(a));
      if (lacking.length === 0) return t.skip(`${name} offers every algorithm`);
      if (typeof backend.createKey !== 'function') return t.skip(`${name} cannot create keys`);
      for (const alg of lacking) {
        await assert.rejects(backend.createKey({ label: `conformance-lacking-${alg.toLowerCase()}-v1`, algorithm: alg }), (err: unknown) => {
          assert.ok(isSigilError(err), `a SigilError for ${alg}, got ${String(err)}`);
          assert.ok(['UNSUPPORTED_ALGORITHM', 'NOT_IMPLEMENTED', 'INVALID_ARGUMENT'].includes(err.code), `${alg}: ${err.code}`);
          assert.match(err.message, new RegExp(alg.split('_')[0]!.toLowerCase() === 'ed25519' ? 'ed25519' : alg.split('_')[0]!, 'i'));
          return true;
        });
      }
    });

    it('answers KEY_NOT_FOUND for a well-formed uri naming no key', async () => {
      const uri = target.unknownUri ?? `${backend.kind}:id=${randomUUID()}`;
      await assertCode(backend.getKey(uri), 'KEY_NOT_FOUND');
      await assertCode(backend.signer(uri, backend.algorithms[0]!), 'KEY_NOT_FOUND');
    });

    it('answers INVALID_ARGUMENT for a malformed uri', async () => {
      const kind = backend.kind;
      for (const uri of ['', 'no-scheme', `${kind}:`, `${kind}:id=%zz`, `${kind}:id=a;id=b`, `${kind}:id=1?pin-value=1234`, 'other-scheme:id=1']) {
        await assertCode(backend.getKey(uri), 'INVALID_ARGUMENT');
        await assertCode(backend.signer(uri, backend.algorithms[0]!), 'INVALID_ARGUMENT');
      }
    });
  });
}

/** What a backend signs for `msg`: its digest, or the message itself for Ed25519. */
export function inputFor(alg: Algorithm, msg: Buffer): Buffer {
  const { hash } = ALGORITHM_INFO[alg];
  return hash === null ? msg : createHash(hash).update(msg).digest();
}

function publicKey(k: BackendKey): KeyObject {
  return createPublicKey({ key: k.spki, format: 'der', type: 'spki' });
}

/** True when `sig` is a valid `alg` signature of `msg` by `key`, checked with node:crypto. */
export function verifies(alg: Algorithm, key: KeyObject, msg: Buffer, sig: Buffer): boolean {
  switch (alg) {
    case 'ECDSA_P256_SHA256':
      return verify('sha256', msg, { key, dsaEncoding: 'der' }, sig);
    case 'ECDSA_P384_SHA384':
      return verify('sha384', msg, { key, dsaEncoding: 'der' }, sig);
    case 'RSA_PKCS1_SHA256':
      return verify('sha256', msg, { key, padding: constants.RSA_PKCS1_PADDING }, sig);
    case 'RSA_PSS_SHA256':
      return verify('sha256', msg, { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 }, sig);
    case 'ED25519':
      return verify(null, msg, key, sig);
  }
}

/** Checks an ECDSA-Sig-Value: SEQUENCE of two minimal positive INTEGERs no longer than the curve order. */
function assertDerEcdsa(sig: Buffer, size: number): void {
  assert.equal(sig[0], 0x30, 'DER SEQUENCE');
  let off = 2;
  let bodyLen = sig[1]!;
  if (bodyLen === 0x81) {
    bodyLen = sig[2]!;
    off = 3;
  }
  assert.equal(off + bodyLen, sig.length, 'DER length covers the signature');
  for (let i = 0; i < 2; i++) {
    assert.equal(sig[off], 0x02, 'DER INTEGER');
    const len = sig[off + 1]!;
    const v = sig.subarray(off + 2, off + 2 + len);
    assert.ok(len >= 1 && len <= size + 1, 'integer length');
    assert.equal(v[0]! & 0x80, 0, 'integer is positive');
    if (len > 1) assert.ok(v[0] !== 0 || (v[1]! & 0x80) !== 0, 'integer is minimal');
    off += 2 + len;
  }
  assert.equal(off, sig.length);
}

