import { Server, status as Status, type ServiceDefinition, type UntypedServiceImplementation, type ServerDuplexStream } from '@grpc/grpc-js';
import { HealthImplementation } from 'grpc-health-check';
import { ReflectionService } from '@grpc/reflection';
import { loadSync } from '@grpc/proto-loader';
import { fileURLToPath } from 'node:url';
import { SignerService } from '../gen/sigil/v1/signer.ts';
import { AdminService } from '../gen/sigil/v1/admin.ts';
import { SigilError } from '../errors.ts';
import type { Logger } from '../log.ts';
import type { KeyService } from '../keys/key-service.ts';
import { Authenticator, type Role } from './auth.ts';
import { Metrics } from './metrics.ts';
import { signerService } from './signer-service.ts';
import { adminService } from './admin-service.ts';
import { serverCredentials } from './tls.ts';
import { toServiceError, toWireError } from './status.ts';

const PROTO_DIR = fileURLToPath(new URL('../../proto', import.meta.url));

/** Everything the gRPC server needs. */
export interface ServerOptions {
  listen: string;
  tls: { cert: Buffer; key: Buffer; clientCa: Buffer };
  roles: Record<Role, string[]>;
  keys: KeyService;
  log: Logger;
  audit: Logger;
  metrics: Metrics;
  limits: { maxMessageBytes: number; maxBatch: number };
}

/** A running gRPC server. */
export interface RunningServer {
  server: Server;
  port: number;
  health: HealthImplementation;
  /** Stops accepting calls, lets running ones finish for up to `graceMs`, then cuts them. */
  stop(graceMs?: number): Promise<void>;
}

/** Builds and binds sigild's gRPC server: Signer, Admin, health (open) and reflection (admin only). */
export async function startServer(o: ServerOptions): Promise<RunningServer> {
  const server = new Server({
    // Room for a whole Ed25519 message at the configured cap plus framing; sigil's own check answers first.
    'grpc.max_receive_message_length': o.limits.maxMessageBytes + 1024 * 1024,
    'grpc.max_send_message_length': 16 * 1024 * 1024,
    'grpc.keepalive_permit_without_calls': 1,
    // channelz keeps per-call bookkeeping nobody reads here; off saves CPU and garbage per request.
    'grpc.enable_channelz': 0,
  });
  const auth = new Authenticator(o.roles);
  const ctx = { auth, metrics: o.metrics, log: o.log };
  server.addService(SignerService, signerService(ctx, o.keys, o.limits) as unknown as UntypedServiceImplementation);
  server.addService(AdminService, adminService(ctx, o.keys, o.audit) as unknown as UntypedServiceImplementation);

  const health = new HealthImplementation({ '': 'SERVING', 'sigil.v1.Signer': 'SERVING', 'sigil.v1.Admin': 'SERVING' });
  health.addToServer(server);

  const pkg = loadSync(['sigil/v1/signer.proto', 'sigil/v1/admin.proto'], { includeDirs: [PROTO_DIR] });
  new ReflectionService(pkg).addToServer({
    addService: (def: ServiceDefinition, impl: UntypedServiceImplementation) => server.addService(def, adminOnlyStreams(impl, auth, o.log)),
  });

  const port = await new Promise<number>((resolve, reject) => {
    server.bindAsync(o.listen, serverCredentials(o.tls), (err, p) => {
      if (err) reject(new SigilError('FAILED_PRECONDITION', `cannot listen on ${o.listen}: ${err.message}`, { cause: err }));
      else resolve(p);
    });
  });

  return {
    server,
    port,
    health,
    stop: (graceMs = 5000) =>
      new Promise<void>((resolve) => {
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
function adminOnlyStreams(impl: UntypedServiceImplementation, auth: Authenticator, log: Logger): UntypedServiceImplementation {
  const out: UntypedServiceImplementation = {};
  for (const [name, handler] of Object.entries(impl)) {
    out[name] = ((call: ServerDuplexStream<unknown, unknown>) => {
      try {
        auth.require(call, ['admin']);
      } catch (err) {
        call.emit('error', toServiceError(toWireError(err, log, `reflection.${name}`)));
        return;
      }
      (handler as (c: typeof call) => void)(call);
    }) as UntypedServiceImplementation[string];
  }
  return out;
}

export { Status };
