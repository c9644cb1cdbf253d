import { randomUUID } from 'node:crypto';
import { SigilError, type ErrorCode } from '../errors.ts';
import type { Logger } from '../log.ts';
import type { Clock } from '../clock.ts';
import type { AuditEvent, AuditResult, AuditSink } from '../audit/audit-sink.ts';
import { recordIntent } from '../audit/audited.ts';
import type { BackendRegistry } from '../signers/registry.ts';
import { canCreateKeys, canDestroyKeys, canEnableKeys, type Backend } from '../signers/signer.ts';
import { formatDuration } from '../config/duration.ts';
import type {
  ActorRef,
  ApprovalRecord,
  ApprovalState,
  KeyPolicy,
  KeyRecord,
  KeyVersionRecord,
  KeyVersionState,
  Store,
} from '../store/store.ts';
import type { KeyService } from './key-service.ts';
import { backendLabel, keyVersionRef, parseKeyRef } from './names.ts';
import { KeyedSerial } from '../serial.ts';

/** The daemon itself as the actor of its timers (auto-rotation, destruction, approval expiry, recovery). */
export const SIGILD: ActorRef = { subject: 'sigild', fingerprint: '' };

/** Lifecycle windows; production mode keeps the minimum destroy window at 24 h or more (config validation). */
export interface LifecycleWindows {
  minDestroyWindowMs: number;
  defaultDestroyWindowMs: number;
  approvalTtlMs: number;
}

/** Everything the key lifecycle needs. */
export interface LifecycleOptions extends LifecycleWindows {
  store: Store;
  backends: BackendRegistry;
  keys: KeyService;
  audit: AuditSink;
  clock: Clock;
  log: Logger;
  /**
   * The audit log's checkpoint key, the one daemon key rotated through the lifecycle: right after its
   * rotation (the outcome entry durable) `rotated` signs a checkpoint under the new version.
   */
  auditKey?: { name: string; rotated(): Promise<{ size: number; keyVersion: string }> } | undefined;
  /**
   * The identity CA's key: right after its rotation (the outcome entry durable) `rotated` makes the new
   * generation's CA certificate before the rotation returns; after any other act on it that changed
   * something (disable, enable, destruction) `changed` reloads the generations.
   */
  identityCa?: { name: string; rotated(): Promise<{ keyVersion: string }>; changed(): void } | undefined;
  /**
   * The trusted-root key: right after its rotation (the outcome entry durable) `rotated` makes the new
   * version's transition statement (signed by the previous version and the new one) and signs the trusted
   * root with the new version before the rotation returns.
   */
  trustRoot?: { name: string; rotated(): Promise<{ keyVersion: string; statements: string[] }> } | undefined;
}

/** A daemon key whose rotation (and other version changes) the daemon follows up on before the act answers; a failure is logged, not thrown. */
interface RotationFollower {
  name: string;
  /** Does the follow-up; what it returns goes into the log line. */
  follow(): Promise<Record<string, unknown>>;
  followed: string;
  behind: string;
  level: 'warn' | 'error';
  /** After any other act that changed one of its versions (disable, enable, destruction): reload what depends on them. */
  changed?: () => void;
  changeFailed?: string;
}

/** A policy change: only the fields given change. */
export type PolicyPatch = Partial<KeyPolicy>;

/** The outcome of an act that may need approval: the key as it is now, and the pending approval when one was made. */
export interface MaybeApproved {
  key: KeyRecord;
  approval: ApprovalRecord | null;
}

/** What the recovery pass found and did on start. */
export interface RecoveryReport {
  /** PENDING versions dropped (`name@N`), with whether a half-made backend object was removed. */
  dropped: Array<{ keyVersion: string; objectRemoved: boolean }>;
  /** DESTROYING versions whose destruction was finished. */
  destroyed: string[];
  /** Versions that could not be resolved now (the backend was unavailable); the next start tries again. */
  failed: Array<{ keyVersion: string; error: string }>;
}

const LONGEST_WINDOW_MS = 366 * 86_400_000;
const SHORTEST_ROTATE_PERIOD_MS = 60_000;
const LONGEST_ROTATE_PERIOD_MS = 10 * 366 * 86_400_000;
// A failed act with one of these codes was refused (the caller asked for something not allowed now); any other code is a failure.
const REFUSALS: ReadonlySet<ErrorCode> = new Set(['INVALID_ARGUMENT', 'KEY_NOT_FOUND', 'KEY_EXISTS', 'FAILED_PRECONDITION', 'PERMISSION_DENIED', 'NOT_IMPLEMENTED', 'UNSUPPORTED_ALGORITHM']);

interface Done<T> {
  value: T;
  /** Overrides the act (a destroy that needs approval records `approval.request`). */
  act?: string;
  key?: string;
  detail?: Record<string, unknown>;
  /** Overrides `ok` where the step ran but what it was for did not happen (recovery dropping an interrupted rotation). */
  result?: AuditResult;
  reason?: string;
  /** Further entries of the same act (an approval's effect), written in the outcome's transaction. */
  effects?: Array<Pick<AuditEvent, 'act' | 'key' | 'detail'>>;
}

