import { Option, type Command } from 'commander';
import { KeyVersionState, type Key, type KeyPolicy, type KeyVersion } from '../../gen/sigil/v1/signer.ts';
import type { Approval } from '../../gen/sigil/v1/admin.ts';
import { rpc } from '../client.ts';
import { parseDuration, formatDuration } from '../../config/duration.ts';
import { UsageError, algName, parseUtcTime, type CliContext } from './context.ts';
import { approvalJson, approvalText } from './approvals.ts';

/** The contract name of a key version state. */
export function stateName(s: number): string {
  return (Object.keys(KeyVersionState) as Array<keyof typeof KeyVersionState>).find((k) => KeyVersionState[k] === s) ?? `UNKNOWN(${s})`;
}

/** A key version as `--output json` prints it. */
export function keyVersionJson(v: KeyVersion): object {
  return {
    version: v.version,
    uri: v.uri,
    state: stateName(v.state),
    generated: v.generated,
    createTime: v.createTime?.toISOString(),
    disableTime: v.disableTime?.toISOString() ?? null,
    revokeTime: v.revokeTime?.toISOString() ?? null,
    destroyTime: v.destroyTime?.toISOString() ?? null,
    destroyedTime: v.destroyedTime?.toISOString() ?? null,
  };
}

/** One line per key version: number, state (with compromise and destruction times), origin, creation, uri. */
export function keyVersionText(v: KeyVersion): string {
  const notes: string[] = [];
  if (v.revokeTime) notes.push(`compromised since ${v.revokeTime.toISOString()}`);
  if (v.state === KeyVersionState.DESTROY_SCHEDULED && v.destroyTime) notes.push(`destroy at ${v.destroyTime.toISOString()}`);
  if (v.destroyedTime) notes.push(`destroyed ${v.destroyedTime.toISOString()}`);
  const state = notes.length ? `${stateName(v.state)} (${notes.join(', ')})` : stateName(v.state);
  return `  @${v.version}  ${state}  ${v.generated ? 'generated' : 'imported'}  ${v.createTime?.toISOString() ?? ''}  ${v.uri}`;
}

/** A key policy as JSON (period as a duration string, or null). */
export function policyJson(p: KeyPolicy): object {
  return {
    minSignVersion: p.minSignVersion,
    minVerifyVersion: p.minVerifyVersion,
    autoRotatePeriod: p.autoRotatePeriodSeconds ? formatDuration(p.autoRotatePeriodSeconds * 1000) : null,
    destroyNeedsApproval: p.destroyNeedsApproval,
  };
}

/** A key policy on one line. */
export function policyText(p: KeyPolicy): string {
  return `min-sign=${p.minSignVersion} min-verify=${p.minVerifyVersion} auto-rotate=${p.autoRotatePeriodSeconds ? formatDuration(p.autoRotatePeriodSeconds * 1000) : 'off'} destroy-approval=${p.destroyNeedsApproval ? 'on' : 'off'}`;
}

/** A key as `--output json` prints it. */
export function keyJson(k: Key): object {
  return {
    name: k.name,
    algorithm: algName(k.algorithm),
    backend: k.backend,
    primaryVersion: k.primaryVersion,
    createTime: k.createTime?.toISOString(),
    versions: k.versions.map(keyVersionJson),
    policy: k.policy ? policyJson(k.policy) : null,
    nextRotationTime: k.nextRotationTime?.toISOString() ?? null,
  };
}

/** A key as text: a header, its policy, then one line per version. */
export function keyText(k: Key): string {
  const lines = [`${k.name}  ${algName(k.algorithm)}  backend=${k.backend}  primary=${k.name}@${k.primaryVersion}`];
  if (k.policy) lines.push(`  policy: ${policyText(k.policy)}${k.nextRotationTime ? `  next rotation ${k.nextRotationTime.toISOString()}` : ''}`);
  for (const v of k.versions) lines.push(keyVersionText(v));
  return lines.join('\n');
}

function seconds(text: string, flag: string): number {
  let ms: number;
  try {
    ms = parseDuration(text);
  } catch {
    throw new UsageError(`${flag} takes a duration such as 36h, 7d or 30d`);
  }
  if (ms % 1000 !== 0 || ms === 0) throw new UsageError(`${flag} must be a whole number of seconds, at least 1s`);
  return ms / 1000;
}

function count(text: string, flag: string): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n < 1 || n > 0xffffffff) throw new UsageError(`${flag} takes a version number >= 1`);
  return n;
}

function onOff(text: string, flag: string): boolean {
  if (text === 'on') return true;
  if (text === 'off') return false;
  throw new UsageError(`${flag} takes on or off`);
}

/** A key with, when the act waits for approval, that approval. */
function keyOrApproval(cli: CliContext, key: Key, approval: Approval | undefined, done: string): void {
  if (approval) {
    cli.out({ key: keyJson(key), approval: approvalJson(approval) }, `approval needed: ${approvalText(approval)}\nan approver runs: sigilctl approvals approve ${approval.id}`);
  } else {
    cli.out({ key: keyJson(key), approval: null }, `${done}\n${keyText(key)}`);
  }
}

