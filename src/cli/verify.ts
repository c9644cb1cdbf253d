import { constants, createHash, createPublicKey, createVerify, verify as cryptoVerify, type KeyObject, type VerifyKeyObjectInput } from 'node:crypto';
import { Algorithm } from '../gen/sigil/v1/signer.ts';
import { keyDetails } from '../revocation/trusted-root.ts';
import type { Algorithm as AlgorithmName } from '../signers/signer.ts';
import { HASH_OF, readBounded, streamFile } from './files.ts';

/** Which check of `sigilctl verify` failed; `--output json` reports it as `check`. */
export type VerifyCheck = 'root' | 'root-expired' | 'key-version' | 'algorithm' | 'revoked' | 'validity' | 'signature' | 'payload-type' | 'envelope';

/** A check that did not pass: exit code 1 and a one-line message that says which. */
export class VerifyFailure extends Error {
  readonly check: VerifyCheck;

  constructor(check: VerifyCheck, message: string) {
    super(message);
    this.name = 'VerifyFailure';
    this.check = check;
  }
}

/** One entry of a verified trusted root's `sigilKeyVersions`, with its public key and window decoded. */
export interface RootKeyVersion {
  /** `name@N`. */
  hint: string;
  algorithm: AlgorithmName;
  /** The contract enum value of `algorithm` (what HASH_OF is keyed by). */
  algorithmId: number;
  revoked: boolean;
  key: KeyObject;
  start: Date;
  /** When the window closed (disabled as compromised, or destroyed); null while open. */
  end: Date | null;
}

// Ed25519 messages go whole into memory: no more than the largest message sigild can be configured to take.
const MAX_WHOLE_MESSAGE = 1024 * 1024 * 1024;

const ALGORITHMS: readonly AlgorithmName[] = ['ECDSA_P256_SHA256', 'ECDSA_P384_SHA384', 'RSA_PKCS1_SHA256', 'RSA_PSS_SHA256', 'ED25519'];

function malformed(why: string): never {
  throw new VerifyFailure('root', `the trusted root verifies but is malformed: ${why}`);
}

function time(v: unknown, what: string): Date {
  const d = typeof v === 'string' ? new Date(v) : null;
  if (d === null || Number.isNaN(d.getTime())) return malformed(`${what} is not a time`);
  return d;
}

/** True when the key is of the kind the algorithm signs with (curve, RSA of at least 2048 bits, Ed25519). */
function keyFits(alg: AlgorithmName, key: KeyObject): boolean {
  const d = key.asymmetricKeyDetails ?? {};
  switch (alg) {
    case 'ECDSA_P256_SHA256':
      return key.asymmetricKeyType === 'ec' && d.namedCurve === 'prime256v1';
    case 'ECDSA_P384_SHA384':
      return key.asymmetricKeyType === 'ec' && d.namedCurve === 'secp384r1';
    case 'RSA_PKCS1_SHA256':
    case 'RSA_PSS_SHA256':
      return key.asymmetricKeyType === 'rsa' && (d.modulusLength ?? 0) >= 2048;
    case 'ED25519':
      return key.asymmetricKeyType === 'ed25519';
  }
}

/** The `sigilKeyVersions` entries of a verified trusted root. */
function listedVersions(rootJson: Buffer): Array<Record<string, unknown>> {
  let doc: unknown;
  try {
    doc = JSON.parse(rootJson.toString('utf8'));
  } catch {
    return malformed('not json');
  }
  const list = (doc as { sigilKeyVersions?: unknown } | null)?.sigilKeyVersions;
  if (!Array.isArray(list)) return malformed('no sigilKeyVersions');
  return list.filter((x): x is Record<string, unknown> => typeof x === 'object' && x !== null);
}

/** The failure for a key version (`ref`), or any version of a key (`ref` null), that the trusted root does not list. */
function unknownVersion(list: ReadonlyArray<Record<string, unknown>>, name: string, ref: string | null): VerifyFailure {
  const others = list.map((x) => x.hint).filter((h): h is string => typeof h === 'string' && h.startsWith(`${name}@`));
  const why = "versions below the key's minimum verify version are left out";
  if (ref === null) return new VerifyFailure('key-version', `unknown key: the trusted root lists no version of ${name} (${why})`);
  return new VerifyFailure('key-version', `unknown key version: ${ref} is not in the trusted root (${others.length ? `it lists ${others.join(', ')}` : `it lists no version of ${name}`}; ${why})`);
}

