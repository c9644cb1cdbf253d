import { SigilError, isSigilError, type Refusal } from '../errors.ts';
import type { AuditEvent, AuditSink } from '../audit/audit-sink.ts';
import type { Clock } from '../clock.ts';
import type { Logger } from '../log.ts';
import type { RevokedBuilderRecord, RevokedIdentityRecord, Store } from '../store/store.ts';
import { buildCrl, crlEntries, crlPem, type CrlSigner } from './crl.ts';
import { parseAkName, parseEkHash, parseReason, parseSerial } from './inputs.ts';
import { recordIntent } from '../audit/audited.ts';

/** One identity CA generation as the CRL needs it: its version, its name, its key identifier and its signature. */
export interface CrlIssuer extends CrlSigner {
  /** The generation (CA key version). */
  version: number;
  /** The CA certificate's subject, DER. */
  subjectDer(): Buffer;
  /** The CA key's identifier. */
  keyIdentifier(): Buffer;
}

/** The identity CA's generations as the CRLs need them; IdentityCa is one. */
export interface CrlIssuers {
  /**
   * The generation `version` (default the current one); KEY_NOT_FOUND when there is none, FAILED_PRECONDITION
   * when it is no longer live (its CRL is not served).
   */
  crlIssuer(version?: number): CrlIssuer;
}

/** The CRL of one identity CA generation. */
export interface Crl {
  der: Buffer;
  pem: string;
  number: number;
  thisUpdate: Date;
  nextUpdate: Date;
  /** The generation (CA key version) that signed it and whose certificates it lists. */
  caVersion: number;
}

/** What Revocations needs. */
export interface RevocationsOptions {
  store: Pick<Store, 'getIssuedCertificate' | 'insertRevokedIdentity' | 'listRevokedIdentities' | 'insertRevokedBuilder' | 'listRevokedBuilders' | 'nextCrlNumber'>;
  sink: AuditSink;
  clock: Clock;
  log: Logger;
  /** The identity CA's generations; without them there is no CRL (and no builder certificate to revoke). */
  ca?: CrlIssuers | null;
  /** From thisUpdate to nextUpdate; default 1 hour. A new CRL is made at half of it, and on every revocation. */
  crlValidityMs?: number;
}

/** A builder as a request presents it: what its certificate says. */
export interface BuilderCredentials {
  /** Canonical certificate serial. */
  serial: string;
  ekHash: string;
  akName: string;
}

const DEFAULT_CRL_VALIDITY_MS = 60 * 60_000;
const IDENTITY_REVOKED: Refusal = Object.freeze({ reason: 'IDENTITY_REVOKED', message: 'builder identity revoked' });
const BUILDER_REVOKED: Refusal = Object.freeze({ reason: 'BUILDER_REVOKED', message: 'builder tpm revoked' });

/**
 * Revoked builder identities (certificates, by serial) and revoked builders (TPMs by EK hash, or one
 * AK of a TPM), with the identity CA's CRL. The store is the record; in-memory sets answer the checks on
 * the request path in O(1) and are replaced on every change. Every revocation is audited (fail closed:
 * the call fails when the audit entry cannot be made durable, though the revocation itself stands).
 */
export class Revocations {
  readonly #o: RevocationsOptions;
  readonly #validity: number;
  #serials = new Set<string>();
  #eks = new Set<string>();
  // `ekHash/akName` of AKs revoked one by one.
  #aks = new Set<string>();
  /** Per generation: the latest CRL (being) made, and whether a revocation made it stale. */
  readonly #crls = new Map<number, { p: Promise<Crl>; stale: boolean }>();
  #timer: NodeJS.Timeout | null = null;

