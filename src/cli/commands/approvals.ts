import { Option, type Command } from 'commander';
import { ApprovalState, type Approval } from '../../gen/sigil/v1/admin.ts';
import { rpc } from '../client.ts';
import { UsageError, type CliContext } from './context.ts';
import { formatDuration } from '../../config/duration.ts';
import { existsSync } from 'node:fs';

// UNRECOGNIZED is ts-proto's sentinel for values it does not know, not a state one may ask for.
const STATES = (Object.keys(ApprovalState) as Array<keyof typeof ApprovalState>).filter((s) => s !== 'UNSPECIFIED' && s !== 'UNRECOGNIZED');

function stateName(s: number): string {
  return STATES.find((k) => ApprovalState[k] === s) ?? `UNKNOWN(${s})`;
}

/** An approval as `--output json` prints it. */
export function approvalJson(a: Approval): object {
  return {
    id: a.id,
    kind: a.kind,
    key: a.key,
    state: stateName(a.state),
    requestedBy: a.requestedBy,
    requestedByFingerprint: a.requestedByFingerprint,
    requestTime: a.requestTime?.toISOString(),
    expireTime: a.expireTime?.toISOString(),
    decidedBy: a.decidedBy || null,
    decideTime: a.decideTime?.toISOString() ?? null,
    reason: a.reason || null,
    payload: JSON.parse(a.payloadJson || '{}') as unknown,
  };
}

/** An approval on one line. */
export function approvalText(a: Approval): string {
  const decided = a.decidedBy ? `  by ${a.decidedBy}` : '';
  const reason = a.reason ? `  (${a.reason})` : '';
  return `${a.id}  ${stateName(a.state)}  ${a.kind} ${a.key}  ${payloadText(a.payloadJson)}  requested by ${a.requestedBy} at ${a.requestTime?.toISOString() ?? ''}, expires ${a.expireTime?.toISOString() ?? ''}${decided}${reason}`;
}

/** What an approval would do, as `key=value` words (`window=7d`, `destroyNeedsApproval=false`) rather than json. */
function payloadText(json: string): string {
  let p: unknown;
  try {
    p = JSON.parse(json || '{}');
  } catch {
    return json;
  }
  if (p === null || typeof p !== 'object' || Array.isArray(p)) return json;
  const words = Object.entries(p as Record<string, unknown>).map(([k, v]) =>
    k.endsWith('Ms') && typeof v === 'number' ? `${k.slice(0, -2)}=${formatDuration(v)}` : `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`,
  );
  return words.length ? words.join(' ') : '-';
}

/** `sigilctl approvals list|approve|reject`: the second person's side of destructive acts. */
export function registerApprovalsCommands(program: Command, cli: CliContext): void {
  const approvals = program.command('approvals').description('approve or reject requests that need a second person');
  approvals
    .command('list')
    .description('list approval requests, newest first')
    .addOption(new Option('--state <state>', 'only this state').choices(STATES.map((s) => s.toLowerCase())))
    .option('--key <name>', 'only requests for this key name')
    .action(async (o: { state?: string; key?: string }) => {
      // `--key` here filters by key name; a pem file named after the command was meant as the client key.
      if (o.key !== undefined && /\.(?:pem|crt|key)$/i.test(o.key) && existsSync(o.key)) {
        throw new UsageError(`--key ${o.key} after the command filters by key name; the client key goes before the command: sigilctl --cert FILE --key ${o.key} approvals list`);
      }
      const state = o.state ? ApprovalState[o.state.toUpperCase() as keyof typeof ApprovalState] : ApprovalState.UNSPECIFIED;
      const res = await rpc.listApprovals(cli.open(), { state, key: o.key ?? '' });
      cli.out(res.approvals.map(approvalJson), res.approvals.length ? res.approvals.map(approvalText).join('\n') : '(no approvals)');
    });
  approvals
    .command('approve')
    .description('approve a pending request (role approver; never your own)')
    .argument('<id>', 'approval id')
    .action(async (id: string) => {
      const res = await rpc.approveRequest(cli.open(), { id });
      cli.out({ approval: approvalJson(res.approval!) }, `approved ${approvalText(res.approval!)}`);
    });
  approvals
    .command('reject')
    .description('reject a pending request; nothing changes')
    .argument('<id>', 'approval id')
    .option('--reason <text>', 'why', '')
    .action(async (id: string, o: { reason: string }) => {
      const res = await rpc.rejectRequest(cli.open(), { id, reason: o.reason });
      cli.out({ approval: approvalJson(res.approval!) }, `rejected ${approvalText(res.approval!)}`);
    });
}
