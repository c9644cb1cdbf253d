import { createHash } from 'node:crypto';
import { SigilError } from '../../errors.ts';

/**
 * A Cloud KMS key named by a sigil URI: `gcpkms:projects/P/locations/L/keyRings/R/cryptoKeys/K`, with
 * `/cryptoKeyVersions/N` when it names one version.
 */
export interface GcpKeyName {
  project: string;
  location: string;
  keyRing: string;
  cryptoKey: string;
  /** The version id (decimal), or null when the URI names the CryptoKey (its newest ENABLED version). */
  version: string | null;
}

// Resource ids as Cloud KMS and Resource Manager define them: project ids are 6 to 30 lower-case letters,
// digits and hyphens starting with a letter and not ending with a hyphen (or a project number); locations are
// lower-case region names; KeyRing and CryptoKey ids match [a-zA-Z0-9_-]{1,63}; version ids are positive integers.
const PROJECT = /^(?:[a-z][a-z0-9-]{4,28}[a-z0-9]|[1-9][0-9]{0,19})$/;
const LOCATION = /^[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?$/;
const RESOURCE_ID = /^[a-zA-Z0-9_-]{1,63}$/;
const VERSION_ID = /^[1-9][0-9]{0,18}$/;
const SCHEME = 'gcpkms:';

/** The id patterns, shared with the config schema so a config cannot name a key ring no URI can reach. */
export const GCP_ID_PATTERNS = { project: PROJECT, location: LOCATION, resourceId: RESOURCE_ID, version: VERSION_ID } as const;

/** Parses a `gcpkms:` key URI strictly; INVALID_ARGUMENT (with the reason) for anything malformed. */
export function parseGcpKeyUri(uri: string): GcpKeyName {
  const bad = (why: string): SigilError => new SigilError('INVALID_ARGUMENT', `invalid gcpkms key uri: ${why}`);
  if (typeof uri !== 'string' || uri.length === 0) throw bad('empty');
  if (uri.length > 512) throw bad('longer than 512 characters');
  if (!uri.startsWith(SCHEME)) throw bad('scheme must be gcpkms');
  const parts = uri.slice(SCHEME.length).split('/');
  if (parts.length !== 8 && parts.length !== 10) {
    throw bad('expected projects/P/locations/L/keyRings/R/cryptoKeys/K[/cryptoKeyVersions/N]');
  }
  const words = ['projects', 'locations', 'keyRings', 'cryptoKeys', 'cryptoKeyVersions'];
  for (let i = 0; i < parts.length; i += 2) {
    if (parts[i] !== words[i / 2]) throw bad(`expected ${words[i / 2]} at segment ${i + 1}`);
  }
  const [, project, , location, , keyRing, , cryptoKey, , version] = parts as [string, string, string, string, string, string, string, string, string?, string?];
  if (!PROJECT.test(project)) throw bad('malformed project id');
  if (!LOCATION.test(location)) throw bad('malformed location');
  if (!RESOURCE_ID.test(keyRing)) throw bad('malformed key ring id');
  if (!RESOURCE_ID.test(cryptoKey)) throw bad('malformed crypto key id');
  if (version !== undefined && !VERSION_ID.test(version)) throw bad('malformed crypto key version id');
  return { project, location, keyRing, cryptoKey, version: version ?? null };
}

/** The Cloud KMS resource name of the key ring holding `k`. */
export function keyRingName(k: Pick<GcpKeyName, 'project' | 'location' | 'keyRing'>): string {
  return `projects/${k.project}/locations/${k.location}/keyRings/${k.keyRing}`;
}

/** The Cloud KMS resource name of the CryptoKey. */
export function cryptoKeyName(k: Omit<GcpKeyName, 'version'>): string {
  return `${keyRingName(k)}/cryptoKeys/${k.cryptoKey}`;
}

/** The Cloud KMS resource name of the version `k` names; `k.version` must be set. */
export function versionName(k: GcpKeyName & { version: string }): string {
  return `${cryptoKeyName(k)}/cryptoKeyVersions/${k.version}`;
}

/** The sigil URI of a Cloud KMS resource name (a CryptoKey or a CryptoKeyVersion). */
export function formatGcpKeyUri(resourceName: string): string {
  return `${SCHEME}${resourceName}`;
}

/** Parses a Cloud KMS CryptoKeyVersion resource name (as the service returns it). */
export function parseVersionName(name: string): GcpKeyName & { version: string } {
  const k = parseGcpKeyUri(`${SCHEME}${name}`);
  if (k.version === null) throw new SigilError('INVALID_ARGUMENT', `invalid gcpkms key uri: ${JSON.stringify(name.slice(0, 80))} names no version`);
  return k as GcpKeyName & { version: string };
}

/** A sigil backend label split into the CryptoKey it lives in and the sigil version number. */
export interface LabelTarget {
  /** The CryptoKey id the label's key name maps to. */
  cryptoKeyId: string;
  /** The sigil version number (`-vN` suffix), 1 when the label has none. */
  sigilVersion: number;
  /** The CryptoKey label key that records which native version holds this sigil version. */
  labelKey: string;
}

const LABEL_SUFFIX = /^(.+)-v([1-9][0-9]{0,8})$/;

/**
 * Maps a sigil label `<keyname>-v<N>` to its CryptoKey and version. The CryptoKey id is the key name with
 * every character outside [a-zA-Z0-9_-] replaced by `-`; a result over 63 characters keeps its first 54
 * and appends `-` and 8 hex digits of SHA-256(key name), so long names stay distinct. A label without a
 * `-vN` suffix is version 1 of a key named by the whole label.
 */
export function labelTarget(label: string): LabelTarget {
  if (typeof label !== 'string' || label.length === 0 || label.length > 512) {
    throw new SigilError('INVALID_ARGUMENT', 'a gcpkms key label must be 1 to 512 characters');
  }
  const m = LABEL_SUFFIX.exec(label);
  const base = m ? m[1]! : label;
  const sigilVersion = m ? Number(m[2]) : 1;
  let id = base.replace(/[^a-zA-Z0-9_-]/g, '-');
  if (id.length > 63) id = `${id.slice(0, 54)}-${createHash('sha256').update(base, 'utf8').digest('hex').slice(0, 8)}`;
  return { cryptoKeyId: id, sigilVersion, labelKey: `sigil-v${sigilVersion}` };
}

const LABEL_KEY = /^sigil-v([1-9][0-9]{0,8})$/;

/** The sigil version a CryptoKey label key records, or null for a label sigil did not write. */
export function sigilVersionOfLabelKey(key: string): number | null {
  const m = LABEL_KEY.exec(key);
  return m ? Number(m[1]) : null;
}
