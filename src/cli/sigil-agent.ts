import { Command, Option } from 'commander';
import { readFileSync } from 'node:fs';
import { request } from 'node:http';
import { Agent, AGENT_MAX_MESSAGE_BYTES, defaultSocketPath, type AgentEvent } from './agent/agent.ts';
import { DEFAULT_MAX_MESSAGE_BYTES, HASH_OF, hashFile, openOut, readWholeMessage } from './files.ts';
import { envelopeJson, pae, paeSignInput } from './dsse.ts';
import { addSignOptions, readSignInput, type SignOptions } from './sign-input.ts';
import { describeError, errorJson, type ErrorJson } from './errors.ts';
import { commanderExitCode, commanderOutput, UsageError, wantsJson } from './commands/context.ts';
import { parseDuration } from '../config/duration.ts';

interface AgentReply {
  code?: string;
  message?: string;
  [k: string]: unknown;
}

/** One call to a running agent over its unix socket. */
/** A refusal or failure the agent answered on its socket: sigild's status and reason when it came from sigild. */
class AgentError extends Error {
  readonly answer: ErrorJson;

  constructor(reply: AgentReply) {
    const code = typeof reply.code === 'string' ? reply.code : 'ERROR';
    const message = typeof reply.message === 'string' ? reply.message : 'unknown error';
    super(`${code}: ${message}`);
    this.name = 'AgentError';
    this.answer = { code, ...(typeof reply.reason === 'string' ? { reason: reply.reason } : {}), message };
  }
}

/** The json form of an error of a sigil-agent command: the agent's own answer, or as sigilctl reports errors. */
function agentErrorJson(err: unknown, addr: string | undefined, usage: boolean): ErrorJson {
  return err instanceof AgentError ? err.answer : errorJson(err, addr, usage);
}

function callAgent(socketPath: string, method: 'GET' | 'POST', path: string, body?: unknown): Promise<AgentReply> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath, method, path, headers: { 'content-type': 'application/json' } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        let parsed: AgentReply;
        try {
          parsed = JSON.parse(Buffer.concat(chunks).toString('utf8')) as AgentReply;
        } catch {
          return reject(new Error(`the agent sent an unreadable answer (http ${res.statusCode})`));
        }
        if (res.statusCode !== 200) return reject(new AgentError(parsed));
        resolve(parsed);
      });
    });
    req.on('error', (err: NodeJS.ErrnoException) => {
      reject(err.code === 'ENOENT' || err.code === 'ECONNREFUSED' ? new Error(`no agent listening on ${socketPath}: run sigil-agent enroll first`) : err);
    });
    req.end(body === undefined ? undefined : JSON.stringify(body));
  });
}

function parseClaims(values: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const v of values) {
    const eq = v.indexOf('=');
    if (eq <= 0) throw new UsageError(`--claim takes key=value, got ${v}`);
    out[v.slice(0, eq)] = v.slice(eq + 1);
  }
  return out;
}

