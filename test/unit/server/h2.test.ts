import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { connect, constants, type ClientHttp2Session, type ClientHttp2Stream, type IncomingHttpHeaders } from 'node:http2';
import { once } from 'node:events';
import fc from 'fast-check';
import { credentials, loadPackageDefinition, makeGenericClientConstructor, Metadata, status as Status, type Client, type ClientReadableStream, type ServiceDefinition, type ServiceError, type UntypedServiceImplementation } from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import { HealthImplementation, protoPath as healthProto } from 'grpc-health-check';
import { createDevCa, issueLeaf, type PemPair } from '../../../src/dev/pki.ts';
import { GrpcH2Server } from '../../../src/server/h2/server.ts';
import type { StreamCall, UnaryCall, AuthContext } from '../../../src/server/h2/call.ts';
import { encodeFrame, FrameDecoder, percentEncode, parseTimeout } from '../../../src/server/h2/frames.ts';
import { decodeStatusDetails } from '../../../src/status-details.ts';

const raw = (b: Buffer): Buffer => b;
const method = (name: string, requestStream: boolean, responseStream: boolean, requestDeserialize: (b: Buffer) => unknown = raw) => ({
  path: `/test.T/${name}`,
  requestStream,
  responseStream,
  requestSerialize: raw,
  requestDeserialize,
  responseSerialize: raw,
  responseDeserialize: raw,
});
const DEF = {
  echo: method('Echo', false, false),
  wait: method('Wait', false, false),
  fail: method('Fail', false, false),
  strict: method('Strict', false, false, (b) => {
    if (b[0] === 0xff) throw new Error('bad');
    return b;
  }),
  who: method('Who', false, false),
  bidi: method('Bidi', true, true),
} as unknown as ServiceDefinition;
const MAX = 1024;

type Cb = (err: unknown, res?: Buffer) => void;

/** Handlers under test, and what they saw. */
function testService() {
  const seen = {
    waiting: [] as Array<{ call: UnaryCall; cb: Cb; cancelled: boolean }>,
    streams: [] as Array<{ call: StreamCall; cancelled: boolean; writeAfterCancel?: boolean }>,
    contexts: [] as AuthContext[],
  };
  const impl = {
    echo: (call: UnaryCall, cb: Cb) => cb(null, call.request as Buffer),
    wait: (call: UnaryCall, cb: Cb) => {
      const w = { call, cb, cancelled: false };
      call.on('cancelled', () => (w.cancelled = true));
      seen.waiting.push(w);
    },
    fail: (call: UnaryCall, cb: Cb) => cb({ code: Status.FAILED_PRECONDITION, details: (call.request as Buffer).toString() }),
    strict: (call: UnaryCall, cb: Cb) => cb(null, call.request as Buffer),
    who: (call: UnaryCall, cb: Cb) => {
      const ctx = call.getAuthContext();
      seen.contexts.push(ctx);
      cb(null, Buffer.from(String(ctx.sslPeerCertificate?.subject.CN ?? '')));
    },
    bidi: (call: StreamCall) => {
      const s: { call: StreamCall; cancelled: boolean; writeAfterCancel?: boolean } = { call, cancelled: false };
      seen.streams.push(s);
      call.on('cancelled', () => {
        s.cancelled = true;
        s.writeAfterCancel = call.write(Buffer.from('late'));
      });
      // 'hold' keeps the call open after the client's end, like a handler with work still pending.
      let hold = false;
      call.on('data', (m: Buffer) => {
        if (m.toString() === 'error') call.emit('error', { code: Status.ABORTED, details: 'asked to fail' });
        else if (m.toString() === 'reasoned') call.emit('error', { code: Status.FAILED_PRECONDITION, details: 'with a reason: é', errorInfo: { reason: 'KEY_VERSION_DISABLED', domain: 'sigil.v1', metadata: { key_version: 'k@1' } } });
        else call.write(m);
        if (m.toString() === 'hold') hold = true;
      });
      call.on('end', () => hold || call.end());
    },
  };
  return { seen, impl: impl as unknown as UntypedServiceImplementation };
}

