import { Command, Option } from 'commander';
import { writeFileSync, readFileSync } from 'node:fs';
import { createHash, createPrivateKey, randomBytes, X509Certificate, type KeyObject } from 'node:crypto';
import { Algorithm } from '../gen/sigil/v1/signer.ts';
import { connect, rpc, type Clients } from './client.ts';
import { describeError, errorJson, fileErrorWords } from './errors.ts';
import { DEFAULT_MAX_MESSAGE_BYTES, HASH_OF, hashFile, openOut, readWholeMessage } from './files.ts';
import { ALG_NAMES, UsageError, algName, commanderExitCode, commanderOutput, parseAlg, wantsJson, type CliContext } from './commands/context.ts';
import { registerRevocationCommands } from './commands/revocation.ts';
import { registerAuditCommands } from './commands/audit.ts';
import { keyJson, keyText, registerKeysCommands } from './commands/keys.ts';
import { registerApprovalsCommands } from './commands/approvals.ts';
import { registerEnrollmentCommands } from './commands/enrollments.ts';
import { registerVerifyCommand } from './commands/verify.ts';
import { envelopeJson, pae, paeSignInput } from './dsse.ts';
import { addSignOptions, readSignInput, type SignOptions } from './sign-input.ts';

interface Globals {
  addr?: string;
  ca?: string;
  cert?: string;
  key?: string;
  output: 'text' | 'json';
}

