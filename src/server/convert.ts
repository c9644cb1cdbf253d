import { Algorithm as PbAlgorithm, KeyVersionState as PbState, type Key as PbKey } from '../gen/sigil/v1/signer.ts';
import { SigilError } from '../errors.ts';
import type { Algorithm } from '../signers/signer.ts';
import type { KeyRecord, KeyVersionState } from '../store/store.ts';

const TO_PB = {
  ECDSA_P256_SHA256: PbAlgorithm.ECDSA_P256_SHA256,
  ECDSA_P384_SHA384: PbAlgorithm.ECDSA_P384_SHA384,
  RSA_PKCS1_SHA256: PbAlgorithm.RSA_PKCS1_SHA256,
  RSA_PSS_SHA256: PbAlgorithm.RSA_PSS_SHA256,
  ED25519: PbAlgorithm.ED25519,
} as const satisfies Record<Algorithm, PbAlgorithm>;

const FROM_PB = new Map<number, Algorithm>(Object.entries(TO_PB).map(([k, v]) => [v, k as Algorithm]));

const STATE_TO_PB = { ENABLED: PbState.ENABLED } as const satisfies Record<KeyVersionState, PbState>;

/** Domain algorithm to the contract's enum. */
export function algorithmToPb(a: Algorithm): PbAlgorithm {
  return TO_PB[a];
}

/** The contract's enum to a domain algorithm; null for UNSPECIFIED, INVALID_ARGUMENT for unknown values. */
export function algorithmFromPb(a: number): Algorithm | null {
  if (a === PbAlgorithm.UNSPECIFIED) return null;
  const alg = FROM_PB.get(a);
  if (!alg) throw new SigilError('INVALID_ARGUMENT', `unknown algorithm ${a}`);
  return alg;
}

/** A stored key to its contract form. */
export function keyToPb(k: KeyRecord): PbKey {
  return {
    name: k.name,
    algorithm: TO_PB[k.algorithm],
    backend: k.backend,
    primaryVersion: k.primaryVersion,
    createTime: k.createdAt,
    versions: k.versions.map((v) => ({
      version: v.version,
      uri: v.uri,
      state: STATE_TO_PB[v.state],
      createTime: v.createdAt,
      generated: v.generated,
    })),
  };
}
