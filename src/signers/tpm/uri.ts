import { SigilError } from '../../errors.ts';
import { parseKeyUri } from '../key-uri.ts';
import { OWNER_PERSISTENT_FIRST, OWNER_PERSISTENT_LAST } from './config.ts';

const HANDLE_TEXT = /^0x[0-9a-f]{8}$/;

/** The canonical URI of a persistent TPM key: `tpm:handle=0x81xxxxxx` (lower-case hex, 8 digits). */
export function formatTpmUri(handle: number): string {
  return `tpm:handle=0x${handle.toString(16).padStart(8, '0')}`;
}

/**
 * The persistent handle a TPM key URI names. Only the canonical form is accepted (one `handle`
 * attribute, lower-case hex, no percent-encoding) so that one key has exactly one URI; anything else,
 * and any handle outside the owner's persistent range, is INVALID_ARGUMENT.
 */
export function parseTpmUri(uri: string): number {
  const parsed = parseKeyUri(uri);
  if (parsed.scheme !== 'tpm') throw new SigilError('INVALID_ARGUMENT', `not a tpm key uri: scheme ${parsed.scheme}`);
  const value = parsed.attrs.get('handle');
  if (parsed.path !== null || parsed.attrs.size !== 1 || value === undefined) {
    throw new SigilError('INVALID_ARGUMENT', 'a tpm key uri is tpm:handle=0x81xxxxxx');
  }
  const text = value.toString('latin1');
  if (!HANDLE_TEXT.test(text)) throw new SigilError('INVALID_ARGUMENT', 'a tpm key handle is 0x and 8 lower-case hex digits');
  const handle = Number.parseInt(text.slice(2), 16);
  if (handle < OWNER_PERSISTENT_FIRST || handle > OWNER_PERSISTENT_LAST) {
    throw new SigilError('INVALID_ARGUMENT', `tpm key handle ${text} is outside the owner persistent range 0x81000000-0x817fffff`);
  }
  if (uri !== formatTpmUri(handle)) throw new SigilError('INVALID_ARGUMENT', `tpm key uri is not in canonical form ${formatTpmUri(handle)}`);
  return handle;
}
