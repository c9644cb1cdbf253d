import { createPublicKey, verify, type KeyObject } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import type { Command } from 'commander';
import { rpc } from '../client.ts';
import type { RevokedBuilder, RevokedIdentity } from '../../gen/sigil/v1/revocation.ts';
import { UsageError, type CliContext } from './context.ts';
import { describeError } from '../errors.ts';
import { p256, serializeRootKeyChain, spkiOf, TRUST_ROOT_KEY, verifyRootChain, type RootChainResult, type RootKeyChain } from '../../revocation/root-key-chain.ts';
import { checkTrustedRootFresh, rfc3339 } from '../../revocation/trusted-root.ts';
import type { GetTrustedRootResponse } from '../../gen/sigil/v1/revocation.ts';

const REASON_HELP = 'unspecified, keyCompromise, affiliationChanged, superseded, cessationOfOperation or privilegeWithdrawn';

/** sigilctl's revocation commands: `revoke identity|builder`, `revocations list`, `crl get`, `trusted-root get`. */
export function registerRevocationCommands(program: Command, cli: CliContext): void {
  const revoke = program.command('revoke').description('revoke a builder identity or a builder (admin)');
  revoke
    .command('identity')
    .description('revoke one builder certificate by serial: its next request is refused and the crl lists it')
    .argument('<serial>', 'certificate serial in hex (as `openssl x509 -serial` prints it)')
    .option('--reason <reason>', REASON_HELP, 'unspecified')
    .action(async (serial: string, o: { reason: string }) => {
      // As `openssl x509 -noout -serial` prints it: serial=1E40...
      const r = (await rpc.revokeIdentity(cli.open(), { serial: serial.replace(/^serial=/i, ''), reason: o.reason })).revoked!;
      cli.out(identityJson(r), `revoked certificate ${r.serial} (${r.reason}) of builder ${r.ekHash || '?'}`);
    });
  revoke
    .command('builder')
    .description('revoke a builder tpm by ek hash: it can no longer sign, renew or enroll')
    .argument('<ekhash>', 'sha-256 of the ek public key, 64 hex digits (the last part of the builder spiffe id)')
    .option('--reason <reason>', REASON_HELP, 'unspecified')
    .option('--ak <name>', 'revoke only this ak (its tpm name in hex)', '')
    .action(async (ekHash: string, o: { reason: string; ak: string }) => {
      const r = (await rpc.revokeBuilder(cli.open(), { ekHash, reason: o.reason, akName: o.ak })).revoked!;
      cli.out(builderJson(r), `revoked builder ${r.ekHash}${r.akName ? ` ak ${r.akName}` : ''} (${r.reason})`);
    });

  program
    .command('revocations')
    .description('revocation records (admin, auditor)')
    .command('list')
    .description('list revoked identities and builders, oldest first')
    .action(async () => {
      const r = await rpc.listRevocations(cli.open(), {});
      const lines = [
        ...r.identities.map((i) => `identity ${i.serial}  ${i.reason}  ${i.revokeTime?.toISOString() ?? ''}  by ${i.revokedBy}`),
        ...r.builders.map((b) => `builder  ${b.ekHash}${b.akName ? ` ak ${b.akName}` : ''}  ${b.reason}  ${b.revokeTime?.toISOString() ?? ''}  by ${b.revokedBy}`),
      ];
      cli.out({ identities: r.identities.map(identityJson), builders: r.builders.map(builderJson) }, lines.length ? lines.join('\n') : 'nothing revoked');
    });

  program
    .command('crl')
    .description("the identity ca's certificate revocation list (no client certificate needed)")
    .command('get')
    .description("fetch the current identity ca generation's crl, or an older live generation's (pem unless --der)")
    .option('--out <file>', 'write it to a file instead of stdout')
    .option('--der', 'der instead of pem')
    .option('--ca-version <n>', 'the identity ca generation (ca key version) whose crl to fetch; default the current one')
    .action(async (o: { out?: string; der?: boolean; caVersion?: string }) => {
      let caVersion = 0;
      if (o.caVersion !== undefined) {
        if (!/^[1-9][0-9]{0,8}$/.test(o.caVersion)) throw new UsageError('--ca-version takes a version number >= 1');
        caVersion = Number(o.caVersion);
      }
      const r = await rpc.getCrl(cli.open(), { caVersion });
      const meta = { number: r.number, caVersion: r.caVersion, thisUpdate: r.thisUpdate?.toISOString(), nextUpdate: r.nextUpdate?.toISOString() };
      if (o.out) {
        writeFileSync(o.out, o.der ? r.der : r.pem);
        cli.out({ ...meta, file: o.out }, `crl ${r.number} written to ${o.out} (next update ${meta.nextUpdate})`);
      } else if (o.der) {
        process.stdout.write(r.der);
      } else {
        cli.out({ ...meta, pem: r.pem }, r.pem.trimEnd());
      }
    });

  program
    .command('trusted-root')
    .description('the signed trusted root (no client certificate needed)')
    .command('get')
    .description('fetch the trusted-root json and its detached signature; with --root-key, verify it first from a pinned root key')
    .option('--out <file>', 'write the json to a file instead of stdout')
    .option('--sig <file>', 'write the detached signature (der) to a file')
    .option('--pub <file>', "write the root key's public key (pem) to a file")
    .option('--chain <file>', 'write the chain of root keys (json, as /trusted-root-keys.json serves it), for `sigilctl verify --root-chain` offline')
    .option('--sigstore-out <file>', "write the document with Sigstore's fields only (no sigil key versions), for strict parsers such as sigstore-go")
    .option('--sigstore-sig <file>', 'write the detached signature (der) of the --sigstore-out document to a file')
    .option('--root-key <file>', 'the root public key you pinned (pem): follow the chain of root keys from it to the current one and verify the document; nothing is written unless all of it verifies')
    .action(async (o: { out?: string; sig?: string; pub?: string; chain?: string; rootKey?: string; sigstoreOut?: string; sigstoreSig?: string }) => {
      const pinned = o.rootKey === undefined ? null : pinnedRootKey(o.rootKey);
      const r = await rpc.getTrustedRoot(cli.open(), {});
      const wantsSigstore = o.sigstoreOut !== undefined || o.sigstoreSig !== undefined;
      if (wantsSigstore && r.sigstoreJson.length === 0) throw new Error("this daemon serves no trusted root with Sigstore's fields only (it predates it); nothing was written");
      let followed: string | null = null;
      let fresh: { issuedAt: string; expiresAt: string } | null = null;
      let publicKeyPem = r.publicKeyPem;
      if (pinned === null) {
        process.stderr.write('sigilctl: no root key pinned (--root-key): the trusted root was fetched but not verified\n');
      } else {
        let v: VerifiedRoot;
        try {
          v = verifyTrustedRoot({ json: Buffer.from(r.json), signature: Buffer.from(r.signature), keyVersion: r.keyVersion, chain: chainOf(r) }, pinned, o.rootKey!);
        } catch (err) {
          throw new Error(`${err instanceof Error ? err.message : String(err)}; nothing was written`);
        }
        followed = v.followed;
        fresh = { issuedAt: rfc3339(v.issuedAt), expiresAt: rfc3339(v.expiresAt) };
        if (wantsSigstore && !verify('sha256', r.sigstoreJson, { key: v.currentKey, dsaEncoding: 'der' }, r.sigstoreSignature)) {
          throw new Error(`the sigstore form of the trusted root does not verify from the pinned key ${o.rootKey}; nothing was written`);
        }
        publicKeyPem = v.currentKey.export({ format: 'pem', type: 'spki' }).toString();
        process.stderr.write(`followed ${followed}; issued ${fresh.issuedAt}, expires ${fresh.expiresAt}\n`);
      }
      if (o.sig) writeFileSync(o.sig, r.signature);
      if (o.chain) writeFileSync(o.chain, serializeRootKeyChain(chainOf(r)));
      if (o.pub) writeFileSync(o.pub, publicKeyPem);
      if (o.sigstoreOut) writeFileSync(o.sigstoreOut, r.sigstoreJson);
      if (o.sigstoreSig) writeFileSync(o.sigstoreSig, r.sigstoreSignature);
      if (o.out) writeFileSync(o.out, r.json);
      if (o.out || o.sigstoreOut) {
        const files = [
          o.out && `the trusted root to ${o.out}`,
          o.sig && `its signature to ${o.sig}`,
          o.chain && `the chain of root keys to ${o.chain}`,
          o.pub && `the root key's public key to ${o.pub}`,
          o.sigstoreOut && `the trusted root's sigstore form to ${o.sigstoreOut}`,
          o.sigstoreSig && `that form's signature to ${o.sigstoreSig}`,
        ].filter(Boolean);
        cli.out(
          { file: o.out ?? null, signature: o.sig ?? null, sigstoreFile: o.sigstoreOut ?? null, sigstoreSignature: o.sigstoreSig ?? null, keyVersion: r.keyVersion, verified: pinned !== null, followed, ...(fresh ?? {}) },
          `wrote ${files.join(', ')} (signed by ${r.keyVersion}${fresh !== null ? `, verified from the pinned key, issued ${fresh.issuedAt}, expires ${fresh.expiresAt}` : ''})`,
        );
      } else {
        process.stdout.write(r.json);
      }
    });
}