/** The `sigilctl` command line. */
export async function main(argv: string[]): Promise<void> {
  const program = new Command('sigilctl')
    .description('sigil admin and signing client (talks gRPC to sigild)')
    .addOption(new Option('--addr <host:port>', 'sigild address').env('SIGIL_ADDR'))
    .addOption(new Option('--ca <file>', 'CA bundle that signed sigild\'s certificate').env('SIGIL_CACERT'))
    .addOption(new Option('--cert <file>', 'client certificate').env('SIGIL_CLIENT_CERT'))
    .addOption(new Option('--key <file>', 'client private key').env('SIGIL_CLIENT_KEY'))
    .addOption(new Option('-o, --output <format>', 'output format').choices(['text', 'json']).default('text'))
    .configureOutput(commanderOutput('sigilctl', ['--addr', '--ca', '--cert', '--key'], wantsJson(argv)))
    // Global options go before the command: `sign --key` names a signing key, `--key` before it the client key file.
    .enablePositionalOptions()
    .exitOverride();

  let format: 'text' | 'json' = 'text';
  program.hook('preAction', (_root, action) => {
    format = (action.opts() as { output?: 'text' | 'json' }).output ?? g().output;
    // Commands that take a key `<name>` act on the key as a whole: name@N is a mistake to say so, not a bad name.
    const i = action.registeredArguments.findIndex((a) => a.name() === 'name');
    const v = i < 0 ? undefined : (action.processedArgs[i] as unknown);
    if (typeof v === 'string' && v.includes('@')) {
      throw new UsageError(`${commandPath(action)} takes a key name without @N (got ${v}): e.g. ${commandPath(action)} ${v.slice(0, v.indexOf('@'))}`);
    }
  });
  let clients: Clients | null = null;
  const g = (): Globals => program.opts<Globals>();
  const open = (): Clients => {
    if (clients !== null) return clients;
    const o = g();
    // An empty environment variable counts as not set.
    const cert = o.cert || undefined;
    const key = o.key || undefined;
    if (!o.addr) throw new UsageError('--addr (or SIGIL_ADDR) is required');
    checkAddr(o.addr);
    if (!o.ca) throw new UsageError('--ca (or SIGIL_CACERT) is required');
    if ((cert === undefined) !== (key === undefined)) throw new UsageError('--cert (SIGIL_CLIENT_CERT) and --key (SIGIL_CLIENT_KEY) go together');
    const ca = readNamed(o.ca, 'the CA bundle', '--ca, SIGIL_CACERT');
    // Else TLS fails later as if the daemon's certificate were signed by another CA.
    try {
      new X509Certificate(ca);
    } catch {
      throw new UsageError(`the CA bundle ${o.ca} (--ca, SIGIL_CACERT) holds no PEM certificate`);
    }
    const pair = cert !== undefined && key !== undefined ? clientPair(cert, key) : {};
    return (clients = connect({ addr: o.addr, ca, ...pair }));
  };
  const out = (json: unknown, text: string): void => {
    process.stdout.write(format === 'json' ? `${JSON.stringify(json, null, 2)}\n` : `${text}\n`);
  };

  const key = program.command('key').description('manage keys');
  key
    .command('create')
    .description('generate a new key (version 1) in a backend')
    .argument('<name>', 'key name, e.g. release/ci-provenance')
    .requiredOption('--alg <algorithm>', `one of ${ALG_NAMES.join(', ')}`)
    .option('--backend <name>', 'configured backend (default: the daemon\'s default)')
    .action(async (name: string, o: { alg: string; backend?: string }) => {
      const c = open();
      const res = await rpc.createKey(c, { name, algorithm: parseAlg(o.alg), backend: o.backend ?? '' });
      out(keyJson(res.key!), `created ${keyText(res.key!)}`);
    });
  key
    .command('import')
    .description('register a key made outside sigil by its backend uri')
    .argument('<name>', 'key name')
    .requiredOption('--uri <uri>', 'backend uri, e.g. pkcs11:token=sigil;object=legacy')
    .option('--alg <algorithm>', 'algorithm (required for RSA keys)')
    .option('--backend <name>', 'configured backend')
    .action(async (name: string, o: { uri: string; alg?: string; backend?: string }) => {
      const c = open();
      const res = await rpc.importKey(c, { name, uri: o.uri, algorithm: o.alg ? parseAlg(o.alg) : Algorithm.UNSPECIFIED, backend: o.backend ?? '' });
      out(keyJson(res.key!), `imported ${keyText(res.key!)}`);
    });
  key
    .command('list')
    .description('list keys')
    .option('--prefix <prefix>', 'only names starting with this', '')
    .action(async (o: { prefix: string }) => {
      const c = open();
      const res = await rpc.adminListKeys(c, { prefix: o.prefix });
      out(res.keys.map(keyJson), res.keys.length ? res.keys.map(keyText).join('\n') : '(no keys)');
    });
  key
    .command('show')
    .description('show a key and its versions')
    .argument('<name>', 'key name')
    .action(async (name: string) => {
      const c = open();
      const res = await rpc.getKey(c, { name });
      out(keyJson(res.key!), keyText(res.key!));
    });
  key
    .command('pubkey')
    .description('print the public key (PEM SubjectPublicKeyInfo) of name or name@N')
    .argument('<key>', 'name or name@N')
    .option('--out <file>', 'write the PEM to a file')
    .action(async (ref: string, o: { out?: string }) => {
      const c = open();
      const res = await rpc.getPublicKey(c, { key: ref });
      if (o.out) writeFileSync(o.out, res.pem);
      out({ keyVersion: res.keyVersion, algorithm: algName(res.algorithm), pem: res.pem }, o.out ? `${res.keyVersion} public key written to ${o.out}` : res.pem.trimEnd());
    });

  addSignOptions(program.command('sign'))
    .description('sign a file: ECDSA and RSA hash it here while streaming it from disk; Ed25519 sends it whole. With --dsse, wrap it in a signed dsse envelope (in-toto, SLSA provenance)')
    .action(async (o: SignOptions) => {
      const { st, payloadType, payload } = readSignInput(o);
      const c = open();
      // Before anything is hashed or signed: a signature sigild issued and this command could not keep is lost.
      const outFile = openOut(o.out, '--out');
      try {
        // Pin the version first so the digest is made for the algorithm of the version that signs.
        const pk = await rpc.getPublicKey(c, { key: o.key });
        const hash = HASH_OF[pk.algorithm];
        if (payload !== null) {
          const res = await rpc.sign(c, { key: pk.keyVersion, ...paeSignInput(hash ?? null, pae(payloadType, payload)) });
          outFile.commit(envelopeJson({ payloadType, payload, signatures: [{ keyid: res.keyVersion, sig: res.signature }] }));
          out(
            { keyVersion: res.keyVersion, algorithm: algName(res.algorithm), file: o.file, bytes: payload.length, payloadType, envelope: o.out },
            `signed ${o.file} (${payload.length} bytes, ${payloadType}) with ${res.keyVersion} (${algName(res.algorithm)}); dsse envelope written to ${o.out}`,
          );
          return;
        }
        const show = o.progress && process.stderr.isTTY === true && st.size > 0;
        let req: { key: string; digest: Buffer | undefined; message: Buffer | undefined };
        let size: number;
        if (hash) {
          const h = await hashFile(o.file, hash, show);
          req = { key: pk.keyVersion, digest: h.digest, message: undefined };
          size = h.bytes;
        } else {
          const max = pk.maxMessageBytes || DEFAULT_MAX_MESSAGE_BYTES;
          const message = readWholeMessage(o.file, '--file', max, `sigild takes at most ${max} bytes (limits.maxMessageBytes)`);
          req = { key: pk.keyVersion, digest: undefined, message };
          size = message.length;
        }
        const res = await rpc.sign(c, req);
        outFile.commit(res.signature);
        out(
          { keyVersion: res.keyVersion, algorithm: algName(res.algorithm), file: o.file, bytes: size, signature: o.out, signatureBase64: res.signature.toString('base64') },
          `signed ${o.file} (${size} bytes) with ${res.keyVersion} (${algName(res.algorithm)}); signature written to ${o.out}`,
        );
      } finally {
        outFile.discard();
      }
    });

  program
    .command('join-token')
    .description('make one-time join tokens for an attestation policy (offline: nothing is sent to sigild)')
    .option('--count <n>', 'how many', '1')
    .action((o: { count: string }) => {
      const n = Number(o.count);
      if (!Number.isInteger(n) || n < 1 || n > 1000) throw new UsageError('--count takes 1 to 1000');
      const tokens = Array.from({ length: n }, () => randomBytes(32).toString('base64url'));
      const hashes = tokens.map((t) => createHash('sha256').update(t).digest('hex'));
      out(
        tokens.map((token, i) => ({ token, sha256: hashes[i] })),
        [
          '# give each runner (pool) one token, e.g. in a file for `sigil-agent enroll --join-token-file`:',
          ...tokens,
          "# append these lines to the policy's joinTokenFile on the daemon host:",
          ...hashes,
        ].join('\n'),
      );
    });

  const cli: CliContext = { open, out, json: () => format === 'json', addr: () => g().addr || undefined };
  registerRevocationCommands(program, cli);
  registerAuditCommands(program, cli);
  registerKeysCommands(program, cli);
  registerApprovalsCommands(program, cli);
  registerEnrollmentCommands(program, cli);
  registerVerifyCommand(program, cli);

  const leaves = (c: Command): Command[] => (c.commands.length ? c.commands.flatMap(leaves) : [c]);
  for (const leaf of leaves(program)) {
    leaf.addOption(new Option('-o, --output <format>', 'output format (also before the command)').choices(['text', 'json']));
    leaf.exitOverride();
  }

  try {
    await program.parseAsync(argv, { from: 'user' });
  } catch (err) {
    process.exitCode = report(err, g().addr, format);
  } finally {
    (clients as Clients | null)?.close();
  }
}

