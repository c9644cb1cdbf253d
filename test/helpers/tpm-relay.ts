import { connect, createServer, type Server, type Socket } from 'node:net';

/**
 * Called with every whole TPM response and the command it answers; returns the bytes to pass on (the
 * response itself, or an altered one), as an interposer on the TPM's bus could.
 */
export type ResponseHook = (command: Buffer, response: Buffer) => Buffer;

/** A TCP relay in front of swtpm's command port that records every command and may rewrite responses. */
export interface TpmRelay {
  /** Loopback port to point a transport at: `swtpm:host=127.0.0.1,port=<port>`. */
  port: number;
  /** Every command passed on so far, whole, in order. */
  readonly commands: Buffer[];
  /** Replaces the response hook (the default passes responses on unchanged). */
  onResponse(hook: ResponseHook): void;
  close(): Promise<void>;
}

// Splits whole TPM frames (tag u16, size u32, ...) off the front of `buf`.
function frames(buf: Buffer): { whole: Buffer[]; rest: Buffer } {
  const whole: Buffer[] = [];
  let rest = buf;
  while (rest.length >= 6 && rest.length >= rest.readUInt32BE(2)) {
    const n = rest.readUInt32BE(2);
    whole.push(rest.subarray(0, n));
    rest = rest.subarray(n);
  }
  return { whole, rest };
}

/** Starts a relay to the TPM at 127.0.0.1:`upstreamPort` (swtpm answers one command at a time per connection). */
export async function startTpmRelay(upstreamPort: number): Promise<TpmRelay> {
  const commands: Buffer[] = [];
  let hook: ResponseHook = (_c, r) => r;
  const sockets = new Set<Socket>();
  const server: Server = createServer((down) => {
    const up = connect({ host: '127.0.0.1', port: upstreamPort });
    sockets.add(down).add(up);
    const pending: Buffer[] = [];
    let fromDown: Buffer = Buffer.alloc(0);
    let fromUp: Buffer = Buffer.alloc(0);
    down.on('data', (d) => {
      const f = frames(Buffer.concat([fromDown, d]));
      fromDown = f.rest;
      for (const c of f.whole) {
        commands.push(Buffer.from(c));
        pending.push(Buffer.from(c));
        up.write(c);
      }
    });
    up.on('data', (d) => {
      const f = frames(Buffer.concat([fromUp, d]));
      fromUp = f.rest;
      for (const r of f.whole) down.write(hook(pending.shift() ?? Buffer.alloc(0), Buffer.from(r)));
    });
    const end = () => {
      down.destroy();
      up.destroy();
    };
    down.on('close', end).on('error', end);
    up.on('close', end).on('error', end);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return {
    port: (server.address() as { port: number }).port,
    commands,
    onResponse: (h) => {
      hook = h;
    },
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}
