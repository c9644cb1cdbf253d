import { credentials, Metadata, type ServiceError, type ChannelOptions } from '@grpc/grpc-js';
import { readFileSync } from 'node:fs';
import {
  SignerClient,
  type GetPublicKeyRequest,
  type GetPublicKeyResponse,
  type ListKeysRequest,
  type ListKeysResponse,
  type SignBatchRequest,
  type SignBatchResponse,
  type SignRequest,
  type SignResponse,
} from '../gen/sigil/v1/signer.ts';
import {
  AdminClient,
  type AdminListKeysRequest,
  type AdminListKeysResponse,
  type CreateKeyRequest,
  type CreateKeyResponse,
  type GetKeyRequest,
  type GetKeyResponse,
  type ImportKeyRequest,
  type ImportKeyResponse,
  type RotateKeyRequest,
  type RotateKeyResponse,
  type DisableKeyVersionRequest,
  type DisableKeyVersionResponse,
  type EnableKeyVersionRequest,
  type EnableKeyVersionResponse,
  type ScheduleDestroyKeyVersionRequest,
  type ScheduleDestroyKeyVersionResponse,
  type CancelDestroyKeyVersionRequest,
  type CancelDestroyKeyVersionResponse,
  type ListKeyVersionsRequest,
  type ListKeyVersionsResponse,
  type UpdateKeyPolicyRequest,
  type UpdateKeyPolicyResponse,
  type ListApprovalsRequest,
  type ListApprovalsResponse,
  type ApproveRequestRequest,
  type ApproveRequestResponse,
  type RejectRequestRequest,
  type RejectRequestResponse,
  type ListEnrollmentsRequest,
  type ListEnrollmentsResponse,
  type ForgetEnrollmentRequest,
  type ForgetEnrollmentResponse,
  type ArchiveAuditLogRequest,
  type ArchiveAuditLogResponse,
} from '../gen/sigil/v1/admin.ts';
import {
  AttestationClient,
  type BeginEnrollmentRequest,
  type BeginEnrollmentResponse,
  type FinishEnrollmentRequest,
  type FinishEnrollmentResponse,
  type RenewRequest,
  type RenewResponse,
} from '../gen/sigil/v1/attestation.ts';
import {
  RevocationClient,
  type GetCrlRequest,
  type GetCrlResponse,
  type GetTrustedRootRequest,
  type GetTrustedRootResponse,
  type ListRevocationsRequest,
  type ListRevocationsResponse,
  type RevokeBuilderRequest,
  type RevokeBuilderResponse,
  type RevokeIdentityRequest,
  type RevokeIdentityResponse,
} from '../gen/sigil/v1/revocation.ts';

import { AuditClient } from '../gen/sigil/v1/audit.ts';

/** Where and how to reach sigild. */
export interface ConnectOptions {
  addr: string;
  /** The CA bundle that signed sigild's certificate: a PEM file path, or the PEM itself. */
  ca: string | Buffer;
  /** Client certificate: a PEM file path, or the PEM itself (the agent keeps its identity in memory). */
  cert?: string | Buffer | undefined;
  /** Client private key: a PEM file path, or the PEM itself. */
  key?: string | Buffer | undefined;
  /** Largest message this client may send (default SEND_LIMIT_BYTES). */
  maxSendBytes?: number;
}

/**
 * The client's own cap on what it sends: the most any sigild takes (the largest `limits.maxMessageBytes` its
 * config accepts, 1 GiB) plus room for the rest of the request, so the daemon's limit is the one that counts;
 * commands check an Ed25519 file against the daemon's limit (GetPublicKey's max_message_bytes) before reading it.
 */
export const SEND_LIMIT_BYTES = 1024 * 1024 * 1024 + 1024 * 1024;

/** The sigil clients over one TLS channel configuration. */
export interface Clients {
  signer: SignerClient;
  admin: AdminClient;
  attestation: AttestationClient;
  revocation: RevocationClient;
  audit: AuditClient;
  close(): void;
}

