/**
 * The raw in-process limit of SoftHSM through pkcs11js: one thread, a token key, SignInit + Sign per
 * signature, no pooling, no promises. sigil's pkcs11 backend is measured against these figures.
 *
 *   node bench/raw-pkcs11.ts [seconds]   prints one JSON line per algorithm: {"alg":..,"sigsPerSec":..}
 */
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pkcs11js from 'pkcs11js';
import { initSoftHsmToken } from '../src/dev/softhsm.ts';

/** An algorithm the raw benchmark measures. */
export type RawAlg = 'ECDSA_P256' | 'RSA_PKCS1_2048';

/** One measurement: signatures per second on one thread. */
export interface RawRate {
  alg: RawAlg;
  sigsPerSec: number;
}

const SHA256_DIGEST_INFO = Buffer.from('3031300d060960864801650304020105000420', 'hex');

/**
 * Measures bare pkcs11js signing for `seconds` per algorithm on a fresh temp SoftHSM token (or the
 * given one), with token (not session) key objects as sigil uses them.
 */
export async function rawRate(opts: { seconds?: number; algs?: RawAlg[]; token?: { module: string; conf: string; label: string; pinFile: string } } = {}): Promise<RawRate[]> {
  const seconds = opts.seconds ?? 3;
  const algs = opts.algs ?? ['ECDSA_P256', 'RSA_PKCS1_2048'];
  const dir = opts.token ? null : await mkdtemp(join(tmpdir(), 'sigil-bench-'));
  try {
    const token = opts.token ?? (await initSoftHsmToken({ dir: dir!, label: 'bench' }));
    process.env.SOFTHSM2_CONF = token.conf;
    const pin = (await readFile(token.pinFile, 'utf8')).replace(/\r?\n$/, '');
    const pk = new pkcs11js.PKCS11();
    pk.load(token.module);
    pk.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
    try {
      const slot = pk.C_GetSlotList(true).find((s) => pk.C_GetTokenInfo(s).label.trim() === token.label);
      if (slot === undefined) throw new Error(`token ${token.label} not found`);
      const session = pk.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
      pk.C_Login(session, pkcs11js.CKU_USER, pin);
      const out: RawRate[] = [];
      for (const alg of algs) out.push({ alg, sigsPerSec: measure(pk, session, alg, seconds) });
      pk.C_Logout(session);
      pk.C_CloseSession(session);
      return out;
    } finally {
      pk.C_Finalize();
    }
  } finally {
    if (dir) await rm(dir, { recursive: true, force: true });
  }
}

function measure(pk: pkcs11js.PKCS11, session: Buffer, alg: RawAlg, seconds: number): number {
  const ec = alg === 'ECDSA_P256';
  const label = `bench-${alg.toLowerCase()}-${process.pid}`;
  const common = [
    { type: pkcs11js.CKA_TOKEN, value: true },
    { type: pkcs11js.CKA_LABEL, value: label },
  ];
  const keys = pk.C_GenerateKeyPair(
    session,
    { mechanism: ec ? pkcs11js.CKM_EC_KEY_PAIR_GEN : pkcs11js.CKM_RSA_PKCS_KEY_PAIR_GEN },
    [
      ...common,
      { type: pkcs11js.CKA_VERIFY, value: true },
      ...(ec
        ? [{ type: pkcs11js.CKA_EC_PARAMS, value: Buffer.from('06082a8648ce3d030107', 'hex') }]
        : [{ type: pkcs11js.CKA_MODULUS_BITS, value: 2048 }, { type: pkcs11js.CKA_PUBLIC_EXPONENT, value: Buffer.from([1, 0, 1]) }]),
    ],
    [...common, { type: pkcs11js.CKA_PRIVATE, value: true }, { type: pkcs11js.CKA_SENSITIVE, value: true }, { type: pkcs11js.CKA_SIGN, value: true }],
  );
  const mech = { mechanism: ec ? pkcs11js.CKM_ECDSA : pkcs11js.CKM_RSA_PKCS };
  const digest = createHash('sha256').update('bench').digest();
  const input = ec ? digest : Buffer.concat([SHA256_DIGEST_INFO, digest]);
  const outBuf = Buffer.alloc(ec ? 64 : 256);
  // Warm up, then count whole batches until the time is up.
  for (let i = 0; i < 50; i++) {
    pk.C_SignInit(session, mech, keys.privateKey);
    pk.C_Sign(session, input, outBuf);
  }
  const batch = ec ? 500 : 20;
  const end = performance.now() + seconds * 1000;
  const start = performance.now();
  let n = 0;
  while (performance.now() < end) {
    for (let i = 0; i < batch; i++) {
      pk.C_SignInit(session, mech, keys.privateKey);
      pk.C_Sign(session, input, outBuf);
    }
    n += batch;
  }
  const rate = n / ((performance.now() - start) / 1000);
  pk.C_DestroyObject(session, keys.privateKey);
  pk.C_DestroyObject(session, keys.publicKey);
  return Math.round(rate);
}

if (import.meta.main) {
  const seconds = Number(process.argv[2] ?? 3);
  for (const r of await rawRate({ seconds })) console.log(JSON.stringify(r));
}
