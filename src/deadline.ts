/** Settles like `p`, or rejects with `timeout()` after `ms` (the call itself goes on; its result is dropped). */
export function withDeadline<T>(p: Promise<T>, ms: number, timeout: () => Error): Promise<T> {
  if (ms <= 0) return Promise.reject(timeout());
  return new Promise<T>((resolve, reject) => {
    const t = setTimeout(() => reject(timeout()), ms);
    p.then(
      (v) => {
        clearTimeout(t);
        resolve(v);
      },
      (e: unknown) => {
        clearTimeout(t);
        reject(e);
      },
    );
  });
}
