import { readFileSync, accessSync, constants } from 'node:fs';
import { dirname, resolve, isAbsolute } from 'node:path';
import { parse as parseYaml, YAMLParseError } from 'yaml';
import { SigilError } from '../errors.ts';
import { configSchema, type Config } from './schema.ts';
import { loadPolicies, PolicyProblems } from '../attest/policy.ts';

/** Keys anywhere in the config whose values are file paths, resolved against the config file's directory. */
const PATH_KEYS = new Set(['certFile', 'keyFile', 'clientCaFile', 'path', 'module', 'pinFile', 'softhsmConf', 'dir', 'joinTokenFile', 'credentialsFile', 'stateDir']);
/** Keys whose values are lists of file paths (resolved and checked like the single ones). */
const PATH_LIST_KEYS = new Set(['ekCaFiles', 'ekCrlFiles']);
/** Of those, the files that must already exist and be readable when the daemon starts. */
const MUST_EXIST = new Set(['certFile', 'keyFile', 'clientCaFile', 'module', 'pinFile', 'softhsmConf', 'joinTokenFile', 'credentialsFile']);

/** Every problem found in a config, one line each: `path.to.key: what is wrong`. */
export class ConfigProblems extends SigilError {
  readonly problems: string[];
  constructor(file: string, problems: string[]) {
    super('CONFIG_INVALID', `${file}: ${problems.length} problem${problems.length === 1 ? '' : 's'}:\n  ${problems.join('\n  ')}`);
    this.problems = problems;
  }
}

/** Parses config text; every schema problem and every missing file is reported at once. */
export function parseConfig(text: string, file: string, opts: { checkFiles?: boolean } = {}): Config {
  let raw: unknown;
  try {
    raw = parseYaml(text, { prettyErrors: true, uniqueKeys: true });
  } catch (err) {
    const msg = err instanceof YAMLParseError ? err.message.split('\n')[0]! : 'not valid yaml';
    throw new ConfigProblems(file, [msg]);
  }
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) throw new ConfigProblems(file, ['the config must be a yaml mapping']);
  const result = configSchema.safeParse(raw);
  const problems = result.success ? [] : result.error.issues.map((i) => `${i.path.join('.') || '(top)'}: ${i.message}`);
  const base = dirname(resolve(file));
  // Files are checked even when the schema failed, so one run reports every problem.
  const target = (result.success ? result.data : structuredClone(raw)) as Record<string, unknown>;
  resolvePaths(target, [], base, opts.checkFiles ?? true, problems);
  // Attestation policies: the EK CA bundles must hold usable CA certificates.
  if (result.success && problems.length === 0 && result.data.attestation && (opts.checkFiles ?? true)) {
    try {
      loadPolicies(result.data.attestation.policies, (f) => readFileSync(f));
    } catch (err) {
      if (!(err instanceof PolicyProblems)) throw err;
      problems.push(...err.problems.map((p) => `attestation.policies.${p}`));
    }
  }
  if (!result.success || problems.length) throw new ConfigProblems(file, problems);
  return result.data;
}

// Why a config file could not be read, in words, for the one line sigild prints.
const READ_ERRORS: Readonly<Record<string, string>> = { ENOENT: 'no such file', EACCES: 'permission denied', EISDIR: 'it is a directory', ENOTDIR: 'a part of the path is not a directory' };

/** Reads and validates a config file. */
export function loadConfig(file: string, opts: { checkFiles?: boolean } = {}): Config {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'error';
    throw new SigilError('CONFIG_INVALID', `cannot read the config file ${file}: ${READ_ERRORS[code] ?? code}`, { cause: err });
  }
  return parseConfig(text, file, opts);
}

// The one variable a path may name: systemd's directory of credentials (LoadCredential=), so a PIN file
// can be a credential that only the service sees.
const CREDENTIALS = /\$\{CREDENTIALS_DIRECTORY\}|\$CREDENTIALS_DIRECTORY\b/g;

function resolvePaths(node: Record<string, unknown>, path: string[], base: string, check: boolean, problems: string[]): void {
  for (const [k, raw] of Object.entries(node)) {
    let v = raw;
    if (typeof v === 'string' && PATH_KEYS.has(k) && CREDENTIALS.test(v)) {
      CREDENTIALS.lastIndex = 0;
      const dir = process.env.CREDENTIALS_DIRECTORY;
      if (!dir) {
        problems.push(`${[...path, k].join('.')}: names $CREDENTIALS_DIRECTORY, which is not set (run under systemd with LoadCredential=)`);
        continue;
      }
      v = v.replace(CREDENTIALS, dir);
    }
    if (typeof v === 'string' && PATH_KEYS.has(k)) {
      const abs = isAbsolute(v) ? v : resolve(base, v);
      node[k] = abs;
      if (check && MUST_EXIST.has(k)) {
        try {
          accessSync(abs, constants.R_OK);
          if (k === 'pinFile') {
            const bad = pinFileProblem(abs);
            if (bad) problems.push(`${[...path, k].join('.')}: ${bad}`);
          }
        } catch {
          problems.push(`${[...path, k].join('.')}: cannot read ${abs}`);
        }
      }
    } else if (Array.isArray(v) && PATH_LIST_KEYS.has(k)) {
      v.forEach((item: unknown, i) => {
        if (typeof item !== 'string') return;
        const abs = isAbsolute(item) ? item : resolve(base, item);
        v[i] = abs;
        if (!check) return;
        try {
          accessSync(abs, constants.R_OK);
        } catch {
          problems.push(`${[...path, k, String(i)].join('.')}: cannot read ${abs}`);
        }
      });
    } else if (v && typeof v === 'object' && !Array.isArray(v)) {
      resolvePaths(v as Record<string, unknown>, [...path, k], base, check, problems);
    }
  }
}

/**
 * What is wrong with a PIN file's content, as the PKCS#11 backend reads it (the whole file less one trailing
 * newline), without saying anything of the PIN: empty, or more than one line (an extra newline at the end).
 */
function pinFileProblem(file: string): string | null {
  const pin = readFileSync(file, 'utf8').replace(/\r?\n$/, '');
  if (pin.length === 0) return `${file} is empty: put the token's user PIN in it`;
  if (/[\r\n]/.test(pin)) return `${file} holds more than one line: the PIN is the whole file less one trailing newline`;
  return null;
}
