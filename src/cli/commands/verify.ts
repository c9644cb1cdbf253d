import type { Command } from 'commander';
import { rpc } from '../client.ts';
import { isSigilError } from '../../errors.ts';
import { parseKeyRef, type KeyRef } from '../../keys/names.ts';
import { rfc3339 } from '../../revocation/trusted-root.ts';
import { chainHeadVersion, NO_CHAIN_TAKEN_AS, parseRootKeyChain, TRUST_ROOT_KEY, type RootKeyChain } from '../../revocation/root-key-chain.ts';
import type { Algorithm as AlgorithmName } from '../../signers/signer.ts';
import { MAX_ENVELOPE_BYTES, pae, parseEnvelope, type DsseEnvelope, type DsseSignature } from '../dsse.ts';
import { openOut, readBounded, statNamed } from '../files.ts';
import { fileErrorWords } from '../errors.ts';
import { checkValidity, findKeyVersion, findKeyVersions, verifyFile, verifyMessage, VerifyFailure, type RootKeyVersion } from '../verify.ts';
import { algName, parseAlg, parseUtcTime, UsageError, type CliContext } from './context.ts';
import { chainOf, pinnedRootKey, verifyTrustedRoot, type RootToVerify, type VerifiedRoot } from './revocation.ts';

interface VerifyOptions {
  file?: string;
  signature?: string;
  dsse?: string;
  key?: string;
  alg?: string;
  payloadType?: string;
  payloadOut?: string;
  rootKey: string;
  trustedRoot?: string;
  rootSig?: string;
  rootChain?: string;
  at?: string;
  progress: boolean;
}

const NO_CHAIN: RootKeyChain = { key: TRUST_ROOT_KEY, transitions: [], compromised: [] };

/** A file the command line names, read whole up to `max` bytes, or a usage error that names the option. */
function readOption(path: string, option: string, max: number): Buffer {
  try {
    return readBounded(path, max, option);
  } catch (err) {
    const code = (err as { code?: unknown }).code;
    if (code === 'MESSAGE_TOO_LARGE' || code === 'INVALID_ARGUMENT') throw new UsageError((err as Error).message);
    // A file that is not there or cannot be read is a mistake on the command line (exit 2), not a failed check.
    if (typeof code === 'string' && /^E[A-Z]+$/.test(code)) throw new UsageError(`cannot read ${path} (${option}): ${fileErrorWords(err)}`);
    throw err;
  }
}

/** The trusted root, verified from the pinned key: from the files given, or fetched from sigild (`--addr`). */
async function verifiedRoot(
  o: VerifyOptions,
  cli: CliContext,
): Promise<{ signedBy: string | null; followed: string | null; json: Buffer; source: 'file' | 'daemon'; issuedAt: Date; expiresAt: Date }> {
  const pinned = pinnedRootKey(o.rootKey);
  let r: RootToVerify;
  let source: 'file' | 'daemon';
  if (o.trustedRoot !== undefined) {
    if (o.rootSig === undefined) throw new UsageError('--trusted-root needs --root-sig, its detached signature (as `trusted-root get --sig` writes it): an unverified trusted root is never used');
    let chain = NO_CHAIN;
    if (o.rootChain !== undefined) {
      const bytes = readOption(o.rootChain, '--root-chain', 16 * 1024 * 1024);
      try {
        chain = parseRootKeyChain(bytes);
      } catch (err) {
        // Not a chain at all (another file given by mistake): a command-line mistake, said as such.
        throw new UsageError(`--root-chain ${o.rootChain} is not a chain of root keys as \`trusted-root get --chain\` writes it (or /trusted-root-keys.json serves): ${(err as Error).message.replace(/^root key chain: /, '')}`);
      }
    }
    r = {
      json: readOption(o.trustedRoot, '--trusted-root', MAX_ENVELOPE_BYTES),
      signature: readOption(o.rootSig, '--root-sig', 64 * 1024),
      keyVersion: `${chain.key}@${chainHeadVersion(chain)}`,
      chain,
    };
    source = 'file';
  } else {
    if (o.rootSig !== undefined || o.rootChain !== undefined) throw new UsageError('--root-sig and --root-chain go with --trusted-root');
    if (cli.addr() === undefined) throw new UsageError('give the trusted root with --trusted-root and --root-sig (offline), or --addr (SIGIL_ADDR) to fetch it from sigild');
    const res = await rpc.getTrustedRoot(cli.open(), {});
    r = { json: Buffer.from(res.json), signature: Buffer.from(res.signature), keyVersion: res.keyVersion, chain: chainOf(res) };
    source = 'daemon';
  }
  const noChain = source === 'file' && o.rootChain === undefined;
  let root: VerifiedRoot;
  try {
    root = verifyTrustedRoot(r, pinned, o.rootKey);
  } catch (err) {
    // Verified, but expired (or never expiring): --at vouches for a signing time, never for an old root.
    if (isSigilError(err, 'FAILED_PRECONDITION')) throw new VerifyFailure('root-expired', `${err.message}${o.at !== undefined ? ' (--at does not change this: it vouches for the signing time, not for the root)' : ''}`);
    let msg = (err as Error).message;
    // Without a chain the only key is the pinned one; its version is not known, so do not name one.
    if (noChain) msg = `${msg.replace(` (${NO_CHAIN_TAKEN_AS}${TRUST_ROOT_KEY}@1)`, '')} (if the root key was rotated since you pinned it, give the chain of root keys with --root-chain, as \`trusted-root get --chain\` writes it)`;
    // A chain was given but introduces no later key: it may be older than the root (fetched before a rotation).
    else if (source === 'file' && msg.includes(NO_CHAIN_TAKEN_AS)) {
      msg = msg.replace(new RegExp(` \\(${NO_CHAIN_TAKEN_AS}[^)]*\\)`), '').concat(` (the chain in ${o.rootChain} introduces no root key after the pinned one: if the root key was rotated since you fetched it, fetch the chain again with \`trusted-root get --chain\`)`);
    }
    throw new VerifyFailure('root', msg);
  }
  return { signedBy: noChain ? null : root.keyVersion, followed: noChain ? null : root.followed, json: r.json, source, issuedAt: root.issuedAt, expiresAt: root.expiresAt };
}