/**
 * Key versions over time: rotation, disable/enable (instant on the signing path), destruction after a
 * window (with approval where the key's policy asks), key policy, approvals, and the crash recovery pass.
 * Store and backend steps are ordered so a crash at any point leaves a state `recover()` resolves:
 * rotate = PENDING row -> backend create -> ENABLED + primary; destroy = DESTROYING -> backend destroy -> DESTROYED.
 * Every act is written ahead to the audit sink: an intent entry (`result: 'started'`) is durable before the
 * act starts, and the outcome (ok, refused or failed, with the same `detail.intent`) before its result returns.
 */
export class KeyLifecycle {
  readonly #store: Store;
  readonly #backends: BackendRegistry;
  readonly #keys: KeyService;
  readonly #audit: AuditSink;
  readonly #clock: Clock;
  readonly #log: Logger;
  readonly #w: LifecycleWindows;
  /** The daemon keys that follow their own rotation before it returns (audit, identity CA, trusted root). */
  readonly #followers: readonly RotationFollower[];
  /** Runs lifecycle acts on one key one at a time (signing is not serialized). */
  readonly #locks = new KeyedSerial();

  constructor(o: LifecycleOptions) {
    this.#store = o.store;
    this.#backends = o.backends;
    this.#keys = o.keys;
    this.#audit = o.audit;
    this.#clock = o.clock;
    this.#log = o.log;
    const followers: RotationFollower[] = [];
    if (o.auditKey) {
      const k = o.auditKey;
      followers.push({
        name: k.name,
        follow: async () => {
          const cp = await k.rotated();
          return { checkpoint: cp.size, signedBy: cp.keyVersion };
        },
        followed: 'audit key rotated; checkpoint signed under the new version',
        behind: 'audit key rotated but the checkpoint under the new version could not be signed yet',
        level: 'warn',
      });
    }
    if (o.identityCa) {
      const k = o.identityCa;
      followers.push({
        name: k.name,
        follow: async () => ({ issuing: (await k.rotated()).keyVersion }),
        followed: 'identity ca key rotated; the new generation issues',
        behind: 'identity ca key rotated but the new generation has no ca certificate yet; the previous one keeps issuing',
        level: 'error',
        changed: () => k.changed(),
        changeFailed: 'the identity ca could not reload its generations',
      });
    }
    if (o.trustRoot) {
      const k = o.trustRoot;
      followers.push({
        name: k.name,
        follow: async () => {
          const t = await k.rotated();
          return { signedBy: t.keyVersion, statements: t.statements };
        },
        followed: 'trusted-root key rotated; the trusted root is signed under the new version',
        behind: 'trusted-root key rotated but its transition statement or the newly signed trusted root could not be made yet; the next start makes the statement',
        level: 'error',
      });
    }
    this.#followers = followers;
    this.#w = { minDestroyWindowMs: o.minDestroyWindowMs, defaultDestroyWindowMs: o.defaultDestroyWindowMs, approvalTtlMs: o.approvalTtlMs };
  }

  /** The configured windows. */
  get windows(): LifecycleWindows {
    return this.#w;
  }

  /**
   * Makes a new version in the key's backend and makes it primary; older versions stay for verification.
   * For the daemon's own keys what depends on the key follows before this resolves (the audit key's
   * checkpoint, the identity CA's certificate, the trusted root's transition statement); when it cannot,
   * the rotation stands and `behind` says what is late and why (it is made later).
   */
  async rotate(who: ActorRef, name: string, opts: { auto?: boolean } = {}): Promise<{ key: KeyRecord; version: number; behind?: string }> {
    const r: { key: KeyRecord; version: number; behind?: string } = await this.#rotate(who, name, opts);
    for (const f of this.#followers) {
      if (f.name !== name) continue;
      // The rotation is done and recorded: what cannot follow now follows later (next reader, issuance or start).
      try {
        this.#log.info({ key: keyVersionRef(name, r.version), ...(await f.follow()) }, f.followed);
      } catch (err) {
        this.#log[f.level]({ err, key: keyVersionRef(name, r.version) }, f.behind);
        // Only a SigilError's message is safe to show; anything else is in the daemon's log.
        r.behind = `${f.behind}: ${err instanceof SigilError ? err.message : 'internal error (see the daemon log)'}`;
      }
    }
    return r;
  }

