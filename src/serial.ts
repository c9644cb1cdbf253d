/** Runs async operations one at a time, in the order they were asked for; a failure does not stop the next. */
export class Serial {
  #tail: Promise<unknown> = Promise.resolve();

  run<T>(f: () => Promise<T>): Promise<T> {
    const next = this.#tail.then(f, f);
    this.#tail = next.catch(() => undefined);
    return next;
  }
}

/** One `Serial` per key, made on demand and dropped when its queue empties: operations on one key wait for each other, others run freely. */
export class KeyedSerial {
  readonly #tails = new Map<string, Promise<unknown>>();

  async run<T>(key: string, f: () => Promise<T>): Promise<T> {
    const prev = this.#tails.get(key) ?? Promise.resolve();
    const run = prev.then(f, f);
    const tail = run.catch(() => undefined);
    this.#tails.set(key, tail);
    try {
      return await run;
    } finally {
      if (this.#tails.get(key) === tail) this.#tails.delete(key);
    }
  }
}
