import { SigilError } from '../errors.ts';

/** The only error a TPM structure parser throws: the bytes do not form the expected structure. */
export class TpmFormatError extends SigilError {
  constructor(message: string) {
    super('INVALID_ARGUMENT', `malformed tpm data: ${message}`);
    this.name = 'TpmFormatError';
  }
}

/** Reads big-endian TPM wire types from untrusted bytes; every overrun is a TpmFormatError. */
export class Reader {
  readonly #b: Buffer;
  #off = 0;

  constructor(b: Uint8Array) {
    this.#b = Buffer.from(b.buffer, b.byteOffset, b.byteLength);
  }

  /** Bytes not read yet. */
  get remaining(): number {
    return this.#b.length - this.#off;
  }

  /** Bytes read so far. */
  get offset(): number {
    return this.#off;
  }

  #need(n: number, what: string): void {
    if (n > this.remaining) throw new TpmFormatError(`${what} needs ${n} bytes, ${this.remaining} left`);
  }

  u8(): number {
    this.#need(1, 'u8');
    return this.#b[this.#off++]!;
  }

  u16(): number {
    this.#need(2, 'u16');
    const v = this.#b.readUInt16BE(this.#off);
    this.#off += 2;
    return v;
  }

  u32(): number {
    this.#need(4, 'u32');
    const v = this.#b.readUInt32BE(this.#off);
    this.#off += 4;
    return v;
  }

  u64(): bigint {
    this.#need(8, 'u64');
    const v = this.#b.readBigUInt64BE(this.#off);
    this.#off += 8;
    return v;
  }

  /** A copy of the next `n` bytes. */
  bytes(n: number): Buffer {
    if (!Number.isSafeInteger(n) || n < 0) throw new TpmFormatError(`bad length ${n}`);
    this.#need(n, 'byte string');
    const out = Buffer.from(this.#b.subarray(this.#off, this.#off + n));
    this.#off += n;
    return out;
  }

  /** A TPM2B: u16 size, then that many bytes. */
  sized(max = 0xffff): Buffer {
    const n = this.u16();
    if (n > max) throw new TpmFormatError(`sized buffer of ${n} bytes exceeds ${max}`);
    return this.bytes(n);
  }

  /** Asserts every byte was consumed. */
  end(): void {
    if (this.remaining !== 0) throw new TpmFormatError(`${this.remaining} trailing bytes`);
  }
}

/** Builds big-endian TPM wire types. */
export class Writer {
  #chunks: Buffer[] = [];

  #int(v: number, bytes: 1 | 2 | 4): this {
    const b = Buffer.alloc(bytes);
    b.writeUIntBE(v, 0, bytes);
    this.#chunks.push(b);
    return this;
  }

  u8(v: number): this {
    return this.#int(v, 1);
  }

  u16(v: number): this {
    return this.#int(v, 2);
  }

  u32(v: number): this {
    return this.#int(v >>> 0, 4);
  }

  u64(v: bigint): this {
    const b = Buffer.alloc(8);
    b.writeBigUInt64BE(v);
    this.#chunks.push(b);
    return this;
  }

  bytes(b: Uint8Array): this {
    this.#chunks.push(Buffer.from(b));
    return this;
  }

  /** A TPM2B: u16 size, then the bytes. */
  sized(b: Uint8Array): this {
    if (b.length > 0xffff) throw new SigilError('INVALID_ARGUMENT', `sized buffer of ${b.length} bytes is too long`);
    return this.u16(b.length).bytes(b);
  }

  finish(): Buffer {
    return Buffer.concat(this.#chunks);
  }
}
