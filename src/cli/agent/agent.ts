import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { chmodSync, mkdirSync, rmSync, statSync } from 'node:fs';
import { dirname } from 'node:path';
import { tmpdir } from 'node:os';
import { status as Status, type ServiceError } from '@grpc/grpc-js';
import { rpc, type Clients } from '../client.ts';
import { describeError, errorJson } from '../errors.ts';
import { DEFAULT_MAX_MESSAGE_BYTES } from '../files.ts';
import { reasonOf } from '../error-reason.ts';
import { AkUnavailableError, Attestor, builderClients, type AttestorOptions, type Identity } from './attestor.ts';

/** What the agent reports as it runs (enrolled, renewed, renewal failed, ...). */
export type AgentEvent = { event: string; [field: string]: unknown };

/** The default local socket: per user, in a private directory. */
export function defaultSocketPath(): string {
  const base = process.env.XDG_RUNTIME_DIR || tmpdir();
  return `${base}/sigil-agent-${process.getuid?.() ?? 'user'}/agent.sock`;
}

// Largest request the local socket accepts: an Ed25519 message up to sigild's default cap, base64.
const MAX_BODY = 96 * 1024 * 1024;
/** The largest Ed25519 message the agent's socket carries (base64 in a JSON body of at most 96 MiB). */
export const AGENT_MAX_MESSAGE_BYTES = Math.floor((MAX_BODY - 64 * 1024) / 4) * 3;

// Enrollment retries after the identity expired: 1 s, doubling, at most a minute apart while sigild cannot be
// reached or fails, at most an hour apart while it refuses (each refusal is an audit entry on sigild's side).
const REENROLL_FIRST_MS = 1000;
const REENROLL_MAX_MS = 60_000;
const REENROLL_REFUSED_MAX_MS = 3_600_000;

/**
 * The long-running agent: enrolls, keeps the identity in memory, renews it at half-life with a fresh
 * quote (retrying until it expires, then enrolling afresh until that works), and signs for local callers
 * over a unix socket only its user can open.
 */
export class Agent {
  readonly #o: AttestorOptions;
  readonly #attestor: Attestor;
  readonly #report: (e: AgentEvent) => void;
  #identity: Identity | null = null;
  #clients: Clients | null = null;
  #timer: NodeJS.Timeout | null = null;
  #server: Server | null = null;
  #socketPath: string | null = null;
  #stopped = false;

  constructor(o: AttestorOptions, report: (e: AgentEvent) => void) {
    this.#o = o;
    this.#attestor = new Attestor(o);
    this.#report = report;
  }

  /** The identity in force, or null before enrollment. */
  get identity(): Identity | null {
    return this.#identity;
  }

  /** Enrolls and schedules renewal. */
  async enroll(): Promise<Identity> {
    const id = await this.#attestor.enroll();
    this.#install(id);
    this.#report({ event: 'enrolled', spiffeId: id.spiffeId, notAfter: id.notAfter.toISOString() });
    return id;
  }

  /** Renews now (the timer calls this at half-life). */
  async renew(): Promise<Identity> {
    if (!this.#identity) throw new Error('not enrolled');
    const id = await this.#attestor.renew(this.#identity);
    this.#install(id);
    this.#report({ event: 'renewed', spiffeId: id.spiffeId, notAfter: id.notAfter.toISOString() });
    return id;
  }

  #install(id: Identity): void {
    const old = this.#clients;
    this.#identity = id;
    this.#clients = builderClients(this.#o.addr, this.#o.ca, id);
    // Calls in flight on the old channel finish; grpc-js closes it once they have.
    old?.close();
    this.#schedule(halfLife(id, new Date()));
  }

