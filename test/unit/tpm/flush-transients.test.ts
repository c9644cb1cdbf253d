import assert from 'node:assert/strict';
import { test } from 'node:test';
import { TpmError } from '../../../src/tpm/rc.ts';
import { TRANSIENT_FIRST, Tpm } from '../../../src/tpm/tpm.ts';
import type { TpmTransport } from '../../../src/tpm/transport.ts';

// Tpm.flushTransients on the wire: the exact command bytes (TPM 2.0 Part 3, 30.2 GetCapability and
// 28.4 FlushContext) and responses written out by hand from Part 2 (TPMS_CAPABILITY_DATA, TPML_HANDLE).
// Against a real swtpm: test/integration/tpm-transients.test.ts.

const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex');
const u32 = (n: number) => n.toString(16).padStart(8, '0');

function response(rc: number, params = ''): Buffer {
  const body = hex(params);
  return Buffer.concat([hex(`8001 ${u32(10 + body.length)} ${u32(rc)}`), body]);
}

// TPMS_CAPABILITY_DATA for TPM_CAP_HANDLES: moreData, capability (1), TPML_HANDLE.
function handlesResponse(more: boolean, handles: number[]): Buffer {
  return response(0, `${more ? '01' : '00'} 00000001 ${u32(handles.length)} ${handles.map(u32).join('')}`);
}

/** A transport answering from a script, keeping every command it was sent. */
function scripted(answers: Array<(cmd: Buffer) => Buffer>): { transport: TpmTransport; sent: Buffer[] } {
  const sent: Buffer[] = [];
  return {
    sent,
    transport: {
      async send(cmd) {
        sent.push(cmd);
        const next = answers.shift();
        if (next === undefined) throw new Error(`unexpected command ${cmd.toString('hex')}`);
        return next(cmd);
      },
      async close() {},
    },
  };
}

const getCapHandles = (from: number) => hex(`8001 00000016 0000017a 00000001 ${u32(from)} 00000040`);
const flush = (h: number) => hex(`8001 0000000e 00000165 ${u32(h)}`);

test('transient handles start at TPM_HT_TRANSIENT << 24', () => {
  assert.equal(TRANSIENT_FIRST, 0x80000000);
});

test('lists transient handles (paging on moreData) and flushes each one', async () => {
  const { transport, sent } = scripted([
    () => handlesResponse(true, [0x80000000, 0x80000001]),
    () => handlesResponse(false, [0x80000002]),
    () => response(0),
    () => response(0),
    () => response(0),
  ]);
  assert.deepEqual(await new Tpm(transport).flushTransients(), [0x80000000, 0x80000001, 0x80000002]);
  assert.deepEqual(sent, [getCapHandles(0x80000000), getCapHandles(0x80000002), flush(0x80000000), flush(0x80000001), flush(0x80000002)]);
});

test('handles of another type in the answer (a TPM lists the next type when none is left) are not flushed', async () => {
  const { transport, sent } = scripted([() => handlesResponse(false, [0x80000000, 0x81000001]), () => response(0)]);
  assert.deepEqual(await new Tpm(transport).flushTransients(), [0x80000000]);
  assert.deepEqual(sent, [getCapHandles(0x80000000), flush(0x80000000)]);
});

test('no transient objects: nothing flushed', async () => {
  const { transport, sent } = scripted([() => handlesResponse(false, [])]);
  assert.deepEqual(await new Tpm(transport).flushTransients(), []);
  assert.equal(sent.length, 1);
});

test('a handle gone meanwhile (TPM_RC_HANDLE, parameter 1) is skipped; any other refusal stops with a TpmError', async () => {
  const gone = scripted([() => handlesResponse(false, [0x80000000, 0x80000001]), () => response(0x18b), () => response(0)]);
  assert.deepEqual(await new Tpm(gone.transport).flushTransients(), [0x80000001]);
  assert.equal(gone.sent.length, 3);

  const failing = scripted([() => handlesResponse(false, [0x80000000, 0x80000001]), () => response(0x101)]);
  await assert.rejects(new Tpm(failing.transport).flushTransients(), (e) => e instanceof TpmError && e.rc === 0x101 && /FlushContext/.test(e.message));
  assert.equal(failing.sent.length, 2, 'stops at the first refusal');
});

test('a capability answer for another capability or with trailing bytes is refused as malformed', async () => {
  const wrongCap = scripted([() => response(0, '00 00000006 00000000')]);
  await assert.rejects(new Tpm(wrongCap.transport).flushTransients(), (e) => e instanceof Error && /malformed tpm data/.test(e.message));
  const trailing = scripted([() => response(0, '00 00000001 00000001 80000000 ff')]);
  await assert.rejects(new Tpm(trailing.transport).flushTransients(), (e) => e instanceof Error && /trailing/.test(e.message));
  assert.equal(trailing.sent.length, 1, 'nothing flushed on a malformed list');
});
