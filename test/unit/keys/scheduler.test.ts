import assert from 'node:assert/strict';
import { test } from 'node:test';
import { pino } from 'pino';
import { SigilError } from '../../../src/errors.ts';
import type { KeyLifecycle } from '../../../src/keys/lifecycle.ts';
import { KeyScheduler } from '../../../src/keys/scheduler.ts';
import type { Store } from '../../../src/store/store.ts';

const MIN = 60_000;

test('a timed act that keeps failing is retried after 1, 2, 4 ... minutes, at most hourly, and on time again once it succeeds', async () => {
  let t = 0;
  let failing = true;
  const attempts: number[] = [];
  // A key always due for rotation whose rotation fails until `failing` is cleared (a full TPM, say).
  const lifecycle = {
    expireApprovals: async () => [],
    rotate: async () => {
      attempts.push(t / MIN);
      if (failing) throw new SigilError('FAILED_PRECONDITION', 'the tpm has no room left for another persistent key');
      return { key: {}, version: 2 };
    },
  } as unknown as KeyLifecycle;
  const store = { versionsInState: () => [], keysDueForRotation: () => ['rel/app'] } as unknown as Store;
  const s = new KeyScheduler({ store, lifecycle, clock: { now: () => new Date(t) }, log: pino({ level: 'silent' }), intervalMs: 30_000 });
  for (t = 0; t <= 200 * MIN; t += MIN / 2) await s.tick();
  assert.deepEqual(attempts, [0, 1, 3, 7, 15, 31, 63, 123, 183]);
  failing = false;
  attempts.length = 0;
  for (t = 243 * MIN; t <= 246 * MIN; t += MIN / 2) await s.tick();
  assert.deepEqual(attempts, [243, 243.5, 244, 244.5, 245, 245.5, 246], 'after a success the act runs on every tick it is due');
});
