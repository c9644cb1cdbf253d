import { z } from 'zod';
import { isSigilError, SigilError } from '../errors.ts';
import type { Logger } from '../log.ts';
import type { Algorithm, Backend, BackendKey, KeyCreator, KeyDestroyer, KeyEnabler, KeySigner, KeySpec, RecordedKey } from './signer.ts';
import { withDeadline } from '../deadline.ts';

/**
 * How sigil calls one backend: a deadline per call, bounded retries with backoff for transient faults
 * only (BACKEND_UNAVAILABLE), and a circuit breaker that answers at once while the backend is down.
 */
export const resilienceSchema = z
  .strictObject({
    /** Deadline of one call, retries included. */
    deadlineMs: z.number().int().min(50).max(300_000).default(10_000),
    /** Extra attempts after a transient fault (0 turns retries off). */
    retries: z.number().int().min(0).max(10).default(2),
    /** First backoff; doubled per attempt, with full jitter, capped by the deadline. */
    backoffMs: z.number().int().min(1).max(60_000).default(50),
    /** Consecutive failed calls (after their retries) that open the breaker; 0 turns it off. */
    breakerFailures: z.number().int().min(0).max(1000).default(5),
    /** How long an open breaker refuses before it lets one trial call through. */
    breakerCooldownMs: z.number().int().min(10).max(600_000).default(2_000),
  })
  .prefault({});

/** Parsed resilience settings. */
export type Resilience = z.infer<typeof resilienceSchema>;

/** Breaker states, as reported by `state()` and the log. */
export type BreakerState = 'closed' | 'open' | 'half-open';

/**
 * A circuit breaker: `closed` lets calls through; `failures` consecutive transient faults open it, and
 * then calls are refused with BACKEND_UNAVAILABLE until `cooldownMs` has passed; the first call after
 * that is a trial (`half-open`), whose success closes the breaker and whose failure opens it again.
 */
export class CircuitBreaker {
  readonly #failures: number;
  readonly #cooldownMs: number;
  readonly #now: () => number;
  readonly #onChange: (to: BreakerState, from: BreakerState) => void;
  #state: BreakerState = 'closed';
  #consecutive = 0;
  #openedAt = 0;
  #trialInFlight = false;

  constructor(o: { failures: number; cooldownMs: number; now?: () => number; onChange?: (to: BreakerState, from: BreakerState) => void }) {
    this.#failures = o.failures;
    this.#cooldownMs = o.cooldownMs;
    this.#now = o.now ?? Date.now;
    this.#onChange = o.onChange ?? (() => {});
  }

