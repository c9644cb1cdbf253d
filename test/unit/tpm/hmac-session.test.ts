import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { TPM_ALG, TPM_CC, TPM_ST } from '../../../src/tpm/constants.ts';
import { kdfa } from '../../../src/tpm/kdf.ts';
import { cpHash, marshalAuthResponses, parseAuthResponses, ResponseHmacError, rpHash, sessionHmac, sessionKeyOf } from '../../../src/tpm/hmac-session.ts';
import { Reader, TpmFormatError, Writer } from '../../../src/tpm/marshal.ts';
import { Tpm } from '../../../src/tpm/tpm.ts';
import type { TpmTransport } from '../../../src/tpm/transport.ts';
import { EXCHANGE, KEY_NAME } from './hmac-vectors.ts';

const hex = (s: string) => Buffer.from(s, 'hex');

interface SignCommand {
  nonceCaller: Buffer;
  attributes: number;
  hmac: Buffer;
  parameters: Buffer;
}

// TPM2_Sign command: header, keyHandle, authorizationSize, one TPMS_AUTH_COMMAND, parameters (Part 3, 20.2).
function parseSignCommand(b: Buffer): SignCommand {
  const r = new Reader(b.subarray(10));
  r.u32(); // keyHandle
  const authSize = r.u32();
  const area = new Reader(r.bytes(authSize));
  area.u32(); // session handle
  const nonceCaller = area.sized();
  const attributes = area.u8();
  const hmac = area.sized();
  area.end();
  return { nonceCaller, attributes, hmac, parameters: r.bytes(r.remaining) };
}

// TPM2_Sign response with sessions: header, parameterSize, parameters, one TPMS_AUTH_RESPONSE.
function parseSignResponse(b: Buffer): { rc: number; parameters: Buffer; auth: Buffer } {
  const rc = b.readUInt32BE(6);
  const r = new Reader(b.subarray(10));
  const parameters = r.bytes(r.u32());
  return { rc, parameters, auth: r.bytes(r.remaining) };
}

test('kdfa, the session key, cpHash and both HMACs reproduce a swtpm exchange it accepted', () => {
  const [start, ...signs] = EXCHANGE;
  assert.ok(start && signs.length === 2);
  const cmd = hex(start.command);
  assert.equal(cmd.readUInt32BE(6), TPM_CC.StartAuthSession);
  const sr = new Reader(cmd.subarray(10));
  sr.u32(); // tpmKey: TPM_RH_NULL (unsalted)
  assert.equal(sr.u32(), 0x40000001, 'bound to TPM_RH_OWNER');
  const firstNonceCaller = sr.sized();
  const rsp = hex(start.response);
  assert.equal(rsp.readUInt32BE(6), 0, 'swtpm started the session');
  const rr = new Reader(rsp.subarray(14));
  let nonceTPM = rr.sized();
  rr.end();
  const sessionKey = sessionKeyOf(true, Buffer.alloc(0), Buffer.alloc(0), nonceTPM, firstNonceCaller);
  assert.equal(sessionKey.length, 32);
  assert.deepEqual(sessionKey, kdfa('sha256', Buffer.alloc(0), 'ATH', nonceTPM, firstNonceCaller, 256));

  for (const s of signs) {
    const c = parseSignCommand(hex(s.command));
    const cp = cpHash(TPM_CC.Sign, [hex(KEY_NAME)], c.parameters);
    assert.deepEqual(sessionHmac(sessionKey, Buffer.alloc(0), cp, c.nonceCaller, nonceTPM, c.attributes), c.hmac, 'the command hmac swtpm accepted');
    // The same command for an object of another name has another HMAC: the TPM would refuse it.
    const other = hex(KEY_NAME);
    other[10]! ^= 1;
    assert.notDeepEqual(sessionHmac(sessionKey, Buffer.alloc(0), cpHash(TPM_CC.Sign, [other], c.parameters), c.nonceCaller, nonceTPM, c.attributes), c.hmac);

    const r = parseSignResponse(hex(s.response));
    assert.equal(r.rc, 0, 'swtpm accepted the command hmac');
    const [auth] = parseAuthResponses(r.auth, 1);
    assert.ok(auth);
    const rp = rpHash(0, TPM_CC.Sign, r.parameters);
    assert.deepEqual(sessionHmac(sessionKey, Buffer.alloc(0), rp, auth.nonce, c.nonceCaller, auth.attributes), auth.hmac, 'the response hmac swtpm sent');
    // A changed response parameter byte no longer matches.
    const tampered = Buffer.from(r.parameters);
    tampered[tampered.length - 1]! ^= 1;
    assert.notDeepEqual(sessionHmac(sessionKey, Buffer.alloc(0), rpHash(0, TPM_CC.Sign, tampered), auth.nonce, c.nonceCaller, auth.attributes), auth.hmac);
    nonceTPM = auth.nonce; // nonces roll: the next command's nonceOlder
  }
});