/** Decodes one listed key version `ref` and checks its algorithm (see findKeyVersion). */
function decodeVersion(e: Record<string, unknown>, ref: string, expected: AlgorithmName | null): RootKeyVersion {
  const alg = e.algorithm as AlgorithmName;
  if (!ALGORITHMS.includes(alg)) throw new VerifyFailure('algorithm', `wrong algorithm: ${ref} is listed with algorithm ${JSON.stringify(e.algorithm)}, which sigilctl does not know`);
  if (expected !== null && alg !== expected) throw new VerifyFailure('algorithm', `wrong algorithm: ${ref} is ${alg}, not ${expected} (--alg)`);
  const pk = e.publicKey as { rawBytes?: unknown; keyDetails?: unknown; validFor?: { start?: unknown; end?: unknown } } | undefined;
  if (typeof pk?.rawBytes !== 'string') return malformed(`${ref} has no publicKey.rawBytes`);
  const spki = Buffer.from(pk.rawBytes, 'base64');
  let key: KeyObject;
  try {
    key = createPublicKey({ key: spki, format: 'der', type: 'spki' });
  } catch {
    return malformed(`${ref}'s public key does not parse`);
  }
  if (!keyFits(alg, key) || pk.keyDetails !== keyDetails(alg, spki)) {
    throw new VerifyFailure('algorithm', `wrong algorithm: ${ref}'s public key (${key.asymmetricKeyType}, ${String(pk.keyDetails)}) does not fit its algorithm ${alg}`);
  }
  return {
    hint: ref,
    algorithm: alg,
    algorithmId: Algorithm[alg],
    revoked: e.revoked === true,
    key,
    start: time(pk.validFor?.start, `${ref}'s validFor.start`),
    end: pk.validFor?.end === undefined ? null : time(pk.validFor.end, `${ref}'s validFor.end`),
  };
}

/**
 * Finds key version `ref` (`name@N`) in a verified trusted root's `sigilKeyVersions` and checks its algorithm:
 * one sigil offers, the one `expected` names when given, fitting its public key and the `keyDetails` listed.
 */
export function findKeyVersion(rootJson: Buffer, ref: string, expected: AlgorithmName | null): RootKeyVersion {
  const list = listedVersions(rootJson);
  const e = list.find((x) => x.hint === ref);
  if (!e) throw unknownVersion(list, ref.slice(0, ref.lastIndexOf('@')), ref);
  return decodeVersion(e, ref, expected);
}

/**
 * Every version of key `name` a verified trusted root lists, oldest first, each decoded and checked as
 * findKeyVersion does; a VerifyFailure (`key-version`) when it lists none.
 */
export function findKeyVersions(rootJson: Buffer, name: string, expected: AlgorithmName | null): RootKeyVersion[] {
  const list = listedVersions(rootJson);
  const mine = list
    .filter((x) => x.keyName === name && typeof x.version === 'number' && x.hint === `${name}@${x.version}`)
    .sort((a, b) => (a.version as number) - (b.version as number));
  if (mine.length === 0) throw unknownVersion(list, name, null);
  return mine.map((e) => decodeVersion(e, e.hint as string, expected));
}

/**
 * Checks that a key version may be trusted for the signature. With `at` (a signing time the verifier vouches
 * for): inside the version's window `[start, end)`. Without: valid now, that is, not disabled as compromised
 * and its window not closed (a destroyed version's earlier signatures pass only with `at`).
 */
export function checkValidity(v: RootKeyVersion, at: Date | null): void {
  const end = v.end?.toISOString();
  if (at === null) {
    if (v.revoked) {
      throw new VerifyFailure('revoked', `revoked: ${v.hint} was disabled as compromised (its window closed at ${end ?? 'an unknown time'}); a signature made before then passes only with --at and its signing time`);
    }
    if (v.end !== null) {
      throw new VerifyFailure('validity', `not valid now: ${v.hint}'s window closed at ${end} (destroyed); a signature made before then passes only with --at and its signing time`);
    }
    return;
  }
  if (at.getTime() < v.start.getTime()) throw new VerifyFailure('validity', `not valid at ${at.toISOString()}: ${v.hint} was made at ${v.start.toISOString()}`);
  if (v.end !== null && at.getTime() >= v.end.getTime()) {
    throw new VerifyFailure(v.revoked ? 'revoked' : 'validity', `not valid at ${at.toISOString()}: ${v.hint}'s window closed at ${end}${v.revoked ? ' (disabled as compromised)' : ' (destroyed)'}`);
  }
}

