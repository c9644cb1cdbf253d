import { test } from 'node:test';
import assert from 'node:assert/strict';
import { generationWindows, isLive, refusal, type GenerationInput } from '../../../src/identity/ca-generations.ts';

const HOUR = 3_600_000;
const t = (h: number): Date => new Date(Date.UTC(2026, 0, 1) + h * HOUR);
const gen = (version: number, startedAt: Date, over: Partial<GenerationInput> = {}): GenerationInput => ({
  version,
  startedAt,
  state: 'ENABLED',
  disabledAt: null,
  revokedAt: null,
  destroyedAt: null,
  ...over,
});

test('one generation: current, live for ever, its window open', () => {
  const [w] = generationWindows([gen(1, t(0))], 24 * HOUR);
  assert.deepEqual(w, { version: 1, startedAt: t(0), rotatedAt: null, liveUntil: null, enabled: true, closedAt: null, current: true });
  assert.ok(isLive(w!, t(100_000)));
  assert.equal(refusal(w!, t(100_000)), null);
});

test('after a rotation the older generation is live until rotation + max lifetime, then refused; the newest is current', () => {
  const ws = generationWindows([gen(2, t(10)), gen(1, t(0))], 2 * HOUR);
  assert.deepEqual(
    ws.map((w) => [w.version, w.current, w.rotatedAt, w.liveUntil, w.closedAt]),
    [
      [1, false, t(10), t(12), t(12)],
      [2, true, null, null, null],
    ],
  );
  const v1 = ws[0]!;
  assert.ok(isLive(v1, t(11.999)));
  assert.ok(!isLive(v1, t(12)), 'the window ends at rotation + max lifetime exactly');
  assert.equal(refusal(v1, t(12)), 'builder certificate issued by identity ca generation 1, which is no longer trusted');
  assert.ok(isLive(ws[1]!, t(1000)));
});

test('three generations: each is rotated out when the next one started', () => {
  const ws = generationWindows([gen(1, t(0)), gen(2, t(5)), gen(3, t(6))], HOUR);
  assert.deepEqual(ws.map((w) => w.liveUntil), [t(6), t(7), null]);
  assert.deepEqual(ws.filter((w) => isLive(w, t(5.5))).map((w) => w.version), [1, 2, 3]);
  assert.deepEqual(ws.filter((w) => isLive(w, t(6.5))).map((w) => w.version), [2, 3]);
});

test('a disabled generation is not live at once and its window closes when it was disabled; enabled again it is live again', () => {
  const disabled = generationWindows([gen(1, t(0), { state: 'DISABLED', disabledAt: t(10.5) }), gen(2, t(10))], 2 * HOUR);
  assert.ok(!isLive(disabled[0]!, t(10.6)));
  assert.equal(disabled[0]!.closedAt!.getTime(), t(10.5).getTime());
  assert.equal(refusal(disabled[0]!, t(10.6)), 'builder certificate issued by identity ca generation 1, which is disabled');
  const enabled = generationWindows([gen(1, t(0)), gen(2, t(10))], 2 * HOUR);
  assert.ok(isLive(enabled[0]!, t(10.6)));
});

test('compromise, scheduled destruction and destruction end a window at their time', () => {
  const compromised = generationWindows([gen(1, t(0), { state: 'DISABLED', disabledAt: t(11), revokedAt: t(9) }), gen(2, t(10))], 2 * HOUR);
  assert.equal(compromised[0]!.closedAt!.getTime(), t(9).getTime(), 'the compromise time, which may be earlier than the disable');
  assert.ok(!compromised[0]!.enabled);
  const scheduled = generationWindows([gen(1, t(0), { state: 'DESTROY_SCHEDULED' }), gen(2, t(10))], 2 * HOUR);
  assert.ok(!isLive(scheduled[0]!, t(10.5)));
  assert.equal(scheduled[0]!.closedAt!.getTime(), t(12).getTime(), 'no disable time: it closes at the end of its window');
  const destroyed = generationWindows([gen(1, t(0), { state: 'DESTROYED', destroyedAt: t(20) }), gen(2, t(10))], 2 * HOUR);
  assert.equal(destroyed[0]!.closedAt!.getTime(), t(12).getTime());
  // A current generation that is not enabled closes too.
  const [cur] = generationWindows([gen(1, t(0), { state: 'DISABLED', disabledAt: t(3) })], HOUR);
  assert.deepEqual([cur!.current, cur!.closedAt], [true, t(3)]);
});
