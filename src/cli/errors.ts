import { status as Status, type ServiceError } from '@grpc/grpc-js';
import { errorInfoOf } from './error-reason.ts';

// Words for the errno codes a command line meets with its files (for a person, not for a program).
const ERRNO: Readonly<Record<string, string>> = {
  ENOENT: 'no such file or directory',
  EACCES: 'permission denied',
  EPERM: 'operation not permitted',
  EISDIR: 'it is a directory',
  ENOTDIR: 'a part of the path is not a directory',
  ENOSPC: 'no space left on the device',
  EROFS: 'read-only file system',
  EEXIST: 'it already exists',
};

const VERB: Readonly<Record<string, string>> = { open: 'open', read: 'read', write: 'write', stat: 'read', lstat: 'read', mkdir: 'create', rename: 'write', unlink: 'remove' };

/**
 * Why grpc-js could not connect, from its UNAVAILABLE details ("No connection established. Last error:
 * ... Resolution note: ..."), in words that say what to check; null for any other UNAVAILABLE.
 */
function connectionFailure(details: string): string | null {
  if (/^Name resolution failed/.test(details)) return 'unknown host';
  const m = /(?:No connection established|Failed to connect)[^]*?Last error: ([^]*?)(?:\.?\s*Resolution note:[^]*)?$/.exec(details);
  if (!m) return null;
  const why = m[1]!.replace(/^(?:\w*Error(?: \[\w+\])?: )+/, '').replace(/\.$/, '');
  if (/ECONNREFUSED/.test(why)) return 'connection refused (is sigild running there?)';
  if (/self[- ]signed certificate|unable to (?:get local issuer|verify)|certificate verify failed|unknown ca/i.test(why)) {
    return "its certificate is not signed by the CA bundle given with --ca (SIGIL_CACERT)";
  }
  if (/does not match certificate's altnames|Hostname\/IP/i.test(why)) return 'its certificate does not name this host: use an address its certificate names';
  if (/certificate has expired/i.test(why)) return 'its certificate has expired';
  // OpenSSL read a first record that is no TLS (e.g. plain HTTP from the metrics port).
  if (/wrong version number|packet length too long|http request/i.test(why)) return "it does not answer with TLS there: give sigild's gRPC address (listen), not its metrics port";
  if (/ENOTFOUND|EAI_AGAIN/.test(why)) return 'unknown host';
  if (/ETIMEDOUT|ECONNRESET|EHOSTUNREACH|ENETUNREACH/.test(why)) return `the network did not get through (${/E[A-Z]+/.exec(why)![0]})`;
  // One line: OpenSSL's error strings may carry line breaks and blank lines.
  return why.replace(/\s*\n\s*/g, ' ').trim();
}

/**
 * One line on what went wrong, for sigilctl and sigil-agent: an answer of sigild as `CODE: details`, a
 * connection that failed as `cannot reach sigild at ADDR: why`, a file error as `cannot read PATH: why`.
 */
export function describeError(err: unknown, addr?: string): string {
  const se = err as Partial<ServiceError>;
  if (typeof se.code === 'number' && typeof se.details === 'string') return `${Status[se.code] ?? se.code}: ${grpcMessage(se.code, se.details, addr)}`;
  return localMessage(err);
}

/** An error as `sigilctl --output json` prints it, under `error`. */
export interface ErrorJson {
  /** The gRPC status code's name; for an error of the command line itself INVALID_ARGUMENT (a usage error) or UNKNOWN. */
  code: string;
  /** sigild's machine-readable reason (docs/architecture.md, "Errors"); absent when it sent none. */
  reason?: string;
  /** What describeError says after the code. */
  message: string;
  /** The reason's metadata (`key_version`, ...), when there is any. */
  metadata?: Record<string, string>;
}

/** The JSON form of an error (`usage` marks a mistake in the command line). */
export function errorJson(err: unknown, addr?: string, usage = false): ErrorJson {
  const se = err as Partial<ServiceError>;
  if (typeof se.code === 'number' && typeof se.details === 'string') {
    const info = errorInfoOf(err);
    return {
      code: Status[se.code] ?? String(se.code),
      ...(info !== undefined ? { reason: info.reason } : {}),
      message: grpcMessage(se.code, se.details, addr),
      ...(info !== undefined && Object.keys(info.metadata).length > 0 ? { metadata: info.metadata } : {}),
    };
  }
  return { code: usage ? 'INVALID_ARGUMENT' : 'UNKNOWN', message: localMessage(err) };
}

function grpcMessage(code: Status, details: string, addr: string | undefined): string {
  if (code === Status.UNAVAILABLE) {
    const why = connectionFailure(details);
    if (why !== null) return `cannot reach sigild${addr ? ` at ${addr}` : ''}: ${why}`;
  }
  return details;
}

function localMessage(err: unknown): string {
  const e = err as Partial<NodeJS.ErrnoException>;
  if (typeof e.code === 'string' && typeof e.path === 'string') return `cannot ${VERB[e.syscall ?? ''] ?? 'use'} ${e.path}: ${fileErrorWords(err)}`;
  return err instanceof Error ? err.message : String(err);
}

/** What went wrong with a file, in words (`no such file or directory`), for a message that names the file itself. */
export function fileErrorWords(err: unknown): string {
  const code = (err as Partial<NodeJS.ErrnoException>).code;
  if (typeof code === 'string') return ERRNO[code] ?? code;
  return err instanceof Error ? err.message : String(err);
}
