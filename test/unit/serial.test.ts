import assert from 'node:assert/strict';
import { test } from 'node:test';
import { KeyedSerial, Serial } from '../../src/serial.ts';

const tick = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

test('Serial runs operations one at a time in order, and a failure does not stop the next', async () => {
  const s = new Serial();
  const log: string[] = [];
  const op = (name: string, ms: number, fail = false) => async (): Promise<string> => {
    log.push(`start ${name}`);
    await tick(ms);
    log.push(`end ${name}`);
    if (fail) throw new Error(name);
    return name;
  };
  const results = await Promise.allSettled([s.run(op('a', 20)), s.run(op('b', 1, true)), s.run(op('c', 1))]);
  assert.deepEqual(log, ['start a', 'end a', 'start b', 'end b', 'start c', 'end c']);
  assert.deepEqual(results.map((r) => r.status), ['fulfilled', 'rejected', 'fulfilled']);
});

test('KeyedSerial serializes per key only, and a failure does not block the key', async () => {
  const s = new KeyedSerial();
  const log: string[] = [];
  const op = (name: string, ms: number) => async (): Promise<void> => {
    log.push(`start ${name}`);
    await tick(ms);
    log.push(`end ${name}`);
  };
  await Promise.all([s.run('k1', op('k1a', 20)), s.run('k1', op('k1b', 1)), s.run('k2', op('k2a', 1))]);
  // k2 ran while k1's first operation was still going; k1's second waited for its first.
  assert.ok(log.indexOf('end k2a') < log.indexOf('end k1a'));
  assert.ok(log.indexOf('end k1a') < log.indexOf('start k1b'));
  await assert.rejects(s.run('k1', async () => {
    throw new Error('boom');
  }), /boom/);
  assert.equal(await s.run('k1', async () => 'next'), 'next');
});
