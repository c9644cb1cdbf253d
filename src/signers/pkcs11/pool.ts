import { SigilError } from '../../errors.ts';

/**
 * A pool of logged-in sessions, one operation per session at a time (PKCS#11 allows one active
 * operation of a kind per session, else CKR_OPERATION_ACTIVE). `tryAcquire` is the allocation-free
 * fast path for synchronous signing; waiters are served first in, first out.
 */
export class SessionPool {
  readonly #free: Buffer[];
  readonly #waiters: Array<{ resolve(s: Buffer): void; reject(e: Error): void }> = [];
  readonly #size: number;
  /** Sessions handed back after `drain` began; `drain` resolves once all are here. */
  #parked: Buffer[] | null = null;
  #drained: ((sessions: Buffer[]) => void) | null = null;

  constructor(sessions: Buffer[]) {
    this.#free = [...sessions];
    this.#size = sessions.length;
  }

  /** A free session, or undefined when all are busy or the pool is draining. */
  tryAcquire(): Buffer | undefined {
    return this.#free.pop();
  }

  /** A free session, waiting for one when all are busy; BACKEND_UNAVAILABLE once the pool drains. */
  acquire(): Promise<Buffer> {
    const s = this.#free.pop();
    if (s !== undefined) return Promise.resolve(s);
    if (this.#parked !== null) return Promise.reject(new SigilError('BACKEND_UNAVAILABLE', 'pkcs11 backend is closed'));
    return new Promise((resolve, reject) => this.#waiters.push({ resolve, reject }));
  }

  /**
   * Passes every free session through `renew`, which returns it or a fresh one in its place (recovery
   * swaps closed sessions); sessions lent out are renewed by their borrowers before they come back.
   */
  renewFree(renew: (s: Buffer) => Buffer): void {
    for (let i = 0; i < this.#free.length; i++) this.#free[i] = renew(this.#free[i]!);
  }

  /** Hands a session back: to the oldest waiter, else to the free list (or, draining, to the parked ones). */
  release(s: Buffer): void {
    const w = this.#waiters.shift();
    if (w !== undefined) {
      w.resolve(s);
    } else if (this.#parked === null) {
      this.#free.push(s);
    } else {
      this.#parked.push(s);
      if (this.#parked.length === this.#size) this.#drained?.(this.#parked);
    }
  }

  /**
   * Closes the pool: new requests are refused, those already queued or running finish, and the promise
   * resolves with every session once all are back.
   */
  drain(): Promise<Buffer[]> {
    if (this.#parked !== null) return Promise.reject(new Error('session pool drained twice'));
    const parked = this.#free.splice(0);
    this.#parked = parked;
    if (parked.length === this.#size) return Promise.resolve(parked);
    return new Promise((resolve) => {
      this.#drained = resolve;
    });
  }
}