interface Reply {
  status: number;
  headers: IncomingHttpHeaders;
  trailers: IncomingHttpHeaders;
  messages: Buffer[];
  grpcStatus: number;
  grpcMessage: string;
}

/** Reads a raw HTTP/2 response: headers, length-prefixed messages and the gRPC status (trailers or Trailers-Only). */
function reply(st: ClientHttp2Stream): Promise<Reply> {
  return new Promise((resolve, reject) => {
    let headers: IncomingHttpHeaders = {};
    let trailers: IncomingHttpHeaders = {};
    const chunks: Buffer[] = [];
    st.on('response', (h) => (headers = h));
    st.on('trailers', (t) => (trailers = t));
    st.on('data', (b: Buffer) => chunks.push(b));
    st.on('error', reject);
    // 'end': the server's side is done, whether or not the client has ended its own.
    st.on('end', () => {
      const body = Buffer.concat(chunks);
      const messages: Buffer[] = [];
      for (let at = 0; at + 5 <= body.length; ) {
        const len = body.readUInt32BE(at + 1);
        messages.push(body.subarray(at + 5, at + 5 + len));
        at += 5 + len;
      }
      const src = trailers['grpc-status'] !== undefined ? trailers : headers;
      resolve({
        status: Number(headers[':status']),
        headers,
        trailers,
        messages,
        grpcStatus: Number(src['grpc-status']),
        grpcMessage: decodeURIComponent(String(src['grpc-message'] ?? '')),
      });
    });
  });
}

