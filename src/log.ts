import { pino, type Logger, type LevelWithSilent } from 'pino';

/** A pino logger; modules take a child of the root with `{ module }`. */
export type { Logger };

/** Options of the root logger. */
export interface LogOptions {
  level?: LevelWithSilent;
  /** Where to write JSON lines; standard error by default so stdout stays free for CLI output. */
  destination?: number | string;
}

/**
 * Creates the root logger. Secrets never reach it: config and errors carry file paths, not PINs,
 * and `redact` guards the few field names that could hold one by mistake.
 */
export function createLogger(opts: LogOptions = {}): Logger {
  return pino(
    {
      level: opts.level ?? 'info',
      base: { service: 'sigild' },
      redact: { paths: ['pin', '*.pin', 'password', '*.password', 'secret', '*.secret'], censor: '[redacted]' },
    },
    pino.destination({ dest: opts.destination ?? 2, sync: false }),
  );
}

/** The audit channel: a child logger whose entries carry `channel: "audit"`. */
export function auditChannel(root: Logger): Logger {
  return root.child({ channel: 'audit' });
}

/** A logger that drops everything, for tests and CLI code paths. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
