import { createHash, createHmac } from 'node:crypto';
import { SigilError } from '../errors.ts';

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0);
  return b;
}

function checkBits(what: string, bits: number): void {
  if (!Number.isInteger(bits) || bits <= 0 || bits % 8 !== 0) throw new SigilError('INVALID_ARGUMENT', `${what} output of ${bits} bits`);
}

/**
 * KDFa of TPM 2.0 Part 1, 11.4.10.2 (SP 800-108 counter mode with HMAC-`hash`): HMAC(key, [i]32 ||
 * label || 0x00 || contextU || contextV || [bits]32) for i = 1, 2, ..., concatenated and cut to `bits`
 * (a positive multiple of 8 here).
 */
export function kdfa(hash: string, key: Buffer, label: string, contextU: Buffer, contextV: Buffer, bits: number): Buffer {
  checkBits('kdfa', bits);
  const parts: Buffer[] = [];
  const fixed = Buffer.concat([Buffer.from(label, 'latin1'), Buffer.alloc(1), contextU, contextV, u32(bits)]);
  for (let i = 1, have = 0; have < bits / 8; i++) {
    const block = createHmac(hash, key).update(u32(i)).update(fixed).digest();
    parts.push(block);
    have += block.length;
  }
  return Buffer.concat(parts).subarray(0, bits / 8);
}

/**
 * KDFe of TPM 2.0 Part 1, 11.4.10.3 (SP 800-56A concatenation KDF with `hash`): `bits` of key from the
 * shared x-coordinate `z`, `label` (a NUL is appended), `partyU` and `partyV`.
 */
export function kdfe(hash: string, z: Buffer, label: string, partyU: Buffer, partyV: Buffer, bits: number): Buffer {
  checkBits('kdfe', bits);
  const parts: Buffer[] = [];
  const fixed = Buffer.concat([Buffer.from(label, 'latin1'), Buffer.alloc(1), partyU, partyV]);
  for (let i = 1, have = 0; have < bits / 8; i++) {
    const block = createHash(hash).update(u32(i)).update(z).update(fixed).digest();
    parts.push(block);
    have += block.length;
  }
  return Buffer.concat(parts).subarray(0, bits / 8);
}
