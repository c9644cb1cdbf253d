import { open, type FileHandle } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { SigilError } from '../errors.ts';
import { TPM_HEADER_SIZE } from './constants.ts';
import { Serial } from '../serial.ts';

/** Carries marshaled TPM commands to a TPM and brings back its responses, one at a time. */
export interface TpmTransport {
  /** Sends one complete command and resolves with the complete response. */
  send(command: Buffer): Promise<Buffer>;
  close(): Promise<void>;
  /**
   * Connections made so far, for a transport that reconnects after a drop (swtpm TCP); a new one
   * means transient objects may have been left by whatever used the TPM in between.
   */
  readonly connections?: number;
  /** False while a reconnecting transport has no live connection (the next command makes one). */
  readonly connected?: boolean;
}

// Part 2 caps commands and responses at MAX_COMMAND_SIZE/MAX_RESPONSE_SIZE (4096 on most TPMs);
// anything much larger is a broken stream, not a response.
const MAX_RESPONSE = 64 * 1024;

function unavailable(message: string, cause?: unknown): SigilError {
  return new SigilError('BACKEND_UNAVAILABLE', `tpm transport: ${message}`, { cause });
}

function checkCommand(command: Buffer): void {
  if (command.length < TPM_HEADER_SIZE || command.readUInt32BE(2) !== command.length) {
    throw new SigilError('INVALID_ARGUMENT', 'tpm transport: command size does not match its header');
  }
}

function responseSize(header: Buffer): number {
  const size = header.readUInt32BE(2);
  if (size < TPM_HEADER_SIZE || size > MAX_RESPONSE) throw new SigilError('BACKEND_ERROR', `tpm transport: response size ${size} out of range`);
  return size;
}


/** Options of the TCP transport. */
export interface TcpOptions {
  host: string;
  port: number;
  /** Per-command timeout; RSA key generation on hardware TPMs can take tens of seconds. */
  timeoutMs?: number;
}

/** swtpm's TCP command port (raw TPM commands, no framing); one connection kept open. */
class TcpTransport implements TpmTransport {
  readonly #opts: Required<TcpOptions>;
  // One command at a time: a TPM takes a single command and answers before the next.
  readonly #serial = new Serial();
  #socket: Socket | undefined;
  #closed = false;
  #connections = 0;

  constructor(opts: TcpOptions) {
    this.#opts = { timeoutMs: 120_000, ...opts };
  }

  /** Connections made so far (the first at open, one more after every drop). */
  get connections(): number {
    return this.#connections;
  }

  /** Whether a connection is up; after a drop the next command reconnects. */
  get connected(): boolean {
    return this.#socket !== undefined && !this.#socket.destroyed;
  }

  /** Connects now so that a wrong address fails at open rather than at the first command. */
  ready(): Promise<unknown> {
    return this.#serial.run(() => this.#connect());
  }

  async #connect(): Promise<Socket> {
    if (this.#socket !== undefined && !this.#socket.destroyed) return this.#socket;
    const s = connect({ host: this.#opts.host, port: this.#opts.port });
    s.setNoDelay(true);
    await new Promise<void>((resolve, reject) => {
      s.once('connect', resolve);
      s.once('error', (err) => reject(unavailable(`cannot connect to ${this.#opts.host}:${this.#opts.port}`, err)));
    });
    // Errors after connect are reported by the command that is waiting; this keeps an idle socket's
    // error from becoming an uncaught exception.
    s.on('error', () => undefined);
    this.#socket = s;
    this.#connections++;
    return s;
  }

  send(command: Buffer): Promise<Buffer> {
    checkCommand(command);
    return this.#serial.run(async () => {
      if (this.#closed) throw unavailable('transport closed');
      const s = await this.#connect();
      return await new Promise<Buffer>((resolve, reject) => {
        const chunks: Buffer[] = [];
        let have = 0;
        let want = -1;
        const done = (err: Error | null, res?: Buffer) => {
          clearTimeout(timer);
          s.off('data', onData);
          s.off('close', onClose);
          s.off('error', onError);
          if (err) {
            // The stream position is unknown now: start over on a new connection next time.
            s.destroy();
            this.#socket = undefined;
            reject(err);
          } else resolve(res!);
        };
        const onData = (d: Buffer) => {
          chunks.push(d);
          have += d.length;
          try {
            if (want < 0 && have >= TPM_HEADER_SIZE) want = responseSize(Buffer.concat(chunks).subarray(0, TPM_HEADER_SIZE));
          } catch (err) {
            done(err as Error);
            return;
          }
          if (want >= 0 && have >= want) {
            const all = Buffer.concat(chunks);
            if (all.length > want) done(new SigilError('BACKEND_ERROR', 'tpm transport: bytes after the response'));
            else done(null, all);
          }
        };
        const onClose = () => done(unavailable('connection closed by the tpm'));
        const onError = (err: Error) => done(unavailable('connection failed', err));
        const timer = setTimeout(() => done(unavailable(`no response in ${this.#opts.timeoutMs} ms`)), this.#opts.timeoutMs);
        s.on('data', onData);
        s.once('close', onClose);
        s.once('error', onError);
        s.write(command);
      });
    });
  }

  close(): Promise<void> {
    this.#closed = true;
    return this.#serial.run(async () => {
      const s = this.#socket;
      this.#socket = undefined;
      if (s === undefined || s.destroyed) return;
      await new Promise<void>((resolve) => {
        s.once('close', () => resolve());
        s.end();
        setTimeout(() => s.destroy(), 1000).unref();
      });
    });
  }
}