  #rotate(who: ActorRef, name: string, opts: { auto?: boolean }): Promise<{ key: KeyRecord; version: number }> {
    return this.#act(who, 'key.rotate', name, () =>
      this.#locks.run(name, async () => {
        const key = this.#keys.getKey(name);
        const backend = await this.#backends.get(key.backend);
        if (!canCreateKeys(backend)) throw new SigilError('NOT_IMPLEMENTED', `backend ${key.backend} cannot create keys: key ${name} cannot be rotated`);
        const now = this.#clock.now();
        const pending = this.#store.insertPendingVersion(name, (v) => backendLabel(name, v), now);
        let made;
        try {
          made = await backend.createKey({ label: pending.label!, algorithm: key.algorithm });
        } catch (err) {
          // KEY_EXISTS: the label belongs to an object we did not make; leave it alone.
          await this.#abandon(backend, key.backend, pending, err instanceof SigilError && err.code === 'KEY_EXISTS' ? 'keep' : 'by-label');
          throw err;
        }
        let rec: KeyRecord;
        try {
          rec = this.#store.completeVersion(name, pending.version, made, { primary: true, nextRotationAt: nextRotation(key.policy, now) });
        } catch (err) {
          await this.#abandon(backend, key.backend, pending, made.uri);
          throw err;
        }
        this.#keys.invalidate(name);
        const ref = keyVersionRef(name, pending.version);
        return { value: { key: rec, version: pending.version }, key: ref, detail: { previous: keyVersionRef(name, key.primaryVersion), uri: made.uri, auto: opts.auto === true } };
      }),
    );
  }

  /**
   * Disables a version at once. The primary version can only be disabled as compromised (then signing
   * with the bare name refuses until a rotation: sigil does not rotate on its own, since the operator
   * may first need to know how the key leaked). `compromised` sets `revokedAt` (`since`, default now):
   * such a version is never enabled again.
   */
  disable(who: ActorRef, ref: string, opts: { compromised?: boolean; since?: Date | null } = {}): Promise<KeyRecord> {
    return this.#act(who, 'key.disable', ref, async () => {
      const { name, version } = versionRef(ref);
      return this.#locks.run(name, async () => {
        const key = this.#keys.getKey(name);
        const v = findVersion(key, version);
        const now = this.#clock.now();
        let updated: KeyVersionRecord;
        if (opts.compromised) {
          const since = opts.since ?? now;
          if (since.getTime() > now.getTime()) throw new SigilError('INVALID_ARGUMENT', 'compromise time is in the future');
          // The trusted root closes the version's window at this time: before its start, the window would be inverted.
          if (since.getTime() < v.createdAt.getTime()) {
            throw new SigilError('INVALID_ARGUMENT', `compromise time ${since.toISOString()} is before ${ref} was made (${v.createdAt.toISOString()}): give a time at or after it (its creation time covers its whole life)`);
          }
          if (v.revokedAt) throw new SigilError('FAILED_PRECONDITION', `key ${ref} is already disabled as compromised since ${v.revokedAt.toISOString()}`);
          const to: KeyVersionState = v.state === 'DESTROY_SCHEDULED' ? 'DESTROY_SCHEDULED' : 'DISABLED';
          updated = this.#store.updateVersion(name, version, ['ENABLED', 'DISABLED', 'DESTROY_SCHEDULED'], { state: to, disabledAt: v.disabledAt ?? now, revokedAt: since });
        } else {
          if (version === key.primaryVersion) {
            throw new SigilError('FAILED_PRECONDITION', `key ${ref} is the primary version of ${name}: rotate the key first (or disable it as compromised)`);
          }
          if (v.state !== 'ENABLED') throw new SigilError('FAILED_PRECONDITION', `key ${ref} is ${v.state}, not ENABLED`);
          updated = this.#store.updateVersion(name, version, ['ENABLED'], { state: 'DISABLED', disabledAt: now });
        }
        this.#keys.invalidate(name);
        const mirrored = await this.#mirrorDisabled(key.backend, v);
        return {
          value: this.#keys.getKey(name),
          detail: { from: v.state, to: updated.state, compromised: opts.compromised === true, ...(updated.revokedAt ? { since: updated.revokedAt.toISOString() } : {}), ...mirrored },
        };
      });
    });
  }

  /** Enables a DISABLED version again; one disabled as compromised never is. */
  enable(who: ActorRef, ref: string): Promise<KeyRecord> {
    return this.#act(who, 'key.enable', ref, async () => {
      const { name, version } = versionRef(ref);
      return this.#locks.run(name, async () => {
        const v = findVersion(this.#keys.getKey(name), version);
        if (v.revokedAt) throw new SigilError('FAILED_PRECONDITION', `key ${ref} was disabled as compromised and can never be enabled again: rotate the key instead`);
        if (v.state !== 'DISABLED') throw new SigilError('FAILED_PRECONDITION', `key ${ref} is ${v.state}, not DISABLED`);
        // The backend first: if it cannot enable the key, sigil keeps it DISABLED rather than hand out a key that fails.
        const backend = await this.#backends.get(this.#keys.getKey(name).backend);
        if (canEnableKeys(backend)) await backend.setKeyEnabled(v.uri, true);
        this.#store.transaction(() => {
          this.#store.updateVersion(name, version, ['DISABLED'], { state: 'ENABLED', disabledAt: null });
          this.#store.setBackendDisabled(name, version, false);
        });
        this.#keys.invalidate(name);
        return { value: this.#keys.getKey(name), detail: { from: 'DISABLED', to: 'ENABLED' } };
      });
    });
  }

  /**
   * Schedules a version's destruction at the end of a window (default `defaultDestroyWindowMs`, never
   * below `minDestroyWindowMs`). The version stops signing at once. Where the key's policy has
   * `destroyNeedsApproval`, this only makes a PENDING approval; the window starts when it is approved.
   */
  scheduleDestroy(who: ActorRef, ref: string, windowMs?: number | null): Promise<MaybeApproved> {
    return this.#act<MaybeApproved>(who, 'key.schedule-destroy', ref, async () => {
      const { name, version } = versionRef(ref);
      return this.#locks.run(name, async (): Promise<Done<MaybeApproved>> => {
        const window = windowMs ?? this.#w.defaultDestroyWindowMs;
        this.#checkWindow(window);
        const key = this.#keys.getKey(name);
        const v = findVersion(key, version);
        checkDestroyable(key, v);
        if (!canDestroyKeys(await this.#backends.get(key.backend))) {
          throw new SigilError('NOT_IMPLEMENTED', `backend ${key.backend} cannot destroy keys: key ${ref} cannot be scheduled for destruction`);
        }
        const now = this.#clock.now();
        if (key.policy.destroyNeedsApproval) {
          const open = this.#store.listApprovals({ state: 'PENDING', key: name }).find((a) => a.kind === 'destroy' && a.version === version);
          if (open) throw new SigilError('FAILED_PRECONDITION', `approval ${open.id} to destroy ${ref} is already pending`);
          const approval = this.#newApproval(who, 'destroy', name, version, { windowMs: window }, now);
          this.#store.insertApproval(approval);
          return {
            value: { key, approval },
            act: 'approval.request',
            detail: { id: approval.id, kind: 'destroy', windowMs: window, expiresAt: approval.expiresAt.toISOString(), fingerprint: who.fingerprint },
          };
        }
        const destroyAt = new Date(now.getTime() + window);
        this.#store.updateVersion(name, version, ['ENABLED', 'DISABLED'], { state: 'DESTROY_SCHEDULED', destroyAt });
        this.#keys.invalidate(name);
        const mirrored = await this.#mirrorDisabled(key.backend, v);
        return { value: { key: this.#keys.getKey(name), approval: null }, detail: { from: v.state, windowMs: window, destroyAt: destroyAt.toISOString(), ...mirrored } };
      });
    });
  }

  /** Cancels a scheduled destruction (the version becomes DISABLED), or a destruction still waiting for approval. */
  cancelDestroy(who: ActorRef, ref: string): Promise<KeyRecord> {
    return this.#act(who, 'key.cancel-destroy', ref, async () => {
      const { name, version } = versionRef(ref);
      return this.#locks.run(name, async () => {
        const v = findVersion(this.#keys.getKey(name), version);
        const now = this.#clock.now();
        if (v.state === 'DESTROY_SCHEDULED') {
          this.#store.updateVersion(name, version, ['DESTROY_SCHEDULED'], { state: 'DISABLED', destroyAt: null, disabledAt: v.disabledAt ?? now });
          this.#keys.invalidate(name);
          return { value: this.#keys.getKey(name), detail: { from: 'DESTROY_SCHEDULED', to: 'DISABLED' } };
        }
        const open = this.#store.listApprovals({ state: 'PENDING', key: name }).find((a) => a.kind === 'destroy' && a.version === version);
        if (!open) throw new SigilError('FAILED_PRECONDITION', `key ${ref} is ${v.state}, not scheduled for destruction`);
        this.#store.updateApproval(open.id, 'PENDING', { state: 'CANCELLED', decidedBy: who, decidedAt: now, reason: 'destruction cancelled' });
        return { value: this.#keys.getKey(name), detail: { approval: open.id, cancelled: 'approval' } };
      });
    });
  }

  /**
   * Destroys a version whose window has ended (the scheduler calls it): DESTROYING, backend destroy,
   * DESTROYED. The public key stays in the store and is still served.
   */
  destroyDue(ref: string): Promise<KeyRecord> {
    return this.#act(SIGILD, 'key.destroy', ref, async () => {
      const { name, version } = versionRef(ref);
      return this.#locks.run(name, async () => {
        const key = this.#keys.getKey(name);
        const v = findVersion(key, version);
        const now = this.#clock.now();
        if (v.state !== 'DESTROY_SCHEDULED' || !v.destroyAt || v.destroyAt.getTime() > now.getTime()) {
          throw new SigilError('FAILED_PRECONDITION', `key ${ref} is ${v.state} and not due for destruction`);
        }
        this.#store.updateVersion(name, version, ['DESTROY_SCHEDULED'], { state: 'DESTROYING' });
        this.#keys.invalidate(name);
        await this.#finishDestroy(key.backend, v);
        return { value: this.#keys.getKey(name), detail: { uri: v.uri, scheduledFor: v.destroyAt.toISOString() } };
      });
    });
  }

  /**
   * Changes a key's policy. Turning `destroyNeedsApproval` off weakens the protection it gives, so that
   * change (with whatever else the patch holds) waits for an approver instead.
   */
  updatePolicy(who: ActorRef, name: string, patch: PolicyPatch): Promise<MaybeApproved> {
    return this.#act<MaybeApproved>(who, 'key.policy', name, () =>
      this.#locks.run(name, async (): Promise<Done<MaybeApproved>> => {
        const key = this.#keys.getKey(name);
        const next = checkPolicy(key, patch);
        const now = this.#clock.now();
        if (key.policy.destroyNeedsApproval && !next.destroyNeedsApproval) {
          const approval = this.#newApproval(who, 'policy', name, null, { ...patch }, now);
          this.#store.insertApproval(approval);
          return {
            value: { key, approval },
            act: 'approval.request',
            detail: { id: approval.id, kind: 'policy', patch: { ...patch }, expiresAt: approval.expiresAt.toISOString(), fingerprint: who.fingerprint },
          };
        }
        const rec = this.#applyPolicy(key, next, now);
        return { value: { key: rec, approval: null }, detail: { from: key.policy, to: next } };
      }),
    );
  }

  /** Approvals, newest first. */
  listApprovals(filter: { state?: ApprovalState | undefined; key?: string | undefined } = {}): ApprovalRecord[] {
    return this.#store.listApprovals(filter);
  }

  /**
   * Approves a pending request and applies it in the same transaction: a destroy schedule starts its
   * window now; a policy change takes effect. The requester (same certificate fingerprint or same
   * subject) may not approve. If the request no longer fits the key, nothing changes.
   */
  async approve(who: ActorRef, id: string): Promise<{ approval: ApprovalRecord; key: KeyRecord }> {
    const a = this.#store.getApproval(id);
    return this.#act(who, 'approval.approve', a ? approvalRef(a) : undefined, async () => {
      const cur = this.#decidable(who, id);
      return this.#locks.run(cur.key, async () => {
        const now = this.#clock.now();
        let effect: Record<string, unknown> = {};
        const approval = this.#store.transaction(() => {
          const decided = this.#store.updateApproval(id, 'PENDING', { state: 'APPROVED', decidedBy: who, decidedAt: now, reason: null });
          const key = this.#keys.getKey(cur.key);
          if (cur.kind === 'destroy') {
            const v = findVersion(key, cur.version!);
            checkDestroyable(key, v);
            const windowMs = Number(cur.payload['windowMs']);
            const destroyAt = new Date(now.getTime() + windowMs);
            this.#store.updateVersion(key.name, v.version, ['ENABLED', 'DISABLED'], { state: 'DESTROY_SCHEDULED', destroyAt });
            effect = { act: 'key.schedule-destroy', from: v.state, windowMs, destroyAt: destroyAt.toISOString() };
          } else {
            const next = checkPolicy(key, cur.payload as PolicyPatch);
            this.#applyPolicy(key, next, now);
            effect = { act: 'key.policy', from: key.policy, to: next };
          }
          return decided;
        });
        this.#keys.invalidate(cur.key);
        if (cur.kind === 'destroy') {
          const key = this.#keys.getKey(cur.key);
          Object.assign(effect, await this.#mirrorDisabled(key.backend, findVersion(key, cur.version!)));
        }
        return {
          value: { approval, key: this.#keys.getKey(cur.key) },
          detail: { id, kind: cur.kind, requestedBy: cur.requestedBy.subject, fingerprint: who.fingerprint, effect },
          // The effect is an act of its own in the log, by the approver, naming the request it carries out.
          effects: [
            {
              act: cur.kind === 'destroy' ? 'key.schedule-destroy' : 'key.policy',
              key: approvalRef(cur),
              detail: { approval: cur.id, requestedBy: cur.requestedBy.subject, approvedBy: who.subject },
            },
          ],
        };
      });
    });
  }

  /** Rejects a pending request; nothing else changes. The requester may not reject (they cancel instead). */
  async reject(who: ActorRef, id: string, reason: string): Promise<ApprovalRecord> {
    const a = this.#store.getApproval(id);
    return this.#act(who, 'approval.reject', a ? approvalRef(a) : undefined, async () => {
      if (reason.length > 512) throw new SigilError('INVALID_ARGUMENT', 'reason is longer than 512 characters');
      this.#decidable(who, id);
      const approval = this.#store.updateApproval(id, 'PENDING', { state: 'REJECTED', decidedBy: who, decidedAt: this.#clock.now(), reason: reason || null });
      return { value: approval, detail: { id, kind: approval.kind, requestedBy: approval.requestedBy.subject, fingerprint: who.fingerprint, reason } };
    });
  }

  /** Marks pending approvals whose time ran out EXPIRED (the scheduler calls it); returns their ids. */
  async expireApprovals(): Promise<string[]> {
    const now = this.#clock.now();
    const out: string[] = [];
    for (const a of this.#store.listApprovals({ state: 'PENDING' })) {
      if (a.expiresAt.getTime() > now.getTime()) continue;
      await this.#act(SIGILD, 'approval.expire', approvalRef(a), async () => {
        this.#store.updateApproval(a.id, 'PENDING', { state: 'EXPIRED', decidedBy: null, decidedAt: now, reason: 'expired' });
        return { value: undefined, detail: { id: a.id, kind: a.kind, requestedBy: a.requestedBy.subject, expiresAt: a.expiresAt.toISOString() } };
      });
      out.push(a.id);
    }
    return out;
  }

  /**
   * The start-up recovery pass: a PENDING version (a rotation a crash interrupted) is dropped, and its
   * backend object, if the backend made one (found by label), is destroyed; a DESTROYING version is
   * destroyed again (idempotent) and recorded DESTROYED. Runs before the server takes requests.
   */
  async recover(): Promise<RecoveryReport> {
    const report: RecoveryReport = { dropped: [], destroyed: [], failed: [] };
    for (const v of this.#store.versionsInState(['PENDING', 'DESTROYING'])) {
      const ref = keyVersionRef(v.name, v.version);
      const key = this.#store.getKey(v.name)!;
      try {
        // The daemon's own acts are written ahead like an admin's: the intent names the state being resolved.
        if (v.state === 'PENDING') {
          const removed = await this.#act(SIGILD, 'key.rotate', ref, async (): Promise<Done<boolean>> => {
            const backend = await this.#backends.get(key.backend);
            let objectRemoved = false;
            if (canDestroyKeys(backend) && v.label) {
              const uri = await backend.findKeyByLabel(v.label);
              // Never destroy an object some recorded version uses (labels of different names can collide).
              if (uri !== null && !this.#store.uriInUse(key.backend, uri)) {
                await backend.destroyKey(uri);
                objectRemoved = true;
              }
            }
            this.#store.deletePendingVersion(v.name, v.version);
            this.#keys.invalidate(v.name);
            return { value: objectRemoved, result: 'failed', reason: 'INTERRUPTED', detail: { recovered: 'dropped', objectRemoved } };
          }, { recovering: 'PENDING' });
          report.dropped.push({ keyVersion: ref, objectRemoved: removed });
        } else {
          await this.#act(SIGILD, 'key.destroy', ref, async (): Promise<Done<void>> => {
            await this.#finishDestroy(key.backend, v);
            this.#keys.invalidate(v.name);
            return { value: undefined, detail: { recovered: true, uri: v.uri } };
          }, { recovering: 'DESTROYING' });
          report.destroyed.push(ref);
        }
      } catch (err) {
        this.#log.error({ err, key: ref, state: v.state }, 'key version recovery failed');
        report.failed.push({ keyVersion: ref, error: err instanceof SigilError ? err.message : 'internal error' });
      }
    }
    // A disable that reached sigil's store but not the backend (it was down) is sent again, once it is known
    // not to have arrived: versions whose backend confirmed it are not asked again at every start.
    for (const v of this.#store.versionsAwaitingBackendDisable()) {
      const key = this.#store.getKey(v.name)!;
      if (!this.#backends.has(key.backend)) continue;
      const mirrored = await this.#mirrorDisabled(key.backend, v);
      if (mirrored.backendDisabled === false) report.failed.push({ keyVersion: keyVersionRef(v.name, v.version), error: `backend ${key.backend} could not disable it: ${mirrored.backendError}` });
    }
    if (report.dropped.length + report.destroyed.length + report.failed.length > 0) this.#log.warn(report, 'key lifecycle recovery pass');
    return report;
  }

  /**
   * Disables a version in its backend too, where the backend keeps a state of its own (cloud KMS), so the
   * key cannot be used by going to the backend directly. Sigil's own state already refuses it, so a
   * backend that cannot be reached does not undo the act: the audit detail says so and the start-up
   * recovery pass tries again.
   */
  async #mirrorDisabled(backendName: string, v: KeyVersionRecord): Promise<{ backendDisabled?: boolean; backendError?: string }> {
    let backend: Backend;
    try {
      backend = await this.#backends.get(backendName);
    } catch (err) {
      return { backendDisabled: false, backendError: err instanceof SigilError ? err.message : 'internal error' };
    }
    if (!canEnableKeys(backend)) {
      this.#store.setBackendDisabled(v.name, v.version, true);
      return {};
    }
    try {
      await backend.setKeyEnabled(v.uri, false);
      this.#store.setBackendDisabled(v.name, v.version, true);
      return { backendDisabled: true };
    } catch (err) {
      this.#log.warn({ err, key: v.name, version: v.version, backend: backendName }, 'key disabled in sigil but not in its backend');
      return { backendDisabled: false, backendError: err instanceof SigilError ? err.message : 'internal error' };
    }
  }

  async #finishDestroy(backendName: string, v: KeyVersionRecord): Promise<void> {
    const backend = await this.#backends.get(backendName);
    if (!canDestroyKeys(backend)) throw new SigilError('NOT_IMPLEMENTED', `backend ${backendName} cannot destroy keys`);
    await backend.destroyKey(v.uri);
    this.#store.updateVersion(v.name, v.version, ['DESTROYING'], { state: 'DESTROYED', destroyedAt: this.#clock.now() });
  }

  /** Undoes a rotation that failed after its PENDING row: removes what the backend made, then the row. */
  async #abandon(backend: Backend, backendName: string, pending: KeyVersionRecord, uri: string | 'by-label' | 'keep'): Promise<void> {
    try {
      if (uri !== 'keep' && canDestroyKeys(backend)) {
        const found = uri === 'by-label' ? await backend.findKeyByLabel(pending.label!) : uri;
        if (found !== null && !this.#store.uriInUse(backendName, found)) await backend.destroyKey(found);
      }
      this.#store.deletePendingVersion(pending.name, pending.version);
    } catch (err) {
      // Left PENDING: the recovery pass on the next start resolves it.
      this.#log.error({ err, key: keyVersionRef(pending.name, pending.version) }, 'could not undo a failed rotation; recovery will');
    }
  }

  #applyPolicy(key: KeyRecord, next: KeyPolicy, now: Date): KeyRecord {
    const periodChanged = next.autoRotatePeriodMs !== key.policy.autoRotatePeriodMs;
    const rec = periodChanged ? this.#store.updateKey(key.name, { policy: next, nextRotationAt: nextRotation(next, now) }) : this.#store.updateKey(key.name, { policy: next });
    this.#keys.invalidate(key.name);
    return rec;
  }

  #decidable(who: ActorRef, id: string): ApprovalRecord {
    const a = this.#store.getApproval(id);
    if (!a) throw new SigilError('KEY_NOT_FOUND', `no approval ${JSON.stringify(id.slice(0, 64))}`);
    if (a.state !== 'PENDING') throw new SigilError('FAILED_PRECONDITION', `approval ${id} is ${a.state}`);
    if (a.expiresAt.getTime() <= this.#clock.now().getTime()) throw new SigilError('FAILED_PRECONDITION', `approval ${id} expired at ${a.expiresAt.toISOString()}`);
    if (who.fingerprint === a.requestedBy.fingerprint || who.subject === a.requestedBy.subject) {
      throw new SigilError('PERMISSION_DENIED', `approval ${id} was requested by ${a.requestedBy.subject}: the requester cannot decide it`);
    }
    return a;
  }

  #newApproval(who: ActorRef, kind: ApprovalRecord['kind'], key: string, version: number | null, payload: Record<string, unknown>, now: Date): ApprovalRecord {
    return {
      id: randomUUID(),
      kind,
      key,
      version,
      requestedBy: { subject: who.subject, fingerprint: who.fingerprint },
      requestedAt: now,
      expiresAt: new Date(now.getTime() + this.#w.approvalTtlMs),
      state: 'PENDING',
      decidedBy: null,
      decidedAt: null,
      reason: null,
      payload,
    };
  }

  #checkWindow(ms: number): void {
    if (!Number.isSafeInteger(ms) || ms < this.#w.minDestroyWindowMs) {
      throw new SigilError('INVALID_ARGUMENT', `destroy window ${fmt(ms)} is shorter than the minimum ${formatDuration(this.#w.minDestroyWindowMs)} (keys.minDestroyWindow)`);
    }
    if (ms > LONGEST_WINDOW_MS) throw new SigilError('INVALID_ARGUMENT', `destroy window ${fmt(ms)} is longer than 366d`);
  }

  /** After an act on a version of a daemon key other than its rotation (which has its own follow-up), the key's follower reloads what depends on its versions. */
  #followChange(act: string, ref: string | undefined): void {
    if (ref === undefined || act === 'key.rotate') return;
    const at = ref.lastIndexOf('@');
    const name = at < 0 ? ref : ref.slice(0, at);
    for (const f of this.#followers) {
      if (f.name !== name || !f.changed) continue;
      try {
        f.changed();
      } catch (err) {
        this.#log.error({ err, key: ref }, f.changeFailed ?? 'a daemon key could not follow a change of its versions');
      }
    }
  }

  /**
   * Runs an act written ahead: its intent (`started`, with `intentDetail`) is durable before `fn` runs, or
   * the act is refused with AUDIT_UNAVAILABLE and nothing happens; then the outcome (ok, refused or failed)
   * with the same `detail.intent` is durable before the result or error leaves. An outcome that cannot be
   * written fails the call with AUDIT_UNAVAILABLE, and the intent in the log says the act may have happened.
   */
  async #act<T>(who: ActorRef, act: string, key: string | undefined, fn: () => Promise<Done<T>>, intentDetail?: Record<string, unknown>): Promise<T> {
    // The intent write replaces a ready() check: it refuses while the log cannot be written, and it is the
    // write that heals a log whose last write failed.
    const intent = await recordIntent(this.#audit, { who: who.subject, act, key, detail: intentDetail });
    let done: Done<T>;
    try {
      done = await fn();
    } catch (err) {
      const code: ErrorCode = err instanceof SigilError ? err.code : 'INTERNAL';
      try {
        await this.#audit.record({
          who: who.subject,
          act,
          key,
          result: REFUSALS.has(code) ? 'refused' : 'failed',
          reason: code,
          detail: { ...intentDetail, message: err instanceof SigilError ? err.message : 'internal error', intent },
        });
      } catch (auditErr) {
        this.#log.error({ err: auditErr, act, key, intent }, 'could not record the outcome of a refused or failed act; its intent is in the audit log');
      }
      throw err;
    }
    const entries: AuditEvent[] = [
      { who: who.subject, act: done.act ?? act, key: done.key ?? key, result: done.result ?? 'ok', reason: done.reason, detail: { ...done.detail, intent } },
      ...(done.effects ?? []).map((e): AuditEvent => ({ who: who.subject, ...e, result: 'ok', detail: { ...e.detail, intent } })),
    ];
    // Recorded in one turn of the event loop, so the outcome and its effects share one transaction.
    try {
      await Promise.all(entries.map((e) => this.#audit.record(e)));
    } finally {
      this.#followChange(act, key);
    }
    return done.value;
  }
}