/** A trusted-root document to verify: its bytes, its signature, the version said to sign it and the chain of root keys. */
export interface RootToVerify {
  json: Buffer;
  signature: Buffer;
  /** `sigil/trust-root@N` as the daemon named it (or, for a document from a file, as the chain tells: `chainHeadVersion`). */
  keyVersion: string;
  chain: RootKeyChain;
}

/** A trusted root that verified: what was followed (`sigil/trust-root@1 -> @2`) and the key that signed it. */
export interface VerifiedRoot {
  followed: string;
  /** The version the chain reached, `sigil/trust-root@N`. */
  keyVersion: string;
  currentKey: KeyObject;
  /** The document's `sigilIssuedAt` and `sigilExpiresAt` (not expired when it was verified). */
  issuedAt: Date;
  expiresAt: Date;
}

/**
 * Verifies a trusted root from a pinned key (`verifyRootChain`: the chain link by link, then the document),
 * then that it has not expired at `now` (`checkTrustedRootFresh`); the one check behind `trusted-root get
 * --root-key` and `verify`. Throws an Error that names the pinned file and what failed, or for a verified but
 * expired (or never expiring) document the SigilError FAILED_PRECONDITION that says so.
 */
export function verifyTrustedRoot(r: RootToVerify, pinned: Buffer, pinnedFile: string, now: Date = new Date()): VerifiedRoot {
  let v: RootChainResult;
  try {
    v = verifyRootChain({ key: r.chain.key, pinned, transitions: r.chain.transitions, compromised: r.chain.compromised, document: { json: r.json, signature: r.signature, keyVersion: r.keyVersion } });
  } catch (err) {
    throw new Error(`the trusted root does not verify from the pinned key ${pinnedFile}: ${err instanceof Error ? err.message : String(err)}`);
  }
  const { issuedAt, expiresAt } = checkTrustedRootFresh(r.json, now);
  const followed = `${r.chain.key}@${v.followed[0]}${v.followed.slice(1).map((n) => ` -> @${n}`).join('')}`;
  // The verified key, not the one the server named.
  return { followed, keyVersion: `${r.chain.key}@${v.followed.at(-1)}`, currentKey: createPublicKey({ key: v.currentSpki, format: 'der', type: 'spki' }), issuedAt, expiresAt };
}

