import { randomBytes } from 'node:crypto';
import { SigilError } from '../errors.ts';
import { TPM_ALG, TPM_CAP, TPM_CC, TPM_CC_NAMES, TPM_HEADER_SIZE, TPM_HT, TPM_PT, TPM_RH, TPM_SE, TPM_ST, TPMA_SESSION } from './constants.ts';
import { cpHash, type HmacSession, hmacEquals, parseAuthResponses, ResponseHmacError, rpHash, sessionHmac, sessionKeyOf } from './hmac-session.ts';
import { Reader, TpmFormatError, Writer } from './marshal.ts';
import { cfbKey, cryptFirstParameter, eccSalt } from './salted-session.ts';
import { baseRc, isRetryable, TPM_RC, TpmError } from './rc.ts';
import {
  digestSize,
  marshalPcrSelections,
  parseDigestList,
  parseNvPublic,
  parsePcrSelections,
  readPublic2B,
  readSignatureFrom,
  readTicket,
  type NvPublic,
  type PcrSelection,
  type Ticket,
  type TpmPublic,
  type TpmSignature,
} from './structures.ts';
import { openTransport, type TpmTransport } from './transport.ts';

// TPM 2.0 Part 3 commands sigil needs, marshaled by hand. Command layout (Part 1, 18): tag, size, code,
// handles, [authorization area], parameters; response: tag, size, rc, handles, [parameterSize],
// parameters, [authorization area].

/** One entry of a command's authorization area (TPMS_AUTH_COMMAND). */
interface Auth {
  handle: number;
  nonce: Buffer;
  attributes: number;
  hmac: Buffer;
}

/**
 * An HMAC session authorizing one handle of a command: the command HMAC is computed from the names
 * given to #run and the entity's authValue, and the response HMAC is checked.
 */
interface SessionAuth {
  session: HmacSession;
  authValue: Buffer;
  /** Encrypt the command's first parameter (a TPM2B) with the session's AES-128-CFB (TPMA_SESSION.decrypt). */
  decrypt?: boolean;
}

type CommandAuth = Auth | SessionAuth;

function isSessionAuth(a: CommandAuth): a is SessionAuth {
  return (a as SessionAuth).session !== undefined;
}

/** The password session (TPM_RS_PW) with an empty or given password. */
function passwordAuth(password: Buffer = Buffer.alloc(0)): Auth {
  return { handle: TPM_RH.PW, nonce: Buffer.alloc(0), attributes: TPMA_SESSION.continueSession, hmac: password };
}

// A policy session without PolicyAuthValue/PolicyPassword authorizes with an empty HMAC (Part 1, 19.7.1).
function policyAuth(session: number, keep = false): Auth {
  return { handle: session, nonce: Buffer.alloc(0), attributes: keep ? TPMA_SESSION.continueSession : 0, hmac: Buffer.alloc(0) };
}

/** A timing hook: called after every command with its name and the round trip in milliseconds. */
export type CommandObserver = (command: string, ms: number, rc: number) => void;

/** Result of CreatePrimary. */
export interface CreatedPrimary {
  handle: number;
  public: TpmPublic;
  name: Buffer;
}

/** How a parent object is authorized: its empty password, or the EK policy (PolicySecret(endorsement)). */
export type ParentAuth = 'password' | 'endorsement-policy';

/** Result of Create: the wrapped private blob and everything needed to certify the creation later. */
export interface CreatedObject {
  /** TPM2B_PRIVATE contents. */
  private: Buffer;
  public: TpmPublic;
  /** TPMS_CREATION_DATA bytes (contents of TPM2B_CREATION_DATA). */
  creationData: Buffer;
  creationHash: Buffer;
  creationTicket: Ticket;
}

/** A TPMS_ATTEST and its TPMT_SIGNATURE, as the TPM returned them. */
export interface SignedAttestation {
  attest: Buffer;
  signature: Buffer;
}

/** One TPM_PT property and its value. */
export interface TaggedProperty {
  property: number;
  value: number;
}

/** PCR values read in one pass, with the PCR update counter of the last read. */
export interface PcrReadResult {
  updateCounter: number;
  /** bank (TPM_ALG id) -> PCR index -> digest */
  banks: Map<number, Map<number, Buffer>>;
}

const MAX_RETRIES = 20;

/** First handle of TPM_HT_TRANSIENT (TPM 2.0 Part 2, 7.2): loaded objects that are not persisted. */
export const TRANSIENT_FIRST = (TPM_HT.TRANSIENT << 24) >>> 0;

