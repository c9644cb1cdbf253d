import { createHash, timingSafeEqual } from 'node:crypto';
import { SigilError } from '../errors.ts';
import { TPM_ALG } from '../tpm/constants.ts';

// TCG PC Client Platform Firmware Profile Specification (PFP) 1.05, section 10: the crypto-agile event
// log. Every integer in the log is little-endian (unlike TPM structures).

/** A malformed event log: the only error `parseEventLog` throws (code INVALID_ARGUMENT). */
export class EventLogFormatError extends SigilError {
  constructor(message: string) {
    super('INVALID_ARGUMENT', `malformed event log: ${message}`);
    this.name = 'EventLogFormatError';
  }
}

/** TPM_ALG ids of the digests an event log may carry, with their sizes and node:crypto names. */
const DIGESTS: ReadonlyMap<number, { size: number; node: string; label: string }> = new Map([
  [TPM_ALG.SHA1, { size: 20, node: 'sha1', label: 'sha1' }],
  [TPM_ALG.SHA256, { size: 32, node: 'sha256', label: 'sha256' }],
  [TPM_ALG.SHA384, { size: 48, node: 'sha384', label: 'sha384' }],
  [TPM_ALG.SHA512, { size: 64, node: 'sha512', label: 'sha512' }],
]);

/** Event types of PFP 1.05 section 10.4.1, by name. */
export const EV: Readonly<Record<string, number>> = Object.freeze({
  EV_PREBOOT_CERT: 0x0,
  EV_POST_CODE: 0x1,
  EV_UNUSED: 0x2,
  EV_NO_ACTION: 0x3,
  EV_SEPARATOR: 0x4,
  EV_ACTION: 0x5,
  EV_EVENT_TAG: 0x6,
  EV_S_CRTM_CONTENTS: 0x7,
  EV_S_CRTM_VERSION: 0x8,
  EV_CPU_MICROCODE: 0x9,
  EV_PLATFORM_CONFIG_FLAGS: 0xa,
  EV_TABLE_OF_DEVICES: 0xb,
  EV_COMPACT_HASH: 0xc,
  EV_IPL: 0xd,
  EV_IPL_PARTITION_DATA: 0xe,
  EV_NONHOST_CODE: 0xf,
  EV_NONHOST_CONFIG: 0x10,
  EV_NONHOST_INFO: 0x11,
  EV_OMIT_BOOT_DEVICE_EVENTS: 0x12,
  EV_POST_CODE2: 0x13,
  EV_EFI_VARIABLE_DRIVER_CONFIG: 0x80000001,
  EV_EFI_VARIABLE_BOOT: 0x80000002,
  EV_EFI_BOOT_SERVICES_APPLICATION: 0x80000003,
  EV_EFI_BOOT_SERVICES_DRIVER: 0x80000004,
  EV_EFI_RUNTIME_SERVICES_DRIVER: 0x80000005,
  EV_EFI_GPT_EVENT: 0x80000006,
  EV_EFI_ACTION: 0x80000007,
  EV_EFI_PLATFORM_FIRMWARE_BLOB: 0x80000008,
  EV_EFI_HANDOFF_TABLES: 0x80000009,
  EV_EFI_PLATFORM_FIRMWARE_BLOB2: 0x8000000a,
  EV_EFI_HANDOFF_TABLES2: 0x8000000b,
  EV_EFI_VARIABLE_BOOT2: 0x8000000c,
  EV_EFI_GPT_EVENT2: 0x8000000d,
  EV_EFI_HCRTM_EVENT: 0x80000010,
  EV_EFI_VARIABLE_AUTHORITY: 0x800000e0,
  EV_EFI_SPDM_FIRMWARE_BLOB: 0x800000e1,
  EV_EFI_SPDM_FIRMWARE_CONFIG: 0x800000e2,
});

const EV_NAMES = new Map(Object.entries(EV).map(([k, v]) => [v, k]));

/** The name of an event type (`EV_SEPARATOR`), or its number in hex when it has none. */
export function eventTypeName(type: number): string {
  return EV_NAMES.get(type) ?? `0x${type.toString(16).padStart(8, '0')}`;
}

/** The event type number of a name from `EV`, or undefined. */
export function eventTypeByName(name: string): number | undefined {
  return Object.hasOwn(EV, name) ? EV[name] : undefined;
}

/** The Spec ID Event03 header of a crypto-agile log (PFP 10.4.5.1, TCG_EfiSpecIDEvent). */
export interface SpecIdEvent {
  platformClass: number;
  specVersion: { major: number; minor: number; errata: number };
  uintnSize: number;
  /** The banks the log carries, in the order each event lists them. */
  algorithms: { alg: number; size: number }[];
  vendorInfo: Buffer;
}

