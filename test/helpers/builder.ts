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
