import assert from 'node:assert/strict';
import { test } from 'node:test';
import { NonceStore } from '../../../src/attest/nonce.ts';
import { isSigilError } from '../../../src/errors.ts';

function fakeClock(start = 1_700_000_000_000) {
  let t = start;
  return { now: () => new Date(t), advance: (ms: number) => (t += ms) };
}

const refused = (code: string, message: string) => (err: unknown) => isSigilError(err) && err.code === code && err.message === message;

test('a nonce is 32 fresh bytes and is taken once', () => {
  const s = new NonceStore<string>({ clock: fakeClock(), ttlMs: 60_000 });
  const a = s.issue('a');
  const b = s.issue('b');
  assert.equal(a.length, 32);
  assert.notDeepEqual(a, b);
  assert.equal(s.take(b), 'b');
  assert.equal(s.take(a), 'a');
  assert.throws(() => s.take(a), refused('FAILED_PRECONDITION', 'unknown or already used nonce'));
  assert.throws(() => s.take(Buffer.alloc(32)), refused('FAILED_PRECONDITION', 'unknown or already used nonce'));
  assert.throws(() => s.take(Buffer.alloc(3)), refused('FAILED_PRECONDITION', 'unknown or already used nonce'));
});

test('an expired nonce is refused and consumed', () => {
  const clock = fakeClock();
  const s = new NonceStore<string>({ clock, ttlMs: 60_000 });
  const n = s.issue('x');
  clock.advance(59_999);
  const m = s.issue('y');
  assert.equal(s.take(n), 'x');
  clock.advance(60_000);
  assert.throws(() => s.take(m), refused('FAILED_PRECONDITION', 'nonce expired'));
  assert.throws(() => s.take(m), refused('FAILED_PRECONDITION', 'unknown or already used nonce'));
});

test('the store is bounded and sweeps expired entries', () => {
  const clock = fakeClock();
  const s = new NonceStore<number>({ clock, ttlMs: 1000, maxPending: 3 });
  s.issue(1);
  s.issue(2);
  s.issue(3);
  assert.throws(() => s.issue(4), (err: unknown) => isSigilError(err, 'LIMIT_REACHED') && /too many pending/.test(err.message));
  assert.equal(s.size, 3);
  clock.advance(1000);
  const n = s.issue(5);
  assert.equal(s.size, 1);
  assert.equal(s.take(n), 5);
});
