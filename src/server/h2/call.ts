import { EventEmitter } from 'node:events';
import type { Http2Session, IncomingHttpHeaders, ServerHttp2Stream } from 'node:http2';
import type { PeerCertificate, TLSSocket } from 'node:tls';
import { Metadata, status as Status, type MethodDefinition } from '@grpc/grpc-js';
import { encodeFrame, FrameDecoder, percentEncode, type CallStatus } from './frames.ts';
import { encodeStatusDetails, ERROR_DOMAIN, STATUS_DETAILS_HEADER, type ErrorInfo } from '../../status-details.ts';

/** What handlers see of the transport: the verified client certificate, if any (the grpc-js shape). */
export interface AuthContext {
  transportSecurityType?: string;
  sslPeerCertificate?: PeerCertificate;
  /** Why a presented client certificate was not trusted, as OpenSSL's verify code (`CERT_HAS_EXPIRED`). */
  authorizationError?: string;
}

/** Per-call settings from the server and the request headers. */
export interface CallOptions {
  maxReceiveBytes: number;
  maxSendBytes: number;
  /** From grpc-timeout, in milliseconds. */
  timeoutMs: number | undefined;
}

type AnyMethod = MethodDefinition<unknown, unknown>;
type Callback = (err: unknown, res?: unknown) => void;

const RESPONSE_HEADERS = { ':status': 200, 'content-type': 'application/grpc', 'grpc-accept-encoding': 'identity' };
const OK_TRAILERS = { 'grpc-status': '0' };
// `sendDate` is honoured by Node's respond() though missing from its types; gRPC has no use for a date header.
const RESPOND_WITH_TRAILERS = { waitForTrailers: true, sendDate: false };
const RESPOND_AND_END = { endStream: true, sendDate: false };
const CANCELLED: CallStatus = { code: Status.CANCELLED, details: 'cancelled' };
const DEADLINE: CallStatus = { code: Status.DEADLINE_EXCEEDED, details: 'deadline exceeded' };

// The auth context of each session, built on first use: a session's peer certificate cannot change
// (Node's http2 disables TLS renegotiation), and getPeerCertificate() builds a fresh object every time.
const authContexts = new WeakMap<Http2Session, AuthContext>();
const NO_PEER: AuthContext = Object.freeze({ transportSecurityType: 'ssl' });

/**
 * The auth context of a session: the peer certificate only when it chained to a trusted CA (the socket
 * is `authorized`), so an untrusted or missing certificate looks like none, as in grpc-js; a presented
 * but refused certificate leaves its reason in `authorizationError`.
 */
export function authContextOf(session: Http2Session | undefined): AuthContext {
  if (session === undefined) return NO_PEER;
  let ctx = authContexts.get(session);
  if (ctx === undefined) {
    ctx = buildAuthContext(session.socket as TLSSocket);
    authContexts.set(session, ctx);
  }
  return ctx;
}

function buildAuthContext(socket: TLSSocket): AuthContext {
  if (socket.authorized) return Object.freeze({ transportSecurityType: 'ssl', sslPeerCertificate: socket.getPeerCertificate() });
  // Without a certificate Node still sets a verify error; only a presented certificate has a reason worth telling.
  const presented = Object.keys(socket.getPeerCertificate()).length > 0;
  const why = socket.authorizationError as unknown;
  if (!presented || why === undefined || why === null) return NO_PEER;
  const code = typeof why === 'string' ? why : ((why as { code?: string }).code ?? String((why as Error).message ?? why));
  return Object.freeze({ transportSecurityType: 'ssl', authorizationError: code });
}

/**
 * The trailers of a status. An error also carries grpc-status-details-bin, a google.rpc.Status with the same
 * code and message and one ErrorInfo (the gRPC convention grpc-js, grpc-go and Google's API clients read);
 * a status the transport raised itself (deadline, framing, unknown method) has its code's name as reason.
 */
export function statusTrailers(s: CallStatus): Record<string, string> {
  if (s.code === Status.OK) return { 'grpc-status': '0', 'grpc-message': percentEncode(s.details) };
  const info: ErrorInfo = s.info ?? { reason: Status[s.code] ?? 'UNKNOWN', domain: ERROR_DOMAIN, metadata: {} };
  const bin = encodeStatusDetails({ code: s.code, message: s.details, info }).toString('base64');
  // Binary header values go unpadded (gRPC over HTTP/2, "Custom-Metadata").
  return { 'grpc-status': String(s.code), 'grpc-message': percentEncode(s.details), [STATUS_DETAILS_HEADER]: bin.replace(/=+$/, '') };
}

