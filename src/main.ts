import { readFileSync } from 'node:fs';
import type { Config } from './config/schema.ts';
import { createLogger, auditChannel, type Logger } from './log.ts';
import { SqliteStore } from './store/sqlite.ts';
import { BackendRegistry } from './signers/registry.ts';
import { KeyService } from './keys/key-service.ts';
import { KeyLifecycle } from './keys/lifecycle.ts';
import { KeyScheduler } from './keys/scheduler.ts';
import { startServer, type RunningServer } from './server/server.ts';
import type { AttestationDeps } from './server/attestation-service.ts';
import { Metrics, serveMetrics } from './server/metrics.ts';
import { systemClock, type Clock } from './clock.ts';
import { splitHostPort } from './config/host-port.ts';
import { IdentityCa } from './identity/identity-ca.ts';
import { Verifier } from './attest/verifier.ts';
import { Enrollments } from './attest/enrollments.ts';
import { loadPolicies, PolicyProblems, type AttestationPolicy } from './attest/policy.ts';
import { ConfigProblems, parseConfig } from './config/load.ts';
import { planReload } from './config/reload.ts';
import { createHash } from 'node:crypto';
import { Authenticator } from './server/auth.ts';
import { BuilderPolicy } from './identity/builder-policy.ts';
import { readServerTls, TLS_KEYS, type ServerTls } from './config/tls-files.ts';
import type { EnrollmentRecords } from './attest/enrollment-records.ts';
import type { Store } from './store/store.ts';
import { Revocations } from './revocation/revocations.ts';
import { TRUST_ROOT_KEY, TrustedRootPublisher } from './revocation/trusted-root-publisher.ts';
import { AuditLog } from './audit/audit-log.ts';
import { auditKeyOf } from './audit/audit-key.ts';
import { isSigilError, SigilError } from './errors.ts';
import { auditOriginOf, auditPathOf } from './store/backup.ts';
import { OnlineArchiver } from './store/audit-archive.ts';
import { lockStore, type StoreLock } from './store/store-lock.ts';
import { join } from 'node:path';

/** A running sigild: its address, and how to stop it. */
export interface Daemon {
  /** `host:port` the gRPC server listens on (the real port when the config asked for port 0). */
  address: string;
  /** The metrics endpoint's `host:port`, when configured. */
  metricsAddress: string | null;
  keys: KeyService;
  /** Key rotation, retirement and approvals. */
  lifecycle: KeyLifecycle;
  /** The lifecycle timers (tests call `tick()` with a fake clock). */
  scheduler: KeyScheduler;
  /** The identity CA, when the config has an `identity` section (the attestation service issues through it). */
  identity: IdentityCa | null;
  /** Revoked identities and builders, and the CRL. */
  revocations: Revocations;
  /** The audit log every act is recorded in. */
  audit: AuditLog;
  /**
   * Re-reads the config file the daemon started with (SIGHUP) and applies its reloadable parts (`RELOADABLE`)
   * at once; other changes are reported and ignored. An invalid file changes nothing. Each outcome is logged,
   * audited (`config.reload`) and counted. Reloads run one at a time.
   */
  reload(): Promise<ReloadOutcome>;
  stop(): Promise<void>;
}

/** What a reload did. */
export interface ReloadOutcome {
  /** `ok`: applied, nothing ignored; `partial`: applied, some changes need a restart; `invalid`: refused, nothing changed; `failed`: not audited, nothing changed. */
  result: 'ok' | 'partial' | 'invalid' | 'failed';
  /** SHA-256 of the file read, lower-case hex (absent when it could not be read). */
  sha256?: string;
  /** Reloadable key paths that changed and now apply. */
  applied: string[];
  /** Changed key paths that need a restart. */
  ignored: string[];
  /** Why the file was refused, one line per problem. */
  problems: string[];
}

/**
 * Composition root: store lock -> store -> backends -> key service -> servers. `storeLock`: the store's
 * lock when the caller took it already (`sigild dev`, before preparing its directory); the daemon owns it from here
 * and gives it up when it stops or fails to start.
 */