/** A TPM character device such as /dev/tpmrm0: write a whole command, read a whole response. */
class DeviceTransport implements TpmTransport {
  readonly #fh: FileHandle;
  readonly #serial = new Serial();
  #closed = false;

  constructor(fh: FileHandle) {
    this.#fh = fh;
  }

  send(command: Buffer): Promise<Buffer> {
    checkCommand(command);
    return this.#serial.run(async () => {
      if (this.#closed) throw unavailable('transport closed');
      try {
        await this.#fh.write(command, 0, command.length, null);
        const buf = Buffer.alloc(MAX_RESPONSE);
        // The kernel driver hands back the whole response to one read.
        const { bytesRead } = await this.#fh.read(buf, 0, buf.length, null);
        if (bytesRead < TPM_HEADER_SIZE) throw new SigilError('BACKEND_ERROR', `tpm transport: short response of ${bytesRead} bytes`);
        const size = responseSize(buf.subarray(0, TPM_HEADER_SIZE));
        if (size !== bytesRead) throw new SigilError('BACKEND_ERROR', `tpm transport: response header says ${size} bytes, read ${bytesRead}`);
        return Buffer.from(buf.subarray(0, bytesRead));
      } catch (err) {
        if (err instanceof SigilError) throw err;
        throw unavailable('device i/o failed', err);
      }
    });
  }

  close(): Promise<void> {
    this.#closed = true;
    return this.#serial.run(() => this.#fh.close());
  }
}

/** Opens a TPM character device (e.g. /dev/tpmrm0, the kernel resource manager). */
export async function openDevice(path: string): Promise<TpmTransport> {
  try {
    return new DeviceTransport(await open(path, 'r+'));
  } catch (err) {
    throw unavailable(`cannot open ${path}`, err);
  }
}

/** Connects to swtpm's TCP command port. */
export async function openTcp(opts: TcpOptions): Promise<TpmTransport> {
  const t = new TcpTransport(opts);
  await t.ready();
  return t;
}

function parseKv(conf: string): Map<string, string> {
  const m = new Map<string, string>();
  for (const part of conf.split(',')) {
    if (part === '') continue;
    const eq = part.indexOf('=');
    if (eq < 0) throw new SigilError('CONFIG_INVALID', `tpm transport: expected key=value, got ${JSON.stringify(part)}`);
    m.set(part.slice(0, eq).trim(), part.slice(eq + 1).trim());
  }
  return m;
}

/**
 * Opens a transport from a spec: `swtpm:host=H,port=P` (swtpm TCP), `device:/dev/tpmrm0` or a bare
 * absolute path (character device), `tcti:<tpm2-tss TCTI config>` (through libtss2-tctildr).
 */
export async function openTransport(spec: string): Promise<TpmTransport> {
  if (spec.startsWith('swtpm:') || spec === 'swtpm') {
    const kv = parseKv(spec.slice('swtpm:'.length));
    for (const k of kv.keys()) {
      if (k !== 'host' && k !== 'port') throw new SigilError('CONFIG_INVALID', `tpm transport: unknown swtpm option ${JSON.stringify(k)}`);
    }
    const port = Number(kv.get('port') ?? '2321');
    if (!Number.isInteger(port) || port < 1 || port > 65535) throw new SigilError('CONFIG_INVALID', `tpm transport: bad port ${JSON.stringify(kv.get('port'))}`);
    return openTcp({ host: kv.get('host') ?? '127.0.0.1', port });
  }
  if (spec.startsWith('device:')) return openDevice(spec.slice('device:'.length));
  if (spec.startsWith('/')) return openDevice(spec);
  if (spec.startsWith('tcti:')) {
    // native/ sits outside src/ (and the dist/ build): the same relative path reaches it from both.
    const nativeTcti = '../../native/tcti.ts';
    const { openTcti } = (await import(nativeTcti)) as { openTcti(conf: string): Promise<TpmTransport> };
    return openTcti(spec.slice('tcti:'.length));
  }
  throw new SigilError('CONFIG_INVALID', `tpm transport: unknown spec ${JSON.stringify(spec)} (swtpm:, device:, tcti: or a device path)`);
}
