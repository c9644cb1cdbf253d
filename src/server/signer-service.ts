import type { ServerDuplexStream } from '@grpc/grpc-js';
import { createHash, createPublicKey } from 'node:crypto';
import {
  type SignerServer,
  type SignRequest,
  type SignResponse,
  type SignResult,
  type SignStreamRequest,
  type SignStreamResponse,
} from '../gen/sigil/v1/signer.ts';
import { SigilError } from '../errors.ts';
import type { KeyService, Signature } from '../keys/key-service.ts';
import { algorithmToPb, keyToPb } from './convert.ts';
import { recordRefusal, unary, type RpcContext } from './rpc.ts';
import { reasonOf, resultOf } from '../audit/audited.ts';
import { toServiceError, toWireError } from './status.ts';
import type { Principal, Role } from './auth.ts';
import type { BuilderPolicy } from '../identity/builder-policy.ts';

/** Builders sign too, but only with the keys a rule grants them. */
const SIGNERS: readonly Role[] = ['signer', 'builder'];
/** Public keys are not secret: any role may read them (a builder those of its keys). */
const KEY_READERS: readonly Role[] = ['signer', 'admin', 'builder'];
/** Key lists name every key: not for builders. */
const LIST_READERS: readonly Role[] = ['signer', 'admin'];
/** Requests a stream may have in flight before the server stops reading from it. */
const STREAM_WINDOW = 256;

/** Which keys a caller may sign with beyond its role. */
export interface KeyAccess {
  /** Read at every call: a config reload replaces it. */
  builders: BuilderPolicy;
  /** Keys no caller may sign with through the API (the identity CA's, the audit log's and the trusted root's). */
  reservedKeys: readonly string[];
}

