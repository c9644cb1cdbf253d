import type { Command } from 'commander';
import { rpc } from '../client.ts';
import type { Enrollment } from '../../gen/sigil/v1/admin.ts';
import { UsageError, type CliContext } from './context.ts';

/** sigilctl's enrollment commands: `enrollment list|show|forget` (builder TPMs sigild keeps a record of). */
export function registerEnrollmentCommands(program: Command, cli: CliContext): void {
  const enrollment = program.command('enrollment').description('builder tpm enrollments: list, show (admin, auditor), forget (admin)');
  enrollment
    .command('list')
    .description('list enrolled builder tpms, sorted by ek hash: ek hash, ak name, policy, counters, last update, REVOKED')
    .option('--prefix <hex>', 'only ek hashes starting with this', '')
    .action(async (o: { prefix: string }) => {
      const r = await rpc.listEnrollments(cli.open(), { ekHashPrefix: o.prefix });
      cli.out(r.enrollments.map(enrollmentJson), r.enrollments.length ? r.enrollments.map(enrollmentLine).join('\n') : '(no enrollments)');
    });
  enrollment
    .command('show')
    .description('show one enrollment by ek hash (or a prefix that names one)')
    .argument('<ekhash>', 'sha-256 of the ek public key in hex (the last part of the builder spiffe id)')
    .action(async (ekHash: string) => {
      if (!/^[0-9a-fA-F]{1,64}$/.test(ekHash)) throw new UsageError('the ek hash must be hex, at most 64 digits');
      const r = await rpc.listEnrollments(cli.open(), { ekHashPrefix: ekHash });
      if (r.enrollments.length === 0) throw new Error(`NOT_FOUND: no enrollment for ek ${ekHash.toLowerCase()}`);
      if (r.enrollments.length > 1) throw new UsageError(`${ekHash} names ${r.enrollments.length} enrollments: give more digits`);
      const e = r.enrollments[0]!;
      cli.out(enrollmentJson(e), enrollmentText(e));
    });
  enrollment
    .command('forget')
    .description(
      'delete an ek\'s enrollment record so the runner can enroll afresh (full attestation), e.g. after its tpm was cleared; ' +
        'certificates issued before stay valid until they expire: `sigilctl revoke builder` cuts a runner off',
    )
    .argument('<ekhash>', 'sha-256 of the ek public key, 64 hex digits')
    .requiredOption('--reason <text>', 'why, recorded in the audit log (e.g. "re-imaged")')
    .action(async (ekHash: string, o: { reason: string }) => {
      const e = (await rpc.forgetEnrollment(cli.open(), { ekHash, reason: o.reason })).enrollment!;
      cli.out(
        { forgotten: enrollmentJson(e), reason: o.reason },
        `forgot the enrollment of ek ${e.ekHash} (ak ${e.akName}, resetCount ${e.resetCount}, restartCount ${e.restartCount}, clock ${e.clock}): ` +
          `its next enrollment is judged as a first one; certificates issued before stay valid until they expire${e.revoked ? '; the builder stays revoked' : ''}`,
      );
    });
}

function enrollmentJson(e: Enrollment): Record<string, unknown> {
  return {
    ekHash: e.ekHash,
    akName: e.akName,
    policy: e.policy,
    resetCount: e.resetCount,
    restartCount: e.restartCount,
    clock: e.clock,
    updateTime: e.updateTime?.toISOString() ?? null,
    ekCertificateKept: e.ekCertificateKept,
    ekPublicKept: e.ekPublicKept,
    revoked: e.revoked,
  };
}

function enrollmentLine(e: Enrollment): string {
  return `${e.ekHash}  ak ${e.akName}  ${e.policy}  reset ${e.resetCount} restart ${e.restartCount} clock ${e.clock}  ${e.updateTime?.toISOString() ?? '-'}${e.revoked ? '  REVOKED' : ''}`;
}

function enrollmentText(e: Enrollment): string {
  return [
    `ek hash:          ${e.ekHash}`,
    `ak name:          ${e.akName}`,
    `policy:           ${e.policy}`,
    `reset count:      ${e.resetCount}`,
    `restart count:    ${e.restartCount}`,
    `clock:            ${e.clock}`,
    `updated:          ${e.updateTime?.toISOString() ?? '-'}`,
    `ek certificate:   ${e.ekCertificateKept ? 'kept' : 'not kept'}`,
    `ek public area:   ${e.ekPublicKept ? 'kept' : 'not kept (recorded before sigild kept it)'}`,
    `revoked:          ${e.revoked ? 'yes' : 'no'}`,
  ].join('\n');
}
