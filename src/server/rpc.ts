import type { sendUnaryData, ServerUnaryCall, status as Status } from '@grpc/grpc-js';
import type { Logger } from '../log.ts';
import type { AuditSink } from '../audit/audit-sink.ts';
import { isSigilError } from '../errors.ts';
import type { AuthCall, Authenticator, Principal, Role } from './auth.ts';
import type { Metrics } from './metrics.ts';
import { toServiceError, toWireError } from './status.ts';

/** What every handler wrapper needs. */
export interface RpcContext {
  auth: Authenticator;
  metrics: Metrics;
  log: Logger;
  /** The audit log: every act and every refused request is recorded before the answer leaves. */
  audit: AuditSink;
}

/**
 * Records a request refused for want of a trusted certificate or role (`request.refused`), then lets the
 * caller answer. Resolves with the error to send: the refusal, or AUDIT_UNAVAILABLE when it cannot be recorded.
 */
export async function recordRefusal(ctx: RpcContext, call: AuthCall & { getPeer?(): string }, rpc: string, err: unknown): Promise<unknown> {
  if (!isSigilError(err, 'UNAUTHENTICATED') && !isSigilError(err, 'PERMISSION_DENIED')) return err;
  // Without a trusted certificate the peer address is all there is.
  const peer = call.getPeer?.();
  const who = ctx.auth.subjectOf(call) ?? (peer ? `anonymous@${peer}` : 'anonymous');
  try {
    await ctx.audit.record({ who, act: 'request.refused', result: 'refused', reason: err.code, detail: { rpc, why: err.message } });
  } catch (auditErr) {
    return auditErr;
  }
  return err;
}

const OK = 0 as Status;

/**
 * Wraps a unary handler: checks the caller's role, runs `fn`, maps errors through the status table and
 * records metrics. Handlers only throw SigilErrors and return plain values. `rolesText` says in a refusal
 * which roles may do what there (default: the roles joined with "or").
 */
export function unary<Req, Res>(
  ctx: RpcContext,
  rpc: string,
  roles: readonly Role[],
  fn: (req: Req, who: Principal) => Res | Promise<Res>,
  rolesText?: string,
): (call: ServerUnaryCall<Req, Res>, callback: sendUnaryData<Res>) => void;
/** With `roles` null the call needs no client certificate (enrollment): `fn` gets the call instead. */
export function unary<Req, Res>(
  ctx: RpcContext,
  rpc: string,
  roles: null,
  fn: (req: Req, call: ServerUnaryCall<Req, Res>) => Res | Promise<Res>,
): (call: ServerUnaryCall<Req, Res>, callback: sendUnaryData<Res>) => void;
export function unary<Req, Res>(
  ctx: RpcContext,
  rpc: string,
  roles: readonly Role[] | null,
  fn: ((req: Req, who: Principal) => Res | Promise<Res>) | ((req: Req, call: ServerUnaryCall<Req, Res>) => Res | Promise<Res>),
  rolesText?: string,
): (call: ServerUnaryCall<Req, Res>, callback: sendUnaryData<Res>) => void {
  const latency = ctx.metrics.latency.labels(rpc);
  const inFlight = ctx.metrics.inFlight.labels(rpc);
  const okCount = ctx.metrics.requests.labels(rpc, 'OK');
  return (call, callback) => {
    const start = performance.now();
    inFlight.inc();
    const done = (code: Status): void => {
      inFlight.dec();
      latency.observe((performance.now() - start) / 1000);
      if (code === OK) okCount.inc();
      else ctx.metrics.requests.inc({ rpc, code: String(code) });
    };
    let result: Res | Promise<Res>;
    try {
      result = roles === null
        ? (fn as (req: Req, call: ServerUnaryCall<Req, Res>) => Res | Promise<Res>)(call.request, call)
        : (fn as (req: Req, who: Principal) => Res | Promise<Res>)(call.request, ctx.auth.require(call, roles, rolesText));
    } catch (err) {
      // Thrown before the handler ran: the role check (or a synchronous refusal), recorded here.
      void recordRefusal(ctx, call, rpc, err).then((e) => {
        const w = toWireError(e, ctx.log, rpc);
        done(w.code);
        callback(toServiceError(w), null);
      });
      return;
    }
    Promise.resolve(result).then(
      (res) => {
        done(OK);
        callback(null, res);
      },
      (err: unknown) => {
        // Handlers audit their own acts, refusals included.
        const w = toWireError(err, ctx.log, rpc);
        done(w.code);
        callback(toServiceError(w), null);
      },
    );
  };
}
