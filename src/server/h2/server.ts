import { createSecureServer, type Http2SecureServer, type IncomingHttpHeaders, type ServerHttp2Session, type ServerHttp2Stream } from 'node:http2';
import type { AddressInfo } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { X509Certificate } from 'node:crypto';
import { status as Status, type MethodDefinition, type ServiceDefinition, type UntypedServiceImplementation } from '@grpc/grpc-js';
import { parseTimeout } from './frames.ts';
import { sendTrailersOnly, StreamCall, UnaryCall, type CallOptions } from './call.ts';

/** TLS material and limits of a GrpcH2Server. */
export interface H2ServerOptions {
  cert: Buffer;
  key: Buffer;
  /** Client certificates are asked for, optional, and trusted only when they chain to a CA of this bundle. */
  clientCa: Buffer;
  maxReceiveMessageBytes: number;
  maxSendMessageBytes: number;
  maxConcurrentStreams?: number;
  /** Server-level errors after bind (none per call). */
  onError?: (err: Error) => void;
}

type AnyMethod = MethodDefinition<unknown, unknown>;
type Handler = UntypedServiceImplementation[string];

interface Route {
  method: AnyMethod;
  handler: Handler | undefined;
  unary: boolean;
}

const noop = (): void => {};

/**
 * A gRPC server on node:http2, a drop-in for the part of grpc-js's Server that sigil uses: addService,
 * bind, tryShutdown and forceShutdown. Mutual TLS is optional at the handshake; handlers check
 * `call.getAuthContext()`.
 */
export class GrpcH2Server {
  readonly #routes = new Map<string, Route>();
  readonly #server: Http2SecureServer;
  readonly #sessions = new Set<ServerHttp2Session>();
  readonly #limits: { maxReceiveBytes: number; maxSendBytes: number };
  readonly #onError: (err: Error) => void;
  #probe: X509Certificate;
  #tls: { cert: Buffer; key: Buffer };
  #closing = false;

  constructor(o: H2ServerOptions) {
    this.#limits = { maxReceiveBytes: o.maxReceiveMessageBytes, maxSendBytes: o.maxSendMessageBytes };
    this.#server = createSecureServer({
      cert: o.cert,
      key: o.key,
      ca: o.clientCa,
      requestCert: true,
      rejectUnauthorized: false,
      allowHTTP1: false,
      ALPNProtocols: ['h2'],
      // Outstanding frames per session, in MB; Node's default of 10 can reset busy sessions (grpc-js lifts it too).
      maxSessionMemory: 64,
      settings: { maxConcurrentStreams: o.maxConcurrentStreams ?? 1000 },
    });
    this.#probe = new X509Certificate(o.cert);
    this.#tls = { cert: o.cert, key: o.key };
    this.#server.on('session', (session: ServerHttp2Session) => {
      // A client certificate whose signature does not verify leaves an error on OpenSSL's per-thread queue,
      // and the next TLS write (of any session) takes it for its own and resets its stream (Node 24.21).
      // X509Certificate's methods clear that queue on return; this runs before any write of the tick.
      if (!(session.socket as TLSSocket).authorized) this.#probe.checkIssued(this.#probe);
      this.#sessions.add(session);
      session.once('close', () => this.#sessions.delete(session));
      if (this.#closing) session.close();
    });
    this.#server.on('stream', (stream: ServerHttp2Stream, headers: IncomingHttpHeaders) => this.#onStream(stream, headers));
    this.#onError = o.onError ?? noop;
  }

  /** Registers a service's methods; handlers are looked up by method name, then by `originalName`. */
  addService(def: ServiceDefinition, impl: UntypedServiceImplementation): void {
    for (const [name, m] of Object.entries(def) as Array<[string, AnyMethod]>) {
      if (this.#routes.has(m.path)) throw new Error(`method ${m.path} is already registered`);
      const handler: Handler | undefined = impl[name] ?? (m.originalName === undefined ? undefined : impl[m.originalName]);
      this.#routes.set(m.path, { method: m, handler, unary: !m.requestStream && !m.responseStream });
    }
  }

  /**
   * Replaces the bundle client certificates must chain to, without a restart: handshakes from now on use
   * it; sessions already open keep theirs (handlers check every call).
   */
  setClientCa(clientCa: Buffer): void {
    this.#server.setSecureContext({ cert: this.#tls.cert, key: this.#tls.key, ca: clientCa });
  }

  /**
   * Replaces the server's certificate and key and the client-CA bundle, without a restart: handshakes from
   * now on use them. Throws, changing nothing, when the key does not match the certificate or a PEM does not
   * parse. Sessions already open keep theirs until `closeSessions`.
   */
  setTls(tls: { cert: Buffer; key: Buffer; clientCa: Buffer }): void {
    const probe = new X509Certificate(tls.cert);
    this.#server.setSecureContext({ cert: tls.cert, key: tls.key, ca: tls.clientCa });
    this.#tls = { cert: tls.cert, key: tls.key };
    this.#probe = probe;
  }

  /**
   * Asks every open session to close (GOAWAY): calls in flight may finish within `graceMs`, then what is still
   * open is cut (a long-lived stream would otherwise keep the trust of its handshake for ever). Clients reconnect
   * with a new handshake.
   */
  closeSessions(graceMs: number): void {
    for (const s of [...this.#sessions]) {
      s.close();
      setTimeout(() => {
        if (!s.destroyed) s.destroy();
      }, graceMs).unref();
    }
  }

  /** Listens on host:port; resolves to the real port (useful with port 0). */
  bind(host: string, port: number): Promise<number> {
    return new Promise((resolve, reject) => {
      const failed = (err: Error): void => reject(err);
      this.#server.once('error', failed);
      this.#server.listen(port, host, () => {
        this.#server.off('error', failed);
        this.#server.on('error', this.#onError);
        resolve((this.#server.address() as AddressInfo).port);
      });
    });
  }

  /** Stops accepting connections, sends GOAWAY on every session, and calls back when running calls have finished. */
  tryShutdown(cb: (err?: Error) => void): void {
    this.#closing = true;
    this.#server.close(() => cb());
    for (const s of this.#sessions) s.close();
  }

  /** Cuts every session and its calls now (they see 'cancelled'). */
  forceShutdown(): void {
    this.#closing = true;
    if (this.#server.listening) this.#server.close();
    for (const s of this.#sessions) s.destroy();
  }

  #onStream(stream: ServerHttp2Stream, headers: IncomingHttpHeaders): void {
    // A reset by the peer surfaces as 'close' to the call; without a listener the 'error' would throw.
    stream.on('error', noop);
    const contentType = headers['content-type'];
    if (typeof contentType !== 'string' || !contentType.startsWith('application/grpc')) {
      stream.respond({ ':status': 415, 'content-type': 'text/plain' }, { endStream: true });
      return;
    }
    const path = headers[':path'] as string;
    const route = this.#routes.get(path);
    if (route?.handler === undefined) {
      sendTrailersOnly(stream, { code: Status.UNIMPLEMENTED, details: `unknown method ${path}` });
      return;
    }
    const o: CallOptions = { maxReceiveBytes: this.#limits.maxReceiveBytes, maxSendBytes: this.#limits.maxSendBytes, timeoutMs: parseTimeout(headers['grpc-timeout']) };
    if (route.unary) {
      new UnaryCall(stream, headers, route.method, route.handler as unknown as (c: UnaryCall, cb: (err: unknown, res?: unknown) => void) => void, o);
    } else {
      new StreamCall(stream, headers, route.method, route.handler as unknown as (c: StreamCall) => void, o).start();
    }
  }
}
