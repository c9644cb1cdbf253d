import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import pkcs11js from 'pkcs11js';
import { SigilError } from '../../../src/errors.ts';
import { faultOf, pkcs11Error } from '../../../src/signers/pkcs11/errors.ts';
import { SessionPool } from '../../../src/signers/pkcs11/pool.ts';

const ckr = (name: string, code: number) => new pkcs11js.Pkcs11Error(name, code, 'C_SignInit');

describe('pkcs11 faults the backend recovers from', () => {
  it('classifies lost sessions, lost logins, stale handles and a gone token', () => {
    const cases: Array<[string, number, ReturnType<typeof faultOf>]> = [
      ['CKR_SESSION_HANDLE_INVALID', 0xb3, 'session'],
      ['CKR_SESSION_CLOSED', 0xb0, 'session'],
      ['CKR_USER_NOT_LOGGED_IN', 0x101, 'login'],
      ['CKR_OBJECT_HANDLE_INVALID', 0x82, 'handle'],
      ['CKR_KEY_HANDLE_INVALID', 0x60, 'handle'],
      ['CKR_TOKEN_NOT_PRESENT', 0xe0, 'token'],
      ['CKR_DEVICE_REMOVED', 0x32, 'token'],
      ['CKR_DEVICE_ERROR', 0x30, 'token'],
      ['CKR_SLOT_ID_INVALID', 0x03, 'token'],
    ];
    for (const [name, code, fault] of cases) assert.equal(faultOf(ckr(name, code)), fault, name);
  });

  it('leaves other errors alone: bad arguments, wrong pins, plain errors, SigilErrors', () => {
    assert.equal(faultOf(ckr('CKR_ARGUMENTS_BAD', 0x07)), null);
    assert.equal(faultOf(ckr('CKR_PIN_INCORRECT', 0xa0)), null);
    assert.equal(faultOf(ckr('CKR_OPERATION_ACTIVE', 0x90)), null);
    assert.equal(faultOf(new Error('CKR_SESSION_HANDLE_INVALID')), null);
    assert.equal(faultOf(new SigilError('KEY_NOT_FOUND', 'no key')), null);
    assert.equal(faultOf(undefined), null);
  });

  it('reports a fault that outlived its one retry as BACKEND_UNAVAILABLE, a stale handle as BACKEND_ERROR', () => {
    assert.equal(pkcs11Error('pkcs11 sign', ckr('CKR_SESSION_HANDLE_INVALID', 0xb3)).code, 'BACKEND_UNAVAILABLE');
    assert.equal(pkcs11Error('pkcs11 sign', ckr('CKR_TOKEN_NOT_PRESENT', 0xe0)).code, 'BACKEND_UNAVAILABLE');
    const stale = pkcs11Error('pkcs11 sign', ckr('CKR_KEY_HANDLE_INVALID', 0x60));
    assert.equal(stale.code, 'BACKEND_ERROR');
    assert.equal(stale.message, 'pkcs11 sign failed: CKR_KEY_HANDLE_INVALID');
  });
});

describe('SessionPool.renewFree', () => {
  it('swaps free sessions for what renew returns and leaves lent ones to their borrowers', async () => {
    const [a, b, c] = [Buffer.from([1]), Buffer.from([2]), Buffer.from([3])];
    const pool = new SessionPool([a, b, c]);
    const lent = pool.tryAcquire()!;
    const seen: Buffer[] = [];
    const fresh = Buffer.from([9]);
    pool.renewFree((s) => {
      seen.push(s);
      return s === a ? fresh : s;
    });
    assert.equal(seen.length, 2);
    assert.ok(!seen.includes(lent), 'a lent session is not renewed under its borrower');
    const free = [pool.tryAcquire(), pool.tryAcquire()];
    assert.equal(pool.tryAcquire(), undefined);
    assert.ok(free.includes(fresh) && !free.includes(a), 'the swapped session replaced the old one');
    // The pool still counts three sessions: draining waits for the lent one.
    pool.release(free[0]!);
    pool.release(free[1]!);
    let drained: Buffer[] | null = null;
    const d = pool.drain().then((x) => (drained = x));
    await new Promise((r) => setImmediate(r));
    assert.equal(drained, null);
    pool.release(lent);
    assert.equal((await d).length, 3);
  });
});
