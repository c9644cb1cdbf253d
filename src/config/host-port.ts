import { SigilError } from '../errors.ts';

/** Splits a config `host:port` (IPv6 in brackets) into host and port. */
export function splitHostPort(s: string): [string, number] {
  const i = s.lastIndexOf(':');
  if (i < 0) throw new SigilError('CONFIG_INVALID', `expected host:port, got ${s}`);
  return [s.slice(0, i).replace(/^\[(.*)\]$/, '$1'), Number(s.slice(i + 1))];
}