/** The node:crypto verify options for a sigil signature: DER ECDSA, RSA PKCS#1 v1.5, RSA-PSS with a 32-byte salt (as every backend makes it). */
function verifyKey(v: RootKeyVersion): VerifyKeyObjectInput {
  switch (v.algorithm) {
    case 'RSA_PKCS1_SHA256':
      return { key: v.key, padding: constants.RSA_PKCS1_PADDING };
    case 'RSA_PSS_SHA256':
      return { key: v.key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 };
    default:
      return { key: v.key, dsaEncoding: 'der' };
  }
}

function badSignature(versions: readonly RootKeyVersion[], what: string, sig: Buffer): VerifyFailure {
  const v = versions[0]!;
  // A P1363 (r||s) ECDSA signature from another tool is a common mix-up: say so rather than only "bad".
  const size = v.algorithm === 'ECDSA_P256_SHA256' ? 64 : v.algorithm === 'ECDSA_P384_SHA384' ? 96 : 0;
  const hint = size !== 0 && sig.length === size && sig[0] !== 0x30 ? ' (it looks like a raw r||s signature: sigil writes ECDSA signatures DER-encoded)' : '';
  const under = versions.length === 1 ? v.hint : `any of ${versions.map((x) => x.hint).join(', ')}`;
  return new VerifyFailure('signature', `bad signature: ${what} does not verify under ${under} (${v.algorithm})${hint}`);
}

function verifies(v: RootKeyVersion, message: Buffer, sig: Buffer): boolean {
  const hash = HASH_OF[v.algorithmId] ?? null;
  try {
    return cryptoVerify(hash, message, hash === null ? v.key : verifyKey(v), sig);
  } catch {
    return false;
  }
}

/** Verifies a signature over a message held in memory (a DSSE PAE): the algorithm's hash, or Ed25519 over the whole message. */
export function verifyMessage(v: RootKeyVersion, message: Buffer, sig: Buffer, what: string): void {
  if (!verifies(v, message, sig)) throw badSignature([v], what, sig);
}

/**
 * Verifies a raw signature over a file under each of `versions` (one key's versions, so one algorithm), reading
 * the file once: ECDSA and RSA hash it while streaming it from disk (the loop `sign` hashes with, progress bar
 * included); Ed25519 reads it whole. Returns the first version it verifies under, the file's size and digest
 * (the algorithm's hash; SHA-256 for Ed25519); a `signature` VerifyFailure naming every version tried when none.
 */
export async function verifyFile(
  versions: readonly RootKeyVersion[],
  path: string,
  sig: Buffer,
  showProgress: boolean,
): Promise<{ keyVersion: RootKeyVersion; bytes: number; digest: { algorithm: string; hex: string } }> {
  const first = versions[0];
  if (first === undefined) throw new Error('verifyFile needs a key version');
  const hash = HASH_OF[first.algorithmId] ?? null;
  if (versions.some((v) => (HASH_OF[v.algorithmId] ?? null) !== hash)) throw new Error('verifyFile takes versions of one algorithm');
  if (hash === null) {
    const message = readBounded(path, MAX_WHOLE_MESSAGE, 'the file');
    const by = versions.find((v) => verifies(v, message, sig));
    if (by === undefined) throw badSignature(versions, path, sig);
    return { keyVersion: by, bytes: message.length, digest: { algorithm: 'sha256', hex: createHash('sha256').update(message).digest('hex') } };
  }
  const verifiers = versions.map(() => createVerify(hash));
  const h = createHash(hash);
  const bytes = await streamFile(path, showProgress, (c) => {
    for (const v of verifiers) v.update(c);
    h.update(c);
  });
  const by = versions.find((v, i) => {
    try {
      return verifiers[i]!.verify(verifyKey(v), sig);
    } catch {
      return false;
    }
  });
  if (by === undefined) throw badSignature(versions, path, sig);
  return { keyVersion: by, bytes, digest: { algorithm: hash, hex: h.digest('hex') } };
}
