import type { Clock } from '../clock.ts';
import type { Logger } from '../log.ts';
import type { Store } from '../store/store.ts';
import type { KeyLifecycle } from './lifecycle.ts';
import { SIGILD } from './lifecycle.ts';
import { keyVersionRef } from './names.ts';

/** What one tick did: approvals expired, versions destroyed, keys rotated, and acts that failed. */
export interface TickReport {
  expired: string[];
  destroyed: string[];
  rotated: string[];
  failed: Array<{ what: string; error: string }>;
}

/**
 * A failed timed act is retried after RETRY_MS rather than on every tick, then after twice as long each time it
 * fails again, up to MAX_RETRY_MS: an act that needs a person (a TPM with no room left, say) does not add two audit
 * entries a minute until someone comes.
 */
const RETRY_MS = 60_000;
const MAX_RETRY_MS = 3_600_000;

/**
 * The daemon's lifecycle timers: approval expiry, destruction when a window ends, auto-rotation when
 * `nextRotationAt` passes. All its state is in the store (due times), so after a restart the first tick
 * catches up on whatever fell due meanwhile. It reads the injectable clock; tests call `tick()` directly.
 */
export class KeyScheduler {
  readonly #store: Store;
  readonly #lifecycle: KeyLifecycle;
  readonly #clock: Clock;
  readonly #log: Logger;
  readonly #intervalMs: number;
  /** Per timed act that failed: when to try it again, and how many times in a row it failed. */
  readonly #retryAt = new Map<string, { at: number; failures: number }>();
  #timer: NodeJS.Timeout | null = null;
  #running: Promise<TickReport> | null = null;

  constructor(o: { store: Store; lifecycle: KeyLifecycle; clock: Clock; log: Logger; intervalMs: number }) {
    this.#store = o.store;
    this.#lifecycle = o.lifecycle;
    this.#clock = o.clock;
    this.#log = o.log;
    this.#intervalMs = o.intervalMs;
  }

  /** Runs a first tick now (catch-up) and then one every interval. */
  start(): void {
    if (this.#timer) return;
    void this.tick();
    this.#timer = setInterval(() => void this.tick(), this.#intervalMs);
    this.#timer.unref();
  }

  /** Stops the timer and waits for a running tick. */
  async stop(): Promise<void> {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = null;
    await this.#running;
  }

  /** Does whatever is due now; ticks never overlap (a tick while one runs returns the running one). */
  tick(): Promise<TickReport> {
    this.#running ??= this.#tick().finally(() => (this.#running = null));
    return this.#running;
  }

  async #tick(): Promise<TickReport> {
    const report: TickReport = { expired: [], destroyed: [], rotated: [], failed: [] };
    const attempt = async (what: string, fn: () => Promise<void>): Promise<void> => {
      const now = this.#clock.now().getTime();
      const before = this.#retryAt.get(what);
      if (before !== undefined && before.at > now) return;
      try {
        await fn();
        this.#retryAt.delete(what);
      } catch (err) {
        const failures = (before?.failures ?? 0) + 1;
        const at = now + Math.min(RETRY_MS * 2 ** Math.min(failures - 1, 16), MAX_RETRY_MS);
        this.#retryAt.set(what, { at, failures });
        this.#log.error({ err, what, failures, retryAt: new Date(at) }, 'scheduled key act failed; retrying later');
        report.failed.push({ what, error: err instanceof Error ? err.message : String(err) });
      }
    };
    await attempt('approval expiry', async () => {
      report.expired.push(...(await this.#lifecycle.expireApprovals()));
    });
    const now = this.#clock.now().getTime();
    for (const v of this.#store.versionsInState(['DESTROY_SCHEDULED'])) {
      if (!v.destroyAt || v.destroyAt.getTime() > now) continue;
      const ref = keyVersionRef(v.name, v.version);
      await attempt(`destroy ${ref}`, async () => {
        await this.#lifecycle.destroyDue(ref);
        report.destroyed.push(ref);
      });
    }
    for (const name of this.#store.keysDueForRotation(this.#clock.now())) {
      await attempt(`rotate ${name}`, async () => {
        const { version } = await this.#lifecycle.rotate(SIGILD, name, { auto: true });
        report.rotated.push(keyVersionRef(name, version));
      });
    }
    return report;
  }
}
