import type { Stats } from 'node:fs';
import type { Command } from 'commander';
import { UsageError } from './commands/context.ts';
import { checkPayloadType, DSSE_DEFAULT_PAYLOAD_TYPE, MAX_PAYLOAD_BYTES } from './dsse.ts';
import { readBounded, statNamed } from './files.ts';

/** The options of a sign command (`sigilctl sign`, `sigil-agent sign`). */
export interface SignOptions {
  key: string;
  file: string;
  out: string;
  progress: boolean;
  dsse?: boolean;
  payloadType?: string;
}

/** Adds the options `sigilctl sign` and `sigil-agent sign` share. */
export function addSignOptions(cmd: Command): Command {
  return cmd
    .requiredOption('--key <key>', 'name or name@N')
    .requiredOption('--file <path>', 'file to sign (with --dsse: the payload, e.g. an in-toto statement)')
    .requiredOption('--out <path>', 'where to write the signature (DER for ECDSA, raw for RSA and Ed25519), or with --dsse the envelope (json)')
    .option('--dsse', `write a dsse envelope: sign the PAE of the payload (at most ${MAX_PAYLOAD_BYTES / 1048576} MiB), keyid = the key version that signed (name@N)`)
    .option('--payload-type <type>', `with --dsse: the payloadType (default ${DSSE_DEFAULT_PAYLOAD_TYPE})`)
    .option('--no-progress', 'no progress bar');
}

/** What a sign command checked before anything is sent: the file, and with --dsse its payload type and bytes. */
export interface SignInput {
  st: Stats;
  payloadType: string;
  /** The payload with --dsse (read whole, bounded), else null (the file is streamed). */
  payload: Buffer | null;
}

/** Checks a sign command's options and reads a dsse payload; a mistake is a usage error, before anything is signed. */
export function readSignInput(o: SignOptions): SignInput {
  if (o.payloadType !== undefined && !o.dsse) throw new UsageError('--payload-type goes with --dsse');
  const st = statNamed(o.file, '--file');
  if (st.isDirectory()) throw new UsageError(`--file ${o.file} is a directory: sign one file at a time`);
  if (!o.dsse) return { st, payloadType: DSSE_DEFAULT_PAYLOAD_TYPE, payload: null };
  try {
    return { st, payloadType: checkPayloadType(o.payloadType ?? DSSE_DEFAULT_PAYLOAD_TYPE), payload: readBounded(o.file, MAX_PAYLOAD_BYTES, 'the payload') };
  } catch (err) {
    const code = (err as { code?: unknown }).code;
    if (code === 'INVALID_ARGUMENT' || code === 'MESSAGE_TOO_LARGE') throw new UsageError((err as Error).message);
    throw err;
  }
}
