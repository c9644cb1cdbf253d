import { Command, Option } from 'commander';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { Agent, defaultSocketPath, describe, type AgentEvent } from './agent/agent.ts';
import { HASH_OF, hashFile, readBounded } from './files.ts';
import { checkPayloadType, DSSE_DEFAULT_PAYLOAD_TYPE, envelopeJson, MAX_PAYLOAD_BYTES, pae, paeSignInput } from './dsse.ts';
import { parseDuration } from '../config/duration.ts';

class UsageError extends Error {}

interface AgentReply {
  code?: string;
  message?: string;
  [k: string]: unknown;
}

/** One call to a running agent over its unix socket. */
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
        if (res.statusCode !== 200) return reject(new Error(`${parsed.code ?? 'ERROR'}: ${parsed.message ?? 'unknown error'}`));
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
    .showHelpAfterError()
    .exitOverride();
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

  program
    .command('sign')
    .description('sign a file with the running agent\'s identity (hashed here while streaming from disk; Ed25519 sends it whole); with --dsse, wrap it in a signed dsse envelope (in-toto, SLSA provenance)')
    .requiredOption('--key <key>', 'name or name@N')
    .requiredOption('--file <path>', 'file to sign (with --dsse: the payload, e.g. an in-toto statement)')
    .requiredOption('--out <path>', 'where to write the signature (DER for ECDSA, raw for RSA and Ed25519), or with --dsse the envelope (json)')
    .option('--dsse', `write a dsse envelope: sign the PAE of the payload (at most ${MAX_PAYLOAD_BYTES / 1048576} MiB), keyid = the key version that signed (name@N)`)
    .option('--payload-type <type>', `with --dsse: the payloadType (default ${DSSE_DEFAULT_PAYLOAD_TYPE})`)
    .option('--no-progress', 'no progress bar')
    .addOption(new Option('-o, --output <format>', 'output format').choices(['text', 'json']).default('text'))
    .addOption(socketOption())
    .action(async (o: { key: string; file: string; out: string; progress: boolean; output: string; socket: string; dsse?: boolean; payloadType?: string }) => {
      if (o.payloadType !== undefined && !o.dsse) throw new UsageError('--payload-type goes with --dsse');
      let payloadType = DSSE_DEFAULT_PAYLOAD_TYPE;
      let payload: Buffer | null = null;
      if (o.dsse) {
        try {
          payloadType = checkPayloadType(o.payloadType ?? DSSE_DEFAULT_PAYLOAD_TYPE);
          payload = readBounded(o.file, MAX_PAYLOAD_BYTES, 'the payload');
        } catch (err) {
          if ((err as { code?: unknown }).code === 'INVALID_ARGUMENT' || (err as { code?: unknown }).code === 'MESSAGE_TOO_LARGE') throw new UsageError((err as Error).message);
          throw err;
        }
      }
      const size = statSync(o.file).size;
      const pk = await callAgent(o.socket, 'POST', '/v1/public-key', { key: o.key });
      const hash = HASH_OF[pk.algorithm as number];
      if (hash === undefined) throw new Error(`sigild reported an unknown algorithm ${String(pk.algorithm)}`);
      if (payload !== null) {
        const input = paeSignInput(hash, pae(payloadType, payload));
        const body = input.digest ? { key: pk.keyVersion, digest: input.digest.toString('base64') } : { key: pk.keyVersion, message: input.message!.toString('base64') };
        const r = await callAgent(o.socket, 'POST', '/v1/sign', body);
        writeFileSync(o.out, envelopeJson({ payloadType, payload, signatures: [{ keyid: String(r.keyVersion), sig: Buffer.from(r.signature as string, 'base64') }] }));
        process.stdout.write(
          o.output === 'json'
            ? `${JSON.stringify({ keyVersion: r.keyVersion, file: o.file, bytes: payload.length, payloadType, envelope: o.out }, null, 2)}\n`
            : `signed ${o.file} (${payload.length} bytes, ${payloadType}) with ${String(r.keyVersion)}; dsse envelope written to ${o.out}\n`,
        );
        return;
      }
      const show = o.progress && process.stderr.isTTY === true && size > 0;
      const body = hash
        ? { key: pk.keyVersion, digest: (await hashFile(o.file, hash, show)).toString('base64') }
        : { key: pk.keyVersion, message: readFileSync(o.file).toString('base64') };
      const r = await callAgent(o.socket, 'POST', '/v1/sign', body);
      const sig = Buffer.from(r.signature as string, 'base64');
      writeFileSync(o.out, sig);
      process.stdout.write(
        o.output === 'json'
          ? `${JSON.stringify({ keyVersion: r.keyVersion, file: o.file, bytes: size, signature: o.out, signatureBase64: r.signature }, null, 2)}\n`
          : `signed ${o.file} (${size} bytes) with ${String(r.keyVersion)}; signature written to ${o.out}\n`,
      );
    });

  program
    .command('status')
    .description('show the running agent\'s identity')
    .addOption(socketOption())
    .action(async (o: { socket: string }) => {
      const r = await callAgent(o.socket, 'GET', '/v1/identity');
      process.stdout.write(`${JSON.stringify({ spiffeId: r.spiffeId, notBefore: r.notBefore, notAfter: r.notAfter }, null, 2)}\n`);
    });

  try {
    await program.parseAsync(argv, { from: 'user' });
  } catch (err) {
    if (err && typeof err === 'object' && 'exitCode' in err && typeof (err as { exitCode: unknown }).exitCode === 'number' && !('details' in err)) {
      process.exitCode = (err as { exitCode: number }).exitCode;
      return;
    }
    process.stderr.write(`sigil-agent: ${describe(err)}\n`);
    process.exitCode = err instanceof UsageError ? 2 : 1;
  }
}