function fmt(ms: number): string {
  return Number.isSafeInteger(ms) && ms >= 0 ? formatDuration(ms) : String(ms);
}

function approvalRef(a: ApprovalRecord): string {
  return a.version === null ? a.key : keyVersionRef(a.key, a.version);
}

function versionRef(ref: string): { name: string; version: number } {
  const { name, version } = parseKeyRef(ref);
  if (version === null) throw new SigilError('INVALID_ARGUMENT', `name the version: ${name}@N`);
  return { name, version };
}

function findVersion(key: KeyRecord, version: number): KeyVersionRecord {
  const v = key.versions.find((x) => x.version === version);
  if (!v || v.state === 'PENDING') throw new SigilError('KEY_NOT_FOUND', `key ${key.name} has no version ${version}`);
  return v;
}

function checkDestroyable(key: KeyRecord, v: KeyVersionRecord): void {
  const ref = keyVersionRef(key.name, v.version);
  if (v.version === key.primaryVersion) throw new SigilError('FAILED_PRECONDITION', `key ${ref} is the primary version of ${key.name}: rotate the key first`);
  if (v.state !== 'ENABLED' && v.state !== 'DISABLED') throw new SigilError('FAILED_PRECONDITION', `key ${ref} is ${v.state}: only ENABLED or DISABLED versions can be scheduled for destruction`);
}