/** The chain of root keys a GetTrustedRoot response carries. */
export function chainOf(r: GetTrustedRootResponse): RootKeyChain {
  return {
    key: TRUST_ROOT_KEY,
    transitions: r.rootKeyTransitions.map((t) => ({ version: t.version, statement: Buffer.from(t.statement), previousSignature: Buffer.from(t.previousSignature), signature: Buffer.from(t.signature) })),
    compromised: r.compromisedRootKeys.map((c) => ({ version: c.version, spki: Buffer.from(c.publicKey) })),
  };
}

/** The pinned root key (DER SPKI) from a PEM file, or a usage error naming the file. */
export function pinnedRootKey(file: string): Buffer {
  let data: Buffer;
  try {
    data = readFileSync(file);
  } catch (err) {
    throw new UsageError(`cannot read the pinned root key ${file} (--root-key): ${describeError(err).replace(/^cannot \w+ .*?: /, '')}`);
  }
  try {
    const spki = spkiOf(data);
    p256(spki, 'key');
    return spki;
  } catch {
    throw new UsageError(`the pinned root key ${file} (--root-key) is not an ec p-256 public key (pem)`);
  }
}

function identityJson(i: RevokedIdentity): Record<string, unknown> {
  return { serial: i.serial, reason: i.reason, revokeTime: i.revokeTime?.toISOString() ?? null, revokedBy: i.revokedBy, notAfter: i.notAfter?.toISOString() ?? null, ekHash: i.ekHash || null };
}

function builderJson(b: RevokedBuilder): Record<string, unknown> {
  return { ekHash: b.ekHash, akName: b.akName || null, reason: b.reason, revokeTime: b.revokeTime?.toISOString() ?? null, revokedBy: b.revokedBy };
}
