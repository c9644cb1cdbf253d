/** A key version as a verifier reads it from sigil's trusted-root document. */
export interface TrustedKeyVersion {
  spki: Buffer;
  start: Date;
  /** null while the window is open. */
  end: Date | null;
  revoked: boolean;
}

interface Entry {
  hint: string;
  keyName: string;
  revoked: boolean;
  publicKey: { rawBytes: string; validFor: { start: string; end?: string } };
}

/**
 * The key versions of `keyName` in a trusted-root document (its `sigilKeyVersions`), by `name@N`, read the
 * way an outside verifier would: from the JSON alone.
 */
export function trustedKeyVersions(doc: unknown, keyName: string): Map<string, TrustedKeyVersion> {
  const list = (doc as { sigilKeyVersions?: Entry[] }).sigilKeyVersions;
  if (!Array.isArray(list)) throw new Error('the trusted root has no sigilKeyVersions');
  const out = new Map<string, TrustedKeyVersion>();
  for (const e of list) {
    if (e.keyName !== keyName) continue;
    const v = e.publicKey.validFor;
    out.set(e.hint, { spki: Buffer.from(e.publicKey.rawBytes, 'base64'), start: new Date(v.start), end: v.end ? new Date(v.end) : null, revoked: e.revoked });
  }
  return out;
}
