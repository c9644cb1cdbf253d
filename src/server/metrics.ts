import { createServer, type Server as HttpServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { AuditLogStats, FullCheckStatus } from '../audit/audit-log.ts';
import type { BreakerState } from '../signers/resilience.ts';
import { isSigilError } from '../errors.ts';

/** sigild's Prometheus metrics: requests, errors by code, latency, in-flight, signatures per backend, backend breakers and the audit log. */
export class Metrics {
  readonly registry = new Registry();
  readonly requests = new Counter({ name: 'sigil_requests_total', help: 'RPCs handled, by method and status code', labelNames: ['rpc', 'code'], registers: [this.registry] });
  readonly latency = new Histogram({
    name: 'sigil_request_duration_seconds',
    help: 'RPC latency, by method',
    labelNames: ['rpc'],
    buckets: [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 5],
    registers: [this.registry],
  });
  readonly inFlight = new Gauge({ name: 'sigil_requests_in_flight', help: 'RPCs in progress, by method', labelNames: ['rpc'], registers: [this.registry] });
  readonly signatures = new Counter({
    name: 'sigil_signatures_total',
    help: 'Signatures made, by backend and algorithm',
    labelNames: ['backend', 'algorithm'],
    registers: [this.registry],
  });
  readonly backendLatency = new Histogram({
    name: 'sigil_backend_sign_duration_seconds',
    help: 'Time from a validated request to its signature, by backend (includes waiting for a session)',
    labelNames: ['backend'],
    buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.25, 1],
    registers: [this.registry],
  });
  readonly signErrors = new Counter({
    name: 'sigil_sign_errors_total',
    help: 'Signatures refused or failed, by sigil error reason',
    labelNames: ['reason'],
    registers: [this.registry],
  });
  readonly signatureMismatches = new Counter({
    name: 'sigil_backend_signature_mismatches_total',
    help: "Signatures a backend returned that did not verify under the key version's recorded public key, refused before they left it (tpm, awskms, gcpkms), by backend",
    labelNames: ['backend'],
    registers: [this.registry],
  });
  readonly enrollments = new Counter({
    name: 'sigil_enrollments_total',
    help: 'Enrollments and renewals, by kind (enroll, renew), policy and outcome (issued, or the refusal reason)',
    labelNames: ['kind', 'policy', 'outcome'],
    registers: [this.registry],
  });
  readonly configReloads = new Counter({
    name: 'sigil_config_reloads_total',
    help: 'Config reloads (SIGHUP), by result: ok (applied), partial (applied; some changes need a restart), invalid (refused, nothing changed), failed (not audited, nothing changed)',
    labelNames: ['result'],
    registers: [this.registry],
  });

  readonly auditCommit = new Histogram({
    name: 'sigil_audit_commit_seconds',
    help: 'Per batch of audit entries: from leaving the event loop to its durable commit, which every answer in the batch waits for',
    buckets: [0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1],
    registers: [this.registry],
  });
  readonly breaker = new Gauge({
    name: 'sigil_backend_breaker_state',
    help: "A backend's circuit breaker: 1 for its current state (closed, open, half-open), 0 for the other two",
    labelNames: ['backend', 'state'],
    registers: [this.registry],
  });

  constructor() {
    collectDefaultMetrics({ register: this.registry, prefix: 'sigil_' });
  }

  /** Records a backend's breaker state (called when the backend opens, and on every change). */
  breakerState(backend: string, state: BreakerState): void {
    for (const s of BREAKER_STATES) this.breaker.set({ backend, state: s }, s === state ? 1 : 0);
  }

  /** Exposes the audit log: entries and failed writes (read when scraped), health, its full check, and commit time per batch. */
  watchAudit(log: {
    readonly stats: AuditLogStats;
    readonly healthy: boolean;
    readonly fullCheck: Readonly<FullCheckStatus>;
    onCommit: ((seconds: number, entries: number) => void) | null;
  }): void {
    const registers = [this.registry];
    new Counter({
      name: 'sigil_audit_entries_total',
      help: 'Audit entries made durable',
      registers,
      collect() {
        this.reset();
        this.inc(log.stats.entries);
      },
    });
    new Counter({
      name: 'sigil_audit_write_failures_total',
      help: 'Audit batches whose write failed (their acts were refused)',
      registers,
      collect() {
        this.reset();
        this.inc(log.stats.failures);
      },
    });
    new Gauge({
      name: 'sigil_audit_log_up',
      help: '1 while the audit log takes entries, 0 while it refuses acts after a failed write or once found tampered (fail closed)',
      registers,
      collect() {
        this.set(log.healthy ? 1 : 0);
      },
    });
    new Gauge({
      name: 'sigil_audit_verified_entries',
      help: 'Entries the full check of the audit log has verified (at start, or in the background after a fast start)',
      registers,
      collect() {
        this.set(log.fullCheck.verified);
      },
    });
    new Gauge({
      name: 'sigil_audit_full_check_target_entries',
      help: 'The tree size the full check verifies up to: the size at start, or the latest checkpoint after a fast start',
      registers,
      collect() {
        this.set(log.fullCheck.size);
      },
    });
    new Gauge({
      name: 'sigil_audit_full_check_seconds',
      help: 'How long the full check of the audit log took, once it ended (0 while it runs)',
      registers,
      collect() {
        this.set(log.fullCheck.seconds ?? 0);
      },
    });
    new Gauge({
      name: 'sigil_audit_full_check_state',
      help: 'The full check of the audit log: 1 for its state (running, clean, tampered, error, stopped), 0 for the others',
      labelNames: ['state'],
      registers,
      collect() {
        for (const s of FULL_CHECK_STATES) this.set({ state: s }, s === log.fullCheck.state ? 1 : 0);
      },
    });
    const commit = this.auditCommit;
    log.onCommit = (seconds) => commit.observe(seconds);
  }
}

