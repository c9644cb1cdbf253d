import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { test } from 'node:test';
import fc from 'fast-check';
import {
  buildEventLog,
  checkEventLog,
  EV,
  EventLogFormatError,
  eventTypeName,
  parseEventLog,
  replay,
  type EventRule,
} from '../../../src/attest/eventlog.ts';
import { isSigilError } from '../../../src/errors.ts';

const SHA1 = 0x0004;
const SHA256 = 0x000b;
const sha256 = (...b: Buffer[]) => createHash('sha256').update(Buffer.concat(b)).digest();

const events = [
  { pcr: 0, type: EV.EV_S_CRTM_VERSION!, data: Buffer.from('crtm 1.0') },
  { pcr: 4, type: EV.EV_EFI_BOOT_SERVICES_APPLICATION!, data: Buffer.from('bootx64.efi') },
  { pcr: 7, type: EV.EV_SEPARATOR!, data: Buffer.alloc(4) },
  { pcr: 4, type: EV.EV_SEPARATOR!, data: Buffer.alloc(4) },
];

test('a built log parses back, both banks, with its header', () => {
  const bytes = buildEventLog(events, { algorithms: [SHA1, SHA256] });
  const log = parseEventLog(bytes);
  assert.deepEqual(log.specId.algorithms, [{ alg: SHA1, size: 20 }, { alg: SHA256, size: 32 }]);
  assert.equal(log.events.length, 4);
  assert.equal(log.events[1]!.pcr, 4);
  assert.equal(eventTypeName(log.events[1]!.type), 'EV_EFI_BOOT_SERVICES_APPLICATION');
  assert.deepEqual(log.events[1]!.digests.get(SHA256), sha256(Buffer.from('bootx64.efi')));
  assert.equal(log.events[1]!.digests.get(SHA1)!.length, 20);
  assert.deepEqual(log.events[2]!.data, Buffer.alloc(4));
});

test('replay extends from zeros; startup locality sets the last byte of pcr 0', () => {
  const log = parseEventLog(buildEventLog(events, { locality: 3 }));
  const v = replay(log, SHA256);
  const init0 = Buffer.alloc(32);
  init0[31] = 3;
  assert.deepEqual(v.get(0), sha256(init0, sha256(Buffer.from('crtm 1.0'))));
  const p4 = sha256(sha256(Buffer.alloc(32), sha256(Buffer.from('bootx64.efi'))), sha256(Buffer.alloc(4)));
  assert.deepEqual(v.get(4), p4);
  assert.equal(v.has(1), false);
  assert.throws(() => replay(log, SHA1), (e: unknown) => isSigilError(e, 'PERMISSION_DENIED') && e.message === 'event log has no sha1 digests');
});

test('a startup locality after pcr 0 was extended is refused', () => {
  const bad = buildEventLog([events[0]!, { pcr: 0, type: EV.EV_NO_ACTION!, data: Buffer.concat([Buffer.from('StartupLocality\0'), Buffer.from([3])]) }]);
  assert.throws(() => replay(parseEventLog(bad), SHA256), /startup locality after pcr 0/);
});

function quotedFor(bytes: Buffer, selection: number[]): Map<number, Buffer> {
  const v = replay(parseEventLog(bytes), SHA256);
  return new Map(selection.map((p) => [p, v.get(p) ?? Buffer.alloc(32)]));
}

const allow: EventRule[] = [
  { pcrs: [0], type: EV.EV_S_CRTM_VERSION!, require: true },
  { pcrs: [4], type: EV.EV_EFI_BOOT_SERVICES_APPLICATION!, digest: sha256(Buffer.from('bootx64.efi')), require: true },
  { type: EV.EV_SEPARATOR!, data: Buffer.alloc(4), require: false },
];

