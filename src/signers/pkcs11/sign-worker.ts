// The pkcs11 backend's signing thread: ECDSA signatures are made here, a batch per message, so the
// daemon's event loop (gRPC, auth, audit) and SoftHSM's signing run on different cores and SoftHSM's code
// stays hot in this thread's cache. Sessions, login and key handles belong to the process (PKCS#11 v2.40
// section 5.6): the main thread opens, logs in and pools them and lends one session per batch.
import { parentPort, workerData } from 'node:worker_threads';
import pkcs11js from 'pkcs11js';

/** One batch: sign each digest with `key` on `session`, in order. */
export interface SignBatchRequest {
  id: number;
  session: Uint8Array;
  key: Uint8Array;
  /** Length of each signature, r || s (64 for P-256, 96 for P-384). */
  sigLength: number;
  /** The digests, back to back; each is `digestLength` bytes. */
  digests: Uint8Array;
  digestLength: number;
}

/**
 * The answer: `done` signatures in `sigs`, back to back; when `done` is short of the batch, `error` is the
 * failure of digest `done` and the rest were not attempted (the session may hold an active operation).
 */
export interface SignBatchReply {
  ids: [number];
  done: number;
  sigs: Uint8Array;
  error?: { message: string; code: number; method: string };
}

/** What the thread is started with. */
export interface SignWorkerData {
  module: string;
}

const CKR_CRYPTOKI_ALREADY_INITIALIZED = 0x191;
const MECH_ECDSA: pkcs11js.Mechanism = { mechanism: pkcs11js.CKM_ECDSA };

const port = parentPort;
if (!port) throw new Error('sign-worker runs as a worker thread');
const { module } = workerData as SignWorkerData;
const pk = new pkcs11js.PKCS11();
pk.load(module);
try {
  // The main thread initialised the module for the process; this only binds this copy of the function list.
  pk.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
} catch (err) {
  if ((err as { code?: number }).code !== CKR_CRYPTOKI_ALREADY_INITIALIZED) throw err;
}

const view = (u: Uint8Array): Buffer => Buffer.from(u.buffer, u.byteOffset, u.byteLength);

port.on('message', (m: SignBatchRequest) => {
  const session = view(m.session);
  const key = view(m.key);
  const digests = view(m.digests);
  const n = digests.length / m.digestLength;
  const sigs = Buffer.alloc(n * m.sigLength);
  let done = 0;
  let error: SignBatchReply['error'];
  for (; done < n; done++) {
    try {
      pk.C_SignInit(session, MECH_ECDSA, key);
      const out = pk.C_Sign(session, digests.subarray(done * m.digestLength, (done + 1) * m.digestLength), sigs.subarray(done * m.sigLength, (done + 1) * m.sigLength));
      if (out.length !== m.sigLength) throw new Error(`the token returned a ${out.length}-byte ECDSA signature, ${m.sigLength} expected`);
    } catch (err) {
      const e = err as { message?: unknown; code?: unknown; method?: unknown };
      error = { message: String(e.message ?? err), code: typeof e.code === 'number' ? e.code : 0, method: typeof e.method === 'string' ? e.method : '' };
      break;
    }
  }
  const reply: SignBatchReply = { ids: [m.id], done, sigs: new Uint8Array(sigs.buffer, sigs.byteOffset, done * m.sigLength), ...(error ? { error } : {}) };
  port.postMessage(reply, [sigs.buffer as ArrayBuffer]);
});
