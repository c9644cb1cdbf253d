import { status as Status } from '@grpc/grpc-js';
import type { ErrorInfo } from '../../status-details.ts';

/** A gRPC status to end a call with. */
export interface CallStatus {
  code: Status;
  details: string;
  /** The machine-readable reason sent in grpc-status-details-bin; without one, the code's name. */
  info?: ErrorInfo;
}

/** Frames one message: the 5-byte gRPC prefix (uncompressed flag, big-endian length) and the body, in one Buffer. */
export function encodeFrame(body: Uint8Array): Buffer {
  const frame = Buffer.allocUnsafe(5 + body.length);
  frame[0] = 0;
  frame.writeUInt32BE(body.length, 1);
  frame.set(body, 5);
  return frame;
}

/**
 * Splits a request body into gRPC length-prefixed messages, across chunk boundaries. A message that
 * lies whole inside one chunk is handed over as a view of that chunk, without a copy.
 */
export class FrameDecoder {
  readonly #maxBytes: number;
  readonly #encoding: string | undefined;
  readonly #onMessage: (msg: Buffer) => void;
  // The prefix of the message being read, when a chunk ended inside it.
  readonly #head = Buffer.alloc(5);
  #headLen = 0;
  // The body being assembled across chunks, and how much of it has arrived.
  #body: Buffer | null = null;
  #bodyLen = 0;

  /** `encoding` is the request's grpc-encoding header, for the error on a compressed message. */
  constructor(maxBytes: number, encoding: string | undefined, onMessage: (msg: Buffer) => void) {
    this.#maxBytes = maxBytes;
    this.#encoding = encoding;
    this.#onMessage = onMessage;
  }

  /** True while a message is only partly received. */
  get partial(): boolean {
    return this.#headLen > 0 || this.#body !== null;
  }

  /**
   * Feeds one chunk, calling `onMessage` for every complete message in it. Returns the status to end
   * the call with when the input breaks the protocol or the size limit; the decoder is unusable then.
   */
  push(chunk: Buffer): CallStatus | undefined {
    const onMessage = this.#onMessage;
    let at = 0;
    const n = chunk.length;
    while (at < n) {
      if (this.#body !== null) {
        const take = Math.min(this.#body.length - this.#bodyLen, n - at);
        chunk.copy(this.#body, this.#bodyLen, at, at + take);
        this.#bodyLen += take;
        at += take;
        if (this.#bodyLen === this.#body.length) {
          const msg = this.#body;
          this.#body = null;
          onMessage(msg);
        }
        continue;
      }
      let flag: number;
      let len: number;
      if (this.#headLen === 0 && n - at >= 5) {
        flag = chunk[at]!;
        len = chunk.readUInt32BE(at + 1);
        at += 5;
      } else {
        const take = Math.min(5 - this.#headLen, n - at);
        chunk.copy(this.#head, this.#headLen, at, at + take);
        this.#headLen += take;
        at += take;
        if (this.#headLen < 5) break;
        this.#headLen = 0;
        flag = this.#head[0]!;
        len = this.#head.readUInt32BE(1);
      }
      const bad = this.#check(flag, len);
      if (bad !== undefined) return bad;
      if (n - at >= len) {
        const msg = chunk.subarray(at, at + len);
        at += len;
        onMessage(msg);
      } else {
        this.#body = Buffer.allocUnsafe(len);
        this.#bodyLen = 0;
      }
    }
    return undefined;
  }

  #check(flag: number, len: number): CallStatus | undefined {
    if (flag === 1) {
      if (this.#encoding !== undefined && this.#encoding !== 'identity') return { code: Status.UNIMPLEMENTED, details: `compression not supported: ${this.#encoding}` };
      return { code: Status.INTERNAL, details: 'compressed message without a grpc-encoding' };
    }
    if (flag !== 0) return { code: Status.INTERNAL, details: `invalid message flag ${flag}` };
    if (len > this.#maxBytes) return { code: Status.RESOURCE_EXHAUSTED, details: `received message larger than max (${len} vs. ${this.#maxBytes})` };
    return undefined;
  }
}

const PLAIN = /^[\x20-\x24\x26-\x7e]*$/;

/** Percent-encodes a grpc-message value as the gRPC HTTP/2 spec asks: bytes outside 0x20-0x7e, and `%`. */
export function percentEncode(s: string): string {
  if (PLAIN.test(s)) return s;
  let out = '';
  for (const b of Buffer.from(s, 'utf8')) {
    out += b >= 0x20 && b <= 0x7e && b !== 0x25 ? String.fromCharCode(b) : `%${b < 16 ? '0' : ''}${b.toString(16).toUpperCase()}`;
  }
  return out;
}

const UNIT_MS: Record<string, number> = { H: 3_600_000, M: 60_000, S: 1000, m: 1, u: 1e-3, n: 1e-6 };

/** The grpc-timeout header in milliseconds, or undefined when absent or malformed. */
export function parseTimeout(value: string | string[] | undefined): number | undefined {
  if (typeof value !== 'string') return undefined;
  const m = /^(\d{1,8})([HMSmun])$/.exec(value);
  if (m === null) return undefined;
  return Number(m[1]) * UNIT_MS[m[2]!]!;
}
