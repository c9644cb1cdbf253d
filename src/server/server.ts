import { status as Status, type Server, type ServiceDefinition, type UntypedServiceImplementation, type ServerDuplexStream } from '@grpc/grpc-js';
import { HealthImplementation } from 'grpc-health-check';
import { ReflectionService } from '@grpc/reflection';
import { loadSync } from '@grpc/proto-loader';
import { fileURLToPath } from 'node:url';
import { BuilderPolicy } from '../identity/builder-policy.ts';
import { SignerService } from '../gen/sigil/v1/signer.ts';
import { AdminService } from '../gen/sigil/v1/admin.ts';
import { AttestationService } from '../gen/sigil/v1/attestation.ts';
import { AuditService } from '../gen/sigil/v1/audit.ts';
import { auditService } from './audit-service.ts';
import type { AuditLog } from '../audit/audit-log.ts';
import { attestationService, type AttestationDeps } from './attestation-service.ts';
import { RevocationService } from '../gen/sigil/v1/revocation.ts';
import { revocationService, type RevocationDeps } from './revocation-service.ts';
import { SigilError } from '../errors.ts';
import type { Logger } from '../log.ts';
import type { KeyService } from '../keys/key-service.ts';
import type { KeyLifecycle } from '../keys/lifecycle.ts';
import type { Enrollments } from '../attest/enrollments.ts';
import type { OnlineArchiver } from '../store/audit-archive.ts';
import { Authenticator, type BuilderCas, type OperatorRole } from './auth.ts';
import type { Clock } from '../clock.ts';
import type { BuilderRule } from '../identity/builder-policy.ts';
import { Metrics } from './metrics.ts';
import { signerService } from './signer-service.ts';
import { adminService, type DaemonKeys } from './admin-service.ts';
import { GrpcH2Server } from './h2/server.ts';
import { splitHostPort } from '../config/host-port.ts';
import { toServiceError, toWireError } from './status.ts';
import { recordRefusal, type RpcContext } from './rpc.ts';

const PROTO_DIR = fileURLToPath(new URL('../../proto', import.meta.url));

/** Everything the gRPC server needs. */
export interface ServerOptions {
  listen: string;
  tls: { cert: Buffer; key: Buffer; clientCa: Buffer };
  roles: Record<OperatorRole, string[]>;
  /**
   * The identity CA's generations: the live ones are trusted for client certificates (which get the builder
   * role only), and the trust store follows every change without a restart.
   */
  identity?: IdentityTrust | null;
  /** Which builders may use which keys. */
  builders?: readonly BuilderRule[];
  /** The daemon's own keys: no RPC signs with them, and the admin API changes only the audit key (by rotation). */
  daemonKeys?: DaemonKeys | null;
  clock?: Clock;
  /** TPM enrollment of builders, when attestation is configured. */
  attestation?: AttestationDeps | null;
  /** Revocation acts, revoked-builder checks on every call, CRL and trusted root. */
  revocation?: RevocationDeps | null;
  /** The builder enrollment records the Admin service lists and forgets; without them those RPCs are UNIMPLEMENTED. */
  enrollments?: Enrollments | null;
  /** Archives old audit entries for the Admin service (`ArchiveAuditLog`); without it that RPC is UNIMPLEMENTED. */
  archiver?: OnlineArchiver | null;
  keys: KeyService;
  /** Rotation, retirement, policy and approvals (the Admin service's lifecycle RPCs). */
  lifecycle: KeyLifecycle;
  log: Logger;
  audit: Logger;
  /** The audit log: the sink of every act and the data of the Audit service. */
  auditLog: AuditLog;
  metrics: Metrics;
  limits: { maxMessageBytes: number; maxBatch: number };
}

/** The identity CA as the server needs it; IdentityCa is one. */
export interface IdentityTrust extends BuilderCas {
  /** The CA certificates of the live generations, PEM. */
  livePem(): string;
  /** Calls `fn` whenever the live generations may have changed; returns how to stop. */
  onChange(fn: () => void): () => void;
}

/** A running gRPC server. */
export interface RunningServer {
  server: GrpcH2Server;
  port: number;
  health: HealthImplementation;
  /** Stops accepting calls, lets running ones finish for up to `graceMs`, then cuts them. */
  stop(graceMs?: number): Promise<void>;
  /**
   * Replaces the role map and the builder rules (a config reload); the next call on any connection uses them,
   * calls in flight finish under the old ones. Compiles both first: a bad pattern throws and changes nothing.
   */
  reconfigure(access: { roles: Record<OperatorRole, string[]>; builders: readonly BuilderRule[] }): void;
  /**
   * Replaces the server certificate, its key and the operator client-CA bundle (a config reload): handshakes from
   * now on use them. When the client-CA bundle changed, open connections are asked to close and cut 5 s later
   * (streams included), so every client is judged again by the new bundle at its next handshake. Throws, changing nothing, on a key that does not
   * match its certificate or a PEM that does not parse.
   */
  setTls(tls: { cert: Buffer; key: Buffer; clientCa: Buffer }): void;
}

/** How long calls in flight may run on after the operator CA bundle changed before their connection is cut. */
const CA_CHANGE_GRACE_MS = 5000;

