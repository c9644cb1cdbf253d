import { createHash, createPublicKey, verify as cryptoVerify, type KeyObject } from 'node:crypto';
import { SigilError } from '../errors.ts';
import { HASH_SIZE } from './merkle.ts';

// C2SP signed-note (https://c2sp.org/signed-note) and tlog-checkpoint (https://c2sp.org/tlog-checkpoint).

/** Signature type of an Ed25519 note key (signed-note: 0x01). */
export const SIG_TYPE_ED25519 = 0x01;
/**
 * Signature type 0x02, ECDSA P-256 with SHA-256, as Sigstore logs sign checkpoints: its key id is not the
 * generic one but the first 4 bytes of SHA-256 over the DER SubjectPublicKeyInfo.
 */
export const SIG_TYPE_ECDSA = 0x02;

const SIG_PREFIX = '\u2014 ';
/** Largest note the parser accepts: checkpoints are a few hundred bytes. */
export const MAX_NOTE_BYTES = 64 * 1024;
// signed-note: verifiers may cap the number of signatures; the Go implementation stops at 100.
const MAX_SIGNATURES = 100;

/** One signature line of a note. */
export interface NoteSignature {
  name: string;
  /** 4 bytes. */
  keyId: Buffer;
  signature: Buffer;
}

/** A parsed (not yet verified) signed note: its text, with the final newline, and its signature lines. */
export interface ParsedNote {
  text: string;
  signatures: NoteSignature[];
}

/** Who can check one key's signatures on notes. */
export interface NoteVerifier {
  name: string;
  keyId: Buffer;
  /** The signature type byte. */
  type: number;
  verify(text: Buffer, signature: Buffer): boolean;
}

/** Who signs notes: a key name, its id, and a signing function (the audit key through the Signer API). */
export interface NoteSigner {
  name: string;
  keyId: Buffer;
  sign(text: Buffer): Promise<Buffer>;
}

/** A tree head: origin, size and root hash (tlog-checkpoint), plus optional extension lines. */
export interface Checkpoint {
  origin: string;
  size: number;
  root: Buffer;
  extensions: string[];
}

const bad = (msg: string): SigilError => new SigilError('INVALID_ARGUMENT', msg);

/** Checks a key name: non-empty, no Unicode white space, no `+` (signed-note, "Keys"). */
export function checkNoteKeyName(name: string): string {
  if (name.length === 0 || name.length > 256) throw bad('note key name must be 1 to 256 characters');
  if (/[\s+\u0000-\u001f\u007f]/u.test(name)) throw bad('note key name must not contain white space, control characters or +');
  return name;
}

/** The key id: the first 4 bytes of SHA-256(name || 0x0A || type || public key), or for ECDSA of SHA-256(SPKI). */
export function noteKeyId(name: string, type: number, publicKey: Uint8Array): Buffer {
  checkNoteKeyName(name);
  if (type === SIG_TYPE_ECDSA) return createHash('sha256').update(publicKey).digest().subarray(0, 4);
  return createHash('sha256').update(name, 'utf8').update(Buffer.from([0x0a, type])).update(publicKey).digest().subarray(0, 4);
}

/** The signature type and the public key bytes the key id covers, for an Ed25519 or ECDSA P-256 SPKI. */
export function noteKeyOfSpki(spki: Uint8Array): { type: number; publicKey: Buffer; key: KeyObject } {
  let key: KeyObject;
  try {
    key = createPublicKey({ key: Buffer.from(spki), format: 'der', type: 'spki' });
  } catch (err) {
    throw new SigilError('INVALID_ARGUMENT', 'not a public key (der spki)', { cause: err });
  }
  if (key.asymmetricKeyType === 'ed25519') {
    const jwk = key.export({ format: 'jwk' });
    return { type: SIG_TYPE_ED25519, publicKey: Buffer.from(jwk.x!, 'base64url'), key };
  }
  if (key.asymmetricKeyType === 'ec' && key.asymmetricKeyDetails?.namedCurve === 'prime256v1') {
    return { type: SIG_TYPE_ECDSA, publicKey: key.export({ format: 'der', type: 'spki' }), key };
  }
  throw new SigilError('UNSUPPORTED_ALGORITHM', 'note keys are ed25519 or ecdsa p-256');
}

