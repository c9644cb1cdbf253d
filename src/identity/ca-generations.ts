import type { KeyVersionState } from '../store/store.ts';

/** What the window of one identity CA generation is computed from: its key version and its first CA certificate. */
export interface GenerationInput {
  /** The identity CA key version. */
  version: number;
  /** When the generation's first CA certificate was made: from then on it issued builder certificates. */
  startedAt: Date;
  state: KeyVersionState;
  disabledAt: Date | null;
  revokedAt: Date | null;
  destroyedAt: Date | null;
}

/** When one identity CA generation issues, is trusted, and stops being trusted. */
export interface GenerationWindow {
  version: number;
  startedAt: Date;
  /** When the next generation took over issuing; null for the current generation. */
  rotatedAt: Date | null;
  /**
   * `rotatedAt + maxLifetime`: no certificate this generation issued outlives it, so it stays trusted until
   * then (while its key version is ENABLED); null for the current generation.
   */
  liveUntil: Date | null;
  /** True while its key version is ENABLED (not disabled, compromised, scheduled for or past destruction). */
  enabled: boolean;
  /** The end of its window in the trusted root: the earliest of liveUntil, disable, compromise and destruction; null while open. */
  closedAt: Date | null;
  /** True for the generation that issues now (the newest one). */
  current: boolean;
}

/**
 * The windows of the identity CA's generations, oldest first: each generation is rotated out when the next
 * one (by version) started, and stays trusted for the longest builder certificate lifetime after that.
 */
export function generationWindows(gens: readonly GenerationInput[], maxLifetimeMs: number): GenerationWindow[] {
  const sorted = [...gens].sort((a, b) => a.version - b.version);
  return sorted.map((g, i) => {
    const next = sorted[i + 1];
    const rotatedAt = next ? next.startedAt : null;
    const liveUntil = rotatedAt ? new Date(rotatedAt.getTime() + maxLifetimeMs) : null;
    const enabled = g.state === 'ENABLED' && g.revokedAt === null;
    const ends = [liveUntil, g.revokedAt, g.destroyedAt, enabled ? null : (g.disabledAt ?? g.destroyedAt ?? liveUntil ?? g.startedAt)]
      .filter((d): d is Date => d !== null)
      .map((d) => d.getTime());
    return { version: g.version, startedAt: g.startedAt, rotatedAt, liveUntil, enabled, closedAt: ends.length ? new Date(Math.min(...ends)) : null, current: next === undefined };
  });
}

/** True while a generation's certificates are trusted: its key version is enabled and its window has not ended. */
export function isLive(w: GenerationWindow, now: Date): boolean {
  return w.enabled && (w.liveUntil === null || now.getTime() < w.liveUntil.getTime());
}

/** Why a generation's certificates are refused at `now`, or null while it is live. */
export function refusal(w: GenerationWindow, now: Date): string | null {
  if (!w.enabled) return `builder certificate issued by identity ca generation ${w.version}, which is disabled`;
  if (w.liveUntil !== null && now.getTime() >= w.liveUntil.getTime()) return `builder certificate issued by identity ca generation ${w.version}, which is no longer trusted`;
  return null;
}