/** `sigilctl key rotate|disable|enable|schedule-destroy|cancel-destroy|versions|policy`: key lifecycle. */
export function registerKeysCommands(program: Command, cli: CliContext): void {
  const key = program.commands.find((c) => c.name() === 'key') ?? program.command('key').description('manage keys');
  key
    .command('rotate')
    .description('make a new version in the same backend and make it primary (older versions keep verifying)')
    .argument('<name>', 'key name')
    .action(async (name: string) => {
      const res = await rpc.rotateKey(cli.open(), { name });
      if (res.warning) process.stderr.write(`sigilctl: warning: ${res.warning}\n`);
      cli.out({ key: keyJson(res.key!), newVersion: res.newVersion, ...(res.warning ? { warning: res.warning } : {}) }, `rotated ${name}: new primary ${name}@${res.newVersion}\n${keyText(res.key!)}`);
    });
  key
    .command('disable')
    .description('stop a version signing at once (the primary only with --compromised)')
    .argument('<key>', 'name@N')
    .option('--compromised', 'disable as compromised: it can never be enabled again')
    .option('--since <time>', 'when the compromise began (ISO 8601 with Z or a ±hh:mm offset); default now; needs --compromised')
    .action(async (ref: string, o: { compromised?: boolean; since?: string }) => {
      if (o.since && !o.compromised) throw new UsageError('--since needs --compromised');
      const since = o.since ? parseUtcTime(o.since, '--since') : undefined;
      const res = await rpc.disableKeyVersion(cli.open(), { key: ref, compromised: o.compromised === true, compromiseTime: since });
      cli.out(keyJson(res.key!), `disabled ${ref}${o.compromised ? ' as compromised' : ''}\n${keyText(res.key!)}`);
    });
  key
    .command('enable')
    .description('enable a disabled version again (never one disabled as compromised)')
    .argument('<key>', 'name@N')
    .action(async (ref: string) => {
      const res = await rpc.enableKeyVersion(cli.open(), { key: ref });
      cli.out(keyJson(res.key!), `enabled ${ref}\n${keyText(res.key!)}`);
    });
  key
    .command('schedule-destroy')
    .description('destroy a non-primary version in the backend when the window ends (it stops signing now)')
    .argument('<key>', 'name@N')
    .option('--window <duration>', "how long until destruction, e.g. 7d (default: the daemon's)")
    .action(async (ref: string, o: { window?: string }) => {
      const res = await rpc.scheduleDestroyKeyVersion(cli.open(), { key: ref, windowSeconds: o.window ? seconds(o.window, '--window') : 0 });
      keyOrApproval(cli, res.key!, res.approval, `scheduled ${ref} for destruction`);
    });
  key
    .command('cancel-destroy')
    .description('cancel a scheduled destruction (the version becomes DISABLED) or withdraw one awaiting approval')
    .argument('<key>', 'name@N')
    .action(async (ref: string) => {
      const res = await rpc.cancelDestroyKeyVersion(cli.open(), { key: ref });
      cli.out(keyJson(res.key!), `cancelled the destruction of ${ref}\n${keyText(res.key!)}`);
    });
  key
    .command('versions')
    .description("list a key's versions with their states")
    .argument('<name>', 'key name')
    .action(async (name: string) => {
      const res = await rpc.listKeyVersions(cli.open(), { name });
      cli.out(
        { primaryVersion: res.primaryVersion, policy: res.policy ? policyJson(res.policy) : null, versions: res.versions.map(keyVersionJson) },
        [`${name}  primary=${name}@${res.primaryVersion}`, ...(res.policy ? [`  policy: ${policyText(res.policy)}`] : []), ...res.versions.map(keyVersionText)].join('\n'),
      );
    });
  key
    .command('policy')
    .description("change a key's policy (turning --destroy-approval off needs an approver)")
    .argument('<name>', 'key name')
    .option('--min-sign-version <n>', 'versions below may not sign')
    .option('--min-verify-version <n>', 'versions below are no longer trusted to verify')
    .option('--auto-rotate <period>', 'rotate automatically every period (e.g. 30d), or off')
    .addOption(new Option('--destroy-approval <on|off>', 'destruction needs an approver').choices(['on', 'off']))
    .action(async (name: string, o: { minSignVersion?: string; minVerifyVersion?: string; autoRotate?: string; destroyApproval?: string }) => {
      const req = {
        name,
        minSignVersion: o.minSignVersion === undefined ? undefined : count(o.minSignVersion, '--min-sign-version'),
        minVerifyVersion: o.minVerifyVersion === undefined ? undefined : count(o.minVerifyVersion, '--min-verify-version'),
        autoRotatePeriodSeconds: o.autoRotate === undefined ? undefined : o.autoRotate === 'off' ? 0 : seconds(o.autoRotate, '--auto-rotate'),
        destroyNeedsApproval: o.destroyApproval === undefined ? undefined : onOff(o.destroyApproval, '--destroy-approval'),
      };
      if (Object.values(req).filter((v) => v !== undefined).length === 1) throw new UsageError('give at least one policy option');
      const res = await rpc.updateKeyPolicy(cli.open(), req);
      keyOrApproval(cli, res.key!, res.approval, `updated the policy of ${name}`);
    });
}