/** One TCG_PCR_EVENT2. */
export interface TcgEvent {
  /** Position in the log, the header event being 0. */
  index: number;
  pcr: number;
  type: number;
  /** Digest per TPM_ALG id. */
  digests: Map<number, Buffer>;
  data: Buffer;
}

/** A parsed crypto-agile event log: its header and the events after it. */
export interface EventLog {
  specId: SpecIdEvent;
  events: TcgEvent[];
}

/** Bounds of `parseEventLog`. */
export interface EventLogLimits {
  /** Largest log accepted, in bytes (default 1 MiB). */
  maxBytes?: number;
  /** Most events accepted (default 16384). */
  maxEvents?: number;
}

const SPEC_ID_SIGNATURE = Buffer.from('Spec ID Event03\0', 'latin1');
const STARTUP_LOCALITY = Buffer.from('StartupLocality\0', 'latin1');
const PCR_COUNT = 24;

class LeReader {
  #b: Buffer;
  #o = 0;
  constructor(b: Buffer) {
    this.#b = b;
  }
  get offset(): number {
    return this.#o;
  }
  get remaining(): number {
    return this.#b.length - this.#o;
  }
  #need(n: number, what: string): void {
    if (n > this.remaining) throw new EventLogFormatError(`truncated ${what} at offset ${this.#o}`);
  }
  u8(what: string): number {
    this.#need(1, what);
    return this.#b[this.#o++]!;
  }
  u16(what: string): number {
    this.#need(2, what);
    const v = this.#b.readUInt16LE(this.#o);
    this.#o += 2;
    return v;
  }
  u32(what: string): number {
    this.#need(4, what);
    const v = this.#b.readUInt32LE(this.#o);
    this.#o += 4;
    return v;
  }
  bytes(n: number, what: string): Buffer {
    this.#need(n, what);
    const v = this.#b.subarray(this.#o, this.#o + n);
    this.#o += n;
    return Buffer.from(v);
  }
}

function parseSpecId(data: Buffer): SpecIdEvent {
  const r = new LeReader(data);
  const sig = r.bytes(16, 'spec id signature');
  if (!sig.equals(SPEC_ID_SIGNATURE)) throw new EventLogFormatError('first event is not a Spec ID Event03 (not a crypto-agile log)');
  const platformClass = r.u32('platform class');
  const minor = r.u8('spec version');
  const major = r.u8('spec version');
  const errata = r.u8('spec errata');
  const uintnSize = r.u8('uintn size');
  if (uintnSize !== 1 && uintnSize !== 2) throw new EventLogFormatError(`uintnSize ${uintnSize} is neither 1 nor 2`);
  const n = r.u32('algorithm count');
  if (n === 0 || n > DIGESTS.size) throw new EventLogFormatError(`spec id declares ${n} algorithms`);
  const algorithms: { alg: number; size: number }[] = [];
  for (let i = 0; i < n; i++) {
    const alg = r.u16('algorithm id');
    const size = r.u16('digest size');
    const known = DIGESTS.get(alg);
    if (known === undefined) throw new EventLogFormatError(`unsupported digest algorithm 0x${alg.toString(16)}`);
    if (known.size !== size) throw new EventLogFormatError(`${known.label} digest size ${size}, expected ${known.size}`);
    if (algorithms.some((a) => a.alg === alg)) throw new EventLogFormatError(`${known.label} declared twice`);
    algorithms.push({ alg, size });
  }
  const vendorSize = r.u8('vendor info size');
  const vendorInfo = r.bytes(vendorSize, 'vendor info');
  if (r.remaining !== 0) throw new EventLogFormatError('trailing bytes in the spec id event');
  return { platformClass, specVersion: { major, minor, errata }, uintnSize, algorithms, vendorInfo };
}

function pcrIndex(r: LeReader, index: number): number {
  const pcr = r.u32('pcr index');
  if (pcr >= PCR_COUNT) throw new EventLogFormatError(`event ${index} names pcr ${pcr}`);
  return pcr;
}

/**
 * Parses a crypto-agile TCG event log (PFP 1.05 section 10.2): a SHA-1 format header event carrying the
 * Spec ID Event03, then TCG_PCR_EVENT2 entries. Strict and bounded; throws only EventLogFormatError.
 */