  constructor(o: RevocationsOptions) {
    this.#o = o;
    this.#validity = o.crlValidityMs ?? DEFAULT_CRL_VALIDITY_MS;
    if (!(this.#validity >= 60_000)) throw new SigilError('CONFIG_INVALID', 'the crl validity must be at least a minute');
    this.#reload();
  }

  #reload(): void {
    this.#serials = new Set(this.#o.store.listRevokedIdentities().map((r) => r.serial));
    const eks = new Set<string>();
    const aks = new Set<string>();
    for (const b of this.#o.store.listRevokedBuilders()) {
      if (b.akName === null) eks.add(b.ekHash);
      else aks.add(`${b.ekHash}/${b.akName}`);
    }
    this.#eks = eks;
    this.#aks = aks;
  }

  /** True when the certificate with this canonical serial is revoked. */
  isIdentityRevoked(serial: string): boolean {
    return this.#serials.has(serial);
  }

  /** True when this TPM (EK hash) is revoked, or, given an AK name, that AK of it. */
  isBuilderRevoked(ekHash: string, akName?: string): boolean {
    return this.#eks.has(ekHash) || (akName !== undefined && this.#aks.has(`${ekHash}/${akName}`));
  }

  /**
   * Why a builder's request must be refused (its certificate or its TPM is revoked), or null. The server
   * records the refusal (`request.refused`, with this reason) like any other.
   */
  refuseBuilder(b: BuilderCredentials): Refusal | null {
    if (this.#serials.has(b.serial)) return IDENTITY_REVOKED;
    if (this.isBuilderRevoked(b.ekHash, b.akName)) return BUILDER_REVOKED;
    return null;
  }

  /** Why enrollment or renewal of this EK (and AK) must be refused, or null. */
  refuseEnrollment(ekHash: string, akName: string): Refusal | null {
    return this.isBuilderRevoked(ekHash, akName) ? BUILDER_REVOKED : null;
  }

  /** Both lists, oldest revocation first. */
  list(): { identities: RevokedIdentityRecord[]; builders: RevokedBuilderRecord[] } {
    return { identities: this.#o.store.listRevokedIdentities(), builders: this.#o.store.listRevokedBuilders() };
  }

  /**
   * Revokes a builder certificate the identity CA issued, by serial: its next request is refused and the
   * CRL lists it from now until the certificate expires. KEY_NOT_FOUND for a serial the CA never issued,
   * FAILED_PRECONDITION when it is already revoked.
   */
  async revokeIdentity(serialInput: string, reasonInput: string, who: string): Promise<RevokedIdentityRecord> {
    return this.#audited(who, 'identity.revoke', { serial: String(serialInput).slice(0, 64), reason: String(reasonInput).slice(0, 64) }, async () => {
      const serial = parseSerial(serialInput);
      const reason = parseReason(reasonInput);
      const issued = this.#o.store.getIssuedCertificate(serial);
      if (issued === null) throw new SigilError('KEY_NOT_FOUND', `the identity ca issued no certificate with serial ${serial}`);
      const rec: RevokedIdentityRecord = { serial, reason, revokedAt: this.#now(), revokedBy: who, notAfter: issued.notAfter, ekHash: issued.ekHash, caVersion: issued.caVersion };
      if (!this.#o.store.insertRevokedIdentity(rec)) throw new SigilError('FAILED_PRECONDITION', `the certificate with serial ${serial} is already revoked`);
      this.#reload();
      await this.#refreshAfterChange(issued.caVersion);
      return { rec, detail: { serial, reason, ekHash: issued.ekHash, san: issued.san, notAfter: issued.notAfter.toISOString(), caVersion: issued.caVersion } };
    });
  }

  /**
   * Revokes a builder TPM by EK hash (or only one of its AKs, by AK name): its current certificates stop
   * working on their next request and it can neither enroll nor renew again. The EK need not have enrolled
   * yet. FAILED_PRECONDITION when it is already revoked.
   */
  async revokeBuilder(ekHashInput: string, reasonInput: string, who: string, akNameInput = ''): Promise<RevokedBuilderRecord> {
    return this.#audited(who, 'builder.revoke', { ekHash: String(ekHashInput).slice(0, 80), reason: String(reasonInput).slice(0, 64) }, async () => {
      const ekHash = parseEkHash(ekHashInput);
      const akName = parseAkName(akNameInput);
      const reason = parseReason(reasonInput);
      const rec: RevokedBuilderRecord = { ekHash, akName, reason, revokedAt: this.#now(), revokedBy: who };
      if (!this.#o.store.insertRevokedBuilder(rec)) throw new SigilError('FAILED_PRECONDITION', `builder ${ekHash}${akName ? ` ak ${akName}` : ''} is already revoked`);
      this.#reload();
      return { rec, detail: { ekHash, ...(akName ? { akName } : {}), reason } };
    });
  }

  /**
   * The CRL of identity CA generation `caVersion` (default the current one), made anew when it passed half
   * of its validity or a revocation changed it. It lists the revoked certificates that generation issued.
   * NOT_IMPLEMENTED without an identity CA; KEY_NOT_FOUND or FAILED_PRECONDITION for a generation that does
   * not exist or is no longer live.
   */
  async crl(caVersion?: number): Promise<Crl> {
    if (!this.#o.ca) throw new SigilError('NOT_IMPLEMENTED', 'this daemon has no identity ca, so no crl');
    if (caVersion !== undefined && (!Number.isSafeInteger(caVersion) || caVersion < 1)) throw new SigilError('INVALID_ARGUMENT', 'ca version must be a key version number >= 1');
    const issuer = this.#o.ca.crlIssuer(caVersion);
    const current = this.#crls.get(issuer.version);
    if (current !== undefined && !current.stale) {
      const c = await current.p.catch(() => null);
      if (c !== null && this.#now().getTime() < c.thisUpdate.getTime() + this.#validity / 2) return c;
      if (this.#crls.get(issuer.version) !== current) return this.crl(caVersion);
    }
    return this.#regenerate(issuer);
  }

  /** Keeps the current generation's CRL fresh without requests: a new one at half of each CRL's validity. */
  start(): void {
    const tick = (): void => {
      this.crl().catch((err: unknown) => this.#o.log.error({ err }, 'crl refresh failed'));
      this.#timer = setTimeout(tick, this.#validity / 2);
      this.#timer.unref();
    };
    if (this.#o.ca && this.#timer === null) tick();
  }

  /** Stops the refresh timer. */
  stop(): void {
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#timer = null;
  }

  #regenerate(ca: CrlIssuer): Promise<Crl> {
    const version = ca.version;
    const p = (async (): Promise<Crl> => {
      const thisUpdate = new Date(Math.floor(this.#now().getTime() / 1000) * 1000);
      const nextUpdate = new Date(thisUpdate.getTime() + this.#validity);
      // One counter for every generation: each generation's CRL numbers still only increase (RFC 5280, 5.2.3).
      const number = this.#o.store.nextCrlNumber();
      const revoked = this.#o.store.listRevokedIdentities().filter((r) => r.caVersion === version);
      const der = await buildCrl({ issuerDer: ca.subjectDer(), authorityKeyId: ca.keyIdentifier(), number, thisUpdate, nextUpdate, entries: crlEntries(revoked, thisUpdate) }, ca);
      this.#o.log.info({ number, caVersion: version, entries: revoked.length, nextUpdate }, 'crl made');
      return { der, pem: crlPem(der), number, thisUpdate, nextUpdate, caVersion: version };
    })();
    const slot = { p, stale: false };
    this.#crls.set(version, slot);
    p.catch(() => {
      if (this.#crls.get(version) === slot) slot.stale = true;
    });
    return p;
  }

  async #refreshAfterChange(caVersion: number): Promise<void> {
    if (!this.#o.ca) return;
    const slot = this.#crls.get(caVersion);
    if (slot) slot.stale = true;
    let issuer: CrlIssuer;
    try {
      issuer = this.#o.ca.crlIssuer(caVersion);
    } catch {
      // A generation no longer live has no CRL to update: its certificates are refused already.
      return;
    }
    try {
      await this.#regenerate(issuer);
    } catch (err) {
      // The revocation stands (requests are refused from the in-memory set); the next CRL read retries.
      this.#o.log.error({ err, caVersion }, 'crl regeneration after a revocation failed');
    }
  }

  async #audited<T>(who: string, act: string, attempted: Record<string, unknown>, fn: () => Promise<{ rec: T; detail: Record<string, unknown> }>): Promise<T> {
    // Written ahead like every admin act: no revocation happens unless its intent is durable first.
    const intent = await recordIntent(this.#o.sink, { who, act, detail: attempted });
    let out: { rec: T; detail: Record<string, unknown> };
    try {
      out = await fn();
    } catch (err) {
      const e: AuditEvent = { who, act, result: isSigilError(err) && err.code !== 'INTERNAL' ? 'refused' : 'failed', reason: isSigilError(err) ? err.code : 'INTERNAL', detail: { ...attempted, intent } };
      await this.#o.sink.record(e);
      throw err;
    }
    await this.#o.sink.record({ who, act, result: 'ok', detail: { ...out.detail, intent } });
    return out.rec;
  }

  #now(): Date {
    return this.#o.clock.now();
  }
}
