import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { SigilError, isSigilError } from '../../../src/errors.ts';
import { silentLogger } from '../../../src/log.ts';
import { CircuitBreaker, resilienceSchema, resilient, type BreakerState } from '../../../src/signers/resilience.ts';
import { canCreateKeys, canDestroyKeys, canEnableKeys, type Backend, type BackendKey, type KeySigner } from '../../../src/signers/signer.ts';

/** A backend whose every answer the test scripts: each call takes the next outcome off `script`. */
function scripted(script: Array<'ok' | 'down' | 'refused' | 'hang'>) {
  const calls: string[] = [];
  const next = <T>(what: string, value: T): Promise<T> => {
    calls.push(what);
    const o = script.shift() ?? 'ok';
    if (o === 'down') return Promise.reject(new SigilError('BACKEND_UNAVAILABLE', 'connection refused'));
    if (o === 'refused') return Promise.reject(new SigilError('FAILED_PRECONDITION', 'key is disabled'));
    if (o === 'hang') return new Promise<T>(() => {});
    return Promise.resolve(value);
  };
  const key: BackendKey = { uri: 'x:1', spki: Buffer.alloc(1), keyType: 'EC_P256' };
  const signer: KeySigner = { algorithm: 'ECDSA_P256_SHA256', sign: () => next('sign', Buffer.from('sig')) };
  const backend: Backend & { createKey(): Promise<BackendKey>; destroyKey(): Promise<void>; findKeyByLabel(): Promise<string | null> } = {
    kind: 'scripted',
    algorithms: ['ECDSA_P256_SHA256'],
    getKey: () => next('getKey', key),
    signer: () => next('signer', signer),
    close: async () => {},
    createKey: () => next('createKey', key),
    destroyKey: () => next('destroyKey', undefined),
    findKeyByLabel: () => next('findKeyByLabel', null),
  };
  return { backend, calls };
}

const settings = (o: Partial<ReturnType<typeof resilienceSchema.parse>> = {}) => resilienceSchema.parse({ backoffMs: 1, ...o });

describe('circuit breaker', () => {
  it('opens after N consecutive faults, refuses during the cooldown, lets one trial through, closes on success', () => {
    let now = 0;
    const seen: BreakerState[] = [];
    const b = new CircuitBreaker({ failures: 3, cooldownMs: 1000, now: () => now, onChange: (to) => seen.push(to) });
    for (let i = 0; i < 2; i++) {
      assert.deepEqual(b.admit(), { trial: false });
      b.failure(false);
    }
    assert.equal(b.state(), 'closed');
    b.admit();
    b.failure(false);
    assert.equal(b.state(), 'open');
    now = 400;
    assert.deepEqual(b.admit(), { retryInMs: 600 });
    now = 1000;
    assert.equal(b.state(), 'half-open');
    assert.deepEqual(b.admit(), { trial: true });
    // While the trial is out, everyone else is still refused.
    assert.ok('retryInMs' in b.admit());
    b.success(true);
    assert.equal(b.state(), 'closed');
    assert.deepEqual(seen, ['open', 'half-open', 'closed']);
  });

  it('a failed trial opens it again for a whole cooldown', () => {
    let now = 0;
    const b = new CircuitBreaker({ failures: 1, cooldownMs: 500, now: () => now });
    b.admit();
    b.failure(false);
    now = 600;
    assert.deepEqual(b.admit(), { trial: true });
    b.failure(true);
    assert.equal(b.state(), 'open');
    now = 1000;
    assert.deepEqual(b.admit(), { retryInMs: 100 });
  });

  it('a success between faults resets the count', () => {
    const b = new CircuitBreaker({ failures: 2, cooldownMs: 500 });
    b.failure(false);
    b.success(false);
    b.failure(false);
    assert.equal(b.state(), 'closed');
  });

  it('failures: 0 never opens', () => {
    const b = new CircuitBreaker({ failures: 0, cooldownMs: 500 });
    for (let i = 0; i < 100; i++) b.failure(false);
    assert.deepEqual(b.admit(), { trial: false });
  });
});