/** A `name@N` key reference, or null for anything else (a bare name, garbage). */
function versionRef(ref: string): string | null {
  try {
    const k = parseKeyRef(ref);
    return k.version === null ? null : `${k.name}@${k.version}`;
  } catch {
    return null;
  }
}

/** `--key`: a bare name (any version of that key) or `name@N` (exactly that version); a usage error otherwise. */
function keyOption(key: string | undefined): KeyRef {
  if (key === undefined) {
    throw new UsageError('--key is required: the key you trust for this artifact, a name (any of its versions) or name@N; an envelope\'s keyid is chosen by the signer and picks nothing on its own');
  }
  try {
    return parseKeyRef(key);
  } catch (err) {
    throw new UsageError(`--key takes a key name or name@N: ${(err as Error).message}`);
  }
}

/**
 * The envelope's signatures by `--key`: whose keyid is exactly `name@N` when a version was given, else any
 * `name@N` of that name. The keyid only names the version to check; the key itself is the verifier's choice.
 */
function pickSignatures(env: DsseEnvelope, key: KeyRef): Array<{ sig: DsseSignature; ref: string }> {
  const picked = env.signatures.flatMap((sig) => {
    const ref = versionRef(sig.keyid);
    if (ref === null) return [];
    const k = parseKeyRef(ref);
    return k.name === key.name && (key.version === null || k.version === key.version) ? [{ sig, ref }] : [];
  });
  if (picked.length === 0) {
    const ids = env.signatures.map((s) => (s.keyid ? JSON.stringify(s.keyid) : '(no keyid)')).join(', ');
    const want = key.version === null ? `a version of ${key.name} (keyid ${key.name}@N)` : `${key.name}@${key.version}`;
    throw new VerifyFailure('key-version', `wrong key version: the envelope has no signature by ${want} (it has ${ids})`);
  }
  return picked;
}

/**
 * The versions of a bare `--key` name that pass the validity checks (`checkValidity` at `at`), and why the
 * others were left out; a VerifyFailure when none passes (one version: its own failure).
 */
function validVersions(all: readonly RootKeyVersion[], at: Date | null, name: string): { valid: RootKeyVersion[]; skipped: Map<RootKeyVersion, VerifyFailure> } {
  const valid: RootKeyVersion[] = [];
  const skipped = new Map<RootKeyVersion, VerifyFailure>();
  for (const v of all) {
    try {
      checkValidity(v, at);
      valid.push(v);
    } catch (err) {
      if (!(err instanceof VerifyFailure)) throw err;
      skipped.set(v, err);
    }
  }
  if (valid.length === 0) {
    const failures = [...skipped.values()];
    if (failures.length === 1) throw failures[0]!;
    throw new VerifyFailure(failures[0]!.check, `no version of ${name} is valid ${at ? `at ${at.toISOString()}` : 'now'}: ${failures.map((f) => f.message).join('; ')}`);
  }
  return { valid, skipped };
}

