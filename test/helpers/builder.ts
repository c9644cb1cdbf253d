import { createHash } from 'node:crypto';
import { rpc } from '../../src/cli/client.ts';
import { builderClients, type Identity } from '../../src/cli/agent/attestor.ts';
import type { SignResponse } from '../../src/gen/sigil/v1/signer.ts';
import type { TestDaemon } from './daemon.ts';

/** Signs a digest of `message` with `key` as the builder holding `id`, over mTLS to the daemon running now. */
export async function signAsBuilder(td: TestDaemon, id: Identity, key = 'ci/provenance', message = 'artifact'): Promise<SignResponse> {
  const c = builderClients(td.daemon.address, td.ca, id);
  try {
    return await rpc.sign(c, { key, digest: createHash('sha256').update(message).digest(), message: undefined });
  } finally {
    c.close();
  }
}

/** The PCRs the builder tests' attestation policy `ci` selects (all zero on a fresh swtpm). */
export const BUILDER_PCRS = [0, 1, 2, 3, 4, 5, 6, 7];

/**
 * The daemon config of the builder e2e tests: an identity CA in trust domain `sigil.test` (with `identity`'s
 * overrides), builders enrolled under policy `ci` (swtpm's EK CA, zero PCRs) may sign with `ci/*` keys.
 */
export function builderConfig(ekCaFile: string, identity: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    identity: { trustDomain: 'sigil.test', ...identity },
    authorization: { builders: [{ keys: ['ci/*'], identities: [{ san: 'spiffe://sigil.test/builder/tpm/*', policy: 'ci' }] }] },
    attestation: {
      policies: { ci: { ekCaFiles: [ekCaFile], pcrs: { bank: 'sha256', select: BUILDER_PCRS }, golden: [Object.fromEntries(BUILDER_PCRS.map((i) => [String(i), '00'.repeat(32)]))] } },
    },
  };
}