const BREAKER_STATES: readonly BreakerState[] = ['closed', 'open', 'half-open'];
const FULL_CHECK_STATES: ReadonlyArray<FullCheckStatus['state']> = ['running', 'clean', 'tampered', 'error', 'stopped'];

/** Public documents the metrics port serves by plain HTTP GET. */
export interface PublicDocuments {
  /** The CRL of an identity CA generation (default the current one), or null when there is no identity CA. */
  crl: ((caVersion?: number) => Promise<{ der: Buffer; pem: string }>) | null;
  /** The signed trusted root, or null when there is none. */
  trustedRoot: (() => Promise<{ json: Buffer; signature: Buffer; sigstore: { json: Buffer; signature: Buffer } }>) | null;
  /** The chain of trusted-root keys (transition statements and compromised versions) as JSON, or null when there is none. */
  rootKeys?: (() => Buffer) | null;
}

// Path -> content type and body of a public document; `version` is the query's `?version=N` (CRLs only).
const DOCUMENTS: Readonly<Record<string, { type: string; body: (d: PublicDocuments, version?: number) => Promise<Buffer | string> | null }>> = {
  '/crl': { type: 'application/pkix-crl', body: (d, v) => d.crl?.(v).then((c) => c.der) ?? null },
  '/crl.pem': { type: 'application/x-pem-file', body: (d, v) => d.crl?.(v).then((c) => c.pem) ?? null },
  '/trusted-root.json': { type: 'application/json', body: (d) => d.trustedRoot?.().then((r) => r.json) ?? null },
  '/trusted-root.json.sig': { type: 'application/octet-stream', body: (d) => d.trustedRoot?.().then((r) => r.signature) ?? null },
  '/trusted-root.sigstore.json': { type: 'application/json', body: (d) => d.trustedRoot?.().then((r) => r.sigstore.json) ?? null },
  '/trusted-root.sigstore.json.sig': { type: 'application/octet-stream', body: (d) => d.trustedRoot?.().then((r) => r.sigstore.signature) ?? null },
  '/trusted-root-keys.json': { type: 'application/json', body: (d) => (d.rootKeys ? Promise.resolve().then(() => d.rootKeys!()) : null) },
};

/**
 * A plain HTTP endpoint serving `/metrics` and the public documents: `/crl`, `/crl.pem` (the current identity
 * CA generation's; `?version=N` for generation N while it is live), `/trusted-root.json(.sig)`,
 * `/trusted-root.sigstore.json(.sig)` (Sigstore's fields only), `/trusted-root-keys.json` (the chain of
 * trusted-root keys).
 */
export async function serveMetrics(metrics: Metrics, host: string, port: number, docs: PublicDocuments = { crl: null, trustedRoot: null }): Promise<{ server: HttpServer; port: number }> {
  const server = createServer((req, res) => {
    const { path, version } = documentPath(req.url);
    const doc = req.method === 'GET' && path !== null && Object.hasOwn(DOCUMENTS, path) ? DOCUMENTS[path]! : null;
    if (doc && version === null) {
      res.writeHead(400, { 'content-type': 'text/plain' }).end('version must be a ca key version number\n');
      return;
    }
    const body = doc?.body(docs, version ?? undefined) ?? null;
    if (doc && body) {
      body.then(
        (b) => {
          res.writeHead(200, { 'content-type': doc.type, 'cache-control': 'no-cache' });
          res.end(b);
        },
        (err: unknown) => {
          // A generation that does not exist or is no longer live has no CRL to serve.
          if (isSigilError(err, 'KEY_NOT_FOUND') || isSigilError(err, 'FAILED_PRECONDITION')) res.writeHead(404, { 'content-type': 'text/plain' }).end('no such crl\n');
          else res.writeHead(503, { 'content-type': 'text/plain' }).end('unavailable\n');
        },
      );
      return;
    }
    if (req.method === 'GET' && req.url === '/metrics') {
      metrics.registry.metrics().then(
        (body) => {
          res.writeHead(200, { 'content-type': metrics.registry.contentType });
          res.end(body);
        },
        () => {
          res.writeHead(500).end();
        },
      );
      return;
    }
    res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  return { server, port: (server.address() as AddressInfo).port };
}

/** A request URL's path and its `version` query (undefined when absent, null when not a version number); only CRLs take one. */
function documentPath(url: string | undefined): { path: string | null; version: number | null | undefined } {
  if (url === undefined) return { path: null, version: undefined };
  const q = url.indexOf('?');
  if (q < 0) return { path: url, version: undefined };
  const path = url.slice(0, q);
  if (path !== '/crl' && path !== '/crl.pem') return { path: null, version: undefined };
  const params = new URLSearchParams(url.slice(q + 1));
  const v = params.get('version');
  if (v === null || [...params.keys()].length !== 1) return { path, version: null };
  return { path, version: /^[1-9][0-9]{0,8}$/.test(v) ? Number(v) : null };
}
