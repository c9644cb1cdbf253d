import { createPublicKey, verify as cryptoVerify, type KeyObject } from 'node:crypto';
import { SigilError } from '../errors.ts';

/** The trusted-root key's default name. */
export const TRUST_ROOT_KEY = 'sigil/trust-root';

/** The `type` of a key transition statement. */
export const TRANSITION_TYPE = 'sigil.trusted-root-key-transition.v1';

/**
 * A key transition statement: version `version` of the trusted-root key `key`, with public key `publicKey`,
 * follows version `previousVersion` (public key `previousPublicKey`) from `time` on. Both keys sign its exact bytes.
 */
export interface TransitionStatement {
  type: typeof TRANSITION_TYPE;
  key: string;
  version: number;
  /** DER SubjectPublicKeyInfo, base64. */
  publicKey: string;
  previousVersion: number;
  /** DER SubjectPublicKeyInfo, base64. */
  previousPublicKey: string;
  /** RFC 3339 UTC with milliseconds (`Date.prototype.toISOString`). */
  time: string;
}

/** A statement as stored and served: its exact bytes and the two detached signatures over them. */
export interface SignedTransition {
  /** The version the statement introduces. */
  version: number;
  /** The canonical JSON bytes that were signed. */
  statement: Buffer;
  /** DER ECDSA P-256 / SHA-256 by the previous version over `statement`. */
  previousSignature: Buffer;
  /** DER ECDSA P-256 / SHA-256 by the version introduced over `statement`. */
  signature: Buffer;
}

/** A root key version disabled as compromised, as served to verifiers. */
export interface CompromisedRootVersion {
  version: number;
  /** DER SubjectPublicKeyInfo. */
  spki: Buffer;
}

/**
 * The chain of root keys as served: the transition statements a verifier can trust (those signed by a
 * version not disabled as compromised, or later), and the versions disabled as compromised.
 */
export interface RootKeyChain {
  /** The root key's name. */
  key: string;
  /** Statements by version; those introducing a version at or before `compromised`'s newest + 1 are left out. */
  transitions: SignedTransition[];
  compromised: CompromisedRootVersion[];
}

/** How a chain failure names the version a pinned key is taken as when no chain of root keys is given (`taken as name@N`). */
export const NO_CHAIN_TAKEN_AS = 'no chain of root keys given, so taken as the signer ';

const MAX_STATEMENT_BYTES = 4096;
const MAX_VERSION = 1_000_000_000;
const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/;
const TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;

/** The canonical bytes of a statement: these fields in this order, no whitespace (JSON.stringify). */
export function canonicalTransition(s: TransitionStatement): Buffer {
  const ordered: TransitionStatement = {
    type: s.type,
    key: s.key,
    version: s.version,
    publicKey: s.publicKey,
    previousVersion: s.previousVersion,
    previousPublicKey: s.previousPublicKey,
    time: s.time,
  };
  return Buffer.from(JSON.stringify(ordered), 'utf8');
}

/** Makes the statement that version `version` (`spki`) follows `version - 1` (`previousSpki`) from `time`. */
export function transitionStatement(key: string, version: number, spki: Buffer, previousSpki: Buffer, time: Date): Buffer {
  return canonicalTransition({
    type: TRANSITION_TYPE,
    key,
    version,
    publicKey: spki.toString('base64'),
    previousVersion: version - 1,
    previousPublicKey: previousSpki.toString('base64'),
    time: time.toISOString(),
  });
}

/**
 * Parses statement bytes that came from the network: INVALID_ARGUMENT unless they are exactly the canonical
 * form of a well-formed statement (so one statement has one byte form) whose keys are EC P-256 keys.
 */
export function parseTransition(bytes: Uint8Array): TransitionStatement {
  const bad = (why: string): never => {
    throw new SigilError('INVALID_ARGUMENT', `key transition statement: ${why}`);
  };
  if (bytes.length === 0 || bytes.length > MAX_STATEMENT_BYTES) bad(`must be 1 to ${MAX_STATEMENT_BYTES} bytes`);
  const text = Buffer.from(bytes).toString('utf8');
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    return bad('not json');
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return bad('not a json object');
  const o = v as Record<string, unknown>;
  if (o.type !== TRANSITION_TYPE) bad(`type is not ${TRANSITION_TYPE}`);
  if (typeof o.key !== 'string' || o.key.length === 0 || o.key.length > 200) bad('key must be a key name');
  for (const f of ['version', 'previousVersion'] as const) {
    const n = o[f];
    if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 1 || n > MAX_VERSION) bad(`${f} must be a version number`);
  }
  if ((o.version as number) !== (o.previousVersion as number) + 1) bad('version must follow previousVersion by one');
  for (const f of ['publicKey', 'previousPublicKey'] as const) {
    const k = o[f];
    if (typeof k !== 'string' || !BASE64.test(k)) bad(`${f} must be base64`);
  }
  if (typeof o.time !== 'string' || !TIME.test(o.time) || Number.isNaN(Date.parse(o.time)) || new Date(o.time).toISOString() !== o.time) bad('time must be an rfc 3339 utc time');
  const s = o as unknown as TransitionStatement;
  if (!canonicalTransition(s).equals(Buffer.from(bytes))) bad('not in canonical form');
  p256(Buffer.from(s.publicKey, 'base64'), 'publicKey');
  p256(Buffer.from(s.previousPublicKey, 'base64'), 'previousPublicKey');
  return s;
}

