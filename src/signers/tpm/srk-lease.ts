import type { Logger } from '../../log.ts';
import { TPM_RH } from '../../tpm/constants.ts';
import { objectName } from '../../tpm/structures.ts';
import { SRK_TEMPLATE_ECC, templateBytes } from '../../tpm/templates.ts';
import { hex8, type Tpm } from '../../tpm/tpm.ts';
import { SigilError } from '../../errors.ts';
import type { PinnedSrk, SrkPin } from './srk-pin.ts';

/** The SRK as a holder of the lease sees it: where it is loaded, and the pinned public area to salt sessions with. */
export interface LeasedSrk {
  handle: number;
  pinned: PinnedSrk;
}

interface Loaded {
  handle: number;
  /** The transport's connection count when it was loaded: on another connection the handle means nothing. */
  connection: number | undefined;
}

/**
 * The standard ECC P-256 SRK as a transient object, loaded (TPM2_CreatePrimary under the owner
 * hierarchy) while at least one caller needs it and flushed when the last one is done: starting a
 * salted session and creating a key share one load. Each load is held to the pin (`SrkPin.check`).
 * Transient rather than persistent: it takes no persistent handle that others may use (0x81000001 is a
 * common convention) nor one of the few persistent slots a hardware TPM has, and it holds none of
 * swtpm's three object slots between uses; the price is a CreatePrimary per session start and per
 * key creation.
 */
export class SrkLease {
  readonly #tpm: Tpm;
  readonly #pin: SrkPin;
  readonly #log: Logger;
  #users = 0;
  #loading: Promise<Loaded> | undefined;
  #current: Loaded | undefined;
  #flushing: Promise<void> = Promise.resolve();

  constructor(tpm: Tpm, pin: SrkPin, log: Logger) {
    this.#tpm = tpm;
    this.#pin = pin;
    this.#log = log;
  }

  /** Runs `f` with the SRK loaded and matching the pin (pinning it when nothing is pinned yet). */
  async with<T>(f: (srk: LeasedSrk) => Promise<T>): Promise<T> {
    this.#users++;
    try {
      this.#loading ??= this.#flushing.then(() => this.#load());
      const l = await this.#loading;
      return await f({ handle: l.handle, pinned: this.#pin.pinned! });
    } finally {
      if (--this.#users === 0) this.#release();
    }
  }

  /** The handle of the SRK while a holder uses it on the current connection: a flush of leftovers must spare it. */
  heldHandle(): number | undefined {
    const c = this.#current;
    return c !== undefined && this.#users > 0 && c.connection === this.#tpm.transport.connections ? c.handle : undefined;
  }

  /** Settles once the SRK's last flush has been answered (for close). */
  settled(): Promise<void> {
    return this.#flushing;
  }

  async #load(): Promise<Loaded> {
    try {
      const made = await this.#tpm.createPrimary(TPM_RH.OWNER, templateBytes(SRK_TEMPLATE_ECC));
      const loaded = { handle: made.handle, connection: this.#tpm.transport.connections };
      try {
        if (!made.name.equals(objectName(made.public))) throw new SigilError('BACKEND_ERROR', 'the tpm reported a storage key name that does not match its public area');
        const { pinned, recorded } = await this.#pin.check(made.public);
        if (recorded) this.#log.info({ name: pinned.name.toString('hex'), file: this.#pin.path }, 'tpm storage key (srk) pinned: sessions are salted with it from now on');
      } catch (err) {
        const p = this.#pin.pinned;
        if (p !== undefined && !p.name.equals(objectName(made.public))) {
          this.#log.error({ pinned: p.name.toString('hex'), found: objectName(made.public).toString('hex'), pinnedAt: p.pinnedAt, file: this.#pin.path }, 'tpm storage key differs from the pinned one: signing and key creation refused');
        }
        await this.#tpm.flushContext(made.handle).catch(() => undefined);
        throw err;
      }
      this.#current = loaded;
      return loaded;
    } catch (err) {
      // Not kept: the next holder loads again.
      this.#loading = undefined;
      throw err;
    }
  }

  #release(): void {
    const loading = this.#loading;
    this.#loading = undefined;
    this.#current = undefined;
    if (loading === undefined) return;
    this.#flushing = loading.then(
      async (l) => {
        // On a later connection the TPM restarted or a flush of leftovers already ended it; the number may now be another's.
        if (l.connection !== this.#tpm.transport.connections) return;
        await this.#tpm.flushContext(l.handle).catch((err: unknown) => this.#log.warn({ err, handle: hex8(l.handle) }, 'tpm storage key could not be flushed'));
      },
      () => undefined,
    );
  }
}
