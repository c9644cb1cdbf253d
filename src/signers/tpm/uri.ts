import { SigilError } from '../../errors.ts';
import { parseKeyUri } from '../key-uri.ts';
import { OWNER_PERSISTENT_FIRST, OWNER_PERSISTENT_LAST } from './config.ts';

const HANDLE_TEXT = /^0x[0-9a-f]{8}$/;
const NAME_TEXT = /^[0-9a-f]+$/;

// Digest size per nameAlg (TPM 2.0 Part 2, 6.3 TPM_ALG_ID): a name is nameAlg || H_nameAlg(public area).
const NAME_DIGEST: ReadonlyMap<number, number> = new Map([
  [0x0004, 20], // SHA1
  [0x000b, 32], // SHA256
  [0x000c, 48], // SHA384
  [0x000d, 64], // SHA512
  [0x0012, 32], // SM3_256
]);

/** A parsed TPM key URI: the persistent handle, and the object name sigil recorded for it, if the URI carries one. */
export interface TpmKeyUri {
  handle: number;
  name: Buffer | null;
}

/**
 * The canonical URI of a persistent TPM key: `tpm:handle=0x81xxxxxx` (lower-case hex, 8 digits), with
 * `;name=<hex>` when the key's TPM name is recorded in the URI (keys imported by handle).
 */
export function formatTpmUri(handle: number, name?: Buffer | null): string {
  const base = `tpm:handle=0x${handle.toString(16).padStart(8, '0')}`;
  return name === undefined || name === null ? base : `${base};name=${name.toString('hex')}`;
}

/** True when `name` has the shape of a TPM object name: a known nameAlg followed by a digest of its size. */
export function isObjectName(name: Buffer): boolean {
  return name.length >= 2 && NAME_DIGEST.get(name.readUInt16BE(0)) === name.length - 2;
}

/**
 * Parses a TPM key URI. Only the canonical form is accepted (`handle`, then optionally `name`, lower-case
 * hex, no percent-encoding) so that one key has exactly one URI; anything else, any handle outside the
 * owner's persistent range, and any name that is not nameAlg || digest is INVALID_ARGUMENT.
 */
export function parseTpmKeyUri(uri: string): TpmKeyUri {
  const parsed = parseKeyUri(uri);
  if (parsed.scheme !== 'tpm') throw new SigilError('INVALID_ARGUMENT', `not a tpm key uri: scheme ${parsed.scheme}`);
  const value = parsed.attrs.get('handle');
  const nameValue = parsed.attrs.get('name');
  const expected = nameValue === undefined ? 1 : 2;
  if (parsed.path !== null || parsed.attrs.size !== expected || value === undefined) {
    throw new SigilError('INVALID_ARGUMENT', 'a tpm key uri is tpm:handle=0x81xxxxxx, optionally followed by ;name=<hex>');
  }
  const text = value.toString('latin1');
  if (!HANDLE_TEXT.test(text)) throw new SigilError('INVALID_ARGUMENT', 'a tpm key handle is 0x and 8 lower-case hex digits');
  const handle = Number.parseInt(text.slice(2), 16);
  if (handle < OWNER_PERSISTENT_FIRST || handle > OWNER_PERSISTENT_LAST) {
    throw new SigilError('INVALID_ARGUMENT', `tpm key handle ${text} is outside the owner persistent range 0x81000000-0x817fffff`);
  }
  let name: Buffer | null = null;
  if (nameValue !== undefined) {
    const nameText = nameValue.toString('latin1');
    if (!NAME_TEXT.test(nameText) || nameText.length % 2 !== 0) throw new SigilError('INVALID_ARGUMENT', 'a tpm key name is lower-case hex');
    name = Buffer.from(nameText, 'hex');
    if (!isObjectName(name)) throw new SigilError('INVALID_ARGUMENT', 'a tpm key name is a hash algorithm id followed by a digest of its size');
  }
  const canonical = formatTpmUri(handle, name);
  if (uri !== canonical) throw new SigilError('INVALID_ARGUMENT', `tpm key uri is not in canonical form ${canonical}`);
  return { handle, name };
}

/** The persistent handle a TPM key URI names (see `parseTpmKeyUri`). */
export function parseTpmUri(uri: string): number {
  return parseTpmKeyUri(uri).handle;
}