test('rules: a matching log passes; unmatched, missing required and wrong replay are refused', () => {
  const sel = [0, 1, 2, 3, 4, 5, 6, 7];
  const bytes = buildEventLog(events);
  const log = parseEventLog(bytes);
  checkEventLog(log, { bank: SHA256, selection: sel, quoted: quotedFor(bytes, sel), rules: allow });

  const other = buildEventLog([...events, { pcr: 4, type: EV.EV_EFI_BOOT_SERVICES_APPLICATION!, data: Buffer.from('evil.efi') }]);
  assert.throws(
    () => checkEventLog(parseEventLog(other), { bank: SHA256, selection: sel, quoted: quotedFor(other, sel), rules: allow }),
    (e: unknown) => isSigilError(e, 'PERMISSION_DENIED') && e.message === 'event log event 5 (pcr 4, EV_EFI_BOOT_SERVICES_APPLICATION) matches no rule',
  );

  const lacking = buildEventLog(events.slice(1));
  assert.throws(
    () => checkEventLog(parseEventLog(lacking), { bank: SHA256, selection: sel, quoted: quotedFor(lacking, sel), rules: allow }),
    /lacks an event required by rule 0/,
  );

  const quoted = quotedFor(bytes, sel);
  quoted.set(7, Buffer.alloc(32, 1));
  assert.throws(() => checkEventLog(log, { bank: SHA256, selection: sel, quoted, rules: allow }), /replay of pcr 7 does not match the quoted value/);

  // A pcr the log never touches must quote as zeros.
  const quoted2 = quotedFor(bytes, sel);
  quoted2.set(2, Buffer.alloc(32, 9));
  assert.throws(() => checkEventLog(log, { bank: SHA256, selection: sel, quoted: quoted2, rules: allow }), /replay of pcr 2/);
});

test('events in pcrs outside the selection count for nothing', () => {
  const bytes = buildEventLog([...events, { pcr: 14, type: EV.EV_IPL!, data: Buffer.from('mok') }]);
  const sel = [0, 4, 7];
  checkEventLog(parseEventLog(bytes), { bank: SHA256, selection: sel, quoted: quotedFor(bytes, sel), rules: allow });
  // ...and cannot satisfy a required rule.
  const rules = [...allow, { pcrs: [14], require: true }];
  assert.throws(() => checkEventLog(parseEventLog(bytes), { bank: SHA256, selection: sel, quoted: quotedFor(bytes, sel), rules }), /required by rule 3/);
});

test('malformed logs are refused with a typed error', () => {
  const good = buildEventLog(events);
  const cases: [string, Buffer, RegExp][] = [
    ['empty', Buffer.alloc(0), /truncated/],
    ['truncated', good.subarray(0, good.length - 1), /truncated event data/],
    ['sha1-format log', Buffer.concat([Buffer.alloc(8), Buffer.alloc(20), Buffer.from([4, 0, 0, 0]), Buffer.from('abcd')]), /not an EV_NO_ACTION/],
    ['pcr 24', (() => { const b = Buffer.from(good); b.writeUInt32LE(24, good.indexOf(Buffer.from('crtm 1.0')) - 4 - 32 - 2 - 4 - 4 - 4); return b; })(), /names pcr 24/],
  ];
  for (const [name, bytes, msg] of cases) {
    assert.throws(() => parseEventLog(bytes), (e: unknown) => e instanceof EventLogFormatError && e.code === 'INVALID_ARGUMENT' && msg.test(e.message), name);
  }
  assert.throws(() => parseEventLog(good, { maxBytes: 100 }), /exceeds the limit/);
  assert.throws(() => parseEventLog(good, { maxEvents: 3 }), /more than 3 events/);
});

test('fuzz: random bytes and mutated logs only ever raise EventLogFormatError', () => {
  const good = buildEventLog(events, { algorithms: [SHA1, SHA256], locality: 0 });
  const onlyTyped = (b: Uint8Array) => {
    try {
      const log = parseEventLog(b);
      replay(log, log.specId.algorithms[0]!.alg);
    } catch (e) {
      if (e instanceof EventLogFormatError) return;
      if (isSigilError(e, 'PERMISSION_DENIED')) return;
      throw e;
    }
  };
  fc.assert(fc.property(fc.uint8Array({ maxLength: 512 }), onlyTyped), { numRuns: 2000 });
  fc.assert(
    fc.property(fc.array(fc.tuple(fc.nat(good.length - 1), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 6 }), fc.nat(good.length), (edits, cut) => {
      const b = Buffer.from(good);
      for (const [i, v] of edits) b[i] = v;
      onlyTyped(b.subarray(0, cut));
      onlyTyped(b);
    }),
    { numRuns: 3000 },
  );
});