/** `sigilctl verify`: checks a raw signature or a DSSE envelope against the signed trusted root, offline or fetching the root from sigild. */
export function registerVerifyCommand(program: Command, cli: CliContext): void {
  program
    .command('verify')
    .description(
      'verify a file\'s signature (--file, --signature, --key) or a dsse envelope (--dsse, --key) against the trusted root, ' +
        'itself verified from your pinned root key exactly as `trusted-root get --root-key` does. Offline with --trusted-root and ' +
        '--root-sig (and --root-chain after root key rotations); with --addr the root is fetched from sigild. Checks: the root and that it has not expired, ' +
        'that the key version is listed with its algorithm, that it is valid (without --at: not disabled as compromised and not ' +
        'destroyed; with --at: its window holds that time), and the signature. Exit 0 only when everything verifies',
    )
    .option('--file <path>', 'the signed file (hashed while streaming from disk; Ed25519 reads it whole)')
    .option('--signature <path>', 'its signature as `sigilctl sign` wrote it (DER for ECDSA, raw for RSA and Ed25519)')
    .option('--key <key>', 'required: the key you trust for this artifact, a name (any version of it the trusted root lists and finds valid) or name@N (only that version); with --dsse, only signatures whose keyid is a version of it count')
    .option('--dsse <envelope>', `a dsse envelope (json, at most ${MAX_ENVELOPE_BYTES / 1048576} MiB) instead of --file and --signature: its keyid names the version of --key`)
    .option('--payload-type <type>', 'with --dsse: require this payloadType')
    .option('--payload-out <file>', 'with --dsse: write the payload here once everything verified')
    .option('--alg <algorithm>', 'require this algorithm of the key version')
    .requiredOption('--root-key <file>', 'the root public key you pinned (pem)')
    .option('--trusted-root <file>', 'the trusted-root json (`trusted-root get --out`); needs --root-sig')
    .option('--root-sig <file>', 'its detached signature (`trusted-root get --sig`)')
    .option('--root-chain <file>', 'the chain of root keys (`trusted-root get --chain`, or /trusted-root-keys.json), when the root key was rotated since you pinned it')
    .option('--at <time>', 'the signing time you vouch for (ISO 8601 with Z or a ±hh:mm offset): the key version must have been valid then (a destroyed or later compromised version passes for a time before its window closed); an expired trusted root stays refused')
    .option('--no-progress', 'no progress bar')
    .action(async (o: VerifyOptions) => {
      const dsse = o.dsse !== undefined;
      if (dsse && (o.file !== undefined || o.signature !== undefined)) throw new UsageError('--dsse takes the place of --file and --signature');
      if (!dsse && (o.file === undefined || o.signature === undefined)) throw new UsageError('give --file and --signature (a raw signature), or --dsse (an envelope)');
      if (!dsse && (o.payloadType !== undefined || o.payloadOut !== undefined)) throw new UsageError('--payload-type and --payload-out go with --dsse');
      const key = keyOption(o.key);
      const expected = o.alg === undefined ? null : (algName(parseAlg(o.alg)) as AlgorithmName);
      const at = o.at === undefined ? null : parseUtcTime(o.at, '--at');
      // Inputs first, so that a usage mistake is not reported as a failed check.
      const envelopeBytes = dsse ? readOption(o.dsse!, '--dsse', MAX_ENVELOPE_BYTES) : null;
      const signature = dsse ? null : readOption(o.signature!, '--signature', 64 * 1024);
      if (!dsse && statNamed(o.file!, '--file').isDirectory()) throw new UsageError(`--file ${o.file} is a directory`);
      // Ready before anything is checked (a bad path is a usage mistake); written only once everything verified.
      const payloadOut = o.payloadOut !== undefined ? openOut(o.payloadOut, '--payload-out') : null;
      let rootIssuedAt: Date | null = null;

      try {
        let env: DsseEnvelope | null = null;
        if (envelopeBytes !== null) {
          try {
            env = parseEnvelope(envelopeBytes);
          } catch (err) {
            throw new VerifyFailure('envelope', `${o.dsse}: ${(err as Error).message}`);
          }
        }
        const picked = env ? pickSignatures(env, key) : null;
        const root = await verifiedRoot(o, cli);
        rootIssuedAt = root.issuedAt;
        let v: RootKeyVersion;
        let tried: string[];
        let subject: Record<string, unknown>;
        let text: string;
        if (env && picked) {
          // Each signature by the key, until one passes every check (one signature: its failure as it is).
          const failures: VerifyFailure[] = [];
          let found: RootKeyVersion | null = null;
          for (const p of picked) {
            try {
              const c = findKeyVersion(root.json, p.ref, expected);
              checkValidity(c, at);
              verifyMessage(c, pae(env.payloadType, env.payload), p.sig.sig, `the envelope ${o.dsse}`);
              found = c;
              break;
            } catch (err) {
              if (!(err instanceof VerifyFailure)) throw err;
              failures.push(err);
            }
          }
          if (found === null) {
            if (failures.length === 1) throw failures[0]!;
            throw new VerifyFailure(failures[0]!.check, `none of the envelope's ${failures.length} signatures by ${o.key} passes: ${failures.map((f) => f.message).join('; ')}`);
          }
          v = found;
          tried = picked.slice(0, failures.length + 1).map((p) => p.ref);
          if (o.payloadType !== undefined && env.payloadType !== o.payloadType) {
            throw new VerifyFailure('payload-type', `wrong payload type: the envelope's payloadType is ${JSON.stringify(env.payloadType)}, not ${JSON.stringify(o.payloadType)} (--payload-type)`);
          }
          if (payloadOut !== null) payloadOut.commit(env.payload);
          subject = { envelope: o.dsse, payloadType: env.payloadType, payloadBytes: env.payload.length, payloadOut: o.payloadOut ?? null };
          text = `verified the dsse envelope ${o.dsse} (${env.payloadType}, ${env.payload.length} bytes of payload${o.payloadOut ? `, written to ${o.payloadOut}` : ''})`;
        } else {
          let candidates: RootKeyVersion[];
          let skipped = new Map<RootKeyVersion, VerifyFailure>();
          if (key.version !== null) {
            candidates = [findKeyVersion(root.json, `${key.name}@${key.version}`, expected)];
            checkValidity(candidates[0]!, at);
          } else {
            const found = validVersions(findKeyVersions(root.json, key.name, expected), at, key.name);
            skipped = found.skipped;
            // The versions not valid are checked too, last: a signature by one of them is reported for what it
            // is (revoked, closed), not as a bad signature.
            candidates = [...found.valid, ...skipped.keys()];
          }
          tried = candidates.map((c) => c.hint);
          const show = o.progress && process.stderr.isTTY === true;
          const r = await verifyFile(candidates, o.file!, signature!, show);
          const invalid = skipped.get(r.keyVersion);
          if (invalid !== undefined) throw new VerifyFailure(invalid.check, `${invalid.message} (the signature is by ${r.keyVersion.hint})`);
          v = r.keyVersion;
          subject = { file: o.file, bytes: r.bytes, digest: { [r.digest.algorithm]: r.digest.hex }, signature: o.signature };
          text = `verified ${o.file} (${r.bytes} bytes)`;
        }
        if (at !== null && v.revoked) process.stderr.write(`sigilctl: warning: ${v.hint} was disabled as compromised at ${v.end?.toISOString()}: this passed only because you vouch that it was signed at ${at.toISOString()}\n`);
        cli.out(
          {
            verified: true,
            ...subject,
            key: o.key,
            keyVersion: v.hint,
            versionsTried: tried,
            algorithm: v.algorithm,
            validity: { checkedAt: at?.toISOString() ?? null, start: v.start.toISOString(), end: v.end?.toISOString() ?? null, revoked: v.revoked },
            trustedRoot: { source: root.source, signedBy: root.signedBy, followed: root.followed, issuedAt: rfc3339(root.issuedAt), expiresAt: rfc3339(root.expiresAt) },
          },
          `${text}: signed by ${v.hint} (${v.algorithm}${key.version === null && tried.length > 1 ? `; --key ${key.name}, tried ${tried.join(', ')}` : ''}), valid ${at ? `at ${at.toISOString()}` : 'now'}; ` +
            `trusted root ${root.followed === null ? 'signed by the pinned key' : `signed by ${root.signedBy}, followed ${root.followed} from the pinned key`}, issued ${rfc3339(root.issuedAt)}, expires ${rfc3339(root.expiresAt)}`,
        );
      } catch (thrown) {
        payloadOut?.discard();
        let err = thrown;
        // The commonest reason for a key or version missing: it was made after this copy of the root.
        if (err instanceof VerifyFailure && err.check === 'key-version' && rootIssuedAt !== null) {
          err = new VerifyFailure('key-version', `${err.message}; this trusted root was issued at ${rfc3339(rootIssuedAt)}: a key or version made since is not in it, fetch a fresh one (sigilctl trusted-root get)`);
        }
        if (!(err instanceof VerifyFailure && cli.json())) throw err;
        // The failed check is the command's json result (exit 1), in place of the generic `{ "error": ... }`.
        cli.out({ verified: false, check: err.check, error: err.message }, err.message);
        process.exitCode = 1;
      }
    });
}