const grpcHeaders = (path: string, extra: Record<string, string> = {}) => ({ ':method': 'POST', ':path': path, 'content-type': 'application/grpc', te: 'trailers', ...extra });
const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('the node:http2 gRPC server', () => {
  let ca: PemPair;
  let serverPair: PemPair;
  let client: PemPair;
  let outsider: PemPair;
  let server: GrpcH2Server;
  let port: number;
  let svc: ReturnType<typeof testService>;
  let session: ClientHttp2Session;
  const health = new HealthImplementation({ '': 'SERVING', 'test.T': 'SERVING' });

  const open = (who: PemPair | null = client): ClientHttp2Session => connect(`https://127.0.0.1:${port}`, { ca: ca.cert, ...(who ? { cert: who.cert, key: who.key } : {}) });
  const start = async (): Promise<{ server: GrpcH2Server; port: number; svc: ReturnType<typeof testService> }> => {
    const s = new GrpcH2Server({ cert: Buffer.from(serverPair.cert), key: Buffer.from(serverPair.key), clientCa: Buffer.from(ca.cert), maxReceiveMessageBytes: MAX, maxSendMessageBytes: MAX });
    const t = testService();
    s.addService(DEF, t.impl);
    return { server: s, port: await s.bind('127.0.0.1', 0), svc: t };
  };

  before(async () => {
    ca = await createDevCa('h2 test ca');
    serverPair = await issueLeaf(ca, { cn: 'server', usage: 'server', dns: ['localhost'], ips: ['127.0.0.1'] });
    client = await issueLeaf(ca, { cn: 'client-1', usage: 'client' });
    outsider = await issueLeaf(await createDevCa('other'), { cn: 'client-1', usage: 'client' });
    ({ server, port, svc } = await start());
    health.addToServer(server as unknown as Parameters<HealthImplementation['addToServer']>[0]);
    session = open();
  });
  after(() => {
    session?.close();
    server?.forceShutdown();
  });

  test('a message split across several chunks arrives whole', async () => {
    const frame = encodeFrame(Buffer.from('hello, split world'));
    const st = session.request(grpcHeaders('/test.T/Echo'));
    const r = reply(st);
    for (const cut of [frame.subarray(0, 2), frame.subarray(2, 7), frame.subarray(7, 12), frame.subarray(12)]) {
      st.write(cut);
      await pause(5);
    }
    st.end();
    const res = await r;
    assert.equal(res.status, 200);
    assert.equal(res.headers['content-type'], 'application/grpc');
    assert.equal(res.grpcStatus, Status.OK);
    assert.deepEqual(res.messages.map(String), ['hello, split world']);
  });

  test('several messages in one chunk are each delivered, in order', async () => {
    const msgs = ['one', 'two', '', 'four'.repeat(50)];
    const st = session.request(grpcHeaders('/test.T/Bidi'));
    const r = reply(st);
    st.end(Buffer.concat(msgs.map((m) => encodeFrame(Buffer.from(m)))));
    const res = await r;
    assert.equal(res.grpcStatus, Status.OK);
    assert.deepEqual(res.messages.map(String), msgs);
  });

  test('an unknown method is UNIMPLEMENTED, as Trailers-Only', async () => {
    const st = session.request(grpcHeaders('/test.T/Nope'));
    const r = reply(st);
    st.end(encodeFrame(Buffer.from('x')));
    const res = await r;
    assert.equal(res.status, 200);
    assert.equal(res.headers['grpc-status'], String(Status.UNIMPLEMENTED));
    assert.match(res.grpcMessage, /unknown method \/test\.T\/Nope/);
  });

  test('a content-type other than application/grpc is HTTP 415', async () => {
    const st = session.request({ ...grpcHeaders('/test.T/Echo'), 'content-type': 'application/json' });
    const r = reply(st);
    st.end('{}');
    assert.equal((await r).status, 415);
  });

  test('a compressed message is UNIMPLEMENTED; identity is advertised', async () => {
    const frame = encodeFrame(Buffer.from('zipped'));
    frame[0] = 1;
    const st = session.request(grpcHeaders('/test.T/Echo', { 'grpc-encoding': 'gzip' }));
    const r = reply(st);
    st.end(frame);
    const res = await r;
    assert.equal(res.grpcStatus, Status.UNIMPLEMENTED);
    assert.match(res.grpcMessage, /compression not supported/);
    assert.equal(res.headers['grpc-accept-encoding'], 'identity');
  });

  test('an oversized message is RESOURCE_EXHAUSTED, on its prefix alone', async () => {
    const st = session.request(grpcHeaders('/test.T/Echo'));
    const r = reply(st);
    st.write(encodeFrame(Buffer.alloc(MAX + 1)).subarray(0, 100));
    const res = await r;
    assert.equal(res.grpcStatus, Status.RESOURCE_EXHAUSTED);
    assert.match(res.grpcMessage, /larger than max \(1025 vs\. 1024\)/);
    st.close();
  });

  test('a request that does not deserialize is INTERNAL', async () => {
    const st = session.request(grpcHeaders('/test.T/Strict'));
    const r = reply(st);
    st.end(encodeFrame(Buffer.from([0xff, 1])));
    const res = await r;
    assert.equal(res.grpcStatus, Status.INTERNAL);
    assert.equal(res.grpcMessage, 'error deserializing request');
  });

  test('an expired grpc-timeout is DEADLINE_EXCEEDED and the handler sees the call cancelled', async () => {
    const st = session.request(grpcHeaders('/test.T/Wait', { 'grpc-timeout': '50m' }));
    const r = reply(st);
    st.end(encodeFrame(Buffer.from('slow')));
    const res = await r;
    assert.equal(res.grpcStatus, Status.DEADLINE_EXCEEDED);
    const w = svc.seen.waiting.at(-1)!;
    assert.ok(w.cancelled && w.call.cancelled);
    w.cb(null, Buffer.from('too late'));
  });

  for (const how of ['cancel', 'reset'] as const) {
    test(`a client ${how} mid-stream marks the call cancelled and stops writes`, async () => {
      const st = session.request(grpcHeaders('/test.T/Bidi'));
      st.on('error', () => {});
      st.write(encodeFrame(Buffer.from('hold')));
      const [chunk] = (await once(st, 'data')) as [Buffer];
      assert.equal(chunk.subarray(5).toString(), 'hold');
      const s = svc.seen.streams.at(-1)!;
      // close() is what grpc-js does on cancel (END_STREAM, then RST_STREAM CANCEL); destroy(err) resets at once.
      if (how === 'cancel') st.close(constants.NGHTTP2_CANCEL);
      else st.destroy(new Error('gone'));
      for (let i = 0; i < 100 && !s.cancelled; i++) await pause(5);
      assert.ok(s.cancelled && s.call.cancelled);
      assert.equal(s.writeAfterCancel, false);
    });
  }

  test('a stream handler ends its call with a status by emitting error', async () => {
    const st = session.request(grpcHeaders('/test.T/Bidi'));
    const r = reply(st);
    st.write(encodeFrame(Buffer.from('ok')));
    st.write(encodeFrame(Buffer.from('error')));
    const res = await r;
    assert.deepEqual(res.messages.map(String), ['ok']);
    assert.equal(res.trailers['grpc-status'], String(Status.ABORTED));
    assert.equal(res.grpcMessage, 'asked to fail');
    st.close();
  });

  test('every error status carries grpc-status-details-bin: the same code and message, and an ErrorInfo', async () => {
    const details = (h: IncomingHttpHeaders) => {
      const v = h['grpc-status-details-bin'];
      assert.equal(typeof v, 'string', 'the trailer is there');
      assert.doesNotMatch(String(v), /=$/, 'binary header values go unpadded');
      return decodeStatusDetails(Buffer.from(String(v), 'base64'));
    };
    // Trailers-Only: the transport's own error, with the status code's name as reason.
    const nope = session.request(grpcHeaders('/test.T/Nope'));
    const r1 = reply(nope);
    nope.end(encodeFrame(Buffer.from('x')));
    const unknown = await r1;
    assert.deepEqual(details(unknown.headers), { code: Status.UNIMPLEMENTED, message: unknown.grpcMessage, info: { reason: 'UNIMPLEMENTED', domain: 'sigil.v1', metadata: {} } });
    // Trailers after a message, the handler's ErrorInfo; percent-encoding applies to grpc-message only.
    const st = session.request(grpcHeaders('/test.T/Bidi'));
    const r2 = reply(st);
    st.write(encodeFrame(Buffer.from('ok')));
    st.write(encodeFrame(Buffer.from('reasoned')));
    const res = await r2;
    assert.deepEqual(res.messages.map(String), ['ok']);
    assert.equal(res.trailers['grpc-message'], 'with a reason: %C3%A9');
    assert.deepEqual(details(res.trailers), { code: Status.FAILED_PRECONDITION, message: 'with a reason: é', info: { reason: 'KEY_VERSION_DISABLED', domain: 'sigil.v1', metadata: { key_version: 'k@1' } } });
    st.close();
    // A unary error without an ErrorInfo, as Trailers-Only; an OK status carries none.
    const fail = session.request(grpcHeaders('/test.T/Fail'));
    const r3 = reply(fail);
    fail.end(encodeFrame(Buffer.from('no such thing')));
    assert.equal(details((await r3).headers)?.info.reason, 'FAILED_PRECONDITION');
    const echo = session.request(grpcHeaders('/test.T/Echo'));
    const r4 = reply(echo);
    echo.end(encodeFrame(Buffer.from('fine')));
    const ok = await r4;
    assert.equal(ok.grpcStatus, Status.OK);
    assert.equal(ok.trailers['grpc-status-details-bin'], undefined);
  });

  test('the auth context holds the certificate only when it is trusted, one object per connection', async () => {
    const who = async (s: ClientHttp2Session): Promise<string> => {
      const st = s.request(grpcHeaders('/test.T/Who'));
      const r = reply(st);
      st.end(encodeFrame(Buffer.alloc(0)));
      return String((await r).messages[0]);
    };
    assert.equal(await who(session), 'client-1');
    assert.equal(await who(session), 'client-1');
    const [a, b] = svc.seen.contexts.slice(-2);
    assert.equal(a, b, 'cached per session');
    assert.ok(a!.sslPeerCertificate);
    for (const id of [null, outsider]) {
      const s = open(id);
      assert.equal(await who(s), '');
      assert.equal(svc.seen.contexts.at(-1)!.sslPeerCertificate, undefined);
      s.close();
    }
  });

  test('grpc-js clients: unary errors keep their percent-encoded message; health Watch streams updates', async () => {
    const creds = credentials.createSsl(Buffer.from(ca.cert), Buffer.from(client.key), Buffer.from(client.cert));
    const Raw = makeGenericClientConstructor(DEF as never, 'T');
    // The name override keeps grpc-js from sending an IP address as TLS server name (Node warns on that).
    const named = { 'grpc.ssl_target_name_override': 'localhost' };
    const c = new Raw(`127.0.0.1:${port}`, creds, named) as unknown as Client & Record<string, (req: Buffer, md: Metadata, cb: (e: ServiceError | null, r?: Buffer) => void) => void>;
    const details = 'bad % ünïcode\nline, 100%';
    const err = await new Promise<ServiceError>((resolve) => c.fail!(Buffer.from(details), new Metadata(), (e) => resolve(e!)));
    assert.equal(err.code, Status.FAILED_PRECONDITION);
    assert.equal(err.details, details);
    const echoed = await new Promise<Buffer>((resolve, reject) => c.echo!(Buffer.from('via grpc-js'), new Metadata(), (e, r) => (e ? reject(e) : resolve(r!))));
    assert.equal(echoed.toString(), 'via grpc-js');
    c.close();

    const pkg = loadPackageDefinition(loadSync(healthProto, { keepCase: true, enums: String, defaults: true })) as unknown as {
      grpc: { health: { v1: { Health: new (a: string, c: typeof creds, o: typeof named) => Client & { watch(req: { service: string }): ClientReadableStream<{ status: string }> } } } };
    };
    const h = new pkg.grpc.health.v1.Health(`127.0.0.1:${port}`, credentials.createSsl(Buffer.from(ca.cert)), named);
    const call = h.watch({ service: 'test.T' });
    call.on('error', () => {});
    const seen: string[] = [];
    const two = new Promise<void>((resolve) =>
      call.on('data', (r: { status: string }) => {
        seen.push(r.status);
        if (seen.length === 1) health.setStatus('test.T', 'NOT_SERVING');
        if (seen.length === 2) resolve();
      }),
    );
    await two;
    assert.deepEqual(seen, ['SERVING', 'NOT_SERVING']);
    call.cancel();
    const watchers = (health as unknown as { watchers: Map<string, Set<unknown>> }).watchers;
    for (let i = 0; i < 100 && watchers.get('test.T')!.size > 0; i++) await pause(5);
    assert.equal(watchers.get('test.T')!.size, 0, 'the cancelled watch is removed');
    h.close();
  });

  test('graceful shutdown lets an in-flight call finish, then closes', async () => {
    const x = await start();
    const s = connect(`https://127.0.0.1:${x.port}`, { ca: ca.cert, cert: client.cert, key: client.key });
    const st = s.request(grpcHeaders('/test.T/Wait'));
    const r = reply(st);
    st.end(encodeFrame(Buffer.from('in flight')));
    for (let i = 0; i < 100 && x.svc.seen.waiting.length === 0; i++) await pause(5);
    let closed = false;
    const shut = new Promise<void>((resolve) =>
      x.server.tryShutdown(() => {
        closed = true;
        resolve();
      }),
    );
    await once(s, 'goaway');
    await pause(20);
    assert.equal(closed, false, 'still running the call');
    const w = x.svc.seen.waiting[0]!;
    w.cb(null, Buffer.from('finished'));
    const res = await r;
    assert.equal(res.grpcStatus, Status.OK);
    assert.deepEqual(res.messages.map(String), ['finished']);
    assert.equal(w.cancelled, false);
    await shut;
    s.close();
  });

  test('forceShutdown cancels running calls', async () => {
    const x = await start();
    const s = connect(`https://127.0.0.1:${x.port}`, { ca: ca.cert, cert: client.cert, key: client.key });
    s.on('error', () => {});
    const st = s.request(grpcHeaders('/test.T/Wait'));
    st.on('error', () => {});
    st.end(encodeFrame(Buffer.from('cut')));
    for (let i = 0; i < 100 && x.svc.seen.waiting.length === 0; i++) await pause(5);
    x.server.forceShutdown();
    const w = x.svc.seen.waiting[0]!;
    for (let i = 0; i < 100 && !w.cancelled; i++) await pause(5);
    assert.ok(w.cancelled);
    s.destroy();
  });
});

