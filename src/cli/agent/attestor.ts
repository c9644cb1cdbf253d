import { createHash, generateKeyPairSync } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { connect, rpc, type Clients } from '../client.ts';
import type { BuilderIdentity, PcrSelection as PbPcrSelection } from '../../gen/sigil/v1/attestation.ts';
import { openTransport } from '../../tpm/transport.ts';
import { Tpm } from '../../tpm/tpm.ts';
import { PCR_BANKS } from '../../attest/policy.ts';
import { activate, createAk, loadAk, quoteWithPcrs, readEk, type Ak } from '../../tpm/attestation-client.ts';
import { baseRc, TPM_RC, TpmError } from '../../tpm/rc.ts';

/**
 * The TPM refused to load the AK this runner enrolled with (TPM2_Load failed): the TPM was cleared (TPM2_Clear
 * changes the proof values that protect the AK's blob) or replaced, so no renewal can be quoted; only a new
 * enrollment, with a new AK, can go on.
 */
export class AkUnavailableError extends Error {}

/** How the agent reaches sigild and its TPM, and what it asks for. */
export interface AttestorOptions {
  /** sigild's `host:port`. */
  addr: string;
  /** CA bundle (file) that signed sigild's server certificate. */
  ca: string;
  /** TPM transport spec: `/dev/tpmrm0`, `swtpm:host=H,port=P` or `tcti:<config>`. */
  tpm: string;
  /** Attestation policy name; empty for the daemon's only one. */
  policy: string;
  ek: 'rsa' | 'ecc';
  ak: 'ecc' | 'rsa';
  claims: Record<string, string>;
  /** Requested lifetime in seconds; 0 for the daemon's default. */
  lifetimeSeconds: number;
  /** A TCG binary event log to send with each quote, read afresh every time. */
  eventLogPath?: string | undefined;
  joinToken?: string | undefined;
}

/** A builder identity held in memory: the ephemeral private key never touches disk. */
export interface Identity {
  keyPem: Buffer;
  certificatePem: string;
  caCertificatePem: string;
  spiffeId: string;
  notBefore: Date;
  notAfter: Date;
}

/**
 * Runs enrollment and renewal against sigild with a TPM. The TPM connection is opened per operation
 * (swtpm serves one connection at a time, and a resource-managed device needs no long-lived handle);
 * the AK's blobs stay in memory so renewals reload it under the re-derived EK (same template, same key).
 */
export class Attestor {
  readonly #o: AttestorOptions;
  #ak: Ak | null = null;

  constructor(o: AttestorOptions) {
    this.#o = o;
  }