export async function startDaemon(cfg: Config, opts: { log?: Logger; clock?: Clock; configFile?: string; storeLock?: StoreLock } = {}): Promise<Daemon> {
  // First: a second daemon on a store that is served must stop before it writes anything.
  const lock = opts.storeLock ?? lockStore(cfg.store.sqlite.path);
  try {
    return await startLocked(cfg, opts, lock);
  } catch (err) {
    lock.release();
    throw err;
  }
}

async function startLocked(cfg: Config, opts: { log?: Logger; clock?: Clock; configFile?: string }, lock: StoreLock): Promise<Daemon> {
  const log = opts.log ?? createLogger({ level: cfg.log.level });
  const audit = auditChannel(log);
  const production = cfg.mode === 'production';
  const store = new SqliteStore(cfg.store.sqlite.path);
  const metrics = new Metrics();
  const backends = new BackendRegistry(cfg.backends, {
    log,
    production,
    onBreaker: (backend, state) => metrics.breakerState(backend, state),
    onSignatureMismatch: (backend) => metrics.signatureMismatches.inc({ backend }),
  });
  const clock = opts.clock ?? systemClock;
  const keys = new KeyService({
    store,
    backends,
    defaultBackend: cfg.defaultBackend,
    maxMessageBytes: cfg.limits.maxMessageBytes,
    log: log.child({ module: 'keys' }),
    clock,
  });
  let lifecycle: KeyLifecycle;
  let scheduler: KeyScheduler;
  let identity: IdentityCa | null = null;
  let trustedRoot: TrustedRootPublisher | null = null;
  let grpcAddress = cfg.listen;
  let auditLog: AuditLog | null = null;
  let checkpointTimer: NodeJS.Timeout | null = null;
  let stopArchiving: (() => void) | null = null;
  try {
    // Open the default backend now: a wrong PIN or missing token should stop the start, not the first request.
    await backends.get(cfg.defaultBackend).catch((err: unknown) => {
      throw backendOpenFailure(cfg, cfg.defaultBackend, err);
    });
    const opened = (auditLog = await openAuditLog(cfg, keys, backends, clock, log));
    lifecycle = new KeyLifecycle({
      store,
      backends,
      keys,
      audit: auditLog,
      clock,
      log: log.child({ module: 'lifecycle' }),
      minDestroyWindowMs: cfg.keys.minDestroyWindow,
      defaultDestroyWindowMs: cfg.keys.defaultDestroyWindow,
      approvalTtlMs: cfg.keys.approvalTtl,
      auditKey: { name: cfg.audit.key, rotated: () => opened.latestCheckpoint() },
      // The identity CA opens after the recovery pass below; no admin act reaches the lifecycle before it has.
      identityCa: cfg.identity
        ? {
            name: cfg.identity.caKey,
            rotated: async () => {
              if (!identity) throw new SigilError('FAILED_PRECONDITION', 'the identity ca is not open yet');
              return identity.rotated();
            },
            changed: () => identity?.refresh(),
          }
        : undefined,
      // The publisher opens after the recovery pass below; no admin act reaches the lifecycle before it has.
      trustRoot: {
        name: TRUST_ROOT_KEY,
        rotated: async () => {
          if (!trustedRoot) throw new SigilError('FAILED_PRECONDITION', 'the trusted-root publisher is not open yet');
          return trustedRoot.rotated();
        },
      },
    });
    scheduler = new KeyScheduler({ store, lifecycle, clock, log: log.child({ module: 'scheduler' }), intervalMs: cfg.keys.schedulerInterval });
    // Resolve what a crash left half-done (PENDING and DESTROYING versions) before anyone can sign.
    await lifecycle.recover();
    if (cfg.identity) {
      identity = await IdentityCa.open({
        keys,
        store,
        clock,
        log: log.child({ module: 'identity' }),
        audit,
        sink: auditLog,
        trustDomain: cfg.identity.trustDomain,
        caKey: cfg.identity.caKey,
        algorithm: cfg.identity.algorithm,
        backend: cfg.identity.backend,
        lifetimeMs: cfg.identity.lifetime,
        maxLifetimeMs: cfg.identity.maxLifetime,
      });
    }
    trustedRoot = await TrustedRootPublisher.open({
      keys,
      store,
      clock,
      log: log.child({ module: 'revocation' }),
      identityCa: identity ? () => identity!.trustEntries() : null,
      // The log is read over the daemon's own gRPC address, known once it listens.
      auditLog: { key: cfg.audit.key, baseUrl: () => `https://${grpcAddress}` },
      reservedKeys: [...(identity ? [identity.keyName] : []), cfg.audit.key],
      validityMs: cfg.trustedRoot.validity,
    });
  } catch (err) {
    identity?.close();
    await auditLog?.close();
    await backends.closeAll();
    store.close();
    throw keyExistsHint(cfg, err);
  }
  const audited = auditLog;
  const rootPublisher = trustedRoot;
  if (cfg.audit.checkpointInterval !== undefined) {
    checkpointTimer = setInterval(() => {
      audited.latestCheckpoint().catch((err: unknown) => log.error({ err }, 'audit checkpoint signing failed'));
    }, cfg.audit.checkpointInterval);
    checkpointTimer.unref();
  }
  metrics.watchAudit(audited);
  const archiver = new OnlineArchiver(audited, { dir: cfg.audit.archiveDir ?? null, align: cfg.audit.archiveAlign, segmentMax: cfg.audit.archiveSegmentMax });
  if (cfg.audit.archiveEvery !== undefined) stopArchiving = archiver.schedule(cfg.audit.archiveEvery, cfg.audit.archiveKeep, clock, log.child({ module: 'audit' }));
  const revocations = new Revocations({ store, sink: audited, clock, log: log.child({ module: 'revocation' }), ca: identity });
  const enrollments = new Enrollments({ store, sink: audited, isRevoked: (ek, ak) => revocations.isBuilderRevoked(ek, ak), log: log.child({ module: 'attest' }) });
  const [host] = splitHostPort(cfg.listen);
  let attestation: AttestationDeps | null = null;
  // One map for the verifier and the service: a reload replaces its contents in one synchronous step.
  const policies = new Map<string, AttestationPolicy>();
  if (cfg.attestation && identity) {
    for (const [name, p] of loadPolicies(cfg.attestation.policies, (f) => readFileSync(f))) policies.set(name, p);
    const verifier = new Verifier({ policies, clock, nonceTtlMs: cfg.attestation.nonceTtl, records: enrollmentRecords(store), log: log.child({ module: 'attest' }), refuse: (ek, ak) => revocations.refuseEnrollment(ek, ak) });
    attestation = {
      verifier,
      ca: identity,
      policies,
      nonceTtlMs: cfg.attestation.nonceTtl,
      clock,
      audit,
      sink: audited,
      metrics,
      useJoinToken: (hash, policy) => store.useJoinToken(hash, policy, clock.now()),
    };
  }
  // What a start that fails from here on closes again, in reverse order of opening.
  const undoStart = async (): Promise<void> => {
    identity?.close();
    if (checkpointTimer) clearInterval(checkpointTimer);
    stopArchiving?.();
    await archiver.stop();
    await audited.close();
    await backends.closeAll();
    store.close();
  };
  let grpc: RunningServer;
  let serverTls: ServerTls;
  try {
    serverTls = readServerTls(cfg.tls);
    grpc = await startServer({
      listen: cfg.listen,
      tls: serverTls,
      roles: cfg.auth.roles,
      identity,
      builders: cfg.authorization.builders,
      daemonKeys: { identityCa: identity?.keyName ?? null, identity, audit: cfg.audit.key, trustRoot: TRUST_ROOT_KEY, trustRootMissing: () => rootPublisher.missingStatements() },
      auditLog: audited,
      attestation,
      revocation: { revocations, trustedRoot: rootPublisher },
      enrollments,
      archiver,
      clock,
      keys,
      lifecycle,
      log: log.child({ module: 'server' }),
      audit,
      metrics,
      limits: cfg.limits,
    });
  } catch (err) {
    await undoStart();
    throw err;
  }
  let metricsServer: Awaited<ReturnType<typeof serveMetrics>> | null = null;
  let metricsAddress: string | null = null;
  if (cfg.metrics) {
    const [mh, mp] = splitHostPort(cfg.metrics.listen);
    try {
      metricsServer = await serveMetrics(metrics, mh, mp, { crl: identity ? (caVersion) => revocations.crl(caVersion) : null, trustedRoot: () => rootPublisher.current(), rootKeys: () => rootPublisher.chainJson() });
    } catch (err) {
      // The metrics port taken, say: the gRPC server already listens and must not outlive the failed start.
      await grpc.stop();
      await undoStart();
      throw err;
    }
    metricsAddress = `${mh}:${metricsServer.port}`;
  }
  scheduler.start();
  const address = `${host}:${grpc.port}`;
  grpcAddress = address;
  revocations.start();
  rootPublisher.start();
  log.info({ address, metrics: metricsAddress, mode: cfg.mode, backends: backends.names() }, 'sigild serving');
  let stopping: Promise<void> | null = null;
  let running = cfg;
  let tlsNow = serverTls;
  let reloading: Promise<unknown> = Promise.resolve();
  const reloadOnce = async (): Promise<ReloadOutcome> => {
    const rlog = log.child({ module: 'config' });
    const file = opts.configFile;
    if (file === undefined) throw new SigilError('FAILED_PRECONDITION', 'this daemon was not started from a config file: nothing to reload');
    let bytes: Buffer;
    let outcome: ReloadOutcome;
    let next: Config | null = null;
    let nextPolicies: Map<string, AttestationPolicy> | null = null;
    try {
      bytes = readFileSync(file);
    } catch (err) {
      outcome = { result: 'invalid', applied: [], ignored: [], problems: [`cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? 'error'}`] };
      return finishReload(outcome, rlog, null);
    }
    const sha256 = createHash('sha256').update(bytes).digest('hex');
    try {
      next = parseConfig(bytes.toString('utf8'), file);
      if (next.attestation && running.attestation) nextPolicies = loadPolicies(next.attestation.policies, (f) => readFileSync(f));
    } catch (err) {
      const problems = err instanceof ConfigProblems ? err.problems : err instanceof PolicyProblems ? err.problems.map((p) => `attestation.policies.${p}`) : [isSigilError(err) ? err.message : 'cannot load the config'];
      return finishReload({ result: 'invalid', sha256, applied: [], ignored: [], problems }, rlog, null);
    }
    const plan = planReload(running, next);
    // What applying compiles is compiled here, before the audit entry says `ok`: applying cannot then fail half-way.
    try {
      new Authenticator(plan.effective.auth.roles);
      new BuilderPolicy(plan.effective.authorization.builders);
    } catch (err) {
      return finishReload({ result: 'invalid', sha256, applied: [], ignored: [], problems: [isSigilError(err) ? err.message : 'the role or builder patterns do not compile'] }, rlog, null);
    }
    // The TLS files, read again whatever their paths (a certificate renewed in place), and checked before anything applies.
    let nextTls: { cert: Buffer; key: Buffer; clientCa: Buffer };
    try {
      nextTls = readServerTls(next.tls);
    } catch (err) {
      return finishReload({ result: 'invalid', sha256, applied: [], ignored: [], problems: [isSigilError(err) ? err.message : 'the tls files cannot be used'] }, rlog, null);
    }
    const tlsChanged = (['cert', 'key', 'clientCa'] as const).filter((k) => !nextTls[k].equals(tlsNow[k]));
    // An EK CA bundle edited in place (same path) is new trust too: compare the certificates the files hold now.
    const caPrints = (p: AttestationPolicy): string => p.ekCas.map((c) => c.fingerprint256).join(',');
    const ekCasChanged = nextPolicies === null ? [] : [...nextPolicies].filter(([name, p]) => policies.has(name) && caPrints(policies.get(name)!) !== caPrints(p)).map(([name]) => name);
    const applied = [...plan.applied, ...ekCasChanged.map((name) => `attestation.policies.${name}.ekCaFiles`), ...tlsChanged.map((k) => TLS_KEYS[k])];
    outcome = { result: plan.ignored.length ? 'partial' : 'ok', sha256, applied, ignored: plan.ignored, problems: [] };
    return finishReload(outcome, rlog, () => {
      const e = plan.effective;
      if (tlsChanged.length > 0) {
        grpc.setTls(nextTls);
        tlsNow = nextTls;
      }
      // Compiled first (reconfigure throws before changing anything), then swapped without an await between.
      if (plan.applied.includes('auth.roles') || plan.applied.includes('authorization.builders')) grpc.reconfigure({ roles: e.auth.roles, builders: e.authorization.builders });
      if (nextPolicies !== null && (plan.applied.includes('attestation.policies') || ekCasChanged.length > 0)) {
        policies.clear();
        for (const [name, p] of nextPolicies) policies.set(name, p);
      }
      running = e;
    });
  };
  /** Audits the outcome first (fail closed: nothing applies unless its entry is durable), then applies, logs and counts it. */
  const finishReload = async (o: ReloadOutcome, rlog: Logger, apply: (() => void) | null): Promise<ReloadOutcome> => {
    try {
      await audited.record({
        who: 'sigild',
        act: 'config.reload',
        result: apply ? 'ok' : 'refused',
        ...(apply ? {} : { reason: 'CONFIG_INVALID' }),
        detail: { file: opts.configFile, sha256: o.sha256, applied: o.applied, ignored: o.ignored, ...(o.problems.length ? { problems: o.problems.slice(0, 100) } : {}) },
      });
    } catch (err) {
      rlog.error({ err, file: opts.configFile }, 'config reload not applied: the audit log refused its entry');
      metrics.configReloads.inc({ result: 'failed' });
      return { ...o, result: 'failed' };
    }
    if (apply) {
      try {
        apply();
      } catch (err) {
        // The schema admits only patterns that compile, so this is a bug; nothing was swapped.
        rlog.error({ err, file: opts.configFile }, 'config reload not applied: the new rules did not compile');
        metrics.configReloads.inc({ result: 'failed' });
        return { ...o, result: 'failed' };
      }
    }
    metrics.configReloads.inc({ result: o.result });
    const fields = { file: opts.configFile, sha256: o.sha256, applied: o.applied, ignored: o.ignored };
    if (o.result === 'invalid') rlog.error({ ...fields, problems: o.problems }, `config reload refused, nothing changed: ${o.problems.length} problem${o.problems.length === 1 ? '' : 's'}:\n  ${o.problems.join('\n  ')}`);
    else if (o.ignored.length) rlog.warn(fields, `config reloaded; not applied, restart sigild for: ${o.ignored.join(', ')}`);
    else rlog.info(fields, o.applied.length ? `config reloaded: ${o.applied.join(', ')}` : 'config reloaded: no change');
    return o;
  };
  return {
    address,
    metricsAddress,
    keys,
    lifecycle,
    scheduler,
    identity,
    revocations,
    audit: audited,
    reload: () => {
      const r = reloading.then(reloadOnce, reloadOnce);
      reloading = r.catch(() => undefined);
      return r;
    },
    stop: () =>
      (stopping ??= (async () => {
        try {
          await scheduler.stop();
          revocations.stop();
          await rootPublisher.stop();
          identity?.close();
          await grpc.stop();
          if (checkpointTimer) clearInterval(checkpointTimer);
          stopArchiving?.();
          // A segment half-way is finished (or fails) before the log closes under it.
          await archiver.stop();
          // A checkpoint over everything written: the next start verifies up to here without reading it all.
          if (audited.healthy) await audited.latestCheckpoint().catch((err: unknown) => log.warn({ err }, 'audit checkpoint at stop failed'));
          await audited.close();
          metricsServer?.server.close();
          await backends.closeAll();
          store.close();
          log.info('sigild stopped');
          log.flush();
        } finally {
          // Last, once the store and the log are closed; also when a step above failed.
          lock.release();
        }
      })()),
  };
}