/** The `sigil-agent` command line. */
export async function main(argv: string[]): Promise<void> {
  const program = new Command('sigil-agent')
    .description('proves this runner\'s TPM to sigild, holds the builder identity in memory and signs with it')
    .configureOutput(commanderOutput('sigil-agent', [], wantsJson(argv)))
    .exitOverride();
  // sigild's address once `enroll` has it, for an error that could not reach it.
  let addr: string | undefined;
  const socketOption = (): Option => new Option('--socket <path>', 'the agent\'s unix socket').env('SIGIL_AGENT_SOCKET').default(defaultSocketPath());

  program
    .command('enroll')
    .description('enroll with sigild by TPM attestation, then keep the identity renewed and serve local signing requests until stopped')
    .addOption(new Option('--addr <host:port>', 'sigild address').env('SIGIL_ADDR').makeOptionMandatory())
    .addOption(new Option('--ca <file>', 'CA bundle that signed sigild\'s certificate').env('SIGIL_CACERT').makeOptionMandatory())
    .addOption(new Option('--tpm <spec>', 'TPM: a device path, swtpm:host=H,port=P or tcti:<tcti config>').env('SIGIL_TPM').default('/dev/tpmrm0'))
    .option('--policy <name>', 'attestation policy to enroll under (default: the daemon\'s only one)', '')
    .addOption(new Option('--ek <type>', 'endorsement key').choices(['rsa', 'ecc']).default('rsa'))
    .addOption(new Option('--ak <type>', 'attestation key').choices(['ecc', 'rsa']).default('ecc'))
    .option('--claim <key=value>', 'a CI claim for the certificate (repeatable): repository, ref, run_id, ...', (v: string, prev: string[]) => [...prev, v], [] as string[])
    .option('--lifetime <duration>', 'requested certificate lifetime, e.g. 15m (default: the daemon\'s)')
    .option('--event-log <file>', 'TCG binary event log to send with each quote')
    .option('--join-token-file <file>', 'file holding a one-time join token')
    .addOption(socketOption())
    .option('--once', 'enroll, print the identity and exit (the private key is discarded)')
    .action(async (o: { addr: string; ca: string; tpm: string; policy: string; ek: 'rsa' | 'ecc'; ak: 'ecc' | 'rsa'; claim: string[]; lifetime?: string; eventLog?: string; joinTokenFile?: string; socket: string; once?: boolean }) => {
      addr = o.addr;
      const report = (e: AgentEvent): void => void process.stderr.write(`${JSON.stringify({ time: new Date().toISOString(), ...e })}\n`);
      const agent = new Agent(
        {
          addr: o.addr,
          ca: o.ca,
          tpm: o.tpm,
          policy: o.policy,
          ek: o.ek,
          ak: o.ak,
          claims: parseClaims(o.claim),
          lifetimeSeconds: o.lifetime ? Math.round(parseDuration(o.lifetime) / 1000) : 0,
          eventLogPath: o.eventLog,
          joinToken: o.joinTokenFile ? readFileSync(o.joinTokenFile, 'utf8').trim() : undefined,
        },
        report,
      );
      const id = await agent.enroll();
      if (o.once) {
        await agent.stop();
        process.stdout.write(`${JSON.stringify({ spiffeId: id.spiffeId, notBefore: id.notBefore, notAfter: id.notAfter, certificatePem: id.certificatePem }, null, 2)}\n`);
        return;
      }
      await agent.listen(o.socket);
      report({ event: 'listening', socket: o.socket });
      await new Promise<void>((resolve) => {
        for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => resolve());
      });
      await agent.stop();
      report({ event: 'stopped' });
    });

  addSignOptions(program.command('sign'))
    .description('sign a file with the running agent\'s identity (hashed here while streaming from disk; Ed25519 sends it whole); with --dsse, wrap it in a signed dsse envelope (in-toto, SLSA provenance)')
    .addOption(new Option('-o, --output <format>', 'output format').choices(['text', 'json']).default('text'))
    .addOption(socketOption())
    .action(async (o: SignOptions & { output: string; socket: string }) => {
      const { st, payloadType, payload } = readSignInput(o);
      // Before anything is hashed or signed: a signature sigild issued and this command could not keep is lost.
      const outFile = openOut(o.out, '--out');
      try {
        const pk = await callAgent(o.socket, 'POST', '/v1/public-key', { key: o.key });
        const hash = HASH_OF[pk.algorithm as number];
        if (hash === undefined) throw new Error(`sigild reported an unknown algorithm ${String(pk.algorithm)}`);
        if (payload !== null) {
          const input = paeSignInput(hash, pae(payloadType, payload));
          const body = input.digest ? { key: pk.keyVersion, digest: input.digest.toString('base64') } : { key: pk.keyVersion, message: input.message!.toString('base64') };
          const r = await callAgent(o.socket, 'POST', '/v1/sign', body);
          outFile.commit(envelopeJson({ payloadType, payload, signatures: [{ keyid: String(r.keyVersion), sig: Buffer.from(r.signature as string, 'base64') }] }));
          process.stdout.write(
            o.output === 'json'
              ? `${JSON.stringify({ keyVersion: r.keyVersion, file: o.file, bytes: payload.length, payloadType, envelope: o.out }, null, 2)}\n`
              : `signed ${o.file} (${payload.length} bytes, ${payloadType}) with ${String(r.keyVersion)}; dsse envelope written to ${o.out}\n`,
          );
          return;
        }
        const show = o.progress && process.stderr.isTTY === true && st.size > 0;
        let body: { key: unknown; digest?: string; message?: string };
        let size: number;
        if (hash) {
          const h = await hashFile(o.file, hash, show);
          body = { key: pk.keyVersion, digest: h.digest.toString('base64') };
          size = h.bytes;
        } else {
          // An agent older than these fields carried at most what this one does, for a sigild at its default.
          const daemonMax = typeof pk.maxMessageBytes === 'number' && pk.maxMessageBytes > 0 ? pk.maxMessageBytes : DEFAULT_MAX_MESSAGE_BYTES;
          const agentMax = typeof pk.agentMaxMessageBytes === 'number' && pk.agentMaxMessageBytes > 0 ? pk.agentMaxMessageBytes : AGENT_MAX_MESSAGE_BYTES;
          const limit = daemonMax <= agentMax ? `sigild takes at most ${daemonMax} bytes (limits.maxMessageBytes)` : `sigil-agent takes at most ${agentMax} bytes (sigild ${daemonMax})`;
          const message = readWholeMessage(o.file, '--file', Math.min(daemonMax, agentMax), limit);
          body = { key: pk.keyVersion, message: message.toString('base64') };
          size = message.length;
        }
        const r = await callAgent(o.socket, 'POST', '/v1/sign', body);
        outFile.commit(Buffer.from(r.signature as string, 'base64'));
        process.stdout.write(
          o.output === 'json'
            ? `${JSON.stringify({ keyVersion: r.keyVersion, file: o.file, bytes: size, signature: o.out, signatureBase64: r.signature }, null, 2)}\n`
            : `signed ${o.file} (${size} bytes) with ${String(r.keyVersion)}; signature written to ${o.out}\n`,
        );
      } finally {
        outFile.discard();
      }
    });

  program
    .command('status')
    .description('show the running agent\'s identity: spiffe id and validity; --cert-out writes its certificate (pem), -o json prints it too')
    .option('--cert-out <file>', 'write the builder certificate (pem) to this file, e.g. builder.pem for openssl')
    .addOption(new Option('-o, --output <format>', 'output format').choices(['text', 'json']).default('text'))
    .addOption(socketOption())
    .action(async (o: { socket: string; certOut?: string; output: 'text' | 'json' }) => {
      const outFile = o.certOut === undefined ? null : openOut(o.certOut, '--cert-out');
      try {
        const r = await callAgent(o.socket, 'GET', '/v1/identity');
        const pem = typeof r.certificatePem === 'string' ? r.certificatePem : '';
        if (outFile !== null) {
          if (pem === '') throw new Error('the agent sent no certificate');
          outFile.commit(pem);
        }
        const id = { spiffeId: r.spiffeId, notBefore: r.notBefore, notAfter: r.notAfter };
        process.stdout.write(
          o.output === 'json'
            ? `${JSON.stringify({ ...id, certificatePem: pem, caCertificatePem: r.caCertificatePem, certificateFile: o.certOut ?? null }, null, 2)}\n`
            : [
                `spiffe id:   ${String(r.spiffeId)}`,
                `not before:  ${String(r.notBefore)}`,
                `not after:   ${String(r.notAfter)}`,
                ...(o.certOut !== undefined ? [`certificate written to ${o.certOut}`] : []),
              ].join('\n') + '\n',
        );
      } finally {
        outFile?.discard();
      }
    });

  try {
    await program.parseAsync(argv, { from: 'user' });
  } catch (err) {
    // commander printed its own message (commanderOutput).
    const parsed = commanderExitCode(err);
    if (parsed !== null) {
      process.exitCode = parsed;
      return;
    }
    const usage = err instanceof UsageError;
    if (wantsJson(argv)) process.stdout.write(`${JSON.stringify({ error: agentErrorJson(err, addr, usage) }, null, 2)}\n`);
    else process.stderr.write(`sigil-agent: ${describeError(err, addr)}\n`);
    process.exitCode = usage ? 2 : 1;
  }
}
