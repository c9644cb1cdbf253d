import { BinaryReader, BinaryWriter, WireType } from '@bufbuild/protobuf/wire';

/** The `domain` of every ErrorInfo sigild sends: reasons are unique within it. */
export const ERROR_DOMAIN = 'sigil.v1';

/** The trailer that carries a serialized `google.rpc.Status` next to grpc-status and grpc-message. */
export const STATUS_DETAILS_HEADER = 'grpc-status-details-bin';

const ERROR_INFO_TYPE = 'type.googleapis.com/google.rpc.ErrorInfo';

/** A `google.rpc.ErrorInfo`: a stable machine-readable reason, its domain and safe string metadata. */
export interface ErrorInfo {
  reason: string;
  domain: string;
  metadata: Record<string, string>;
}

/** A `google.rpc.Status` whose details hold one ErrorInfo: what `grpc-status-details-bin` carries. */
export interface StatusWithInfo {
  /** The gRPC status code, equal to grpc-status. */
  code: number;
  /** The status message, equal to grpc-message (before percent-encoding). */
  message: string;
  info: ErrorInfo;
}

/*
 * Hand-written protobuf for the two messages sigil needs, with the field numbers of googleapis
 * google/rpc/status.proto and google/rpc/error_details.proto:
 *   Status    { int32 code = 1; string message = 2; repeated google.protobuf.Any details = 3; }
 *   Any       { string type_url = 1; bytes value = 2; }
 *   ErrorInfo { string reason = 1; string domain = 2; map<string, string> metadata = 3; }
 * (a map entry is a message { string key = 1; string value = 2; }).
 */

/** Serializes a google.rpc.Status with one ErrorInfo detail. */
export function encodeStatusDetails(s: StatusWithInfo): Buffer {
  const info = new BinaryWriter();
  info.tag(1, WireType.LengthDelimited).string(s.info.reason);
  info.tag(2, WireType.LengthDelimited).string(s.info.domain);
  for (const [k, v] of Object.entries(s.info.metadata)) {
    info.tag(3, WireType.LengthDelimited).fork().tag(1, WireType.LengthDelimited).string(k).tag(2, WireType.LengthDelimited).string(v).join();
  }
  const w = new BinaryWriter();
  if (s.code !== 0) w.tag(1, WireType.Varint).int32(s.code);
  if (s.message !== '') w.tag(2, WireType.LengthDelimited).string(s.message);
  w.tag(3, WireType.LengthDelimited).fork().tag(1, WireType.LengthDelimited).string(ERROR_INFO_TYPE).tag(2, WireType.LengthDelimited).bytes(info.finish()).join();
  return Buffer.from(w.finish());
}

/**
 * Reads a serialized google.rpc.Status and its first ErrorInfo detail. Undefined, never a throw, for bytes
 * that are not a Status, a Status without an ErrorInfo, or an ErrorInfo without a reason.
 */
export function decodeStatusDetails(bytes: Uint8Array): StatusWithInfo | undefined {
  try {
    let code = 0;
    let message = '';
    let info: ErrorInfo | undefined;
    const r = new BinaryReader(bytes);
    while (r.pos < r.len) {
      const [no, type] = r.tag();
      if (no === 1 && type === WireType.Varint) code = r.int32();
      else if (no === 2 && type === WireType.LengthDelimited) message = r.string(true);
      else if (no === 3 && type === WireType.LengthDelimited) {
        const any = readAny(r.bytes());
        if (info === undefined && any.typeUrl === ERROR_INFO_TYPE) info = readErrorInfo(any.value);
      } else r.skip(type, no);
    }
    if (info === undefined || info.reason === '') return undefined;
    return { code, message, info };
  } catch {
    return undefined;
  }
}

function readAny(bytes: Uint8Array): { typeUrl: string; value: Uint8Array } {
  let typeUrl = '';
  let value: Uint8Array = new Uint8Array(0);
  const r = new BinaryReader(bytes);
  while (r.pos < r.len) {
    const [no, type] = r.tag();
    if (no === 1 && type === WireType.LengthDelimited) typeUrl = r.string(true);
    else if (no === 2 && type === WireType.LengthDelimited) value = r.bytes();
    else r.skip(type, no);
  }
  return { typeUrl, value };
}

function readErrorInfo(bytes: Uint8Array): ErrorInfo {
  const out: ErrorInfo = { reason: '', domain: '', metadata: {} };
  const r = new BinaryReader(bytes);
  while (r.pos < r.len) {
    const [no, type] = r.tag();
    if (no === 1 && type === WireType.LengthDelimited) out.reason = r.string(true);
    else if (no === 2 && type === WireType.LengthDelimited) out.domain = r.string(true);
    else if (no === 3 && type === WireType.LengthDelimited) {
      const e = new BinaryReader(r.bytes());
      let k = '';
      let v = '';
      while (e.pos < e.len) {
        const [n, t] = e.tag();
        if (n === 1 && t === WireType.LengthDelimited) k = e.string(true);
        else if (n === 2 && t === WireType.LengthDelimited) v = e.string(true);
        else e.skip(t, n);
      }
      // A plain object keyed by untrusted strings: `__proto__` would not become an own property.
      Object.defineProperty(out.metadata, k, { value: v, enumerable: true, writable: true, configurable: true });
    } else r.skip(type, no);
  }
  return out;
}
