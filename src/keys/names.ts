import { SigilError } from '../errors.ts';

const NAME = /^[a-z0-9][a-z0-9._/-]{0,127}$/;

/** Checks a key name: lower-case letters, digits and `-_./`, 1 to 128 characters, starting with a letter or digit. */
export function checkKeyName(name: string): string {
  if (name.length === 0) throw new SigilError('INVALID_ARGUMENT', 'key name is required');
  if (!NAME.test(name) || name.includes('//') || name.includes('..') || name.endsWith('/')) {
    throw new SigilError(
      'INVALID_ARGUMENT',
      `invalid key name ${JSON.stringify(name.slice(0, 140))}: use 1 to 128 lower-case letters, digits and -_./, starting with a letter or digit`,
    );
  }
  return name;
}

/** A key reference from a request: a name and, optionally, an explicit version. */
export interface KeyRef {
  name: string;
  /** null for the primary version. */
  version: number | null;
}

/** Parses `name` or `name@N`. */
export function parseKeyRef(ref: string): KeyRef {
  if (ref.length === 0) throw new SigilError('INVALID_ARGUMENT', 'key is required');
  const at = ref.lastIndexOf('@');
  if (at < 0) return { name: checkKeyName(ref), version: null };
  const v = ref.slice(at + 1);
  if (!/^[1-9][0-9]{0,8}$/.test(v)) throw new SigilError('INVALID_ARGUMENT', `invalid key version in ${JSON.stringify(ref.slice(0, 140))}: expected name@N with N >= 1`);
  return { name: checkKeyName(ref.slice(0, at)), version: Number(v) };
}

/** Formats a key version as `name@N`. */
export function keyVersionRef(name: string, version: number): string {
  return `${name}@${version}`;
}

/** The backend object label for a key version: the name with separators folded to `-`, plus `-vN`. */
export function backendLabel(name: string, version: number): string {
  return `sigil-${name.replace(/[^a-z0-9]+/g, '-')}-v${version}`;
}
