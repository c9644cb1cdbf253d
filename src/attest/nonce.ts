import { randomBytes } from 'node:crypto';
import type { Clock } from '../clock.ts';
import { SigilError } from '../errors.ts';

/** Options of a `NonceStore`. */
export interface NonceStoreOptions {
  clock: Clock;
  /** How long an issued nonce stays usable. */
  ttlMs: number;
  /** The most pending nonces kept at once; beyond it `issue` refuses rather than growing. */
  maxPending?: number;
}

/** Length of every nonce the verifier issues. */
export const NONCE_BYTES = 32;

interface Pending<T> {
  entry: T;
  expiresAt: number;
}

/**
 * Pending challenges keyed by a fresh random 32-byte nonce: each nonce is taken once, expires after a
 * TTL read from the injected clock, and the store is bounded (expired entries are swept on issue).
 */
export class NonceStore<T> {
  readonly #clock: Clock;
  readonly #ttlMs: number;
  readonly #max: number;
  // Map keeps insertion order, and every entry has the same TTL, so the oldest entries come first.
  readonly #pending = new Map<string, Pending<T>>();

  constructor(opts: NonceStoreOptions) {
    if (!(opts.ttlMs > 0)) throw new SigilError('CONFIG_INVALID', 'nonce ttl must be positive');
    this.#clock = opts.clock;
    this.#ttlMs = opts.ttlMs;
    this.#max = opts.maxPending ?? 10_000;
  }

  /** Number of pending (possibly expired, not yet swept) nonces. */
  get size(): number {
    return this.#pending.size;
  }

  /** Stores `entry` under a fresh nonce and returns the nonce. */
  issue(entry: T): Buffer {
    const now = this.#clock.now().getTime();
    this.sweep(now);
    if (this.#pending.size >= this.#max) {
      throw new SigilError('LIMIT_REACHED', `too many pending attestation challenges (limit ${this.#max}); try again later`);
    }
    const nonce = randomBytes(NONCE_BYTES);
    this.#pending.set(nonce.toString('hex'), { entry, expiresAt: now + this.#ttlMs });
    return nonce;
  }

  /** Consumes `nonce` and returns its entry; an expired nonce is consumed too, then refused. */
  take(nonce: Uint8Array): T {
    const key = Buffer.from(nonce).toString('hex');
    const p = nonce.length === NONCE_BYTES ? this.#pending.get(key) : undefined;
    if (p === undefined) throw new SigilError('FAILED_PRECONDITION', 'unknown or already used nonce');
    this.#pending.delete(key);
    if (this.#clock.now().getTime() >= p.expiresAt) throw new SigilError('FAILED_PRECONDITION', 'nonce expired');
    return p.entry;
  }

  /** Drops every entry expired at `now` (milliseconds since the epoch; the clock's time by default). */
  sweep(now: number = this.#clock.now().getTime()): void {
    for (const [k, p] of this.#pending) {
      if (p.expiresAt > now) break;
      this.#pending.delete(k);
    }
  }
}