  /** The state now (an open breaker whose cooldown has passed reads `half-open`). */
  state(): BreakerState {
    if (this.#state === 'open' && this.#now() - this.#openedAt >= this.#cooldownMs) return 'half-open';
    return this.#state;
  }

  /**
   * Asks to make a call: null when it may go ahead (`trial` true when it is the half-open probe), else the
   * milliseconds left before the breaker lets a trial through.
   */
  admit(): { trial: boolean } | { retryInMs: number } {
    if (this.#failures === 0 || this.#state === 'closed') return { trial: false };
    const left = this.#cooldownMs - (this.#now() - this.#openedAt);
    if (this.#state === 'open' && left > 0) return { retryInMs: left };
    // Cooldown over: one trial at a time; the others keep being refused until it answers.
    if (this.#trialInFlight) return { retryInMs: Math.min(this.#cooldownMs, 100) };
    this.#set('half-open');
    this.#trialInFlight = true;
    return { trial: true };
  }

  /** Reports a call that reached the backend and got an answer (an error that is not a transient fault counts). */
  success(trial: boolean): void {
    if (trial) this.#trialInFlight = false;
    this.#consecutive = 0;
    if (this.#state !== 'closed') this.#set('closed');
  }

  /** Reports a transient fault (after the call's retries). */
  failure(trial: boolean): void {
    if (trial) this.#trialInFlight = false;
    this.#consecutive++;
    if (this.#failures === 0) return;
    if (trial || this.#state === 'half-open' || this.#consecutive >= this.#failures) {
      this.#openedAt = this.#now();
      if (this.#state !== 'open') this.#set('open');
    }
  }

  #set(to: BreakerState): void {
    const from = this.#state;
    this.#state = to;
    this.#onChange(to, from);
  }
}

/** True for the faults worth another attempt: the backend could not be reached or asked us to wait. */
export function isTransient(err: unknown): boolean {
  return isSigilError(err, 'BACKEND_UNAVAILABLE');
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms).unref?.());

/**
 * Wraps a backend so every call has a deadline, transient faults are retried with backoff (idempotent
 * calls only: creating a key is never retried, the lifecycle recovers a half-made key by its label) and a
 * circuit breaker shared by all calls of this backend fails fast while it is down. The wrapper offers
 * exactly the optional powers the backend has, so the `can...` guards keep working.
 */
export function resilient(inner: Backend, settings: Resilience, o: { name: string; log: Logger; now?: () => number; onBreaker?: (state: BreakerState) => void }): Backend {
  const breaker = new CircuitBreaker({
    failures: settings.breakerFailures,
    cooldownMs: settings.breakerCooldownMs,
    ...(o.now ? { now: o.now } : {}),
    onChange: (to, from) => {
      o.onBreaker?.(to);
      if (to === 'open') o.log.warn({ backend: o.name, from }, 'backend unavailable: circuit breaker open');
      else if (to === 'closed') o.log.info({ backend: o.name, from }, 'backend answering again: circuit breaker closed');
    },
  });

  /**
   * `fn` gets a signal aborted when its attempt's deadline passes, when `abortable` (creating one costs
   * a little on every call, so only for signers that drop abandoned requests).
   */
  async function call<T>(what: string, fn: (signal?: AbortSignal) => Promise<T>, retry: boolean, abortable = false): Promise<T> {
    const started = Date.now();
    const deadline = started + settings.deadlineMs;
    for (let attempt = 0; ; attempt++) {
      const admitted = breaker.admit();
      if ('retryInMs' in admitted) {
        throw new SigilError('BACKEND_UNAVAILABLE', `backend ${o.name} is unavailable (circuit breaker open, next try in ${Math.ceil(admitted.retryInMs / 1000)} s)`);
      }
      const left = deadline - Date.now();
      let err: unknown;
      try {
        const abandon = abortable ? new AbortController() : null;
        const value = await withDeadline(fn(abandon?.signal), left, () => {
          // The attempt runs on; a retry must not find it still queued and sign twice.
          abandon?.abort();
          return new SigilError('BACKEND_UNAVAILABLE', `backend ${o.name} did not answer ${what} within ${settings.deadlineMs} ms`);
        });
        breaker.success(admitted.trial);
        return value;
      } catch (e) {
        err = e;
      }
      if (!isTransient(err)) {
        // The backend answered (a refusal is an answer): it is up.
        breaker.success(admitted.trial);
        throw err;
      }
      const backoff = Math.random() * settings.backoffMs * 2 ** attempt;
      if (!retry || admitted.trial || attempt >= settings.retries || Date.now() + backoff >= deadline) {
        breaker.failure(admitted.trial);
        throw err;
      }
      await sleep(backoff);
    }
  }

  const signers = new WeakMap<KeySigner, KeySigner>();
  const wrapSigner = (s: KeySigner): KeySigner => {
    let w = signers.get(s);
    if (w === undefined) {
      w = s.dropsAbandoned
        ? { algorithm: s.algorithm, dropsAbandoned: true, sign: (input: Buffer, outer?: AbortSignal) => call('sign', (mine) => s.sign(input, outer ? AbortSignal.any([outer, mine!]) : mine), true, true) }
        : { algorithm: s.algorithm, sign: (input: Buffer) => call('sign', () => s.sign(input), true) };
      signers.set(s, w);
    }
    return w;
  };

  const out: Backend & Partial<KeyCreator & KeyDestroyer & KeyEnabler> = {
    kind: inner.kind,
    algorithms: inner.algorithms,
    getKey: (uri: string): Promise<BackendKey> => call('getKey', () => inner.getKey(uri), true),
    signer: async (uri: string, algorithm: Algorithm, recorded?: RecordedKey): Promise<KeySigner> => wrapSigner(await call('signer', () => inner.signer(uri, algorithm, recorded), true)),
    close: () => inner.close(),
  };
  const i = inner as Backend & Partial<KeyCreator & KeyDestroyer & KeyEnabler>;
  if (typeof i.createKey === 'function') {
    const f = i.createKey.bind(inner);
    out.createKey = (spec: KeySpec) => call('createKey', () => f(spec), false);
  }
  if (typeof i.destroyKey === 'function') {
    const f = i.destroyKey.bind(inner);
    out.destroyKey = (uri: string) => call('destroyKey', () => f(uri), true);
  }
  if (typeof i.findKeyByLabel === 'function') {
    const f = i.findKeyByLabel.bind(inner);
    out.findKeyByLabel = (label: string) => call('findKeyByLabel', () => f(label), true);
  }
  if (typeof i.setKeyEnabled === 'function') {
    const f = i.setKeyEnabled.bind(inner);
    out.setKeyEnabled = (uri: string, enabled: boolean) => call('setKeyEnabled', () => f(uri, enabled), true);
  }
  return out;
}
