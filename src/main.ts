import { readFileSync } from 'node:fs';
import type { Config } from './config/schema.ts';
import { createLogger, auditChannel, type Logger } from './log.ts';
import { SqliteStore } from './store/sqlite.ts';
import { BackendRegistry } from './signers/registry.ts';
import { KeyService } from './keys/key-service.ts';
import { KeyLifecycle } from './keys/lifecycle.ts';
import { KeyScheduler } from './keys/scheduler.ts';
import { loggingSink } from './audit/audit-sink.ts';
import { startServer, type RunningServer } from './server/server.ts';
import type { AttestationDeps } from './server/attestation-service.ts';
import { Metrics, serveMetrics } from './server/metrics.ts';
import { systemClock, type Clock } from './clock.ts';
import { splitHostPort } from './config/host-port.ts';
import { IdentityCa } from './identity/identity-ca.ts';
import { Verifier } from './attest/verifier.ts';
import { loadPolicies } from './attest/policy.ts';
import type { EnrollmentRecords } from './attest/enrollment-records.ts';
import type { Store } from './store/store.ts';

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
  stop(): Promise<void>;
}

/** Composition root: config -> store -> backends -> key service -> servers. */
export async function startDaemon(cfg: Config, opts: { log?: Logger; clock?: Clock } = {}): Promise<Daemon> {
  const log = opts.log ?? createLogger({ level: cfg.log.level });
  const audit = auditChannel(log);
  const production = cfg.mode === 'production';
  const store = new SqliteStore(cfg.store.sqlite.path);
  const backends = new BackendRegistry(cfg.backends, { log, production });
  const clock = opts.clock ?? systemClock;
  const keys = new KeyService({
    store,
    backends,
    defaultBackend: cfg.defaultBackend,
    maxMessageBytes: cfg.limits.maxMessageBytes,
    log: log.child({ module: 'keys' }),
    clock,
  });
  // Until the audit log lands, admin acts go to the audit channel (see src/audit/audit-sink.ts).
  const auditSink = loggingSink(audit);
  const lifecycle = new KeyLifecycle({
    store,
    backends,
    keys,
    audit: auditSink,
    clock,
    log: log.child({ module: 'lifecycle' }),
    minDestroyWindowMs: cfg.keys.minDestroyWindow,
    defaultDestroyWindowMs: cfg.keys.defaultDestroyWindow,
    approvalTtlMs: cfg.keys.approvalTtl,
  });
  const scheduler = new KeyScheduler({ store, lifecycle, clock, log: log.child({ module: 'scheduler' }), intervalMs: cfg.keys.schedulerInterval });
  let identity: IdentityCa | null = null;
  try {
    // Open the default backend now: a wrong PIN or missing token should stop the start, not the first request.
    await backends.get(cfg.defaultBackend);
    // Resolve what a crash left half-done (PENDING and DESTROYING versions) before anyone can sign.
    await lifecycle.recover();
    if (cfg.identity) {
      identity = await IdentityCa.open({
        keys,
        store,
        clock,
        log: log.child({ module: 'identity' }),
        audit,
        trustDomain: cfg.identity.trustDomain,
        caKey: cfg.identity.caKey,
        algorithm: cfg.identity.algorithm,
        backend: cfg.identity.backend,
        lifetimeMs: cfg.identity.lifetime,
        maxLifetimeMs: cfg.identity.maxLifetime,
      });
    }
  } catch (err) {
    await backends.closeAll();
    store.close();
    throw err;
  }
  const metrics = new Metrics();
  const [host] = splitHostPort(cfg.listen);
  let attestation: AttestationDeps | null = null;
  if (cfg.attestation && identity) {
    const policies = loadPolicies(cfg.attestation.policies, (f) => readFileSync(f));
    const verifier = new Verifier({ policies, clock, nonceTtlMs: cfg.attestation.nonceTtl, records: enrollmentRecords(store), log: log.child({ module: 'attest' }) });
    attestation = {
      verifier,
      ca: identity,
      policies,
      nonceTtlMs: cfg.attestation.nonceTtl,
      clock,
      audit,
      metrics,
      useJoinToken: (hash, policy) => store.useJoinToken(hash, policy, clock.now()),
    };
  }
  let grpc: RunningServer;
  try {
    grpc = await startServer({
      listen: cfg.listen,
      tls: { cert: readFileSync(cfg.tls.certFile), key: readFileSync(cfg.tls.keyFile), clientCa: readFileSync(cfg.tls.clientCaFile) },
      roles: cfg.auth.roles,
      identityCaPem: identity?.caCertificatePem() ?? null,
      builders: cfg.authorization.builders,
      reservedKeys: identity ? [identity.keyName] : [],
      attestation,
      clock,
      keys,
      lifecycle,
      auditSink,
      log: log.child({ module: 'server' }),
      audit,
      metrics,
      limits: cfg.limits,
    });
  } catch (err) {
    await backends.closeAll();
    store.close();
    throw err;
  }
  let metricsServer: Awaited<ReturnType<typeof serveMetrics>> | null = null;
  let metricsAddress: string | null = null;
  if (cfg.metrics) {
    const [mh, mp] = splitHostPort(cfg.metrics.listen);
    metricsServer = await serveMetrics(metrics, mh, mp);
    metricsAddress = `${mh}:${metricsServer.port}`;
  }
  scheduler.start();
  const address = `${host}:${grpc.port}`;
  log.info({ address, metrics: metricsAddress, mode: cfg.mode, backends: backends.names() }, 'sigild serving');
  let stopping: Promise<void> | null = null;
  return {
    address,
    metricsAddress,
    keys,
    lifecycle,
    scheduler,
    identity,
    stop: () =>
      (stopping ??= (async () => {
        await scheduler.stop();
        await grpc.stop();
        metricsServer?.server.close();
        await backends.closeAll();
        store.close();
        log.info('sigild stopped');
        log.flush();
      })()),
  };
}

/** The verifier's view of the store's enrollment table. */
function enrollmentRecords(store: Store): EnrollmentRecords {
  return {
    get: async (ekHash) => store.getEnrollment(ekHash) ?? undefined,
    put: async (rec) => store.putEnrollment(rec),
  };
}