  #schedule(delayMs: number): void {
    if (this.#timer) clearTimeout(this.#timer);
    if (this.#stopped) return;
    this.#timer = setTimeout(() => void this.#renewLoop(), Math.max(0, delayMs));
    this.#timer.unref();
  }

  async #renewLoop(): Promise<void> {
    try {
      await this.renew();
    } catch (err) {
      // See renewalOutcome: enroll afresh (proving the EK again) instead of letting the identity run out. When the
      // TPM's counters went backwards (the TPM was cleared) the enrollment is refused too, with a message that tells
      // the operator what to do, and that refusal is what the agent reports; once an admin forgot the record, the
      // next retry enrolls.
      const se = err as Partial<ServiceError>;
      const lost = err instanceof AkUnavailableError;
      if (renewalOutcome(err) === 'enroll') {
        this.#report(lost ? { event: 'renewal impossible, enrolling again', error: this.#describe(err) } : { event: 'renewal refused, enrolling again', error: se.details, ...reasonField(err) });
        try {
          await this.enroll();
          return;
        } catch (again) {
          err = again;
        }
      }
      const id = this.#identity!;
      const left = id.notAfter.getTime() - Date.now();
      this.#report({ event: 'renewal failed', error: this.#describe(err), ...reasonField(err), expiresInSeconds: Math.max(0, Math.round(left / 1000)) });
      // Retry at a tenth of what is left (between 1 s and 30 s) until the identity has expired.
      if (left > 0) {
        this.#schedule(Math.min(30_000, Math.max(1000, left / 10)));
        return;
      }
      // No renewal can work any more (the certificate it is made with has expired): only a new enrollment, a full
      // attestation judged by the policy of the day, gives the runner an identity again, e.g. once sigild is back
      // after an outage longer than the identity's lifetime.
      this.#report({ event: 'identity expired, enrolling again', spiffeId: id.spiffeId });
      this.#reenroll(REENROLL_FIRST_MS);
    }
  }