export function parseEventLog(bytes: Uint8Array, limits: EventLogLimits = {}): EventLog {
  const maxBytes = limits.maxBytes ?? 1024 * 1024;
  const maxEvents = limits.maxEvents ?? 16384;
  if (bytes.length > maxBytes) throw new EventLogFormatError(`log of ${bytes.length} bytes exceeds the limit of ${maxBytes}`);
  const r = new LeReader(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length));
  // Header: TCG_PCClientPCREvent (PFP 10.2.1), SHA-1 format.
  const hPcr = pcrIndex(r, 0);
  const hType = r.u32('event type');
  const hDigest = r.bytes(20, 'header digest');
  const hSize = r.u32('event size');
  const hData = r.bytes(hSize, 'header event data');
  if (hPcr !== 0 || hType !== EV.EV_NO_ACTION || hDigest.some((x) => x !== 0)) {
    throw new EventLogFormatError('first event is not an EV_NO_ACTION in pcr 0 with a zero digest');
  }
  const specId = parseSpecId(hData);
  const sizes = new Map(specId.algorithms.map((a) => [a.alg, a.size]));
  const events: TcgEvent[] = [];
  while (r.remaining > 0) {
    const index = events.length + 1;
    if (events.length >= maxEvents) throw new EventLogFormatError(`more than ${maxEvents} events`);
    const pcr = pcrIndex(r, index);
    const type = r.u32('event type');
    // TPML_DIGEST_VALUES: one digest per bank the header declares.
    const count = r.u32('digest count');
    if (count !== specId.algorithms.length) {
      throw new EventLogFormatError(`event ${index} carries ${count} digests, the header declares ${specId.algorithms.length}`);
    }
    const digests = new Map<number, Buffer>();
    for (let i = 0; i < count; i++) {
      const alg = r.u16('digest algorithm');
      const size = sizes.get(alg);
      if (size === undefined) throw new EventLogFormatError(`event ${index} carries a digest of undeclared algorithm 0x${alg.toString(16)}`);
      if (digests.has(alg)) throw new EventLogFormatError(`event ${index} carries two ${DIGESTS.get(alg)!.label} digests`);
      digests.set(alg, r.bytes(size, 'digest'));
    }
    const size = r.u32('event size');
    const data = r.bytes(size, 'event data');
    events.push({ index, pcr, type, digests, data });
  }
  return { specId, events };
}

function startupLocality(e: TcgEvent): number | undefined {
  if (e.type !== EV.EV_NO_ACTION || e.pcr !== 0) return undefined;
  if (e.data.length !== STARTUP_LOCALITY.length + 1 || !e.data.subarray(0, STARTUP_LOCALITY.length).equals(STARTUP_LOCALITY)) return undefined;
  return e.data[STARTUP_LOCALITY.length]!;
}

function digestInfo(bank: number): { size: number; node: string; label: string } {
  const d = DIGESTS.get(bank);
  if (d === undefined) throw new SigilError('INVALID_ARGUMENT', `unsupported pcr bank 0x${bank.toString(16)}`);
  return d;
}

/**
 * Replays the log's events of one bank (TPM_ALG id) into PCR values: each PCR starts at zeros, except
 * PCR 0 whose last byte is the locality of a StartupLocality event (PFP 10.4.5.3); EV_NO_ACTION events
 * are not extended. Returns the value of every PCR the log touches.
 */
export function replay(log: EventLog, bank: number): Map<number, Buffer> {
  const d = digestInfo(bank);
  if (!log.specId.algorithms.some((a) => a.alg === bank)) {
    throw new SigilError('PERMISSION_DENIED', `event log has no ${d.label} digests`);
  }
  const pcrs = new Map<number, Buffer>();
  let localitySeen = false;
  for (const e of log.events) {
    const loc = startupLocality(e);
    if (loc !== undefined) {
      if (localitySeen || pcrs.has(0)) throw new SigilError('PERMISSION_DENIED', `event log event ${e.index}: startup locality after pcr 0 was set`);
      const v = Buffer.alloc(d.size);
      v[d.size - 1] = loc;
      pcrs.set(0, v);
      localitySeen = true;
      continue;
    }
    if (e.type === EV.EV_NO_ACTION) continue;
    if (e.pcr === 0) localitySeen = true;
    const prev = pcrs.get(e.pcr) ?? Buffer.alloc(d.size);
    pcrs.set(e.pcr, createHash(d.node).update(prev).update(e.digests.get(bank)!).digest());
  }
  return pcrs;
}

/** One rule of a policy's event-log check (see `checkEventLog`). */
export interface EventRule {
  /** PCR indices the rule matches; any when absent. */
  pcrs?: number[];
  /** Event type number; any when absent. */
  type?: number;
  /** The event's digest in the policy's bank; any when absent. */
  digest?: Buffer;
  /** The event data, byte for byte; any when absent. */
  data?: Buffer;
  /** When true, at least one event of the log must match this rule. */
  require: boolean;
}

