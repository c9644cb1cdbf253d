import { Worker } from 'node:worker_threads';
import pkcs11js from 'pkcs11js';
import type { SignBatchReply, SignBatchRequest, SignWorkerData } from './sign-worker.ts';

/** The result of a batch: the signatures made, in order, and the error that stopped it (if any). */
export interface SignBatchResult {
  sigs: Buffer[];
  /** The failure of digest `sigs.length`; later digests were not attempted. */
  error?: Error;
}

// A sibling module: `.ts` when running from src/, `.js` from the build.
const WORKER_URL = new URL(`./sign-worker${import.meta.url.endsWith('.ts') ? '.ts' : '.js'}`, import.meta.url);

/**
 * The main thread's side of the pkcs11 signing thread (`sign-worker.ts`): batches of ECDSA digests go in,
 * signatures come back. A thread that dies fails the batches it held and is started again on the next one.
 */
export class SignThread {
  readonly #module: string;
  #worker: Worker | null = null;
  readonly #pending = new Map<number, { digestLength: number; resolve(r: SignBatchResult): void; reject(err: unknown): void }>();
  #nextId = 1;
  #closed = false;

  constructor(module: string) {
    this.#module = module;
  }

  #start(): Worker {
    const w = new Worker(WORKER_URL, { workerData: { module: this.#module } satisfies SignWorkerData, name: 'sigil-pkcs11-signer' });
    w.unref();
    w.on('message', (r: SignBatchReply) => {
      const p = this.#pending.get(r.id);
      if (!p) return;
      this.#pending.delete(r.id);
      if (this.#pending.size === 0) w.unref();
      const sigs: Buffer[] = [];
      const all = Buffer.from(r.sigs.buffer, r.sigs.byteOffset, r.sigs.byteLength);
      const len = r.done > 0 ? all.length / r.done : 0;
      for (let i = 0; i < r.done; i++) sigs.push(all.subarray(i * len, (i + 1) * len));
      // Rebuilt as pkcs11js's own error so the backend's CKR mapping applies unchanged.
      p.resolve(r.error ? { sigs, error: new pkcs11js.Pkcs11Error(r.error.message, r.error.code, r.error.method) } : { sigs });
    });
    const lost = (err: unknown): void => {
      if (this.#worker !== w) return;
      this.#worker = null;
      const pending = [...this.#pending.values()];
      this.#pending.clear();
      for (const p of pending) p.reject(err);
    };
    w.on('error', lost);
    w.on('exit', (code) => lost(new Error(`the pkcs11 signing thread exited (code ${code})`)));
    this.#worker = w;
    return w;
  }

  /** Signs `digests` (each `digestLength` bytes, back to back) with `key` on `session`, which stays lent until this settles. */
  sign(session: Buffer, key: Buffer, digests: Uint8Array<ArrayBuffer>, digestLength: number, sigLength: number): Promise<SignBatchResult> {
    if (this.#closed) return Promise.reject(new Error('the pkcs11 signing thread is closed'));
    const w = this.#worker ?? this.#start();
    const id = this.#nextId++;
    return new Promise((resolve, reject) => {
      if (this.#pending.size === 0) w.ref();
      this.#pending.set(id, { digestLength, resolve, reject });
      // Copies of the handles: a Buffer may be a view of a shared pool, which would be cloned whole.
      const m: SignBatchRequest = { id, session: new Uint8Array(session), key: new Uint8Array(key), sigLength, digests, digestLength };
      w.postMessage(m, [digests.buffer]);
    });
  }

  /** Stops the thread; call once no batch is in flight (the backend drains its sessions first). */
  async close(): Promise<void> {
    this.#closed = true;
    const w = this.#worker;
    this.#worker = null;
    if (w) await w.terminate();
  }
}