/** Answers a call with a status and nothing else: a Trailers-Only response, or trailers after sent headers. */
export function sendTrailersOnly(stream: ServerHttp2Stream, s: CallStatus): void {
  if (stream.destroyed || stream.closed || stream.headersSent) return;
  stream.respond({ ...RESPONSE_HEADERS, ...statusTrailers(s) }, RESPOND_AND_END);
}

function sendOkTrailers(this: ServerHttp2Stream): void {
  this.sendTrailers(OK_TRAILERS);
}

/**
 * The status a handler's error stands for: `{code, details, errorInfo?}`, an Error with a numeric code, or
 * anything else as UNKNOWN. `errorInfo` (sigil's services set it) becomes the ErrorInfo of the status.
 */
export function statusOf(err: unknown): CallStatus {
  const e = err as { code?: unknown; details?: unknown; message?: unknown; errorInfo?: Partial<ErrorInfo> } | null | undefined;
  const code = typeof e?.code === 'number' && Number.isInteger(e.code) && e.code >= 0 && e.code <= 16 ? (e.code as Status) : Status.UNKNOWN;
  const details = typeof e?.details === 'string' ? e.details : typeof e?.message === 'string' ? e.message : 'unknown error';
  const i = e?.errorInfo;
  if (typeof i?.reason !== 'string' || typeof i.domain !== 'string' || typeof i.metadata !== 'object' || i.metadata === null) return { code, details };
  return { code, details, info: { reason: i.reason, domain: i.domain, metadata: i.metadata } };
}

function serialize(method: AnyMethod, res: unknown, max: number): Buffer | CallStatus {
  let body: Buffer;
  try {
    body = method.responseSerialize(res);
  } catch {
    return { code: Status.INTERNAL, details: 'error serializing response' };
  }
  if (body.length > max) return { code: Status.RESOURCE_EXHAUSTED, details: `sent message larger than max (${body.length} vs. ${max})` };
  return encodeFrame(body);
}

/** What unary and streaming calls share: the stream, its request headers and method, and the grpc-js accessors. */
abstract class CallBase extends EventEmitter {
  request: unknown = undefined;
  cancelled = false;
  protected readonly stream: ServerHttp2Stream;
  protected readonly session: Http2Session | undefined;
  protected readonly headers: IncomingHttpHeaders;
  protected readonly method: AnyMethod;
  protected readonly maxSend: number;
  #metadata: Metadata | undefined = undefined;

  constructor(stream: ServerHttp2Stream, headers: IncomingHttpHeaders, method: AnyMethod, maxSend: number) {
    super();
    this.stream = stream;
    this.session = stream.session;
    this.headers = headers;
    this.method = method;
    this.maxSend = maxSend;
  }

  /** The request headers as grpc-js Metadata, built on first use. */
  get metadata(): Metadata {
    return (this.#metadata ??= Metadata.fromHttp2Headers(this.headers));
  }

  /** The verified client certificate, if any; one object per connection. */
  getAuthContext(): AuthContext {
    return authContextOf(this.session);
  }

  /** The method's path, `/package.Service/Method`. */
  getPath(): string {
    return this.method.path;
  }
}

const READING = 0;
const HANDLING = 1;
const DONE = 2;

/**
 * A unary call, shaped like grpc-js's ServerUnaryCall: `request`, `metadata`, `cancelled`, a
 * 'cancelled' event and `getAuthContext()`. The handler runs once the request is complete.
 */
export class UnaryCall extends CallBase {
  readonly #handler: (call: UnaryCall, cb: Callback) => void;
  readonly #decoder: FrameDecoder;
  #msg: Buffer | undefined = undefined;
  #count = 0;
  #state = READING;
  #timer: NodeJS.Timeout | undefined = undefined;