function matches(rule: EventRule, e: TcgEvent, bank: number): boolean {
  if (rule.pcrs !== undefined && !rule.pcrs.includes(e.pcr)) return false;
  if (rule.type !== undefined && rule.type !== e.type) return false;
  if (rule.digest !== undefined && !rule.digest.equals(e.digests.get(bank)!)) return false;
  if (rule.data !== undefined && !rule.data.equals(e.data)) return false;
  return true;
}

/** What `checkEventLog` checks an event log against. */
export interface EventLogCheck {
  /** TPM_ALG id of the quoted bank. */
  bank: number;
  /** The quoted PCR indices. */
  selection: number[];
  /** The PCR values the quote covered (already checked against the quote's digest). */
  quoted: Map<number, Buffer>;
  rules: EventRule[];
}

function describe(e: TcgEvent): string {
  return `event ${e.index} (pcr ${e.pcr}, ${eventTypeName(e.type)})`;
}

/**
 * Checks a parsed log against a policy: the replay of every selected PCR equals its quoted value;
 * every extended event in a selected PCR matches some rule; every `require` rule is matched. Events in
 * PCRs outside the selection are not covered by the quote and so count for nothing. Throws
 * PERMISSION_DENIED naming the first failure.
 */
export function checkEventLog(log: EventLog, check: EventLogCheck): void {
  const d = digestInfo(check.bank);
  const replayed = replay(log, check.bank);
  for (const pcr of check.selection) {
    const want = check.quoted.get(pcr);
    const got = replayed.get(pcr) ?? Buffer.alloc(d.size);
    if (want === undefined || want.length !== got.length || !timingSafeEqual(want, got)) {
      throw new SigilError('PERMISSION_DENIED', `event log replay of pcr ${pcr} does not match the quoted value`);
    }
  }
  const covered = log.events.filter((e) => e.type !== EV.EV_NO_ACTION && check.selection.includes(e.pcr));
  const used = new Set<number>();
  for (const e of covered) {
    const i = check.rules.findIndex((rule) => matches(rule, e, check.bank));
    if (i < 0) throw new SigilError('PERMISSION_DENIED', `event log ${describe(e)} matches no rule`);
    // A required rule counts as present when any event matches it, not only the first rule it hit.
    check.rules.forEach((rule, j) => rule.require && matches(rule, e, check.bank) && used.add(j));
  }
  check.rules.forEach((rule, j) => {
    if (rule.require && !used.has(j)) throw new SigilError('PERMISSION_DENIED', `event log lacks an event required by rule ${j}`);
  });
}

/** An event for `buildEventLog`: its digests default to the hash of `data` in each bank. */
export interface EventSpec {
  pcr: number;
  type: number;
  data: Uint8Array;
  digests?: Map<number, Buffer>;
}

/**
 * Writes a crypto-agile event log (the inverse of `parseEventLog`), for tests and tools: a Spec ID
 * Event03 header for `algorithms` (TPM_ALG ids, sha256 by default), an optional StartupLocality event,
 * then `events`.
 */
export function buildEventLog(events: EventSpec[], opts: { algorithms?: number[]; locality?: number } = {}): Buffer {
  const algs = opts.algorithms ?? [TPM_ALG.SHA256];
  const u32 = (v: number) => {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(v);
    return b;
  };
  const u16 = (v: number) => {
    const b = Buffer.alloc(2);
    b.writeUInt16LE(v);
    return b;
  };
  const specId = Buffer.concat([
    SPEC_ID_SIGNATURE,
    u32(0), // platformClass: client
    Buffer.from([0, 2, 0, 2]), // spec 2.0 errata 0, uintnSize 2 (UINT64)
    u32(algs.length),
    ...algs.flatMap((a) => [u16(a), u16(digestInfo(a).size)]),
    Buffer.from([0]),
  ]);
  const parts: Buffer[] = [u32(0), u32(EV.EV_NO_ACTION!), Buffer.alloc(20), u32(specId.length), specId];
  const all: EventSpec[] = [...events];
  if (opts.locality !== undefined) {
    all.unshift({ pcr: 0, type: EV.EV_NO_ACTION!, data: Buffer.concat([STARTUP_LOCALITY, Buffer.from([opts.locality])]) });
  }
  for (const e of all) {
    parts.push(u32(e.pcr), u32(e.type), u32(algs.length));
    for (const a of algs) {
      const dg = e.type === EV.EV_NO_ACTION ? Buffer.alloc(digestInfo(a).size) : e.digests?.get(a) ?? createHash(digestInfo(a).node).update(e.data).digest();
      parts.push(u16(a), dg);
    }
    parts.push(u32(e.data.length), Buffer.from(e.data));
  }
  return Buffer.concat(parts);
}