  /** First enrollment: EK, new AK, credential activation, quote, certificate. */
  async enroll(): Promise<Identity> {
    const c = connect({ addr: this.#o.addr, ca: this.#o.ca });
    const tpm = new Tpm(await openTransport(this.#o.tpm));
    try {
      const ek = await readEk(tpm, this.#o.ek);
      let ekLoaded = true;
      const ak = await createAk(tpm, this.#o.ak, ek).catch(async (err: unknown) => {
        await tpm.flushContext(ek.handle).catch(() => undefined);
        throw err;
      });
      try {
        const begin = await rpc.beginEnrollment(c, {
          policy: this.#o.policy,
          ekCertificate: ek.cert ?? Buffer.alloc(0),
          ekPublic: ek.public.raw,
          akPublic: ak.public.raw,
          joinToken: this.#o.joinToken ?? '',
          renewal: false,
        });
        const secret = await activate(tpm, ek, ak, begin.credentialBlob, begin.encryptedSecret);
        await tpm.flushContext(ek.handle);
        ekLoaded = false;
        const { keyPem, spki } = ephemeralKey();
        const quote = await this.#quote(tpm, ak, begin.nonce, spki, begin.pcrSelection);
        const res = await rpc.finishEnrollment(c, {
          nonce: begin.nonce,
          activatedSecret: secret,
          quote,
          identityPublicKey: spki,
          claims: this.#o.claims,
          lifetimeSeconds: this.#o.lifetimeSeconds,
        });
        this.#ak = ak;
        return toIdentity(keyPem, res.identity);
      } finally {
        // A TPM without a resource manager (swtpm) keeps transient objects across connections.
        if (ekLoaded) await tpm.flushContext(ek.handle).catch(() => undefined);
        await tpm.flushContext(ak.handle).catch(() => undefined);
      }
    } finally {
      await tpm.close();
      c.close();
    }
  }

  /** Renewal: a fresh nonce over mTLS with the current identity, a fresh quote, a fresh ephemeral key. */
  async renew(current: Identity): Promise<Identity> {
    if (!this.#ak) throw new Error('renewal before enrollment');
    const c = connect({ addr: this.#o.addr, ca: this.#o.ca, key: current.keyPem, cert: Buffer.from(current.certificatePem) });
    const tpm = new Tpm(await openTransport(this.#o.tpm));
    try {
      const begin = await rpc.beginEnrollment(c, { policy: '', ekCertificate: Buffer.alloc(0), ekPublic: Buffer.alloc(0), akPublic: Buffer.alloc(0), joinToken: '', renewal: true });
      const ek = await readEk(tpm, this.#o.ek);
      const ak = await loadAk(tpm, this.#ak, ek)
        .catch((err: unknown) => {
          // TPM_RC_INTEGRITY: the blob no longer verifies under this TPM's EK (TPM 2.0 Part 3, TPM2_Load). Anything
          // else (a transport failure, out of object memory) a retry may get past.
          if (!(err instanceof TpmError) || baseRc(err.rc) !== TPM_RC.INTEGRITY) throw err;
          throw new AkUnavailableError(`the tpm no longer loads the enrolled ak (was it cleared?): ${err.message}; enroll again`, { cause: err });
        })
        .finally(() => tpm.flushContext(ek.handle).catch(() => undefined));
      try {
        const { keyPem, spki } = ephemeralKey();
        const quote = await this.#quote(tpm, ak, begin.nonce, spki, begin.pcrSelection);
        const res = await rpc.renew(c, { nonce: begin.nonce, quote, identityPublicKey: spki, claims: this.#o.claims, lifetimeSeconds: this.#o.lifetimeSeconds });
        return toIdentity(keyPem, res.identity);
      } finally {
        await tpm.flushContext(ak.handle).catch(() => undefined);
      }
    } finally {
      await tpm.close();
      c.close();
    }
  }

  async #quote(tpm: Tpm, ak: Ak, nonce: Buffer, spki: Buffer, sel: PbPcrSelection | undefined) {
    if (!sel || !Object.hasOwn(PCR_BANKS, sel.bank)) throw new Error(`sigild asked for an unknown pcr bank ${sel?.bank ?? '(none)'}`);
    const extraData = createHash('sha256').update(nonce).update(spki).digest();
    const q = await quoteWithPcrs(tpm, ak, extraData, [{ hash: PCR_BANKS[sel.bank as keyof typeof PCR_BANKS].alg, pcrs: [...sel.indices].sort((a, b) => a - b) }]);
    const pcrValues: Record<number, Buffer> = {};
    for (const [i, v] of q.pcrValues) pcrValues[i] = v;
    const eventLog = this.#o.eventLogPath ? readFileSync(this.#o.eventLogPath) : Buffer.alloc(0);
    return { attest: q.attest, signature: q.signature, pcrValues, eventLog };
  }
}

/** Opens Signer clients authenticated by a builder identity. */
export function builderClients(addr: string, ca: string, id: Identity): Clients {
  return connect({ addr, ca, key: id.keyPem, cert: Buffer.from(id.certificatePem) });
}

function ephemeralKey(): { keyPem: Buffer; spki: Buffer } {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  return {
    keyPem: Buffer.from(privateKey.export({ type: 'pkcs8', format: 'pem' }) as string),
    spki: publicKey.export({ type: 'spki', format: 'der' }),
  };
}

function toIdentity(keyPem: Buffer, id: BuilderIdentity | undefined): Identity {
  if (!id || !id.notAfter || !id.notBefore) throw new Error('sigild answered without an identity');
  return {
    keyPem,
    certificatePem: id.certificatePem,
    caCertificatePem: id.caCertificatePem,
    spiffeId: id.spiffeId,
    notBefore: id.notBefore,
    notAfter: id.notAfter,
  };
}
