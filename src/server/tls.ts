import { experimental, type ServerCredentials } from '@grpc/grpc-js';

type CertificateProvider = experimental.CertificateProvider;

/** A certificate provider that hands out fixed PEM bytes, read once at start. */
class StaticProvider implements CertificateProvider {
  readonly #ca: Buffer | null;
  readonly #identity: { certificate: Buffer; privateKey: Buffer } | null;
  constructor(ca: Buffer | null, identity: { certificate: Buffer; privateKey: Buffer } | null) {
    this.#ca = ca;
    this.#identity = identity;
  }
  // grpc-js registers its watcher only after adding the listener, so answer on the next tick.
  addCaCertificateListener(l: experimental.CaCertificateUpdateListener): void {
    process.nextTick(() => l(this.#ca ? { caCertificate: this.#ca } : null));
  }
  removeCaCertificateListener(): void {}
  addIdentityCertificateListener(l: experimental.IdentityCertificateUpdateListener): void {
    process.nextTick(() => l(this.#identity));
  }
  removeIdentityCertificateListener(): void {}
}

/**
 * Server TLS that asks every client for a certificate but lets the handshake finish without one, so
 * open RPCs (health) work; each RPC then checks the verified peer certificate itself. grpc-js exposes a
 * peer certificate to handlers only when it chained to `clientCa`.
 */
export function serverCredentials(opts: { cert: Buffer; key: Buffer; clientCa: Buffer }): ServerCredentials {
  // grpc-js 1.14's factory names its first parameter the CA provider but passes it to the constructor's
  // identity slot (and the second to the CA slot); the order below is the one that works.
  return experimental.createCertificateProviderServerCredentials(
    new StaticProvider(null, { certificate: opts.cert, privateKey: opts.key }),
    new StaticProvider(opts.clientCa, null),
    false,
  );
}