/** Builds and binds sigild's gRPC server: Signer, Admin, health (open) and reflection (admin only). */
export async function startServer(o: ServerOptions): Promise<RunningServer> {
  const identity = o.identity ?? null;
  // One trust store for the operator CA and the live identity CA generations; which one signed a client
  // certificate is decided again in auth.
  let operatorCa = o.tls.clientCa;
  const clientCa = (): Buffer => (identity ? Buffer.concat([operatorCa, Buffer.from('\n'), Buffer.from(identity.livePem())]) : operatorCa);
  const server = new GrpcH2Server({
    cert: o.tls.cert,
    key: o.tls.key,
    clientCa: clientCa(),
    // Room for a whole Ed25519 message at the configured cap plus framing; sigil's own check answers first.
    maxReceiveMessageBytes: o.limits.maxMessageBytes + 1024 * 1024,
    maxSendMessageBytes: 16 * 1024 * 1024,
    onError: (err) => o.log.error({ err }, 'grpc server error'),
  });
  const revocations = o.revocation?.revocations;
  const stopFollowing = identity?.onChange(() => {
    try {
      server.setClientCa(clientCa());
      o.log.info({ live: identity.livePem().match(/BEGIN CERTIFICATE/g)?.length ?? 0 }, 'client ca bundle replaced: identity ca generations changed');
    } catch (err) {
      o.log.error({ err }, 'could not replace the client ca bundle');
    }
  });
  const auth = new Authenticator(o.roles, {
    identityCas: identity ?? undefined,
    clock: o.clock,
    revoked: revocations ? (p) => revocations.refuseBuilder({ serial: p.serial, ekHash: p.builder.ekHash, akName: p.builder.akName }) : undefined,
  });
  const ctx = { auth, metrics: o.metrics, log: o.log, audit: o.auditLog };
  const dk = o.daemonKeys ?? null;
  const reservedKeys = dk ? [dk.identityCa, dk.audit, dk.trustRoot].filter((k): k is string => k !== null) : [];
  const access = { builders: new BuilderPolicy(o.builders ?? []), reservedKeys };
  server.addService(SignerService, signerService(ctx, o.keys, o.limits, access) as unknown as UntypedServiceImplementation);
  server.addService(AdminService, adminService(ctx, o.keys, o.lifecycle, dk, o.enrollments ?? null, o.archiver ?? null) as unknown as UntypedServiceImplementation);
  server.addService(AuditService, auditService(ctx, o.auditLog) as unknown as UntypedServiceImplementation);
  if (o.attestation) server.addService(AttestationService, attestationService(ctx, o.attestation) as unknown as UntypedServiceImplementation);
  if (o.revocation) server.addService(RevocationService, revocationService(ctx, o.revocation) as unknown as UntypedServiceImplementation);

  const health = new HealthImplementation({
    '': 'SERVING',
    'sigil.v1.Signer': 'SERVING',
    'sigil.v1.Admin': 'SERVING',
    'sigil.v1.Audit': 'SERVING',
    ...(o.attestation ? { 'sigil.v1.Attestation': 'SERVING' } : {}),
    ...(o.revocation ? { 'sigil.v1.Revocation': 'SERVING' } : {}),
  });
  // HealthImplementation only calls addService, which GrpcH2Server provides with grpc-js's signature.
  health.addToServer(server as unknown as Server);

  const pkg = loadSync(['sigil/v1/signer.proto', 'sigil/v1/admin.proto', 'sigil/v1/audit.proto', ...(o.attestation ? ['sigil/v1/attestation.proto'] : []), ...(o.revocation ? ['sigil/v1/revocation.proto'] : [])], { includeDirs: [PROTO_DIR] });
  new ReflectionService(pkg).addToServer({
    addService: (def: ServiceDefinition, impl: UntypedServiceImplementation) => server.addService(def, adminOnlyStreams(impl, ctx)),
  });

  const [host, wanted] = splitHostPort(o.listen);
  let port: number;
  try {
    port = await server.bind(host, wanted);
  } catch (err) {
    throw new SigilError('FAILED_PRECONDITION', `cannot listen on ${o.listen}: ${(err as Error).message}`, { cause: err });
  }

  return {
    server,
    port,
    health,
    setTls: (tls) => {
      const caChanged = !tls.clientCa.equals(operatorCa);
      const before = operatorCa;
      operatorCa = tls.clientCa;
      try {
        server.setTls({ cert: tls.cert, key: tls.key, clientCa: clientCa() });
      } catch (err) {
        operatorCa = before;
        throw err;
      }
      // A connection's client certificate was judged by the bundle of its handshake: a CA taken out must not stay
      // trusted, on a long-lived SignStream either. Calls in flight get a few seconds; then the connection is cut.
      if (caChanged) server.closeSessions(CA_CHANGE_GRACE_MS);
    },
    reconfigure: (next) => {
      const builders = new BuilderPolicy(next.builders);
      auth.setRoles(next.roles);
      access.builders = builders;
    },
    stop: (graceMs = 5000) =>
      new Promise<void>((resolve) => {
        stopFollowing?.();
        health.setStatus('', 'NOT_SERVING');
        const timer = setTimeout(() => server.forceShutdown(), graceMs);
        server.tryShutdown(() => {
          clearTimeout(timer);
          resolve();
        });
      }),
  };
}

/** Wraps the reflection service's bidi handlers so only admins may call them. */
function adminOnlyStreams(impl: UntypedServiceImplementation, ctx: RpcContext): UntypedServiceImplementation {
  const out: UntypedServiceImplementation = {};
  for (const [name, handler] of Object.entries(impl)) {
    out[name] = ((call: ServerDuplexStream<unknown, unknown>) => {
      try {
        ctx.auth.require(call, ['admin']);
      } catch (err) {
        void recordRefusal(ctx, call, `reflection.${name}`, err).then((e) => call.emit('error', toServiceError(toWireError(e, ctx.log, `reflection.${name}`))));
        return;
      }
      (handler as (c: typeof call) => void)(call);
    }) as UntypedServiceImplementation[string];
  }
  return out;
}

export { Status };