/** A verifier for the key `name` with the public key `spki` (DER). */
export function noteVerifier(name: string, spki: Uint8Array): NoteVerifier {
  const { type, publicKey, key } = noteKeyOfSpki(spki);
  return {
    name,
    keyId: noteKeyId(name, type, publicKey),
    type,
    verify: (text, signature) => {
      try {
        // Ed25519 signs the text itself; ECDSA signs SHA-256 of it, DER-encoded.
        return type === SIG_TYPE_ED25519 ? cryptoVerify(null, text, key, signature) : cryptoVerify('sha256', text, key, signature);
      } catch {
        return false;
      }
    },
  };
}

/** The verifier key text `<name>+<hex key id>+<base64(type || public key)>` others use to check our notes. */
export function verifierKeyText(name: string, spki: Uint8Array): string {
  const { type, publicKey } = noteKeyOfSpki(spki);
  return `${name}+${noteKeyId(name, type, publicKey).toString('hex')}+${Buffer.concat([Buffer.from([type]), publicKey]).toString('base64')}`;
}

/** Checks note text: non-empty, ends in newline, no control characters but newline, no blank line inside. */
function checkText(text: string): void {
  if (text.length === 0 || !text.endsWith('\n')) throw bad('note text must be non-empty and end with a newline');
  if (/[\u0000-\u0009\u000b-\u001f]/.test(text)) throw bad('note text must not contain control characters other than newline');
  if (text.includes('\n\n')) throw bad('note text must not contain a blank line');
}

/** Signs `text` and formats the signed note. */
export async function signNote(text: string, signers: readonly NoteSigner[]): Promise<string> {
  checkText(text);
  if (signers.length === 0) throw bad('a note needs at least one signer');
  const lines: string[] = [];
  for (const s of signers) {
    checkNoteKeyName(s.name);
    const sig = await s.sign(Buffer.from(text, 'utf8'));
    lines.push(`${SIG_PREFIX}${s.name} ${Buffer.concat([s.keyId, sig]).toString('base64')}\n`);
  }
  return `${text}\n${lines.join('')}`;
}

const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

/** Strict standard base64 (RFC 4648, section 4): canonical padding, nothing else. */
function decodeBase64(s: string, what: string): Buffer {
  if (s.length % 4 !== 0 || !BASE64.test(s)) throw bad(`${what} is not standard base64`);
  const b = Buffer.from(s, 'base64');
  if (b.toString('base64') !== s) throw bad(`${what} is not canonical base64`);
  return b;
}

/** Parses a signed note from untrusted input; throws INVALID_ARGUMENT on any deviation from the format. */
export function parseNote(input: string | Uint8Array): ParsedNote {
  const bytes = typeof input === 'string' ? Buffer.from(input, 'utf8') : Buffer.from(input);
  if (bytes.length > MAX_NOTE_BYTES) throw bad(`note is larger than ${MAX_NOTE_BYTES} bytes`);
  const note = new TextDecoder('utf-8', { fatal: false }).decode(bytes);
  if (!Buffer.from(note, 'utf8').equals(bytes)) throw bad('note is not valid utf-8');
  if (/[\u0000-\u0009\u000b-\u001f]/.test(note)) throw bad('note must not contain control characters other than newline');
  const split = note.lastIndexOf('\n\n');
  if (split < 0) throw bad('note has no blank line before its signatures');
  const text = note.slice(0, split + 1);
  checkText(text);
  const sigBlock = note.slice(split + 2);
  if (!sigBlock.endsWith('\n')) throw bad('note must end with a newline');
  const lines = sigBlock.slice(0, -1).split('\n');
  if (lines.length > MAX_SIGNATURES) throw bad(`note has more than ${MAX_SIGNATURES} signatures`);
  const signatures: NoteSignature[] = [];
  for (const [i, line] of lines.entries()) {
    if (!line.startsWith(SIG_PREFIX)) throw bad(`signature line ${i + 1} does not start with an em dash and a space`);
    const rest = line.slice(SIG_PREFIX.length);
    const sp = rest.indexOf(' ');
    if (sp < 0 || rest.indexOf(' ', sp + 1) >= 0) throw bad(`signature line ${i + 1} must be a key name and a signature`);
    const name = rest.slice(0, sp);
    try {
      checkNoteKeyName(name);
    } catch {
      throw bad(`signature line ${i + 1} has an invalid key name`);
    }
    const blob = decodeBase64(rest.slice(sp + 1), `signature ${i + 1}`);
    if (blob.length < 5) throw bad(`signature ${i + 1} is too short`);
    signatures.push({ name, keyId: blob.subarray(0, 4), signature: blob.subarray(4) });
  }
  return { text, signatures };
}