  constructor(stream: ServerHttp2Stream, headers: IncomingHttpHeaders, method: AnyMethod, handler: (call: UnaryCall, cb: Callback) => void, o: CallOptions) {
    super(stream, headers, method, o.maxSendBytes);
    this.#handler = handler;
    this.#decoder = new FrameDecoder(o.maxReceiveBytes, headers['grpc-encoding'] as string | undefined, (msg) => {
      if (++this.#count === 1) this.#msg = msg;
    });
    stream.on('data', (chunk: Buffer) => this.#onData(chunk));
    stream.on('end', () => this.#onEnd());
    stream.on('close', () => this.#onClose());
    if (o.timeoutMs !== undefined) this.#timer = setTimeout(() => this.#expire(), o.timeoutMs);
  }

  #onData(chunk: Buffer): void {
    if (this.#state !== READING) return;
    const bad = this.#decoder.push(chunk);
    if (bad !== undefined) this.#fail(bad);
    else if (this.#count > 1) this.#fail({ code: Status.UNIMPLEMENTED, details: 'received a second request message for a unary method' });
  }

  #onEnd(): void {
    if (this.#state !== READING) return;
    if (this.#decoder.partial) return this.#fail({ code: Status.INTERNAL, details: 'incomplete request message' });
    if (this.#msg === undefined) return this.#fail({ code: Status.UNIMPLEMENTED, details: 'received no request message for a unary method' });
    try {
      this.request = this.method.requestDeserialize(this.#msg);
    } catch {
      return this.#fail({ code: Status.INTERNAL, details: 'error deserializing request' });
    }
    this.#msg = undefined;
    this.#state = HANDLING;
    try {
      this.#handler(this, (err, res) => this.#respond(err, res));
    } catch {
      this.#respond({ code: Status.INTERNAL, details: 'internal error' });
    }
  }

  #respond(err: unknown, res?: unknown): void {
    if (this.#state === DONE) return;
    this.#state = DONE;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    const stream = this.stream;
    if (stream.destroyed || stream.closed) return;
    if (err) return sendTrailersOnly(stream, statusOf(err));
    const frame = serialize(this.method, res, this.maxSend);
    if (!Buffer.isBuffer(frame)) return sendTrailersOnly(stream, frame);
    stream.respond(RESPONSE_HEADERS, RESPOND_WITH_TRAILERS);
    stream.once('wantTrailers', sendOkTrailers);
    stream.end(frame);
  }

  #fail(s: CallStatus): void {
    this.#state = DONE;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    sendTrailersOnly(this.stream, s);
  }

  #expire(): void {
    this.#timer = undefined;
    if (this.#state === DONE) return;
    const handling = this.#state === HANDLING;
    this.#fail(DEADLINE);
    if (handling) {
      this.cancelled = true;
      this.emit('cancelled', 'deadline');
    }
  }

  #onClose(): void {
    if (this.#state === DONE) return;
    const handling = this.#state === HANDLING;
    this.#state = DONE;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.cancelled = true;
    if (handling) this.emit('cancelled', 'cancelled');
  }
}

/**
 * A streaming call (server, client or bidi streaming), shaped like grpc-js's server streams:
 * 'data'/'end' events for requests, `write()` (false when the transport is full, then 'drain'),
 * `end()`, `pause()`/`resume()`, `cancelled` and a 'cancelled' event, and `emit('error', {code, details})`
 * to end the call with that status. When the call ends without the handler ending it (the client
 * cancelled, a deadline passed, the input broke the protocol) it emits 'cancelled' and then 'error'.
 */
export class StreamCall extends CallBase {
  readonly #handler: (call: StreamCall, cb?: Callback) => void;
  readonly #decoder: FrameDecoder;
  // Server streaming reads its one request before the handler runs.
  readonly #single: boolean;
  #first: Buffer | undefined = undefined;
  #count = 0;
  #started = false;
  #paused = false;
  #queue: unknown[] = [];
  #inputEnded = false;
  #endEmitted = false;
  #ended = false;
  #trailers: Record<string, string> = OK_TRAILERS;
  #timer: NodeJS.Timeout | undefined = undefined;

  constructor(stream: ServerHttp2Stream, headers: IncomingHttpHeaders, method: AnyMethod, handler: (call: StreamCall, cb?: Callback) => void, o: CallOptions) {
    super(stream, headers, method, o.maxSendBytes);
    this.#handler = handler;
    this.#single = !method.requestStream;
    this.#decoder = new FrameDecoder(o.maxReceiveBytes, headers['grpc-encoding'] as string | undefined, (msg) => this.#onMessage(msg));
    // grpc-js semantics: a handler emits 'error' to end the call with that status.
    this.on('error', (err: unknown) => this.#finish(statusOf(err)));
    stream.on('data', (chunk: Buffer) => {
      if (this.#ended) return;
      const bad = this.#decoder.push(chunk);
      if (bad !== undefined) this.#abort(bad);
    });
    stream.on('end', () => this.#onInputEnd());
    stream.on('close', () => this.#abort(CANCELLED));
    stream.on('drain', () => this.emit('drain'));
    stream.on('wantTrailers', () => stream.sendTrailers(this.#trailers));
    if (o.timeoutMs !== undefined) this.#timer = setTimeout(() => this.#abort(DEADLINE), o.timeoutMs);
  }

  /** Runs the handler at once for client and bidi streaming; server streaming waits for its request. */
  start(): void {
    if (!this.#single) this.#run();
  }

  /** Sends one response message; false when the transport's buffer is full ('drain' follows). */
  write(msg: unknown, cb?: (err?: Error | null) => void): boolean {
    if (this.#ended || this.cancelled) return false;
    const frame = serialize(this.method, msg, this.maxSend);
    if (!Buffer.isBuffer(frame)) {
      this.#abort(frame);
      return false;
    }
    const stream = this.stream;
    // Destroyed but its 'close' (which cancels the call) not emitted yet.
    if (stream.destroyed || stream.closed) return false;
    if (!stream.headersSent) stream.respond(RESPONSE_HEADERS, RESPOND_WITH_TRAILERS);
    return stream.write(frame, cb);
  }

  /** Ends the call with status OK (or the status of an earlier 'error'). */
  end(): this {
    this.#finish({ code: Status.OK, details: '' });
    return this;
  }

  /** Stops delivering requests until resume(); the transport stops reading too. */
  pause(): this {
    this.#paused = true;
    this.stream.pause();
    return this;
  }

  /** Delivers queued requests and reads on. */
  resume(): this {
    this.#paused = false;
    while (!this.#paused && this.#queue.length > 0 && !this.#ended) this.emit('data', this.#queue.shift());
    if (this.#paused) return this;
    if (this.#inputEnded) this.#emitEnd();
    else this.stream.resume();
    return this;
  }

  #run(): void {
    this.#started = true;
    try {
      if (this.method.requestStream && !this.method.responseStream) this.#handler(this, (err, res) => (err ? this.#finish(statusOf(err)) : (this.write(res), this.end())));
      else this.#handler(this);
    } catch {
      this.#abort({ code: Status.INTERNAL, details: 'internal error' });
    }
  }

  #onMessage(msg: Buffer): void {
    if (this.#ended) return;
    if (this.#single) {
      if (++this.#count === 1) this.#first = msg;
      else this.#abort({ code: Status.UNIMPLEMENTED, details: 'received a second request message for a server streaming method' });
      return;
    }
    let req: unknown;
    try {
      req = this.method.requestDeserialize(msg);
    } catch {
      return this.#abort({ code: Status.INTERNAL, details: 'error deserializing request' });
    }
    if (this.#paused || this.#queue.length > 0) this.#queue.push(req);
    else this.emit('data', req);
  }

  #onInputEnd(): void {
    if (this.#ended) return;
    if (this.#decoder.partial) return this.#abort({ code: Status.INTERNAL, details: 'incomplete request message' });
    this.#inputEnded = true;
    if (this.#single) {
      if (this.#first === undefined) return this.#abort({ code: Status.UNIMPLEMENTED, details: 'received no request message for a server streaming method' });
      try {
        this.request = this.method.requestDeserialize(this.#first);
      } catch {
        return this.#abort({ code: Status.INTERNAL, details: 'error deserializing request' });
      }
      this.#first = undefined;
      this.#run();
      return;
    }
    if (!this.#paused && this.#queue.length === 0) this.#emitEnd();
  }

  #emitEnd(): void {
    if (this.#endEmitted || this.#ended) return;
    this.#endEmitted = true;
    this.emit('end');
  }

  /** Sends the final status, once: Trailers-Only before any message, trailers after. */
  #finish(s: CallStatus): void {
    if (this.#ended) return;
    this.#ended = true;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#queue.length = 0;
    const stream = this.stream;
    if (stream.destroyed || stream.closed) return;
    if (!stream.headersSent) return sendTrailersOnly(stream, s);
    if (s.code !== Status.OK) this.#trailers = statusTrailers(s);
    stream.end();
  }

  /** Ends the call without the handler: sends `s` if still possible, then tells the handler. */
  #abort(s: CallStatus): void {
    if (this.#ended) return;
    this.#finish(s);
    this.cancelled = true;
    if (this.#started) {
      this.emit('cancelled', s === CANCELLED ? 'cancelled' : s === DEADLINE ? 'deadline' : 'error');
      this.emit('error', s);
    }
  }
}
