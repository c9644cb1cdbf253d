import { Algorithm } from '../../gen/sigil/v1/signer.ts';
import type { Clients } from '../client.ts';

/** Algorithm names as the contract spells them. */
export const ALG_NAMES = Object.keys(Algorithm).filter((a) => a !== 'UNSPECIFIED' && a !== 'UNRECOGNIZED') as Array<keyof typeof Algorithm>;
const ALIASES: Partial<Record<string, keyof typeof Algorithm>> = {
  P256: 'ECDSA_P256_SHA256',
  ECDSA_P256: 'ECDSA_P256_SHA256',
  P384: 'ECDSA_P384_SHA384',
  ECDSA_P384: 'ECDSA_P384_SHA384',
  RSA: 'RSA_PKCS1_SHA256',
  RSA_PKCS1: 'RSA_PKCS1_SHA256',
  RSA_PSS: 'RSA_PSS_SHA256',
  PSS: 'RSA_PSS_SHA256',
};
/** A mistake in the command line: exit code 2. */
export class UsageError extends Error {}

/** An algorithm name or alias (P256, RSA, PSS, ...) to the contract enum. */
export function parseAlg(s: string): Algorithm {
  const n = s.toUpperCase().replaceAll('-', '_');
  const name = (ALG_NAMES as string[]).includes(n) ? (n as keyof typeof Algorithm) : ALIASES[n];
  if (!name) throw new UsageError(`unknown algorithm ${s}: one of ${ALG_NAMES.join(', ')}`);
  return Algorithm[name];
}

// RFC 3339 (ISO 8601 extended) with a mandatory offset: without one, Date reads the time in local time.
const UTC_TIME = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2})(?:\.\d{1,9})?)?(?:Z|[+-](\d{2}):(\d{2}))$/i;

/** A time given on the command line: ISO 8601 with `Z` or a `±hh:mm` offset, or a usage error naming `option`. */
export function parseUtcTime(text: string, option: string): Date {
  const d = new Date(text);
  const m = UTC_TIME.exec(text);
  // Date rolls impossible fields over (February 30 becomes March 2): each field must be one that exists.
  const [y, mo, day, h, mi, sec, oh, om] = (m ?? []).slice(1).map((x) => (x === undefined ? 0 : Number(x)));
  const real = m !== null && new Date(Date.UTC(y!, mo! - 1, day!)).getUTCDate() === day && mo! >= 1 && mo! <= 12 && h! <= 23 && mi! <= 59 && sec! <= 59 && oh! <= 14 && om! <= 59;
  if (!real || Number.isNaN(d.getTime())) {
    const got = JSON.stringify(text.slice(0, 64));
    const why =
      m !== null
        ? `${got} is no real time: a month 1-12, a day that month has, hours 0-23, an offset of at most 14:00`
        : /[+-]\d{4}$/.test(text)
          ? `got ${got}: write the offset with a colon, e.g. +01:00`
          : /(Z|[+-]\d{2}:\d{2})$/i.test(text)
            ? `got ${got}`
            : `got ${got}; a time without an offset would be read in this machine's local time`;
    throw new UsageError(`${option} takes an ISO 8601 time with a UTC offset, e.g. 2026-03-01T12:00:00Z or 2026-03-01T13:00:00+01:00 (${why})`);
  }
  return d;
}

/** The contract name of an algorithm enum value. */
export function algName(a: number): string {
  return ALG_NAMES.find((k) => Algorithm[k] === a) ?? `UNKNOWN(${a})`;
}

/** What a group of sigilctl commands needs: clients (opened on first use) and output in the chosen format. */
export interface CliContext {
  /** Clients over one channel, authenticated with the global --cert/--key. */
  open(): Clients;
  /** Writes `json` with `--output json`, `text` otherwise. */
  out(json: unknown, text: string): void;
  /** True with `--output json`. */
  json(): boolean;
  /** The sigild address given (--addr, SIGIL_ADDR), if any; `open` requires one. */
  addr(): string | undefined;
}

/**
 * The exit code of an error commander threw (with exitOverride): help and version as commander says (0), a
 * mistake in the command line (unknown or missing option, bad choice, missing argument, no command) 2; null for
 * any other error.
 */
export function commanderExitCode(err: unknown): number | null {
  const e = err as { code?: unknown; exitCode?: unknown };
  if (typeof e.code !== 'string' || !e.code.startsWith('commander.') || typeof e.exitCode !== 'number') return null;
  // `commander.help` with a non-zero code is the usage printed because no command was given: a usage error too.
  return e.code === 'commander.helpDisplayed' || e.code === 'commander.version' || e.exitCode === 0 ? e.exitCode : 2;
}

/**
 * commander's output settings for `prog`: a parse error as one line (`prog: unknown option ...`), pointing at
 * --help instead of printing the whole usage; an unknown option that is one of the program's `globals` (given
 * after the command) says they go before it.
 */
export function commanderOutput(prog: string, globals: readonly string[], json = false): { outputError(str: string, write: (s: string) => void): void } {
  return {
    outputError(str, write) {
      const msg = str.trim().replace(/^error: /, '').replace(/\.$/, '');
      const flag = /^unknown option '([^'=]+)/.exec(msg)?.[1];
      const line = flag !== undefined && globals.includes(flag) ? `${msg}: ${globals.join(', ')} are global options and go before the command, e.g. ${prog} ${flag} ... COMMAND` : `${msg} (see --help)`;
      // With --output json the mistake is a json document on stdout too, like every other error.
      if (json) process.stdout.write(`${JSON.stringify({ error: { code: 'INVALID_ARGUMENT', message: line } }, null, 2)}\n`);
      else write(`${prog}: ${line}\n`);
    },
  };
}

/**
 * Whether the command line asks for json output (`-o json`, `--output json`, `--output=json`, anywhere): read
 * before commander parses it, since a parse error is reported before any option's value is known.
 */
export function wantsJson(argv: readonly string[]): boolean {
  return argv.some((a, i) => a === '--output=json' || a === '-ojson' || ((a === '-o' || a === '--output') && argv[i + 1] === 'json'));
}