/** The `sigil.v1.Signer` service: proto <-> domain conversion around the key service's hot path. */
export function signerService(ctx: RpcContext, keys: KeyService, limits: { maxBatch: number; maxMessageBytes: number }, access: KeyAccess): SignerServer {
  const reserved = access.reservedKeys;
  /** Throws unless `who` may sign with `ref`: signers with any key but the reserved ones, builders with the keys granted them. */
  const mayUse = (who: Principal, ref: string, signing: boolean): void => {
    if (signing && reserved.length > 0) {
      for (const r of reserved) {
        if (ref.startsWith(r) && (ref.length === r.length || ref.charCodeAt(r.length) === 0x40 /* @ */)) {
          throw new SigilError('PERMISSION_DENIED', `key ${r} is reserved for the daemon's own use (identity ca, audit checkpoints, trusted root)`);
        }
      }
    }
    if (who.roles.has('signer') || (!signing && who.roles.has('admin'))) return;
    if (who.builder !== undefined) return access.builders.check(who.fingerprint, who.builder, ref);
    throw new SigilError('PERMISSION_DENIED', `${who.subject} may not use key ${ref}`);
  };
  // Metric children per backend, then algorithm: looked up on the hot path without building a label key.
  const perBackend = new Map<string, { latency: { observe(v: number): void }; byAlg: Map<string, { inc(): void }> }>();
  const count = (s: Signature, seconds: number): void => {
    let b = perBackend.get(s.backend);
    if (b === undefined) perBackend.set(s.backend, (b = { latency: ctx.metrics.backendLatency.labels(s.backend), byAlg: new Map() }));
    let c = b.byAlg.get(s.algorithm);
    if (c === undefined) b.byAlg.set(s.algorithm, (c = ctx.metrics.signatures.labels(s.backend, s.algorithm)));
    c.inc();
    b.latency.observe(seconds);
  };
  const audit = ctx.audit;
  /**
   * Signs one request, fail closed: a log known to be broken refuses before the backend works, and no
   * signature leaves before its `sign` entry is durable (a failed write drops it: AUDIT_UNAVAILABLE).
   */
  const signOne = async (req: SignRequest | undefined, who: Principal): Promise<SignResponse> => {
    const { digest, detail } = digestOf(req);
    let s: Signature;
    try {
      if (req === undefined) throw new SigilError('INVALID_ARGUMENT', 'request is required');
      audit.ready();
      mayUse(who, req.key, true);
      const t0 = performance.now();
      s = await keys.sign(req.key, { digest: req.digest, message: req.message });
      count(s, (performance.now() - t0) / 1000);
    } catch (err) {
      ctx.metrics.signErrors.inc({ reason: reasonOf(err) });
      await audit.record({ who: who.subject, act: 'sign', key: req?.key.slice(0, 200), digest, result: resultOf(err), reason: reasonOf(err), detail });
      throw err;
    }
    await audit.record({ who: who.subject, act: 'sign', key: s.keyVersion, digest, result: 'ok', detail });
    return { signature: s.signature, keyVersion: s.keyVersion, algorithm: algorithmToPb(s.algorithm) };
  };
  const result = (p: Promise<SignResponse>, rpc: string): Promise<SignResult> =>
    p.then(
      (signature) => ({ signature, error: undefined }),
      (err: unknown) => {
        const w = toWireError(err, ctx.log, rpc);
        return { signature: undefined, error: { code: w.code, message: w.details, reason: w.errorCode, errorInfoReason: w.info.reason } };
      },
    );

  return {
    sign: unary(ctx, 'Sign', SIGNERS, (req, who) => signOne(req, who)),

    signBatch: unary(ctx, 'SignBatch', SIGNERS, async (req, who) => {
      const n = req.requests.length;
      if (n === 0) throw new SigilError('INVALID_ARGUMENT', 'requests is empty');
      if (n > limits.maxBatch) throw new SigilError('INVALID_ARGUMENT', `a batch holds at most ${limits.maxBatch} requests, got ${n}`);
      return { results: await Promise.all(req.requests.map((r) => result(signOne(r, who), 'SignBatch'))) };
    }),

    signStream: (call: ServerDuplexStream<SignStreamRequest, SignStreamResponse>) => {
      const inFlight = ctx.metrics.inFlight.labels('SignStream');
      let who: Principal;
      try {
        who = ctx.auth.require(call, SIGNERS);
      } catch (err) {
        void recordRefusal(ctx, call, 'SignStream', err).then((e) => {
          const w = toWireError(e, ctx.log, 'SignStream');
          ctx.metrics.requests.inc({ rpc: 'SignStream', code: String(w.code) });
          call.emit('error', toServiceError(w));
        });
        return;
      }
      inFlight.inc();
      // A reload of the role map reaches an open stream at its next request, as it reaches the next call.
      let generation = ctx.auth.generation;
      const signAs = async (req: SignRequest | undefined): Promise<SignResponse> => {
        if (ctx.auth.generation !== generation) {
          try {
            who = ctx.auth.require(call, SIGNERS);
            generation = ctx.auth.generation;
          } catch (err) {
            throw await recordRefusal(ctx, call, 'SignStream', err);
          }
        }
        return signOne(req, who);
      };
      let pending = 0;
      let ended = false;
      let closed = false;
      let blocked = false;
      const finish = (): void => {
        if (closed) return;
        closed = true;
        inFlight.dec();
        ctx.metrics.requests.inc({ rpc: 'SignStream', code: '0' });
        call.end();
      };
      const settle = (): void => {
        pending--;
        if (blocked && pending < STREAM_WINDOW / 2) {
          blocked = false;
          call.resume();
        }
        if (ended && pending === 0) finish();
      };
      call.on('data', (msg: SignStreamRequest) => {
        pending++;
        if (pending >= STREAM_WINDOW && !blocked) {
          blocked = true;
          call.pause();
        }
        void result(signAs(msg.request), 'SignStream').then((r) => {
          if (!closed && !call.cancelled) call.write({ id: msg.id, result: r });
          settle();
        });
      });
      call.on('end', () => {
        ended = true;
        if (pending === 0) finish();
      });
      call.on('error', () => {
        // The client went away: nothing left to answer.
        if (!closed) {
          closed = true;
          inFlight.dec();
        }
      });
    },

    // Clients read the public key before they sign: a refusal names the roles that sign, not only those that read.
    getPublicKey: unary(ctx, 'GetPublicKey', KEY_READERS, (req, who) => {
      mayUse(who, req.key, false);
      const pk = keys.publicKey(req.key);
      const pem = createPublicKey({ key: pk.spki, format: 'der', type: 'spki' }).export({ format: 'pem', type: 'spki' }).toString();
      return { keyVersion: pk.keyVersion, algorithm: algorithmToPb(pk.algorithm), spkiDer: pk.spki, pem, maxMessageBytes: limits.maxMessageBytes };
    }, 'signer or builder (to sign) or admin (to read public keys)'),

    listKeys: unary(ctx, 'ListKeys', LIST_READERS, (req) => ({ keys: keys.listKeys(req.prefix).map(keyToPb) })),
  };
}

/**
 * What the audit entry says was signed: the digest (lower-case hex, at most 64 bytes of it), or for a
 * whole message SHA-256 of the message, which `detail` says.
 */
function digestOf(req: SignRequest | undefined): { digest: string | undefined; detail: Record<string, unknown> | undefined } {
  if (req === undefined) return { digest: undefined, detail: undefined };
  if (req.message !== undefined) return { digest: createHash('sha256').update(req.message).digest('hex'), detail: { digestOf: 'message', hash: 'sha256', bytes: req.message.length } };
  if (req.digest !== undefined) return { digest: req.digest.subarray(0, 64).toString('hex'), detail: undefined };
  return { digest: undefined, detail: undefined };
}