let warningFiltered = false;

/**
 * grpc-js passes the target host as TLS server name even when it is an IP address, and Node warns
 * (DEP0123) on every connection; the certificate is still checked against the IP SAN, so drop that one warning.
 */
function filterServerNameWarning(): void {
  if (warningFiltered) return;
  warningFiltered = true;
  const emit = process.emitWarning.bind(process) as (...args: unknown[]) => void;
  process.emitWarning = ((warning: string | Error, ...rest: unknown[]) => {
    const code = typeof rest[0] === 'object' && rest[0] !== null ? (rest[0] as { code?: string }).code : rest[1];
    if (code === 'DEP0123') return;
    emit(warning, ...rest);
  }) as typeof process.emitWarning;
}

/** Opens clients with TLS and, when given, a client certificate. */
export function connect(o: ConnectOptions): Clients {
  filterServerNameWarning();
  const creds = credentials.createSsl(
    Buffer.isBuffer(o.ca) ? o.ca : readFileSync(o.ca),
    pem(o.key),
    pem(o.cert),
  );
  const options: ChannelOptions = {
    'grpc.max_send_message_length': o.maxSendBytes ?? SEND_LIMIT_BYTES,
    'grpc.max_receive_message_length': 16 * 1024 * 1024,
  };
  const signer = new SignerClient(o.addr, creds, options);
  const admin = new AdminClient(o.addr, creds, options);
  const attestation = new AttestationClient(o.addr, creds, options);
  const revocation = new RevocationClient(o.addr, creds, options);
  const audit = new AuditClient(o.addr, creds, options);
  return {
    signer,
    admin,
    attestation,
    revocation,
    audit,
    close: () => {
      revocation.close();
      audit.close();
      signer.close();
      admin.close();
      attestation.close();
    },
  };
}

function pem(v: string | Buffer | undefined): Buffer | null {
  if (v === undefined || v === '') return null;
  return Buffer.isBuffer(v) ? v : readFileSync(v);
}

type Callback<Res> = (err: ServiceError | null, res: Res) => void;

/** Calls a callback-style unary method of a generated client and returns its response as a promise. */
export function promised<Res>(invoke: (md: Metadata, cb: Callback<Res>) => unknown): Promise<Res> {
  return new Promise((resolve, reject) => {
    invoke(new Metadata(), (err, res) => (err ? reject(err) : resolve(res)));
  });
}