  /** Tries to enroll in `delayMs`, and again with the delay doubled (up to a minute) until it works or the agent stops. */
  #reenroll(delayMs: number): void {
    if (this.#timer) clearTimeout(this.#timer);
    if (this.#stopped) return;
    this.#timer = setTimeout(() => {
      this.enroll().catch((err: unknown) => {
        const outcome = enrollmentOutcome(err);
        if (outcome === 'stop') {
          // No retry can succeed: only an admin can act, and the agent must be restarted after that.
          this.#report({ event: 'enrollment refused for good, the agent stops enrolling', error: this.#describe(err), ...reasonField(err) });
          return;
        }
        const next = Math.min(outcome === 'refused' ? REENROLL_REFUSED_MAX_MS : REENROLL_MAX_MS, delayMs * 2);
        this.#report({ event: 'enrollment failed', error: this.#describe(err), ...reasonField(err), retryInSeconds: Math.round(next / 1000) });
        this.#reenroll(next);
      });
    }, delayMs);
    this.#timer.unref();
  }

  /** Serves the local socket; the directory is made private and the socket readable by this user only. */
  async listen(path: string): Promise<void> {
    const dir = dirname(path);
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const st = statSync(dir);
    if (process.getuid && st.uid !== process.getuid()) throw new Error(`socket directory ${dir} belongs to another user`);
    if ((st.mode & 0o077) !== 0) chmodSync(dir, 0o700);
    rmSync(path, { force: true });
    const server = createServer((req, res) => void this.#handle(req, res));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(path, () => resolve());
    });
    chmodSync(path, 0o600);
    this.#server = server;
    this.#socketPath = path;
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const reply = (code: number, body: unknown): void => {
      res.writeHead(code, { 'content-type': 'application/json' });
      res.end(JSON.stringify(body));
    };
    try {
      const id = this.#identity;
      const c = this.#clients;
      if (!id || !c) return reply(503, { code: 'UNAVAILABLE', message: 'the agent has no identity yet' });
      if (req.method === 'GET' && req.url === '/v1/identity') {
        return reply(200, { spiffeId: id.spiffeId, notBefore: id.notBefore, notAfter: id.notAfter, certificatePem: id.certificatePem, caCertificatePem: id.caCertificatePem });
      }
      if (req.method !== 'POST') return reply(405, { code: 'INVALID_ARGUMENT', message: 'use POST' });
      // sigild would refuse the expired certificate anyway; say what is going on instead.
      if (id.notAfter.getTime() <= Date.now()) {
        return reply(503, { code: 'UNAVAILABLE', message: `the agent's identity expired at ${id.notAfter.toISOString()}: it is enrolling again` });
      }
      const body = JSON.parse((await readBody(req)).toString('utf8')) as { key?: unknown; digest?: unknown; message?: unknown };
      if (typeof body.key !== 'string') return reply(400, { code: 'INVALID_ARGUMENT', message: 'key is required' });
      if (req.url === '/v1/public-key') {
        const pk = await rpc.getPublicKey(c, { key: body.key });
        return reply(200, { keyVersion: pk.keyVersion, algorithm: pk.algorithm, pem: pk.pem, maxMessageBytes: pk.maxMessageBytes || DEFAULT_MAX_MESSAGE_BYTES, agentMaxMessageBytes: AGENT_MAX_MESSAGE_BYTES });
      }
      if (req.url === '/v1/sign') {
        const digest = typeof body.digest === 'string' ? Buffer.from(body.digest, 'base64') : undefined;
        const message = typeof body.message === 'string' ? Buffer.from(body.message, 'base64') : undefined;
        const r = await rpc.sign(c, { key: body.key, digest, message });
        return reply(200, { signature: r.signature.toString('base64'), keyVersion: r.keyVersion, algorithm: r.algorithm });
      }
      return reply(404, { code: 'NOT_FOUND', message: `no such call ${req.url}` });
    } catch (err) {
      const se = err as Partial<ServiceError>;
      if (typeof se.code === 'number') return reply(se.code === Status.PERMISSION_DENIED ? 403 : 400, { code: Status[se.code], ...reasonField(err), message: errorJson(err, this.#o.addr).message });
      return reply(400, { code: 'INVALID_ARGUMENT', message: this.#describe(err) });
    }
  }

  /** A one-line description of an error, naming sigild's address when it could not be reached. */
  #describe(err: unknown): string {
    return describeError(err, this.#o.addr);
  }

  /** Stops renewing, closes the socket (removing it) and the channel. */
  async stop(): Promise<void> {
    this.#stopped = true;
    if (this.#timer) clearTimeout(this.#timer);
    this.#clients?.close();
    if (this.#server) await new Promise<void>((resolve) => this.#server!.close(() => resolve()));
    if (this.#socketPath) rmSync(this.#socketPath, { force: true });
  }
}

/**
 * What the agent does after a failed renewal: `enroll` afresh when sigild asks for a new enrollment (it cannot
 * re-check this runner's EK trust, or has no record of its EK) or the TPM's clock went backwards (the
 * enrollment's refusal then names the fix), and when the TPM no longer loads the enrolled AK (cleared while the
 * agent ran); otherwise `retry` the renewal while the identity lasts. Decided by sigild's ErrorInfo reason.
 */
export function renewalOutcome(err: unknown): 'enroll' | 'retry' {
  if (err instanceof AkUnavailableError) return 'enroll';
  const reason = reasonOf(err);
  if (reason !== undefined) return reason === 'ENROLL_AGAIN' || reason === 'TPM_CLOCK_WENT_BACKWARDS' ? 'enroll' : 'retry';
  // Fallback for a sigild older than ErrorInfo reasons: its messages, which it never changed.
  const se = err as Partial<ServiceError>;
  return se.code === Status.PERMISSION_DENIED && typeof se.details === 'string' && /(?:enroll again|^tpm \w+ went backwards)$/.test(se.details) ? 'enroll' : 'retry';
}

/**
 * What the agent does after a failed enrollment: `stop` for good when the builder's TPM is revoked (only an
 * admin can act), retry slowly when otherwise `refused` (each refusal is an audit entry on sigild's side), or
 * `retry` soon (sigild unreachable or failing). Decided by sigild's ErrorInfo reason.
 */
export function enrollmentOutcome(err: unknown): 'stop' | 'refused' | 'retry' {
  const se = err as Partial<ServiceError>;
  const reason = reasonOf(err);
  if (reason === 'BUILDER_REVOKED') return 'stop';
  // Fallback for a sigild older than ErrorInfo reasons: its message, which it never changed.
  if (reason === undefined && se.code === Status.PERMISSION_DENIED && typeof se.details === 'string' && /^builder tpm revoked/.test(se.details)) return 'stop';
  return se.code === Status.PERMISSION_DENIED || se.code === Status.FAILED_PRECONDITION ? 'refused' : 'retry';
}

/** `{ reason }` for an agent event when sigild sent one. */
function reasonField(err: unknown): { reason?: string } {
  const reason = reasonOf(err);
  return reason === undefined ? {} : { reason };
}

/** Milliseconds from `now` to the middle of what is left of the identity's validity. */
export function halfLife(id: Identity, now: Date): number {
  return Math.max(0, (id.notAfter.getTime() - now.getTime()) / 2);
}

async function readBody(req: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const chunk of req) {
    n += (chunk as Buffer).length;
    if (n > MAX_BODY) throw new Error(`the request is larger than the agent takes (${MAX_BODY} bytes)`);
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks);
}