/** An EC P-256 public key from DER SPKI, or INVALID_ARGUMENT naming `what`. */
export function p256(spki: Buffer, what: string): KeyObject {
  let k: KeyObject;
  try {
    k = createPublicKey({ key: spki, format: 'der', type: 'spki' });
  } catch {
    throw new SigilError('INVALID_ARGUMENT', `${what} is not a public key`);
  }
  if (k.asymmetricKeyType !== 'ec' || k.asymmetricKeyDetails?.namedCurve !== 'prime256v1') throw new SigilError('INVALID_ARGUMENT', `${what} is not an ec p-256 key`);
  return k;
}

/** DER SPKI of a PEM (or DER) public key, or INVALID_ARGUMENT. */
export function spkiOf(key: Buffer | string): Buffer {
  try {
    const k = typeof key === 'string' || key.subarray(0, 10).toString('latin1').startsWith('-----') ? createPublicKey(key.toString()) : createPublicKey({ key, format: 'der', type: 'spki' });
    return k.export({ format: 'der', type: 'spki' });
  } catch {
    throw new SigilError('INVALID_ARGUMENT', 'not a public key (pem or der subjectpublickeyinfo)');
  }
}

function verifies(key: KeyObject, data: Buffer, sig: Uint8Array): boolean {
  try {
    return cryptoVerify('sha256', data, key, Buffer.from(sig));
  } catch {
    return false;
  }
}

/** What a verifier was handed: the chain, the compromised versions and the signed document. */
export interface RootChainInput {
  /** The key name the verifier expects, `sigil/trust-root` by default. */
  key: string;
  /** The key the verifier pinned out of band (DER SPKI). */
  pinned: Buffer;
  transitions: readonly SignedTransition[];
  compromised: readonly CompromisedRootVersion[];
  /** The trusted-root document, its signature and who the server says signed it (`name@N`). */
  document: { json: Buffer; signature: Buffer; keyVersion: string };
}

/** The outcome of a verified chain: the versions followed from the pinned one to the current one. */
export interface RootChainResult {
  followed: number[];
  /** The current version's DER SPKI (the key that signed the document). */
  currentSpki: Buffer;
}

/**
 * Follows the chain of root keys from the pinned key to the one that signed the document, link by link:
 * each statement must be canonical, name the key before it, and be signed by that key and by the key it
 * introduces; then the document must verify under the last key reached and carry `sigilKeyVersions` (the full
 * document, not the sigstore form the same key signs). Throws FAILED_PRECONDITION (a
 * chain that does not verify) or INVALID_ARGUMENT (malformed input) with what failed; returns only when
 * everything verified.
 */
