import { SigilError } from '../errors.ts';
import type { Logger } from '../log.ts';
import type { Backend, BackendModule } from './signer.ts';
import type { BackendConfig } from './config.ts';
import { resilienceSchema, resilient, type BreakerState } from './resilience.ts';

/** A backend's config as code hands it over: the `resilience` block may be left out (its defaults apply). */
export type BackendConfigInput = BackendConfig extends infer C ? (C extends BackendConfig ? Omit<C, 'resilience'> & { resilience?: Partial<C['resilience']> } : never) : never;

/** Backend modules by kind, loaded on first use so an unused backend costs nothing. */
const MODULES = {
  awskms: () => import('./awskms/index.ts'),
  gcpkms: () => import('./gcpkms/index.ts'),
  pkcs11: () => import('./pkcs11/index.ts'),
  soft: () => import('./soft/index.ts'),
  tpm: () => import('./tpm/index.ts'),
} satisfies Record<BackendConfig['type'], () => Promise<BackendModule<never>>>;

/**
 * The lazy table of configured backends: `get(name)` opens a backend the first time it is asked for
 * and hands the same instance to every later caller.
 */
export class BackendRegistry {
  readonly #configs: ReadonlyMap<string, BackendConfigInput>;
  readonly #opening = new Map<string, Promise<Backend>>();
  readonly #log: Logger;
  readonly #production: boolean;
  readonly #onBreaker: ((backend: string, state: BreakerState) => void) | undefined;
  readonly #onSignatureMismatch: ((backend: string) => void) | undefined;

  /**
   * `onBreaker` hears each backend's breaker state: `closed` when the backend opens, then every change;
   * `onSignatureMismatch` each signature a backend refused because it did not verify under the recorded key.
   */
  constructor(
    configs: Record<string, BackendConfigInput>,
    opts: { log: Logger; production: boolean; onBreaker?: (backend: string, state: BreakerState) => void; onSignatureMismatch?: (backend: string) => void },
  ) {
    this.#configs = new Map(Object.entries(configs));
    this.#log = opts.log;
    this.#production = opts.production;
    this.#onBreaker = opts.onBreaker;
    this.#onSignatureMismatch = opts.onSignatureMismatch;
  }

  /** The configured backend names. */
  names(): string[] {
    return [...this.#configs.keys()];
  }

  /** True when a backend of that name is configured. */
  has(name: string): boolean {
    return this.#configs.has(name);
  }

  /** Opens (once) and returns the named backend. */
  get(name: string): Promise<Backend> {
    let p = this.#opening.get(name);
    if (p) return p;
    const config = this.#configs.get(name);
    if (!config) return Promise.reject(new SigilError('INVALID_ARGUMENT', `no backend named ${JSON.stringify(name)}`));
    p = this.#open(name, config);
    this.#opening.set(name, p);
    // A failed open is not cached: the next request tries again (the HSM may come back).
    p.catch(() => this.#opening.delete(name));
    return p;
  }

  async #open(name: string, config: BackendConfigInput): Promise<Backend> {
    const mod = (await MODULES[config.type]()) as BackendModule<BackendConfig>;
    const log = this.#log.child({ module: 'backend', backend: name });
    const { resilience, ...own } = config;
    const mismatch = this.#onSignatureMismatch;
    const backend = await mod.open(own as BackendConfig, { name, log, production: this.#production, onSignatureMismatch: mismatch && (() => mismatch(name)) });
    log.info({ kind: backend.kind }, 'backend opened');
    const onBreaker = this.#onBreaker;
    onBreaker?.(name, 'closed');
    return resilient(backend, resilienceSchema.parse(resilience ?? {}), { name, log, ...(onBreaker ? { onBreaker: (state: BreakerState) => onBreaker(name, state) } : {}) });
  }

  /** Closes every backend that was opened. */
  async closeAll(): Promise<void> {
    const opened = [...this.#opening.values()];
    this.#opening.clear();
    await Promise.allSettled(opened.map(async (p) => (await p).close()));
  }
}