describe('the frame decoder', () => {
  const decodeAll = (chunks: Buffer[], max = 1 << 20): Buffer[] => {
    const out: Buffer[] = [];
    const d = new FrameDecoder(max, undefined, (m) => out.push(Buffer.from(m)));
    for (const c of chunks) assert.equal(d.push(c), undefined);
    assert.equal(d.partial, false);
    return out;
  };

  test('any chunking of any messages decodes to the same messages', () => {
    fc.assert(
      fc.property(fc.array(fc.uint8Array({ maxLength: 300 }), { maxLength: 8 }), fc.array(fc.nat(), { maxLength: 20 }), (msgs, cuts) => {
        const wire = Buffer.concat(msgs.map((m) => encodeFrame(m)));
        const at = [...new Set(cuts.map((c) => (wire.length === 0 ? 0 : c % (wire.length + 1))))].sort((a, b) => a - b);
        const chunks: Buffer[] = [];
        let prev = 0;
        for (const c of [...at, wire.length]) {
          chunks.push(wire.subarray(prev, c));
          prev = c;
        }
        assert.deepEqual(decodeAll(chunks), msgs.map((m) => Buffer.from(m)));
      }),
      { numRuns: 500 },
    );
  });

  test('a message over the limit, a compressed one and a bad flag are refused', () => {
    const big = encodeFrame(Buffer.alloc(11));
    assert.equal(new FrameDecoder(10, undefined, () => {}).push(big.subarray(0, 5))?.code, Status.RESOURCE_EXHAUSTED);
    const z = encodeFrame(Buffer.alloc(1));
    z[0] = 1;
    assert.equal(new FrameDecoder(10, 'gzip', () => {}).push(z)?.code, Status.UNIMPLEMENTED);
    assert.equal(new FrameDecoder(10, undefined, () => {}).push(z)?.code, Status.INTERNAL);
    z[0] = 7;
    assert.equal(new FrameDecoder(10, undefined, () => {}).push(z)?.code, Status.INTERNAL);
  });

  test('grpc-message percent-encoding and grpc-timeout parsing', () => {
    assert.equal(percentEncode('plain text: ok'), 'plain text: ok');
    assert.equal(percentEncode('100% é\n'), '100%25 %C3%A9%0A');
    fc.assert(fc.property(fc.string({ unit: 'binary' }), (s) => assert.equal(decodeURIComponent(percentEncode(s)), Buffer.from(s).toString())));
    assert.equal(parseTimeout('50m'), 50);
    assert.equal(parseTimeout('2S'), 2000);
    assert.equal(parseTimeout('1H'), 3_600_000);
    assert.equal(parseTimeout('100u'), 0.1);
    assert.equal(parseTimeout('123456789S'), undefined);
    assert.equal(parseTimeout(undefined), undefined);
  });
});