export function verifyRootChain(input: RootChainInput): RootChainResult {
  const fail = (why: string): never => {
    throw new SigilError('FAILED_PRECONDITION', why);
  };
  const pinned = p256(input.pinned, 'the pinned root key').export({ format: 'der', type: 'spki' });
  const ref = (v: number): string => `${input.key}@${v}`;
  const compromised = [...input.compromised].sort((a, b) => a.version - b.version);
  const pinnedCompromised = compromised.find((c) => c.spki.equals(pinned));
  if (pinnedCompromised) fail(`the pinned key is ${ref(pinnedCompromised.version)}, which was disabled as compromised: re-pin the current root key out of band (docs/operations.md, the trusted-root key is compromised)`);
  const parsed = input.transitions.map((t, i) => {
    let s: TransitionStatement;
    try {
      s = parseTransition(t.statement);
    } catch (err) {
      return fail(`statement ${i + 1} of the chain does not parse: ${err instanceof SigilError ? err.message : 'invalid'}`);
    }
    if (s.key !== input.key) fail(`statement ${i + 1} of the chain is for key ${s.key}, not ${input.key}`);
    if (t.version !== s.version) fail(`statement ${i + 1} is served as version ${t.version} but says ${s.version}`);
    return { t, s };
  });
  parsed.sort((a, b) => a.s.version - b.s.version);
  for (let i = 1; i < parsed.length; i++) {
    const prev = parsed[i - 1]!.s;
    const cur = parsed[i]!.s;
    if (cur.version === prev.version) fail(`the chain has two statements for ${ref(cur.version)}`);
    if (cur.previousVersion !== prev.version) fail(`the chain has a gap: nothing introduces ${ref(cur.previousVersion)} (it jumps from ${ref(prev.version)} to ${ref(cur.version)})`);
  }
  const at = parsed.findIndex((p) => Buffer.from(p.s.previousPublicKey, 'base64').equals(pinned));
  let start: number;
  let version: number;
  let current: Buffer;
  let noChain = false;
  if (at >= 0) {
    start = at;
    version = parsed[at]!.s.previousVersion;
    current = pinned;
  } else {
    const last = parsed.at(-1);
    const signerVersion = versionOf(input.document.keyVersion, input.key);
    if (last && Buffer.from(last.s.publicKey, 'base64').equals(pinned)) {
      start = parsed.length;
      version = last.s.version;
      current = pinned;
    } else if (!last && signerVersion !== null && (compromised.length === 0 || verifies(p256(pinned, 'the pinned root key'), input.document.json, input.document.signature))) {
      // No transitions served: the pinned key can only be the one that signs the document (after a
      // compromise cut the chain, a pinned key that does not sign it is an older one that must re-pin).
      noChain = true;
      start = 0;
      version = signerVersion;
      current = pinned;
    } else {
      // The pinned key is none of the versions served (every statement's keys, the signer with no statements,
      // the compromised ones): no chain is followed. After a compromise cut the chain, the versions before it are
      // not served, so an older pinned version cannot be told from an unrelated key.
      const c = compromised.at(-1);
      const served = parsed.length ? `${ref(parsed[0]!.s.previousVersion)} to ${ref(parsed.at(-1)!.s.version)}` : signerVersion !== null ? ref(signerVersion) : 'none';
      return fail(
        `the pinned key is not any ${input.key} version the daemon serves (${served})` +
          (c
            ? `: if it is a version from before ${ref(c.version)} was disabled as compromised, re-pin the current root key out of band (docs/operations.md, the trusted-root key is compromised)`
            : ': check the key given (--root-key)'),
      );
    }
  }
  const followed = [version];
  for (let i = start; i < parsed.length; i++) {
    const { t, s } = parsed[i]!;
    if (!Buffer.from(s.previousPublicKey, 'base64').equals(current)) fail(`the statement introducing ${ref(s.version)} names a previous key that is not ${ref(version)}`);
    if (!verifies(p256(current, ref(version)), t.statement, t.previousSignature)) fail(`the statement introducing ${ref(s.version)} is not signed by ${ref(version)}, the key before it`);
    const next = Buffer.from(s.publicKey, 'base64');
    if (!verifies(p256(next, ref(s.version)), t.statement, t.signature)) fail(`the statement introducing ${ref(s.version)} is not signed by ${ref(s.version)} itself`);
    const bad = compromised.find((c) => c.version === s.version || c.spki.equals(next));
    if (bad) fail(`the chain reaches ${ref(bad.version)}, which was disabled as compromised: re-pin the current root key out of band (docs/operations.md, the trusted-root key is compromised)`);
    current = p256(next, ref(s.version)).export({ format: 'der', type: 'spki' });
    version = s.version;
    followed.push(version);
  }
  const signer = versionOf(input.document.keyVersion, input.key);
  if (signer !== null && signer > version) {
    fail(`the trusted root is signed by ${input.document.keyVersion}, but the chain from the pinned key ends at ${ref(version)}: no statement introduces ${ref(version + 1)} (a gap in the chain)`);
  }
  if (input.document.keyVersion !== ref(version)) fail(`the trusted root is signed by ${input.document.keyVersion || 'an unnamed key'}, not by ${ref(version)}, the key the chain reaches from the pinned one`);
  if (!verifies(p256(current, ref(version)), input.document.json, input.document.signature)) {
    // With no chain, nothing says the pinned key is any version: it is only taken as the signer's.
    fail(
      noChain
        ? `the trusted root's signature does not verify under the pinned key (${NO_CHAIN_TAKEN_AS}${ref(version)}): either it is no ${input.key} version, or the trusted root or its signature was altered`
        : `the trusted root's signature does not verify under ${ref(version)}, the key the chain reaches from the pinned one`,
    );
  }
  // The root key signs the sigstore form too (no key versions): handed over as the full document it would verify,
  // and hide every key version's window and revocation. The full document always carries the list, maybe empty.
  if (!hasKeyVersions(input.document.json)) fail('the trusted root verifies but has no sigilKeyVersions: it is the sigstore form, not the full document (the two were swapped on the way)');
  return { followed, currentSpki: current };
}