/**
 * A backend that would not open at start, named with its type and, for PKCS#11, its token and PIN file (never
 * the PIN): the backend's own message does not say which of several it is, nor where its PIN comes from.
 */
function backendOpenFailure(cfg: Config, name: string, err: unknown): unknown {
  if (!isSigilError(err)) return err;
  const b = cfg.backends[name];
  if (!b) return err;
  const where = b.type === 'pkcs11' ? `, token ${JSON.stringify(b.token)}, pin file ${b.pinFile}` : '';
  const pinHint = b.type === 'pkcs11' && /PIN_INCORRECT|PIN_INVALID|PIN_LEN_RANGE|PIN_EXPIRED|PIN_LOCKED/.test(err.message) ? ` (the PIN is the whole of ${b.pinFile} less one trailing newline)` : '';
  return new SigilError(err.code, `backend ${name} (${b.type}${where}): ${err.message}${pinHint}`, { cause: err });
}

/**
 * A key sigil means to create at start (audit, identity CA, trusted root) already in the backend: the store in use
 * does not know the backend's objects, most often because it is not the store that made them.
 */
function keyExistsHint(cfg: Config, err: unknown): unknown {
  if (!isSigilError(err) || err.code !== 'KEY_EXISTS') return err;
  return new SigilError(
    err.code,
    `${err.message}, but the store ${cfg.store.sqlite.path} does not record it: point store.sqlite.path at the store that made the backend's keys, or give a new store a new token (docs/operations.md, "One daemon per store")`,
    { cause: err },
  );
}