/** Promise-returning calls over the generated clients, one per unary RPC. */
export const rpc = {
  sign: (c: Clients, r: SignRequest) => promised<SignResponse>((md, cb) => c.signer.sign(r, md, cb)),
  signBatch: (c: Clients, r: SignBatchRequest) => promised<SignBatchResponse>((md, cb) => c.signer.signBatch(r, md, cb)),
  getPublicKey: (c: Clients, r: GetPublicKeyRequest) => promised<GetPublicKeyResponse>((md, cb) => c.signer.getPublicKey(r, md, cb)),
  listKeys: (c: Clients, r: ListKeysRequest) => promised<ListKeysResponse>((md, cb) => c.signer.listKeys(r, md, cb)),
  createKey: (c: Clients, r: CreateKeyRequest) => promised<CreateKeyResponse>((md, cb) => c.admin.createKey(r, md, cb)),
  importKey: (c: Clients, r: ImportKeyRequest) => promised<ImportKeyResponse>((md, cb) => c.admin.importKey(r, md, cb)),
  getKey: (c: Clients, r: GetKeyRequest) => promised<GetKeyResponse>((md, cb) => c.admin.getKey(r, md, cb)),
  adminListKeys: (c: Clients, r: AdminListKeysRequest) => promised<AdminListKeysResponse>((md, cb) => c.admin.listKeys(r, md, cb)),
  rotateKey: (c: Clients, r: RotateKeyRequest) => promised<RotateKeyResponse>((md, cb) => c.admin.rotateKey(r, md, cb)),
  disableKeyVersion: (c: Clients, r: DisableKeyVersionRequest) => promised<DisableKeyVersionResponse>((md, cb) => c.admin.disableKeyVersion(r, md, cb)),
  enableKeyVersion: (c: Clients, r: EnableKeyVersionRequest) => promised<EnableKeyVersionResponse>((md, cb) => c.admin.enableKeyVersion(r, md, cb)),
  scheduleDestroyKeyVersion: (c: Clients, r: ScheduleDestroyKeyVersionRequest) =>
    promised<ScheduleDestroyKeyVersionResponse>((md, cb) => c.admin.scheduleDestroyKeyVersion(r, md, cb)),
  cancelDestroyKeyVersion: (c: Clients, r: CancelDestroyKeyVersionRequest) =>
    promised<CancelDestroyKeyVersionResponse>((md, cb) => c.admin.cancelDestroyKeyVersion(r, md, cb)),
  listKeyVersions: (c: Clients, r: ListKeyVersionsRequest) => promised<ListKeyVersionsResponse>((md, cb) => c.admin.listKeyVersions(r, md, cb)),
  updateKeyPolicy: (c: Clients, r: UpdateKeyPolicyRequest) => promised<UpdateKeyPolicyResponse>((md, cb) => c.admin.updateKeyPolicy(r, md, cb)),
  listApprovals: (c: Clients, r: ListApprovalsRequest) => promised<ListApprovalsResponse>((md, cb) => c.admin.listApprovals(r, md, cb)),
  approveRequest: (c: Clients, r: ApproveRequestRequest) => promised<ApproveRequestResponse>((md, cb) => c.admin.approveRequest(r, md, cb)),
  rejectRequest: (c: Clients, r: RejectRequestRequest) => promised<RejectRequestResponse>((md, cb) => c.admin.rejectRequest(r, md, cb)),
  listEnrollments: (c: Clients, r: ListEnrollmentsRequest) => promised<ListEnrollmentsResponse>((md, cb) => c.admin.listEnrollments(r, md, cb)),
  forgetEnrollment: (c: Clients, r: ForgetEnrollmentRequest) => promised<ForgetEnrollmentResponse>((md, cb) => c.admin.forgetEnrollment(r, md, cb)),
  archiveAuditLog: (c: Clients, r: ArchiveAuditLogRequest) => promised<ArchiveAuditLogResponse>((md, cb) => c.admin.archiveAuditLog(r, md, cb)),
  beginEnrollment: (c: Clients, r: BeginEnrollmentRequest) => promised<BeginEnrollmentResponse>((md, cb) => c.attestation.beginEnrollment(r, md, cb)),
  finishEnrollment: (c: Clients, r: FinishEnrollmentRequest) => promised<FinishEnrollmentResponse>((md, cb) => c.attestation.finishEnrollment(r, md, cb)),
  renew: (c: Clients, r: RenewRequest) => promised<RenewResponse>((md, cb) => c.attestation.renew(r, md, cb)),
  revokeIdentity: (c: Clients, r: RevokeIdentityRequest) => promised<RevokeIdentityResponse>((md, cb) => c.revocation.revokeIdentity(r, md, cb)),
  revokeBuilder: (c: Clients, r: RevokeBuilderRequest) => promised<RevokeBuilderResponse>((md, cb) => c.revocation.revokeBuilder(r, md, cb)),
  listRevocations: (c: Clients, r: ListRevocationsRequest) => promised<ListRevocationsResponse>((md, cb) => c.revocation.listRevocations(r, md, cb)),
  getCrl: (c: Clients, r: GetCrlRequest) => promised<GetCrlResponse>((md, cb) => c.revocation.getCrl(r, md, cb)),
  getTrustedRoot: (c: Clients, r: GetTrustedRootRequest) => promised<GetTrustedRootResponse>((md, cb) => c.revocation.getTrustedRoot(r, md, cb)),
};
