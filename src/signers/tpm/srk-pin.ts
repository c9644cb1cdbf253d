import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { SigilError } from '../../errors.ts';
import { TPM_ALG, TPM_ECC } from '../../tpm/constants.ts';
import { objectName, parsePublic, type TpmPublic } from '../../tpm/structures.ts';
import { writeStateFile } from './state-file.ts';

/** The storage key (SRK) a TPM backend pinned: its public area, its name, and when it was first seen. */
export interface PinnedSrk {
  public: TpmPublic;
  name: Buffer;
  pinnedAt: string;
}

/** The file, in the backend's state directory, that pins the SRK. */
export const SRK_PIN_FILE = 'srk.json';

const fileSchema = z.strictObject({
  version: z.literal(1),
  name: z.string().regex(/^[0-9a-f]{4,132}$/),
  public: z.string().regex(/^(?:[0-9a-f]{2})+$/),
  pinnedAt: z.string(),
});

/** Whether a public area is the kind of key a session can be salted with here: ECC NIST P-256 with a SHA-256 name. */
function saltable(p: TpmPublic): boolean {
  return p.type === TPM_ALG.ECC && p.ecc?.curve === TPM_ECC.NIST_P256 && p.nameAlg === TPM_ALG.SHA256;
}

/**
 * The SRK pinned in `stateDir/srk.json` (mode 0600, written atomically): recorded the first time the
 * backend sees its TPM, compared every time after. Every salted session encrypts its salt to the pinned
 * public key, so only the TPM holding that key's private part can answer such a session.
 */
export class SrkPin {
  readonly #dir: string;
  #pinned: PinnedSrk | undefined;

  private constructor(dir: string, pinned: PinnedSrk | undefined) {
    this.#dir = dir;
    this.#pinned = pinned;
  }

  /** Reads the pin from `dir` (which must exist); none yet is fine, an unreadable or corrupt file is BACKEND_ERROR. */
  static async open(dir: string): Promise<SrkPin> {
    const path = join(dir, SRK_PIN_FILE);
    let text: string;
    try {
      text = await readFile(path, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return new SrkPin(dir, undefined);
      throw new SigilError('BACKEND_ERROR', `tpm storage key pin ${path} cannot be read`, { cause: err });
    }
    try {
      const f = fileSchema.parse(JSON.parse(text));
      const pub = parsePublic(Buffer.from(f.public, 'hex'));
      const name = objectName(pub);
      if (name.toString('hex') !== f.name || !saltable(pub)) throw new Error('name and public area disagree, or not an ecc p-256 key with a sha-256 name');
      return new SrkPin(dir, { public: pub, name, pinnedAt: f.pinnedAt });
    } catch (err) {
      throw new SigilError('BACKEND_ERROR', `tpm storage key pin ${path} is corrupt`, { cause: err });
    }
  }

  /** The pinned SRK, if any yet. */
  get pinned(): PinnedSrk | undefined {
    return this.#pinned;
  }

  /** Path of the pin file. */
  get path(): string {
    return join(this.#dir, SRK_PIN_FILE);
  }

  /**
   * Holds the SRK a TPM reported (`found`, its public area from CreatePrimary) to the pin: pins it when
   * nothing is pinned yet (`recorded` true), else FAILED_PRECONDITION naming both names when it differs.
   */
  async check(found: TpmPublic): Promise<{ pinned: PinnedSrk; recorded: boolean }> {
    const name = objectName(found);
    const p = this.#pinned;
    if (p !== undefined) {
      if (!p.name.equals(name)) {
        throw new SigilError(
          'FAILED_PRECONDITION',
          `the tpm's storage key (srk) is not the one pinned in ${this.path} on ${p.pinnedAt}: pinned name ${p.name.toString('hex')}, the tpm answers with ${name.toString('hex')}; the tpm was cleared or replaced, or something between sigild and the tpm answers for it; not signing (docs/backends.md, "Pinned storage key")`,
        );
      }
      return { pinned: p, recorded: false };
    }
    if (!saltable(found)) throw new SigilError('BACKEND_ERROR', 'the tpm answered the ecc p-256 storage key template with another kind of key');
    const pinned = { public: found, name, pinnedAt: new Date().toISOString() };
    const body = JSON.stringify({ version: 1, name: name.toString('hex'), public: found.raw.toString('hex'), pinnedAt: pinned.pinnedAt }, null, 2) + '\n';
    try {
      await writeStateFile(this.#dir, SRK_PIN_FILE, body);
    } catch (err) {
      throw new SigilError('BACKEND_ERROR', `tpm storage key pin ${this.path} cannot be written`, { cause: err });
    }
    this.#pinned = pinned;
    return { pinned, recorded: true };
  }
}
