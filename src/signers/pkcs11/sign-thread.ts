import pkcs11js from 'pkcs11js';
import { siblingModule, WorkerClient } from '../../worker-client.ts';
import type { SignBatchReply, SignBatchRequest, SignWorkerData } from './sign-worker.ts';

/** The result of a batch: the signatures made, in order, and the error that stopped it (if any). */
export interface SignBatchResult {
  sigs: Buffer[];
  /** The failure of digest `sigs.length`; later digests were not attempted. */
  error?: Error;
}

/**
 * The main thread's side of the pkcs11 signing thread (`sign-worker.ts`): batches of ECDSA digests go in,
 * signatures come back.
 */
export class SignThread {
  readonly #client: WorkerClient<SignBatchRequest, SignBatchReply>;
  #closed = false;

  constructor(module: string) {
    this.#client = new WorkerClient({ url: siblingModule(import.meta.url, 'sign-worker'), workerData: { module } satisfies SignWorkerData, name: 'sigil-pkcs11-signer' });
  }

  /** Signs `digests` (each `digestLength` bytes, back to back) with `key` on `session`, which stays lent until this settles. */
  async sign(session: Buffer, key: Buffer, digests: Uint8Array<ArrayBuffer>, digestLength: number, sigLength: number): Promise<SignBatchResult> {
    if (this.#closed) throw new Error('the pkcs11 signing thread is closed');
    // Copies of the handles: a Buffer may be a view of a shared pool, which would be cloned whole.
    const r = await this.#client.request({ id: 0, session: new Uint8Array(session), key: new Uint8Array(key), sigLength, digests, digestLength }, [digests.buffer]);
    const all = Buffer.from(r.sigs.buffer, r.sigs.byteOffset, r.sigs.byteLength);
    const sigs: Buffer[] = [];
    for (let i = 0; i < r.done; i++) sigs.push(all.subarray(i * sigLength, (i + 1) * sigLength));
    // Rebuilt as pkcs11js's own error so the backend's CKR mapping applies unchanged.
    return r.error ? { sigs, error: new pkcs11js.Pkcs11Error(r.error.message, r.error.code, r.error.method) } : { sigs };
  }

  /** Stops the thread; call once no batch is in flight (the backend drains its sessions first). */
  close(): Promise<void> {
    this.#closed = true;
    return this.#client.close();
  }
}