describe('resilient backend', () => {
  it('retries a transient fault and succeeds, but never retries a refusal', async () => {
    const { backend, calls } = scripted(['down', 'down', 'ok', 'refused']);
    const r = resilient(backend, settings({ retries: 2 }), { name: 't', log: silentLogger() });
    assert.equal((await r.getKey('x:1')).uri, 'x:1');
    assert.equal(calls.length, 3);
    await assert.rejects(r.getKey('x:1'), (e) => isSigilError(e, 'FAILED_PRECONDITION'));
    assert.equal(calls.length, 4);
  });

  it('gives up after the bounded retries with BACKEND_UNAVAILABLE', async () => {
    const { backend, calls } = scripted(['down', 'down', 'down', 'down']);
    const r = resilient(backend, settings({ retries: 2, breakerFailures: 0 }), { name: 't', log: silentLogger() });
    await assert.rejects(r.getKey('x:1'), (e) => isSigilError(e, 'BACKEND_UNAVAILABLE'));
    assert.equal(calls.length, 3);
  });

  it('never retries createKey: a second key could be made', async () => {
    const { backend, calls } = scripted(['down', 'ok']);
    const r = resilient(backend, settings({ retries: 5 }), { name: 't', log: silentLogger() });
    assert.ok(canCreateKeys(r));
    await assert.rejects(r.createKey({ label: 'k-v1', algorithm: 'ECDSA_P256_SHA256' }), (e) => isSigilError(e, 'BACKEND_UNAVAILABLE'));
    assert.deepEqual(calls, ['createKey']);
  });

  it('answers a call that hangs with BACKEND_UNAVAILABLE at the deadline', async () => {
    const { backend } = scripted(['ok', 'hang']);
    const r = resilient(backend, settings({ deadlineMs: 80 }), { name: 't', log: silentLogger() });
    const s = await r.signer('x:1', 'ECDSA_P256_SHA256');
    const t0 = performance.now();
    await assert.rejects(s.sign(Buffer.alloc(32)), (e) => isSigilError(e, 'BACKEND_UNAVAILABLE') && /within 80 ms/.test((e as Error).message));
    const took = performance.now() - t0;
    assert.ok(took >= 70 && took < 1000, `deadline took ${took} ms`);
  });

  it("tells a signer that drops abandoned requests when its deadline passed, and passes the caller's own signal on", async () => {
    const seen: AbortSignal[] = [];
    const hanging: KeySigner = {
      algorithm: 'ECDSA_P256_SHA256',
      dropsAbandoned: true,
      sign: (_input, signal) => {
        seen.push(signal!);
        return new Promise<Buffer>(() => {});
      },
    };
    const backend: Backend = { kind: 'hanging', algorithms: ['ECDSA_P256_SHA256'], getKey: async () => ({ uri: 'x:1', spki: Buffer.alloc(1), keyType: 'EC_P256' }), signer: async () => hanging, close: async () => {} };
    const r = resilient(backend, settings({ deadlineMs: 60 }), { name: 't', log: silentLogger() });
    const s = await r.signer('x:1', 'ECDSA_P256_SHA256');
    assert.equal(s.dropsAbandoned, true);
    await assert.rejects(s.sign(Buffer.alloc(32)), (e) => isSigilError(e, 'BACKEND_UNAVAILABLE'));
    assert.equal(seen.length, 1, 'a timeout is not retried: the deadline is spent');
    assert.equal(seen[0]!.aborted, true, 'aborted once the caller was answered');
    const caller = new AbortController();
    const pending = s.sign(Buffer.alloc(32), caller.signal);
    assert.equal(seen[1]!.aborted, false);
    caller.abort();
    assert.equal(seen[1]!.aborted, true, "the caller's own abort reaches the signer");
    await assert.rejects(pending, (e) => isSigilError(e, 'BACKEND_UNAVAILABLE'));
    // A signer that does not drop requests gets no signal (none is made for it).
    const { backend: plain } = scripted(['ok', 'ok']);
    let got: unknown = 'unset';
    const wrapped = await resilient({ ...plain, signer: async () => ({ algorithm: 'ECDSA_P256_SHA256', sign: (_i: Buffer, sig?: AbortSignal) => ((got = sig), Promise.resolve(Buffer.from('sig'))) }) }, settings(), { name: 'p', log: silentLogger() }).signer('x:1', 'ECDSA_P256_SHA256');
    await wrapped.sign(Buffer.alloc(32));
    assert.equal(got, undefined);
  });

  it('opens the breaker while the backend is down and fails fast, then closes when it answers again', async () => {
    const { backend, calls } = scripted(['ok', 'down', 'down', 'down', 'down', 'ok', 'ok']);
    const r = resilient(backend, settings({ retries: 0, breakerFailures: 2, breakerCooldownMs: 60 }), { name: 't', log: silentLogger() });
    const s = await r.signer('x:1', 'ECDSA_P256_SHA256');
    for (let i = 0; i < 2; i++) await assert.rejects(s.sign(Buffer.alloc(32)), (e) => isSigilError(e, 'BACKEND_UNAVAILABLE'));
    const before = calls.length;
    // Open: refused without calling the backend.
    await assert.rejects(s.sign(Buffer.alloc(32)), (e) => isSigilError(e, 'BACKEND_UNAVAILABLE') && /circuit breaker open/.test((e as Error).message));
    assert.equal(calls.length, before);
    await new Promise((res) => setTimeout(res, 70));
    // The trial fails: open again.
    await assert.rejects(s.sign(Buffer.alloc(32)), (e) => isSigilError(e, 'BACKEND_UNAVAILABLE'));
    await new Promise((res) => setTimeout(res, 70));
    await assert.rejects(s.sign(Buffer.alloc(32)), (e) => isSigilError(e, 'BACKEND_UNAVAILABLE'));
    assert.equal(calls.length, before + 2);
    await new Promise((res) => setTimeout(res, 70));
    assert.deepEqual(await s.sign(Buffer.alloc(32)), Buffer.from('sig'));
    assert.deepEqual(await s.sign(Buffer.alloc(32)), Buffer.from('sig'));
  });

  it('offers exactly the optional powers of the backend it wraps', () => {
    const { backend } = scripted([]);
    const r = resilient(backend, settings(), { name: 't', log: silentLogger() });
    assert.ok(canCreateKeys(r) && canDestroyKeys(r));
    assert.equal(canEnableKeys(r), false);
    const bare: Backend = { kind: 'bare', algorithms: [], getKey: backend.getKey, signer: backend.signer, close: backend.close };
    const rb = resilient(bare, settings(), { name: 'b', log: silentLogger() });
    assert.equal(canCreateKeys(rb), false);
    assert.equal(canDestroyKeys(rb), false);
  });

  it('config: defaults fill in and bad values are refused', () => {
    assert.deepEqual(resilienceSchema.parse(undefined), { deadlineMs: 10000, retries: 2, backoffMs: 50, breakerFailures: 5, breakerCooldownMs: 2000 });
    assert.equal(resilienceSchema.safeParse({ retries: -1 }).success, false);
    assert.equal(resilienceSchema.safeParse({ deadline: 5 }).success, false);
  });
});