function nextRotation(p: KeyPolicy, now: Date): Date | null {
  return p.autoRotatePeriodMs === null ? null : new Date(now.getTime() + p.autoRotatePeriodMs);
}

/** The policy after `patch`, checked against the key: min versions within 1..primary, verify <= sign, a sane rotation period. */
function checkPolicy(key: KeyRecord, patch: PolicyPatch): KeyPolicy {
  const next: KeyPolicy = { ...key.policy };
  if (patch.minSignVersion !== undefined) next.minSignVersion = patch.minSignVersion;
  if (patch.minVerifyVersion !== undefined) next.minVerifyVersion = patch.minVerifyVersion;
  if (patch.autoRotatePeriodMs !== undefined) next.autoRotatePeriodMs = patch.autoRotatePeriodMs;
  if (patch.destroyNeedsApproval !== undefined) next.destroyNeedsApproval = patch.destroyNeedsApproval;
  for (const f of ['minSignVersion', 'minVerifyVersion'] as const) {
    if (!Number.isSafeInteger(next[f]) || next[f] < 1) throw new SigilError('INVALID_ARGUMENT', `${f} must be a version number >= 1`);
  }
  if (next.minSignVersion > key.primaryVersion) {
    throw new SigilError('FAILED_PRECONDITION', `min_sign_version ${next.minSignVersion} is above the primary version ${key.primaryVersion}: rotate first`);
  }
  if (next.minVerifyVersion > next.minSignVersion) {
    throw new SigilError('INVALID_ARGUMENT', `min_verify_version ${next.minVerifyVersion} is above min_sign_version ${next.minSignVersion}: a version that may sign must stay verifiable`);
  }
  const p = next.autoRotatePeriodMs;
  if (p !== null && (!Number.isSafeInteger(p) || p < SHORTEST_ROTATE_PERIOD_MS || p > LONGEST_ROTATE_PERIOD_MS)) {
    throw new SigilError('INVALID_ARGUMENT', 'auto-rotation period must be between 1m and 3660d');
  }
  return next;
}