/** True when `json` is a trusted-root document with sigil's key versions (an array, possibly empty). */
function hasKeyVersions(json: Buffer): boolean {
  try {
    return Array.isArray((JSON.parse(json.toString('utf8')) as { sigilKeyVersions?: unknown }).sigilKeyVersions);
  } catch {
    return false;
  }
}

/** N of `key@N`, or null when `ref` is not a version of `key`. */
function versionOf(ref: string, key: string): number | null {
  if (!ref.startsWith(`${key}@`)) return null;
  const n = ref.slice(key.length + 1);
  return /^[1-9][0-9]{0,9}$/.test(n) ? Number(n) : null;
}

/** The largest chain file `parseRootKeyChain` reads (a statement is at most 4 KiB; thousands of rotations fit). */
const MAX_CHAIN_BYTES = 16 * 1024 * 1024;

/**
 * The chain as `/trusted-root-keys.json` serves it and `sigilctl trusted-root get --chain` writes it:
 * `{key, transitions: [{version, statement, previousSignature, signature}], compromised: [{version, publicKey}]}`,
 * bytes as base64, two-space indented with a final newline.
 */
export function serializeRootKeyChain(c: RootKeyChain): Buffer {
  const doc = {
    key: c.key,
    transitions: c.transitions.map((t) => ({
      version: t.version,
      statement: t.statement.toString('base64'),
      previousSignature: t.previousSignature.toString('base64'),
      signature: t.signature.toString('base64'),
    })),
    compromised: c.compromised.map((v) => ({ version: v.version, publicKey: v.spki.toString('base64') })),
  };
  return Buffer.from(`${JSON.stringify(doc, null, 2)}\n`);
}

/**
 * Parses a chain file (the form `serializeRootKeyChain` writes) into what `verifyRootChain` takes; checks only
 * its shape (INVALID_ARGUMENT naming the field): the statements and signatures are judged by `verifyRootChain`.
 */
export function parseRootKeyChain(bytes: Uint8Array): RootKeyChain {
  const bad = (why: string): never => {
    throw new SigilError('INVALID_ARGUMENT', `root key chain: ${why}`);
  };
  if (bytes.length > MAX_CHAIN_BYTES) bad(`larger than ${MAX_CHAIN_BYTES / 1048576} MiB`);
  let v: unknown;
  try {
    v = JSON.parse(Buffer.from(bytes).toString('utf8'));
  } catch {
    return bad('not json');
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return bad('not a json object');
  const o = v as Record<string, unknown>;
  if (typeof o.key !== 'string' || o.key.length === 0) bad('key must be a key name');
  if (!Array.isArray(o.transitions)) bad('transitions must be an array');
  if (!Array.isArray(o.compromised)) bad('compromised must be an array');
  const version = (x: unknown, what: string): number => (typeof x === 'number' && Number.isSafeInteger(x) && x >= 1 && x <= MAX_VERSION ? x : bad(`${what} must be a version number`));
  const bytesOf = (x: unknown, what: string): Buffer => (typeof x === 'string' && BASE64.test(x) ? Buffer.from(x, 'base64') : bad(`${what} must be base64`));
  const object = (x: unknown, what: string): Record<string, unknown> => (typeof x === 'object' && x !== null && !Array.isArray(x) ? (x as Record<string, unknown>) : bad(`${what} is not a json object`));
  return {
    key: o.key as string,
    transitions: (o.transitions as unknown[]).map((x, i) => {
      const t = object(x, `transition ${i + 1}`);
      return {
        version: version(t.version, `transition ${i + 1}: version`),
        statement: bytesOf(t.statement, `transition ${i + 1}: statement`),
        previousSignature: bytesOf(t.previousSignature, `transition ${i + 1}: previousSignature`),
        signature: bytesOf(t.signature, `transition ${i + 1}: signature`),
      };
    }),
    compromised: (o.compromised as unknown[]).map((x, i) => {
      const c = object(x, `compromised ${i + 1}`);
      return { version: version(c.version, `compromised ${i + 1}: version`), spki: bytesOf(c.publicKey, `compromised ${i + 1}: publicKey`) };
    }),
  };
}

/**
 * The version that signs the trusted root, as far as the chain tells (for a document read from a file, whose
 * signer no server named): the newest version a statement introduces, else the version after the newest
 * compromised one, else 1. It only names the key in messages: `verifyRootChain` still checks the signature
 * under the key the chain reaches from the pin.
 */
export function chainHeadVersion(c: RootKeyChain): number {
  const introduced = c.transitions.map((t) => t.version);
  if (introduced.length) return Math.max(...introduced);
  const compromised = c.compromised.map((x) => x.version);
  return compromised.length ? Math.max(...compromised) + 1 : 1;
}
