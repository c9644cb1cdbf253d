import { SigilError } from '../errors.ts';

const UNIT_MS = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 } as const;
const DURATION = /^(\d{1,9})(ms|s|m|h|d)$/;

/** Parses a config duration such as `90s`, `15m`, `24h` or `7d` into milliseconds. */
export function parseDuration(text: string): number {
  const m = DURATION.exec(text);
  if (!m) throw new SigilError('CONFIG_INVALID', `invalid duration ${JSON.stringify(text.slice(0, 40))}: use a whole number and one of ms, s, m, h, d (e.g. 15m)`);
  return Number(m[1]) * UNIT_MS[m[2] as keyof typeof UNIT_MS];
}

/** Formats milliseconds in the largest unit that divides them exactly (`86400000` -> `1d`). */
export function formatDuration(ms: number): string {
  for (const unit of ['d', 'h', 'm', 's'] as const) if (ms >= UNIT_MS[unit] && ms % UNIT_MS[unit] === 0) return `${ms / UNIT_MS[unit]}${unit}`;
  return `${ms}ms`;
}