/**
 * Parses and verifies a signed note: returns its text when a signature by `verifier` (same name and key
 * id) verifies. Signatures by other keys are ignored, as signed-note says; a known key's bad signature fails.
 */
export function openNote(input: string | Uint8Array, verifier: NoteVerifier): string {
  const n = parseNote(input);
  const mine = n.signatures.filter((s) => s.name === verifier.name && s.keyId.equals(verifier.keyId));
  if (mine.length === 0) throw new SigilError('FAILED_PRECONDITION', `note is not signed by ${verifier.name}+${verifier.keyId.toString('hex')}`);
  const text = Buffer.from(n.text, 'utf8');
  for (const s of mine) if (!verifier.verify(text, s.signature)) throw new SigilError('FAILED_PRECONDITION', `note signature by ${verifier.name} does not verify`);
  return n.text;
}

/** Checks a checkpoint origin: what the origin line and the note key name hold. */
export function checkOrigin(origin: string): string {
  if (!/^[\x21-\x2a\x2c-\x7e]{1,255}$/.test(origin)) throw bad('origin must be 1 to 255 printable ascii characters without space or +');
  return origin;
}

/** The checkpoint body: origin, decimal size and base64 root, one per line, then the extension lines. */
export function formatCheckpoint(c: Checkpoint): string {
  checkOrigin(c.origin);
  if (!Number.isSafeInteger(c.size) || c.size < 0) throw bad('checkpoint size must be a non-negative integer');
  if (c.root.length !== HASH_SIZE) throw bad(`checkpoint root must be ${HASH_SIZE} bytes`);
  for (const e of c.extensions) if (e.length === 0 || e.includes('\n')) throw bad('checkpoint extension lines must be non-empty single lines');
  return [c.origin, String(c.size), c.root.toString('base64'), ...c.extensions].map((l) => `${l}\n`).join('');
}

/** Parses a checkpoint body (the text of a verified note). */
export function parseCheckpoint(text: string): Checkpoint {
  checkText(text);
  const lines = text.slice(0, -1).split('\n');
  if (lines.length < 3) throw bad('checkpoint must have an origin, a size and a root hash line');
  const [origin, size, root, ...extensions] = lines as [string, string, string, ...string[]];
  try {
    checkOrigin(origin);
  } catch {
    throw bad('checkpoint origin line is invalid');
  }
  if (!/^(0|[1-9][0-9]{0,15})$/.test(size) || !Number.isSafeInteger(Number(size))) throw bad('checkpoint size line must be a decimal integer without leading zeros');
  const r = decodeBase64(root, 'checkpoint root hash');
  if (r.length !== HASH_SIZE) throw bad(`checkpoint root hash must be ${HASH_SIZE} bytes`);
  return { origin, size: Number(size), root: r, extensions };
}

/** Signs a checkpoint with the log's key (whose name is the origin). */
export async function signCheckpoint(c: Checkpoint, signer: NoteSigner): Promise<string> {
  return signNote(formatCheckpoint(c), [signer]);
}

/** Verifies a signed checkpoint and, when `origin` is given, that it is that log's. */
export function openCheckpoint(note: string | Uint8Array, verifier: NoteVerifier, origin?: string): Checkpoint {
  const c = parseCheckpoint(openNote(note, verifier));
  if (origin !== undefined && c.origin !== origin) throw new SigilError('FAILED_PRECONDITION', `checkpoint is for origin ${JSON.stringify(c.origin)}, expected ${JSON.stringify(origin)}`);
  return c;
}