/** Reports a failed command: a line on stderr, or with `--output json` `{ "error": {code, reason, message} }` on stdout. */
function report(err: unknown, addr: string | undefined, format: 'text' | 'json'): number {
  // commander printed its own message (commanderOutput).
  const parsed = commanderExitCode(err);
  if (parsed !== null) return parsed;
  const usage = err instanceof UsageError;
  if (format === 'json') process.stdout.write(`${JSON.stringify({ error: errorJson(err, addr, usage) }, null, 2)}\n`);
  else process.stderr.write(`sigilctl: ${describeError(err, addr)}\n`);
  return usage ? 2 : 1;
}

/** `sigilctl key show`: the words that run a command. */
function commandPath(c: Command): string {
  const names: string[] = [];
  for (let x: Command | null = c; x !== null; x = x.parent) names.unshift(x.name());
  return names.join(' ');
}

/** host:port with a port grpc-js can dial (it would otherwise fail later with a RangeError in its details). */
function checkAddr(addr: string): void {
  const m = /^(?:\[[0-9a-fA-F:.]+\]|[^\s:/]+):(\d{1,5})$/.exec(addr);
  if (!m || Number(m[1]) < 1 || Number(m[1]) > 65535) throw new UsageError(`--addr (SIGIL_ADDR) must be host:port with a port from 1 to 65535, got ${JSON.stringify(addr)}`);
}

/** A file the command line names, or an error that says which option named it. */
function readNamed(path: string, what: string, option: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    throw new UsageError(`cannot read ${what} ${path} (${option}): ${fileErrorWords(err)}`);
  }
}

/** The client certificate and key, checked to belong together (else TLS fails later with an OpenSSL code). */
function clientPair(certPath: string, keyPath: string): { cert: Buffer; key: Buffer } {
  const cert = readNamed(certPath, 'the client certificate', '--cert, SIGIL_CLIENT_CERT');
  const key = readNamed(keyPath, 'the client key', '--key, SIGIL_CLIENT_KEY');
  let x: X509Certificate;
  try {
    x = new X509Certificate(cert);
  } catch {
    throw new UsageError(`the client certificate ${certPath} (--cert, SIGIL_CLIENT_CERT) is not a PEM certificate`);
  }
  let k: KeyObject;
  try {
    k = createPrivateKey(key);
  } catch {
    throw new UsageError(`the client key ${keyPath} (--key, SIGIL_CLIENT_KEY) is not an unencrypted PEM private key`);
  }
  if (!x.checkPrivateKey(k)) throw new UsageError(`the client key ${keyPath} does not belong to the client certificate ${certPath}`);
  return { cert, key };
}