/** First handle of TPM_HT_LOADED_SESSION (TPM 2.0 Part 2, 7.2; the HMAC session type): loaded sessions of any kind. */
export const LOADED_SESSION_FIRST = (TPM_HT.HMAC_SESSION << 24) >>> 0;

/** A TPM handle as `0x` and eight hex digits, as the specification writes them. */
export function hex8(n: number): string {
  return `0x${n.toString(16).padStart(8, '0')}`;
}

/** A TPM 2.0 reached through a TpmTransport, with typed commands. Not safe to share across owners. */
export class Tpm {
  readonly #t: TpmTransport;
  readonly #observe: CommandObserver | undefined;
  #nvBufferMax: number | undefined;

  constructor(transport: TpmTransport, opts: { observe?: CommandObserver } = {}) {
    this.#t = transport;
    this.#observe = opts.observe;
  }

  /** Opens a transport from a spec (see `openTransport`) and wraps it. */
  static async open(spec: string, opts: { observe?: CommandObserver } = {}): Promise<Tpm> {
    return new Tpm(await openTransport(spec), opts);
  }

  /** The underlying transport. */
  get transport(): TpmTransport {
    return this.#t;
  }

  async close(): Promise<void> {
    await this.#t.close();
  }

  /**
   * Sends a command and returns its response handles and a reader over its response parameters.
   * Any non-zero response code becomes a TpmError.
   */
  async #run(cc: number, handles: number[], auths: CommandAuth[] | null, params: Buffer, outHandles = 0, names?: Buffer[]): Promise<{ handles: number[]; r: Reader }> {
    const name = TPM_CC_NAMES.get(cc) ?? `command ${hex8(cc)}`;
    const body = new Writer();
    for (const h of handles) body.u32(h);
    // Per HMAC session: the nonceCaller sent, to check the response HMAC with.
    const sent = new Map<number, Buffer>();
    if (auths !== null) {
      const area = new Writer();
      const sessions = auths.some(isSessionAuth);
      if (sessions && (names === undefined || names.length !== handles.length)) throw new SigilError('INVALID_ARGUMENT', `${name}: an hmac session needs the name of every handle`);
      // nonceCaller: a fresh digest-sized nonce per command (Part 1, 19.6.2). Drawn first: a decrypt
      // session's key depends on it, and cpHash covers the parameters as sent, encrypted (Part 1, 18.7).
      auths.forEach((a, i) => {
        if (isSessionAuth(a)) sent.set(i, randomBytes(32));
      });
      const decrypting = auths.flatMap((a, i) => (isSessionAuth(a) && a.decrypt === true ? [i] : []));
      if (decrypting.length > 1) throw new SigilError('INVALID_ARGUMENT', `${name}: at most one session may encrypt the first parameter`);
      for (const i of decrypting) {
        const a = auths[i] as SessionAuth;
        if (a.session.aesCfb !== true) throw new SigilError('INVALID_ARGUMENT', `${name}: the session was not started with aes-128-cfb`);
        params = cryptFirstParameter(params, cfbKey(a.session.sessionKey, a.authValue, sent.get(i)!, a.session.nonceTPM));
      }
      const cp = sessions ? cpHash(cc, names!, params) : Buffer.alloc(0);
      auths.forEach((a, i) => {
        if (!isSessionAuth(a)) {
          area.u32(a.handle).sized(a.nonce).u8(a.attributes).sized(a.hmac);
          return;
        }
        const nonceCaller = sent.get(i)!;
        const attrs = TPMA_SESSION.continueSession | (a.decrypt === true ? TPMA_SESSION.decrypt : 0);
        const hmac = sessionHmac(a.session.sessionKey, a.authValue, cp, nonceCaller, a.session.nonceTPM, attrs);
        area.u32(a.session.handle).sized(nonceCaller).u8(attrs).sized(hmac);
      });
      const areaBytes = area.finish();
      body.u32(areaBytes.length).bytes(areaBytes);
    }
    body.bytes(params);
    const b = body.finish();
    const cmd = new Writer()
      .u16(auths === null ? TPM_ST.NO_SESSIONS : TPM_ST.SESSIONS)
      .u32(TPM_HEADER_SIZE + b.length)
      .u32(cc)
      .bytes(b)
      .finish();
    let rsp: Buffer;
    let r: Reader;
    let tag: number;
    let rc: number;
    for (let attempt = 0; ; attempt++) {
      const t0 = performance.now();
      rsp = await this.#t.send(cmd);
      r = new Reader(rsp);
      tag = r.u16();
      const size = r.u32();
      rc = r.u32();
      this.#observe?.(name, performance.now() - t0, rc);
      if (size !== rsp.length) throw new TpmFormatError(`${name} response size ${size} but ${rsp.length} bytes arrived`);
      // TPM_RC_RETRY, _YIELDED and _TESTING ask the caller to send the same command again.
      if (!isRetryable(rc) || attempt >= MAX_RETRIES) break;
      await new Promise((res) => setTimeout(res, Math.min(2 ** attempt, 50)));
    }
    if (rc !== 0) throw new TpmError(name, rc);
    // A success answering HMAC sessions must carry their HMACs: a NO_SESSIONS answer would let whoever sits
    // between sigild and the TPM answer in its place (error answers carry no sessions, and were handled above).
    if (sent.size > 0 && tag !== TPM_ST.SESSIONS) throw new ResponseHmacError(name);
    const outH: number[] = [];
    for (let i = 0; i < outHandles; i++) outH.push(r.u32());
    if (tag === TPM_ST.SESSIONS) {
      const paramSize = r.u32();
      const rp = r.bytes(paramSize);
      // Password and policy entries of the response authorization area carry nothing to verify; an
      // HMAC session's entry must carry HMAC(rpHash || nonceTPM || nonceCaller || attributes).
      if (sent.size > 0) {
        const got = parseAuthResponses(r.bytes(r.remaining), auths!.length);
        const rph = rpHash(0, cc, rp);
        for (const [i, nonceCaller] of sent) {
          const a = auths![i] as SessionAuth;
          const g = got[i]!;
          if (g.nonce.length < 16) throw new TpmFormatError(`${name} response nonce of ${g.nonce.length} bytes`);
          const want = sessionHmac(a.session.sessionKey, a.authValue, rph, g.nonce, nonceCaller, g.attributes);
          if (!hmacEquals(g.hmac, want)) throw new ResponseHmacError(name);
          // Only a verified nonce enters the session's state.
          a.session.nonceTPM = g.nonce;
        }
      }
      return { handles: outH, r: new Reader(rp) };
    }
    if (tag !== TPM_ST.NO_SESSIONS) throw new TpmFormatError(`${name} response tag ${tag}`);
    return { handles: outH, r };
  }

  /** TPM2_GetRandom, looping since one call returns at most a digest's worth. */
  async getRandom(n: number): Promise<Buffer> {
    const parts: Buffer[] = [];
    let have = 0;
    while (have < n) {
      const { r } = await this.#run(TPM_CC.GetRandom, [], null, new Writer().u16(Math.min(n - have, 64)).finish());
      const got = r.sized();
      r.end();
      if (got.length === 0) throw new TpmFormatError('GetRandom returned no bytes');
      parts.push(got);
      have += got.length;
    }
    return Buffer.concat(parts).subarray(0, n);
  }

  /** TPM2_GetCapability raw: `moreData` and a reader over TPMS_CAPABILITY_DATA after its selector. */
  async #capability(cap: number, property: number, count: number): Promise<{ more: boolean; r: Reader }> {
    const { r } = await this.#run(TPM_CC.GetCapability, [], null, new Writer().u32(cap).u32(property).u32(count).finish());
    const more = r.u8() !== 0;
    const got = r.u32();
    if (got !== cap) throw new TpmFormatError(`capability ${got} returned for ${cap}`);
    return { more, r };
  }

  /** TPM_PT properties from `first` on (TPM2_GetCapability, TPM_CAP_TPM_PROPERTIES). */
  async getProperties(first: number, count = 1): Promise<TaggedProperty[]> {
    const { r } = await this.#capability(TPM_CAP.TPM_PROPERTIES, first, count);
    const n = r.u32();
    if (n > 256) throw new TpmFormatError(`${n} properties`);
    const out: TaggedProperty[] = [];
    for (let i = 0; i < n; i++) out.push({ property: r.u32(), value: r.u32() });
    r.end();
    return out;
  }

  /** One TPM_PT property value; SigilError if the TPM does not report it. */
  async getProperty(property: number): Promise<number> {
    const [p] = await this.getProperties(property, 1);
    if (p === undefined || p.property !== property) throw new SigilError('BACKEND_ERROR', `tpm does not report property ${hex8(property)}`);
    return p.value;
  }

  /** ECC curves the TPM implements (TPM_CAP_ECC_CURVES, TPML_ECC_CURVE of TPM_ECC_CURVE ids). */
  async getEccCurves(): Promise<number[]> {
    const { r } = await this.#capability(TPM_CAP.ECC_CURVES, 0, 64);
    const n = r.u32();
    if (n > 64) throw new TpmFormatError(`${n} ecc curves`);
    const out: number[] = [];
    for (let i = 0; i < n; i++) out.push(r.u16());
    r.end();
    return out;
  }

  /** Allocated PCR banks (TPM_CAP_PCRS); a bank with no PCRs selected is allocated but inactive. */
  async getPcrBanks(): Promise<PcrSelection[]> {
    const { r } = await this.#capability(TPM_CAP.PCRS, 0, 1);
    const s = parsePcrSelections(r);
    r.end();
    return s;
  }

  /** Handles of a type (TPM_CAP_HANDLES), e.g. 0x81000000 for persistent, 0x80000000 for transient. */
  async getHandles(first: number): Promise<number[]> {
    const out: number[] = [];
    let next = first;
    const top = (first & 0xff000000) >>> 0;
    for (;;) {
      const { more, r } = await this.#capability(TPM_CAP.HANDLES, next, 64);
      const n = r.u32();
      if (n > 256) throw new TpmFormatError(`${n} handles`);
      for (let i = 0; i < n; i++) out.push(r.u32());
      r.end();
      const last = out.at(-1);
      if (!more || n === 0 || last === undefined || ((last & 0xff000000) >>> 0) !== top) break;
      next = last + 1;
    }
    return out.filter((h) => ((h & 0xff000000) >>> 0) === top);
  }

  /** TPM2_StartAuthSession: an unbound, unsalted policy session with SHA-256; returns its handle. */
  async startAuthSession(type: number = TPM_SE.POLICY): Promise<number> {
    const params = new Writer()
      .sized(randomBytes(16)) // nonceCaller: at least 16 bytes (Part 3, 11.1)
      .sized(Buffer.alloc(0)) // encryptedSalt
      .u8(type)
      .u16(TPM_ALG.NULL) // symmetric
      .u16(TPM_ALG.SHA256)
      .finish();
    const { handles, r } = await this.#run(TPM_CC.StartAuthSession, [TPM_RH.NULL, TPM_RH.NULL], null, params, 1);
    r.sized();
    r.end();
    return handles[0]!;
  }

  /**
   * TPM2_StartAuthSession of an HMAC session with SHA-256: unbound or bound to `bind` (whose authValue
   * must then be given); unsalted or salted with the loaded ECC key `salt.handle`, whose public area
   * `salt.public` the caller vouches for (the salt is encrypted to it, Part 1, 19.6.13); with AES-128-CFB
   * for parameter encryption when `aesCfb`. Returns its handle, session key and the TPM's first nonce.
   */
  async startHmacSession(opts: { bind?: { handle: number; authValue: Buffer }; salt?: { handle: number; public: TpmPublic }; aesCfb?: boolean } = {}): Promise<HmacSession> {
    const nonceCaller = randomBytes(32);
    const salt = opts.salt === undefined ? undefined : eccSalt(opts.salt.public);
    const params = new Writer().sized(nonceCaller).sized(salt?.encryptedSalt ?? Buffer.alloc(0)).u8(TPM_SE.HMAC);
    // TPMT_SYM_DEF (Part 2, 11.1.6): the algorithm, then key bits and mode unless it is TPM_ALG_NULL.
    if (opts.aesCfb === true) params.u16(TPM_ALG.AES).u16(128).u16(TPM_ALG.CFB);
    else params.u16(TPM_ALG.NULL);
    params.u16(TPM_ALG.SHA256);
    const bind = opts.bind?.handle ?? TPM_RH.NULL;
    const { handles, r } = await this.#run(TPM_CC.StartAuthSession, [opts.salt?.handle ?? TPM_RH.NULL, bind], null, params.finish(), 1);
    const handle = handles[0]!;
    try {
      const nonceTPM = r.sized(64);
      r.end();
      if (nonceTPM.length < 16) throw new TpmFormatError(`StartAuthSession nonce of ${nonceTPM.length} bytes`);
      const sessionKey = sessionKeyOf(opts.bind !== undefined, opts.bind?.authValue ?? Buffer.alloc(0), salt?.salt ?? Buffer.alloc(0), nonceTPM, nonceCaller);
      return { handle, sessionKey, nonceTPM, aesCfb: opts.aesCfb === true };
    } catch (err) {
      await this.flushContext(handle).catch(() => undefined);
      throw err;
    }
  }

  /** TPM2_PolicySecret: satisfies PolicySecret(authHandle) in `session`, authorizing authHandle by password. */
  async policySecret(session: number, authHandle: number = TPM_RH.ENDORSEMENT, password?: Buffer): Promise<void> {
    const params = new Writer().sized(Buffer.alloc(0)).sized(Buffer.alloc(0)).sized(Buffer.alloc(0)).u32(0).finish();
    const { r } = await this.#run(TPM_CC.PolicySecret, [authHandle, session], [passwordAuth(password)], params);
    r.sized(); // timeout
    readTicket(r);
    r.end();
  }

  /** TPM2_PolicyGetDigest of a session. */
  async policyGetDigest(session: number): Promise<Buffer> {
    const { r } = await this.#run(TPM_CC.PolicyGetDigest, [session], null, Buffer.alloc(0));
    const d = r.sized();
    r.end();
    return d;
  }

  /** TPM2_FlushContext of a transient object or session. */
  async flushContext(handle: number): Promise<void> {
    const { r } = await this.#run(TPM_CC.FlushContext, [], null, new Writer().u32(handle).finish());
    r.end();
  }

  /**
   * Flushes every transient object the TPM lists (TPM_CAP_HANDLES from TPM_HT_TRANSIENT, Part 2, 7.2)
   * but those in `keep`, and returns the handles flushed. One that vanished meanwhile (TPM_RC_HANDLE) is
   * skipped. Only for a TPM this client has to itself: through no resource manager it flushes other
   * users' objects too.
   */
  flushTransients(keep: ReadonlySet<number> = new Set()): Promise<number[]> {
    return this.#flushAll(TRANSIENT_FIRST, keep);
  }

  /**
   * Flushes every loaded session the TPM lists (TPM_CAP_HANDLES from TPM_HT_LOADED_SESSION, Part 2,
   * 7.2) but those in `keep`, and returns the handles flushed; one gone meanwhile is skipped. Only for
   * a TPM this client has to itself: through no resource manager it ends other users' sessions too.
   */
  flushSessions(keep: ReadonlySet<number> = new Set()): Promise<number[]> {
    return this.#flushAll(LOADED_SESSION_FIRST, keep);
  }

  /** Flushes every handle the TPM lists from `first` on, but those in `keep`; one gone meanwhile is skipped. */
  async #flushAll(first: number, keep: ReadonlySet<number>): Promise<number[]> {
    const flushed: number[] = [];
    for (const h of await this.getHandles(first)) {
      if (keep.has(h)) continue;
      try {
        await this.flushContext(h);
        flushed.push(h);
      } catch (err) {
        if (!(err instanceof TpmError && baseRc(err.rc) === TPM_RC.HANDLE)) throw err;
      }
    }
    return flushed;
  }

  // TPM2B_SENSITIVE_CREATE with `userAuth` (empty by default) and empty data, empty outsideInfo, no creation PCRs.
  #createParams(templateBytes: Buffer, userAuth: Buffer = Buffer.alloc(0)): Buffer {
    return new Writer()
      .sized(new Writer().sized(userAuth).sized(Buffer.alloc(0)).finish())
      .sized(templateBytes)
      .sized(Buffer.alloc(0))
      .u32(0)
      .finish();
  }

  /** TPM2_CreatePrimary under a hierarchy (empty hierarchy password) from TPMT_PUBLIC template bytes. */
  async createPrimary(hierarchy: number, templateBytes: Buffer): Promise<CreatedPrimary> {
    const { handles, r } = await this.#run(TPM_CC.CreatePrimary, [hierarchy], [passwordAuth()], this.#createParams(templateBytes), 1);
    const handle = handles[0]!;
    try {
      const pub = readPublic2B(r);
      r.sized(); // creationData
      r.sized(); // creationHash
      readTicket(r);
      const name = r.sized();
      r.end();
      return { handle, public: pub, name };
    } catch (err) {
      await this.flushContext(handle).catch(() => undefined);
      throw err;
    }
  }

  /**
   * Runs `fn` with the authorization a parent needs: its (empty) password, or a policy session
   * satisfying PolicySecret(TPM_RH_ENDORSEMENT) for an EK made from a TCG template without userWithAuth.
   */
  async #withParentAuth<T>(parentAuth: ParentAuth, fn: (auth: Auth) => Promise<T>): Promise<T> {
    if (parentAuth === 'password') return fn(passwordAuth());
    const session = await this.startAuthSession(TPM_SE.POLICY);
    let flushed = false;
    try {
      await this.policySecret(session, TPM_RH.ENDORSEMENT);
      // continueSession is clear: a successful command flushes the session itself.
      const out = await fn(policyAuth(session));
      flushed = true;
      return out;
    } finally {
      if (!flushed) await this.flushContext(session).catch(() => undefined);
    }
  }

  /**
   * TPM2_Create of an ordinary object under a loaded parent: authorized by the parent's empty password,
   * the EK's policy, or `session` (an HMAC session, with the parent's empty authValue and its Name
   * `session.parentName` in cpHash). A session started with AES-128-CFB also encrypts the first
   * parameter, TPM2B_SENSITIVE_CREATE, so `userAuth` does not cross the wire in the clear.
   */
  async create(
    parent: number,
    templateBytes: Buffer,
    opts: { parentAuth?: ParentAuth; userAuth?: Buffer; session?: { session: HmacSession; parentName: Buffer } } = {},
  ): Promise<CreatedObject> {
    const params = this.#createParams(templateBytes, opts.userAuth);
    const s = opts.session;
    const { r } =
      s === undefined
        ? await this.#withParentAuth(opts.parentAuth ?? 'password', (auth) => this.#run(TPM_CC.Create, [parent], [auth], params))
        : await this.#run(TPM_CC.Create, [parent], [{ session: s.session, authValue: Buffer.alloc(0), decrypt: s.session.aesCfb === true }], params, 0, [s.parentName]);
    const priv = r.sized();
    const pub = readPublic2B(r);
    const creationData = r.sized();
    const creationHash = r.sized(64);
    const creationTicket = readTicket(r);
    r.end();
    return { private: priv, public: pub, creationData, creationHash, creationTicket };
  }

  /** TPM2_Load of a private/public pair made by `create`; the caller flushes the handle. */
  async load(parent: number, priv: Buffer, pub: Buffer | TpmPublic, opts: { parentAuth?: ParentAuth } = {}): Promise<{ handle: number; name: Buffer }> {
    const pubBytes = Buffer.isBuffer(pub) ? pub : pub.raw;
    const params = new Writer().sized(priv).sized(pubBytes).finish();
    const { handles, r } = await this.#withParentAuth(opts.parentAuth ?? 'password', (auth) => this.#run(TPM_CC.Load, [parent], [auth], params, 1));
    const name = r.sized();
    r.end();
    return { handle: handles[0]!, name };
  }

  /** TPM2_ReadPublic of a loaded or persistent object. */
  async readPublic(handle: number): Promise<{ public: TpmPublic; name: Buffer; qualifiedName: Buffer }> {
    const { r } = await this.#run(TPM_CC.ReadPublic, [handle], null, Buffer.alloc(0));
    const pub = readPublic2B(r);
    const name = r.sized();
    const qualifiedName = r.sized();
    r.end();
    return { public: pub, name, qualifiedName };
  }

  /**
   * TPM2_ActivateCredential: the AK (password, admin role) and the EK (by default a policy session
   * satisfying PolicySecret(TPM_RH_ENDORSEMENT), as the TCG EK templates' authPolicy requires;
   * `ekAuth: 'password'` for an EK with userWithAuth set). Returns the decrypted credential.
   */
  async activateCredential(akHandle: number, ekHandle: number, credentialBlob: Buffer, encryptedSecret: Buffer, opts: { ekAuth?: 'policy' | 'password' } = {}): Promise<Buffer> {
    const params = new Writer().sized(credentialBlob).sized(encryptedSecret).finish();
    if (opts.ekAuth === 'password') {
      const { r } = await this.#run(TPM_CC.ActivateCredential, [akHandle, ekHandle], [passwordAuth(), passwordAuth()], params);
      const cert = r.sized();
      r.end();
      return cert;
    }
    const session = await this.startAuthSession(TPM_SE.POLICY);
    let flushed = false;
    try {
      await this.policySecret(session, TPM_RH.ENDORSEMENT);
      // continueSession is clear: a successful command flushes the session itself.
      const { r } = await this.#run(TPM_CC.ActivateCredential, [akHandle, ekHandle], [passwordAuth(), policyAuth(session)], params);
      flushed = true;
      const cert = r.sized();
      r.end();
      return cert;
    } finally {
      if (!flushed) await this.flushContext(session).catch(() => undefined);
    }
  }

  /** TPM2_Quote with the AK's own scheme (TPM_ALG_NULL in-scheme); returns TPMS_ATTEST and TPMT_SIGNATURE bytes. */
  async quote(akHandle: number, qualifyingData: Buffer, selection: PcrSelection[]): Promise<SignedAttestation> {
    const params = new Writer().sized(qualifyingData).u16(TPM_ALG.NULL).bytes(marshalPcrSelections(selection)).finish();
    const { r } = await this.#run(TPM_CC.Quote, [akHandle], [passwordAuth()], params);
    return this.#signed(r);
  }

  /** TPM2_Certify of a loaded object by a signing key (both by empty password); a non-quote TPMS_ATTEST. */
  async certify(objectHandle: number, signHandle: number, qualifyingData: Buffer): Promise<SignedAttestation> {
    const params = new Writer().sized(qualifyingData).u16(TPM_ALG.NULL).finish();
    const { r } = await this.#run(TPM_CC.Certify, [objectHandle, signHandle], [passwordAuth(), passwordAuth()], params);
    return this.#signed(r);
  }

  /** TPM2_CertifyCreation: signs that `objectHandle` was created with `creationHash` and `ticket`. */
  async certifyCreation(signHandle: number, objectHandle: number, qualifyingData: Buffer, creationHash: Buffer, ticket: Ticket): Promise<SignedAttestation> {
    const params = new Writer()
      .sized(qualifyingData)
      .sized(creationHash)
      .u16(TPM_ALG.NULL)
      .u16(ticket.tag)
      .u32(ticket.hierarchy)
      .sized(ticket.digest)
      .finish();
    const { r } = await this.#run(TPM_CC.CertifyCreation, [signHandle, objectHandle], [passwordAuth()], params);
    return this.#signed(r);
  }

  #signed(r: Reader): SignedAttestation {
    const attest = r.sized();
    // The signature runs to the end of the parameters; keep its exact bytes.
    const signature = r.bytes(r.remaining);
    return { attest, signature };
  }

  /** Reads every selected PCR, looping since the TPM returns at most 8 digests per call. */
  async pcrReadAll(selection: PcrSelection[]): Promise<PcrReadResult> {
    const banks = new Map<number, Map<number, Buffer>>();
    const pending = new Map(selection.map((s) => [s.hash, new Set(s.pcrs)]));
    for (const s of selection) banks.set(s.hash, new Map());
    let updateCounter = -1;
    for (let round = 0; ; round++) {
      const want = [...pending].filter(([, p]) => p.size > 0).map(([hash, p]) => ({ hash, pcrs: [...p].sort((a, b) => a - b) }));
      if (want.length === 0) break;
      if (round > 24 * 8) throw new SigilError('BACKEND_ERROR', 'pcr read does not progress');
      const { r } = await this.#run(TPM_CC.PCR_Read, [], null, marshalPcrSelections(want));
      const counter = r.u32();
      const got = parsePcrSelections(r);
      const values = parseDigestList(r);
      r.end();
      if (updateCounter >= 0 && counter !== updateCounter) {
        // PCRs changed between the partial reads: start over so all values come from one state.
        for (const s of selection) {
          pending.set(s.hash, new Set(s.pcrs));
          banks.get(s.hash)!.clear();
        }
      }
      updateCounter = counter;
      let i = 0;
      let progressed = false;
      for (const g of got) {
        for (const p of g.pcrs) {
          const v = values[i++];
          if (v === undefined) throw new TpmFormatError('pcr read returned fewer digests than selected');
          if (pending.get(g.hash)?.delete(p)) {
            banks.get(g.hash)!.set(p, v);
            progressed = true;
          }
        }
      }
      if (i !== values.length) throw new TpmFormatError('pcr read returned more digests than selected');
      // A bank that is not active comes back unselected: those PCRs cannot be read at all.
      if (!progressed) {
        const missing = want.map((w) => `${hex8(w.hash)}:${w.pcrs.join(',')}`).join(' ');
        throw new SigilError('FAILED_PRECONDITION', `tpm cannot read pcrs ${missing} (bank not active)`);
      }
    }
    return { updateCounter, banks };
  }

  /** Reads the selected PCRs of a single bank: index -> digest. */
  async pcrRead(selection: PcrSelection[]): Promise<Map<number, Buffer>> {
    if (selection.length !== 1) throw new SigilError('INVALID_ARGUMENT', 'pcrRead takes exactly one bank; use pcrReadAll for several');
    const res = await this.pcrReadAll(selection);
    return res.banks.get(selection[0]!.hash)!;
  }

  /** TPM2_PCR_Extend of one PCR with one digest per bank (empty PCR password). */
  async pcrExtend(pcr: number, digests: Array<{ hash: number; digest: Buffer }>): Promise<void> {
    const w = new Writer().u32(digests.length);
    for (const d of digests) {
      if (d.digest.length !== digestSize(d.hash)) throw new SigilError('INVALID_ARGUMENT', `digest of ${d.digest.length} bytes for hash ${hex8(d.hash)}`);
      w.u16(d.hash).bytes(d.digest);
    }
    const { r } = await this.#run(TPM_CC.PCR_Extend, [pcr], [passwordAuth()], w.finish());
    r.end();
  }

  /** TPM2_NV_ReadPublic: the index's public area and name. */
  async nvReadPublic(index: number): Promise<{ public: NvPublic; name: Buffer }> {
    const { r } = await this.#run(TPM_CC.NV_ReadPublic, [index], null, Buffer.alloc(0));
    const pub = parseNvPublic(r.sized());
    const name = r.sized();
    r.end();
    return { public: pub, name };
  }

  /** TPM_PT_NV_BUFFER_MAX, cached: the largest NV_Read the TPM accepts. */
  async nvBufferMax(): Promise<number> {
    this.#nvBufferMax ??= await this.getProperty(TPM_PT.NV_BUFFER_MAX);
    return this.#nvBufferMax;
  }

  /** Reads a whole NV index in TPM_PT_NV_BUFFER_MAX chunks, authorized by the index itself (empty password). */
  async nvRead(index: number, opts: { chunk?: number } = {}): Promise<Buffer> {
    const { public: pub } = await this.nvReadPublic(index);
    const max = Math.min(opts.chunk ?? Infinity, await this.nvBufferMax());
    const parts: Buffer[] = [];
    for (let off = 0; off < pub.dataSize; ) {
      const n = Math.min(max, pub.dataSize - off);
      const { r } = await this.#run(TPM_CC.NV_Read, [index, index], [passwordAuth()], new Writer().u16(n).u16(off).finish());
      const data = r.sized();
      r.end();
      if (data.length !== n) throw new TpmFormatError(`nv read of ${n} bytes returned ${data.length}`);
      parts.push(data);
      off += n;
    }
    return Buffer.concat(parts);
  }

  /**
   * TPM2_Sign of a digest with an unrestricted signing key, choosing the scheme (TPMT_SIG_SCHEME:
   * ECDSA, RSASSA or RSAPSS with `hash`). The validation ticket is the NULL TPMT_TK_HASHCHECK, which
   * only an unrestricted key accepts (Part 3, 20.2). Authorized by the password session with an empty
   * password, or by `auth.session` with the key's Name `auth.name` in cpHash and its authValue
   * `auth.authValue` (empty when absent) in the HMAC key: the TPM then refuses (TPM_RC_BAD_AUTH, or
   * TPM_RC_AUTH_FAIL for a DA-protected key) when the object at the handle has another name or authValue.
   */
  async sign(keyHandle: number, digest: Buffer, scheme: number, hash: number, auth?: { session: HmacSession; name: Buffer; authValue?: Buffer }): Promise<TpmSignature> {
    const params = new Writer()
      .sized(digest)
      .u16(scheme)
      .u16(hash)
      .u16(TPM_ST.HASHCHECK)
      .u32(TPM_RH.NULL)
      .sized(Buffer.alloc(0))
      .finish();
    const { r } =
      auth === undefined
        ? await this.#run(TPM_CC.Sign, [keyHandle], [passwordAuth()], params)
        : await this.#run(TPM_CC.Sign, [keyHandle], [{ session: auth.session, authValue: auth.authValue ?? Buffer.alloc(0) }], params, 0, [auth.name]);
    const sig = readSignatureFrom(r);
    r.end();
    return sig;
  }

  /**
   * TPM2_ObjectChangeAuth (Part 3, 19.2): a new private area for the object at `objectHandle` (loaded or
   * persistent) with `newAuth` as its authValue, wrapped by its parent `parent`. The object itself keeps its
   * old authValue; only the returned TPM2B_PRIVATE, loaded under the parent, has the new one. Authorized with
   * the object's current authValue (ADMIN role; adminWithPolicy clear) through `auth.session`, with the
   * object's name `auth.objectName` and the parent's `auth.parentName` in cpHash; a session started with
   * AES-128-CFB encrypts `newAuth` on the wire.
   */
  async objectChangeAuth(objectHandle: number, parent: number, newAuth: Buffer, auth: { session: HmacSession; authValue: Buffer; objectName: Buffer; parentName: Buffer }): Promise<Buffer> {
    const { r } = await this.#run(
      TPM_CC.ObjectChangeAuth,
      [objectHandle, parent],
      [{ session: auth.session, authValue: auth.authValue, decrypt: auth.session.aesCfb === true }],
      new Writer().sized(newAuth).finish(),
      0,
      [auth.objectName, auth.parentName],
    );
    const priv = r.sized();
    r.end();
    return priv;
  }

  /** TPM2_EvictControl by the owner: persists a transient object at `persistent`, or evicts a persistent one. */
  async evictControl(objectHandle: number, persistent: number): Promise<void> {
    const { r } = await this.#run(TPM_CC.EvictControl, [TPM_RH.OWNER, objectHandle], [passwordAuth()], new Writer().u32(persistent).finish());
    r.end();
  }
}
