import { SigilError } from '../errors.ts';

/** ASN.1 universal tags used by the builder extensions (X.690, 8.1.2). */
export const TAG = { INTEGER: 0x02, OCTET_STRING: 0x04, UTF8_STRING: 0x0c, SEQUENCE: 0x30 } as const;

/** Encodes one DER TLV with a definite, minimal length (X.690, 10.1). */
export function tlv(tag: number, content: Buffer): Buffer {
  const n = content.length;
  let len: Buffer;
  if (n < 0x80) len = Buffer.from([n]);
  else {
    const bytes: number[] = [];
    for (let v = n; v > 0; v = Math.floor(v / 256)) bytes.unshift(v & 0xff);
    len = Buffer.from([0x80 | bytes.length, ...bytes]);
  }
  return Buffer.concat([Buffer.from([tag]), len, content]);
}

/** A DER INTEGER of a non-negative safe integer, in minimal two's complement. */
export function derUint(n: number): Buffer {
  if (!Number.isSafeInteger(n) || n < 0) throw new SigilError('INTERNAL', `cannot encode ${n} as a der integer`);
  const bytes: number[] = [];
  for (let v = n; v > 0; v = Math.floor(v / 256)) bytes.unshift(v & 0xff);
  if (bytes.length === 0 || bytes[0]! & 0x80) bytes.unshift(0);
  return tlv(TAG.INTEGER, Buffer.from(bytes));
}

/** A DER SEQUENCE of already encoded elements. */
export function derSequence(items: readonly Buffer[]): Buffer {
  return tlv(TAG.SEQUENCE, Buffer.concat(items));
}

/** A DER UTF8String. */
export function derUtf8(s: string): Buffer {
  return tlv(TAG.UTF8_STRING, Buffer.from(s, 'utf8'));
}

/** A DER OCTET STRING. */
export function derOctets(b: Buffer): Buffer {
  return tlv(TAG.OCTET_STRING, b);
}

/**
 * A strict reader of DER elements in a buffer: single-byte tags, definite minimal lengths, no trailing
 * bytes. Anything else is INVALID_ARGUMENT naming `what`.
 */
export class DerReader {
  readonly #buf: Buffer;
  readonly #what: string;
  #pos = 0;

  constructor(buf: Buffer, what: string) {
    this.#buf = buf;
    this.#what = what;
  }

  /** True when every byte has been read. */
  get done(): boolean {
    return this.#pos === this.#buf.length;
  }

  /** The content of the next element, which must carry `tag`. */
  read(tag: number): Buffer {
    const b = this.#buf;
    if (this.#pos + 2 > b.length) this.#bad('truncated');
    if (b[this.#pos] !== tag) this.#bad(`expected tag 0x${tag.toString(16)}, got 0x${b[this.#pos]!.toString(16)}`);
    let len = b[this.#pos + 1]!;
    let p = this.#pos + 2;
    if (len & 0x80) {
      const count = len & 0x7f;
      if (count === 0 || count > 4) this.#bad('unsupported length');
      if (p + count > b.length) this.#bad('truncated');
      if (b[p] === 0) this.#bad('non-minimal length');
      len = 0;
      for (let i = 0; i < count; i++) len = len * 256 + b[p + i]!;
      if (len < 0x80) this.#bad('non-minimal length');
      p += count;
    }
    if (p + len > b.length) this.#bad('truncated');
    this.#pos = p + len;
    return b.subarray(p, p + len);
  }

  /** A nested reader over the next SEQUENCE's content. */
  sequence(): DerReader {
    return new DerReader(this.read(TAG.SEQUENCE), this.#what);
  }

  /** The next INTEGER, which must be non-negative and at most 2^31 - 1. */
  uint(): number {
    const c = this.read(TAG.INTEGER);
    if (c.length === 0 || c.length > 5) this.#bad('integer out of range');
    if (c[0]! & 0x80) this.#bad('negative integer');
    if (c.length > 1 && c[0] === 0 && !(c[1]! & 0x80)) this.#bad('non-minimal integer');
    const v = c.readUIntBE(0, c.length);
    if (v > 0x7fffffff) this.#bad('integer out of range');
    return v;
  }

  /** The next UTF8String, which must be valid UTF-8. */
  utf8(): string {
    const c = this.read(TAG.UTF8_STRING);
    const s = c.toString('utf8');
    if (!Buffer.from(s, 'utf8').equals(c)) this.#bad('invalid utf-8');
    return s;
  }

  /** The next OCTET STRING. */
  octets(): Buffer {
    return this.read(TAG.OCTET_STRING);
  }

  /** Fails unless every byte has been read. */
  end(): void {
    if (!this.done) this.#bad('trailing bytes');
  }

  #bad(why: string): never {
    throw new SigilError('INVALID_ARGUMENT', `malformed ${this.#what}: ${why}`);
  }
}