/** The verifier's view of the store's enrollment table. */
function enrollmentRecords(store: Store): EnrollmentRecords {
  return {
    get: async (ekHash) => store.getEnrollment(ekHash) ?? undefined,
    put: async (rec) => store.putEnrollment(rec),
    update: async (rec, judged) => store.updateEnrollment(rec, judged),
  };
}

/**
 * Opens the audit log, creating its checkpoint key on first start (Ed25519 where the backend offers it,
 * else ECDSA P-256) through the key service; the key's creation is the first thing the log records.
 */
async function openAuditLog(cfg: Config, keys: KeyService, backends: BackendRegistry, clock: Clock, log: Logger): Promise<AuditLog> {
  const name = cfg.audit.key;
  let created: string | null = null;
  try {
    keys.getKey(name);
  } catch (err) {
    if (!isSigilError(err, 'KEY_NOT_FOUND')) throw err;
    const bname = cfg.audit.backend ?? cfg.defaultBackend;
    const backend = await backends.get(bname);
    const alg = backend.algorithms.includes('ED25519') ? 'ED25519' : 'ECDSA_P256_SHA256';
    const k = await keys.createKey(name, alg, bname);
    created = `${k.name}@1 ${k.algorithm} ${k.backend}`;
  }
  const origin = auditOriginOf(cfg);
  const auditLog = AuditLog.open({
    path: auditPathOf(cfg),
    origin,
    clock,
    log: log.child({ module: 'audit' }),
    key: auditKeyOf(keys, name),
    fullCheckAtStartMax: cfg.audit.fullCheckAtStartMax,
  });
  if (created !== null) {
    const [kv, algorithm, backend] = created.split(' ');
    await auditLog.record({ who: 'sigild', act: 'key.create', key: kv, result: 'ok', detail: { algorithm, backend, purpose: 'audit checkpoints' } });
  }
  log.info({ origin, size: auditLog.size, key: name }, 'audit log open');
  return auditLog;
}
