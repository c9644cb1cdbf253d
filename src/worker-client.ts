import { Worker } from 'node:worker_threads';

/** What every reply of a worker names: the requests it answers. */
export interface WorkerReply {
  ids: number[];
}

/** How to start a worker: its module, its data, its thread name, and what to do when it dies holding requests. */
export interface WorkerClientOptions {
  url: URL;
  workerData: unknown;
  name: string;
  onLost?: (err: unknown) => void;
}

/** The URL of a sibling module of `base` (an `import.meta.url`): `.ts` when running from src/, `.js` from the build. */
export function siblingModule(base: string, name: string): URL {
  return new URL(`./${name}${base.endsWith('.ts') ? '.ts' : '.js'}`, base);
}

/**
 * The main thread's side of a worker thread that answers requests by id. Idle, the thread does not keep
 * the process alive; a request in flight does. A thread that dies fails what it held and is started again
 * on the next request.
 */
export class WorkerClient<Req extends { id: number }, Rep extends WorkerReply> {
  readonly #o: WorkerClientOptions;
  #worker: Worker | null = null;
  readonly #pending = new Map<number, { resolve(r: Rep): void; reject(err: unknown): void }>();
  #nextId = 1;

  constructor(o: WorkerClientOptions) {
    this.#o = o;
  }

  /** Starts the thread now rather than on the first request. */
  start(): Worker {
    if (this.#worker) return this.#worker;
    const w = new Worker(this.#o.url, { workerData: this.#o.workerData, name: this.#o.name });
    w.unref();
    w.on('message', (r: Rep) => {
      for (const id of r.ids) {
        const p = this.#pending.get(id);
        if (!p) continue;
        this.#pending.delete(id);
        p.resolve(r);
      }
      if (this.#pending.size === 0) w.unref();
    });
    const lost = (err: unknown): void => {
      if (this.#worker !== w) return;
      this.#worker = null;
      if (this.#pending.size === 0) return;
      this.#o.onLost?.(err);
      const pending = [...this.#pending.values()];
      this.#pending.clear();
      for (const p of pending) p.reject(err);
    };
    w.on('error', lost);
    w.on('exit', (code) => lost(new Error(`the ${this.#o.name} thread exited (code ${code})`)));
    this.#worker = w;
    return w;
  }

  /** Sends `m` (its id is assigned here), moving `transfer`; resolves with the reply that names it. */
  request(m: Req, transfer: ArrayBuffer[] = []): Promise<Rep> {
    const w = this.start();
    const id = this.#nextId++;
    return new Promise<Rep>((resolve, reject) => {
      if (this.#pending.size === 0) w.ref();
      this.#pending.set(id, { resolve, reject });
      w.postMessage({ ...m, id }, transfer);
    });
  }

  /**
   * Ends the thread: sends `last` (a request after which the worker closes its port) and waits for the
   * thread to exit, or terminates it when there is no such request.
   */
  async close(last?: Req): Promise<void> {
    const w = this.#worker;
    if (!w) return;
    if (!last) {
      this.#worker = null;
      await w.terminate();
      return;
    }
    const ended = new Promise<void>((resolve) => w.once('exit', () => resolve()));
    await this.request(last).catch(() => undefined);
    this.#worker = null;
    // Keep the process up until the thread is gone (the reply unref'd it).
    w.ref();
    await ended;
  }
}
