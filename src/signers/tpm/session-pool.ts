import type { Logger } from '../../log.ts';
import type { HmacSession } from '../../tpm/hmac-session.ts';
import { baseRc, TPM_RC, TpmError } from '../../tpm/rc.ts';
import type { Tpm } from '../../tpm/tpm.ts';

/**
 * TPM_RC_REFERENCE_S0..S6 (TPM 2.0 Part 2, Table 16): a session handle of the command names no loaded
 * session (flushed, or the TPM restarted).
 */
export function isSessionGone(err: unknown): boolean {
  return err instanceof TpmError && err.rc >= 0x918 && err.rc <= 0x91e;
}

/** TPM_RC_BAD_AUTH or TPM_RC_AUTH_FAIL on a session: the command HMAC did not match what the TPM computed. */
export function isAuthRefused(err: unknown): boolean {
  if (!(err instanceof TpmError)) return false;
  const base = baseRc(err.rc);
  return base === TPM_RC.BAD_AUTH || base === TPM_RC.AUTH_FAIL;
}

interface Pooled {
  session: HmacSession;
  /** The transport's connection count when the session was started. */
  connection: number | undefined;
}

/**
 * A few HMAC sessions kept open (continueSession) on one TPM connection so a signature costs no extra
 * round trip. A session's nonces roll with every command, so each serves one command at a time:
 * `acquire` hands out an idle one, starts one while fewer than `size` exist, or waits. Sessions from
 * an earlier connection are dropped at `acquire` (the TPM may have restarted under them); dropped
 * handles are flushed before the next session starts (never after: a restarted TPM hands out the
 * same numbers again).
 */
export class SessionPool {
  readonly #tpm: Tpm;
  readonly #start: () => Promise<HmacSession>;
  readonly #size: number;
  readonly #log: Logger;
  #idle: Pooled[] = [];
  readonly #busy = new Map<HmacSession, Pooled>();
  #stale = new Set<number>();
  #starting = 0;
  #waiters: Array<() => void> = [];

  /** `start` starts one session on `tpm` (the backend salts it with the pinned SRK); the pool flushes what it drops. */
  constructor(tpm: Tpm, size: number, log: Logger, start: () => Promise<HmacSession>) {
    this.#tpm = tpm;
    this.#start = start;
    this.#size = size;
    this.#log = log;
  }

  /** Sessions open now (idle and in use). */
  get open(): number {
    return this.#idle.length + this.#busy.size;
  }

  /** Handles of the sessions commands use right now: a flush of leftovers must spare them. */
  busyHandles(): Set<number> {
    return new Set([...this.#busy.keys()].map((s) => s.handle));
  }

  /** An idle session or a new one; waits while `size` sessions are in use. */
  async acquire(): Promise<HmacSession> {
    for (;;) {
      this.#dropOutdated();
      const p = this.#idle.pop();
      if (p !== undefined) {
        this.#busy.set(p.session, p);
        return p.session;
      }
      if (this.#busy.size + this.#starting < this.#size) {
        this.#starting++;
        try {
          await this.#flushStale();
          const session = await this.#start();
          // The TPM handed out this number, so whatever once had it is gone.
          this.#stale.delete(session.handle);
          const pooled = { session, connection: this.#tpm.transport.connections };
          this.#busy.set(session, pooled);
          return session;
        } finally {
          this.#starting--;
          this.#wake();
        }
      }
      await new Promise<void>((resolve) => this.#waiters.push(resolve));
    }
  }

  /**
   * Gives a session back: kept for the next command when `keep` and still on the current connection,
   * else dropped (its handle flushed before the next session starts).
   */
  release(session: HmacSession, keep: boolean): void {
    const p = this.#busy.get(session);
    if (p === undefined) return;
    this.#busy.delete(session);
    if (keep && p.connection === this.#tpm.transport.connections && this.#tpm.transport.connected !== false) this.#idle.push(p);
    else this.#drop(session.handle);
    this.#wake();
  }

  /** Drops every idle session (their handles are flushed before the next session starts). */
  discardIdle(): void {
    const idle = this.#idle;
    this.#idle = [];
    for (const p of idle) this.#drop(p.session.handle);
  }

  /** Forgets dropped handles a flush of every loaded session has already ended. */
  forgetStale(): void {
    this.#stale.clear();
  }

  /** Flushes every session the pool holds or dropped, best effort; the pool is empty afterwards. */
  async close(): Promise<void> {
    this.discardIdle();
    const busy = [...this.#busy.keys()];
    this.#busy.clear();
    for (const s of busy) this.#drop(s.handle);
    await this.#flushStale();
  }

  #drop(handle: number): void {
    // A live session with the same number means the TPM reused it: the dropped one no longer exists.
    for (const p of [...this.#idle, ...this.#busy.values()]) if (p.session.handle === handle) return;
    this.#stale.add(handle);
  }

  #dropOutdated(): void {
    const t = this.#tpm.transport;
    const keep: Pooled[] = [];
    const gone: number[] = [];
    for (const p of this.#idle) {
      if (p.connection === t.connections && t.connected !== false) keep.push(p);
      else gone.push(p.session.handle);
    }
    this.#idle = keep;
    for (const h of gone) this.#drop(h);
  }

  async #flushStale(): Promise<void> {
    for (const h of [...this.#stale]) {
      try {
        await this.#tpm.flushContext(h);
      } catch (err) {
        // Not a TPM answer (the connection failed): keep the handle for the next attempt.
        if (!(err instanceof TpmError)) throw err;
        // TPM_RC_HANDLE: already gone (a restarted TPM). Anything else: the slot stays taken until a
        // flush of leftovers or a TPM restart; starting a session then reports TPM_RC_SESSION_MEMORY.
        if (baseRc(err.rc) !== TPM_RC.HANDLE) this.#log.warn({ err, handle: `0x${h.toString(16)}` }, 'tpm session could not be flushed');
      }
      this.#stale.delete(h);
    }
  }

  #wake(): void {
    this.#waiters.shift()?.();
  }
}