test('an unbound, unsalted session has an empty session key; a bound one does not', () => {
  const n = Buffer.alloc(32, 7);
  assert.equal(sessionKeyOf(false, Buffer.alloc(0), Buffer.alloc(0), n, n).length, 0);
  assert.equal(sessionKeyOf(true, Buffer.alloc(0), Buffer.alloc(0), n, n).length, 32);
  // Trailing zeros of an authValue do not count (Part 1, 19.6.4.3).
  assert.deepEqual(sessionKeyOf(true, Buffer.from([1, 2, 0, 0]), Buffer.alloc(0), n, n), sessionKeyOf(true, Buffer.from([1, 2]), Buffer.alloc(0), n, n));
  assert.notDeepEqual(sessionKeyOf(true, Buffer.from([1, 2]), Buffer.alloc(0), n, n), sessionKeyOf(true, Buffer.from([1]), Buffer.alloc(0), n, n));
});

test('kdfa: output length in whole bytes, longer outputs extend shorter ones, bad lengths refused', () => {
  const k = Buffer.from('key');
  const u = Buffer.from('u');
  const v = Buffer.from('v');
  const long = kdfa('sha256', k, 'ATH', u, v, 512);
  assert.equal(long.length, 64);
  assert.equal(kdfa('sha256', k, 'ATH', u, v, 128).length, 16);
  // bits is part of the input, so a shorter output is not a prefix of a longer one.
  assert.notDeepEqual(kdfa('sha256', k, 'ATH', u, v, 256), long.subarray(0, 32));
  assert.throws(() => kdfa('sha256', k, 'ATH', u, v, 12));
  assert.throws(() => kdfa('sha256', k, 'ATH', u, v, 0));
});

test('fuzz: response authorization areas round-trip, and arbitrary bytes parse or fail with TpmFormatError', () => {
  const entry = fc
    .record({
      nonce: fc.uint8Array({ maxLength: 64 }).map((a) => Buffer.from(a)),
      attributes: fc.integer({ min: 0, max: 255 }),
      hmac: fc.uint8Array({ maxLength: 64 }).map((a) => Buffer.from(a)),
    })
    .map((e) => ({ ...e }));
  fc.assert(
    fc.property(fc.array(entry, { maxLength: 3 }), (entries) => {
      assert.deepEqual(parseAuthResponses(marshalAuthResponses(entries), entries.length), entries);
    }),
  );
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 300 }), fc.integer({ min: 0, max: 3 }), (bytes, count) => {
      try {
        const got = parseAuthResponses(Buffer.from(bytes), count);
        assert.equal(got.length, count);
        assert.deepEqual(marshalAuthResponses(got), Buffer.from(bytes), 'a parse consumed exactly the bytes');
      } catch (err) {
        assert.ok(err instanceof TpmFormatError, String(err));
      }
    }),
    { numRuns: 3000 },
  );
});

/**
 * A Tpm whose transport answers every command with `forged`: a Sign through an HMAC session is refused with
 * ResponseHmacError and leaves the session's nonce as it was. Returns the Tpm for more commands.
 */
async function refusesForgedSign(forged: Buffer, why: string): Promise<Tpm> {
  const tpm = new Tpm({ send: async () => forged, close: async () => undefined, connections: 1 } as unknown as TpmTransport);
  const nonceTPM = Buffer.alloc(32, 2);
  const session = { handle: 0x02000000, sessionKey: Buffer.alloc(32, 1), nonceTPM };
  await assert.rejects(
    tpm.sign(0x81000010, Buffer.alloc(32), TPM_ALG.ECDSA, TPM_ALG.SHA256, { session, name: Buffer.alloc(34, 3), authValue: Buffer.alloc(32, 4) }),
    (e: unknown) => e instanceof ResponseHmacError,
  );
  assert.equal(session.nonceTPM, nonceTPM, why);
  return tpm;
}

test('a success answered without sessions to a command sent with an hmac session is refused, not read', async () => {
  // What an interposer that strips the authorization area would send back for TPM2_Sign: tag NO_SESSIONS, rc 0,
  // a signature of its own choosing and no HMAC to check.
  const params = new Writer().u16(TPM_ALG.ECDSA).u16(TPM_ALG.SHA256).sized(Buffer.alloc(32, 0xaa)).sized(Buffer.alloc(32, 0xbb)).finish();
  const forged = new Writer().u16(TPM_ST.NO_SESSIONS).u32(10 + params.length).u32(0).bytes(params).finish();
  const tpm = await refusesForgedSign(forged, 'the session keeps its nonce: nothing unverified entered it');
  // The same answer to a password-authorized command carries nothing to verify, and is read.
  const sig = await tpm.sign(0x81000010, Buffer.alloc(32), TPM_ALG.ECDSA, TPM_ALG.SHA256);
  assert.equal(sig.sigAlg, TPM_ALG.ECDSA);
});

test('an answer whose response hmac does not verify leaves the session nonce as it was', async () => {
  const params = new Writer().u16(TPM_ALG.ECDSA).u16(TPM_ALG.SHA256).sized(Buffer.alloc(32, 0xaa)).sized(Buffer.alloc(32, 0xbb)).finish();
  const forgedNonce = Buffer.alloc(32, 9);
  const auth = marshalAuthResponses([{ nonce: forgedNonce, attributes: 1, hmac: Buffer.alloc(32, 7) }]);
  const body = new Writer().u32(params.length).bytes(params).bytes(auth).finish();
  const forged = new Writer().u16(TPM_ST.SESSIONS).u32(10 + body.length).u32(0).bytes(body).finish();
  await refusesForgedSign(forged, 'the unverified nonce did not enter the session');
});
