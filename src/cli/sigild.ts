import { Command } from 'commander';
import { rmSync } from 'node:fs';
import { loadConfig } from '../config/load.ts';
import { readServerTls } from '../config/tls-files.ts';
import { startDaemon, type Daemon } from '../main.ts';
import { prepareDevDir, writeAddrFile } from '../dev/dev.ts';
import { launchSwtpm, stopLeftoverSwtpm } from '../dev/swtpm.ts';
import { SigilError } from '../errors.ts';
import { commanderExitCode, commanderOutput } from './commands/context.ts';
import { backupDaemonState } from '../store/backup.ts';
import { archiveAuditLog } from '../store/audit-archive.ts';
import { rekeyTpmKeys, type RekeyedKey } from './tpm-rekey.ts';
import { systemClock } from '../clock.ts';
import { createLogger, type Logger } from '../log.ts';
import { userInfo } from 'node:os';
import { resolve as resolvePath } from 'node:path';

/** Runs the daemon until SIGINT or SIGTERM, then stops it gracefully; SIGHUP reloads its config (the daemon logs and audits the outcome). */
async function serveUntilSignal(daemon: Daemon, onStop?: () => void): Promise<void> {
  await new Promise<void>((resolve) => {
    const reload = (): void => {
      daemon.reload().catch((err: unknown) => process.stderr.write(`sigild: config reload failed: ${(err as Error).message}\n`));
    };
    const stop = (): void => {
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
      process.off('SIGHUP', reload);
      onStop?.();
      daemon.stop().then(resolve, resolve);
    };
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
    process.on('SIGHUP', reload);
  });
}

/** An error's message on one line (a tool's output quoted in it can span many). */
function oneLine(err: unknown): string {
  const text = err instanceof Error ? err.message : String(err);
  return text.split('\n').map((l) => l.trim()).filter(Boolean).join(' ').slice(0, 500) || 'failed';
}

/** The name of the operating-system user running the command (its uid where the system has no name for it). */
function osUser(): string {
  try {
    return userInfo().username;
  } catch {
    return `uid ${process.getuid?.() ?? 'unknown'}`;
  }
}

/** The `sigild` command line: serve, dev, backup, audit archive, tpm rekey, config validate. */
export async function main(argv: string[]): Promise<void> {
  // The daemon's log once `serve` or `dev` made it: where an unexpected failure's detail goes.
  let daemonLog: Logger | null = null;
  const program = new Command('sigild')
    .description('sigil signing daemon: one gRPC signer API over PKCS#11 HSMs, TPM 2.0 and cloud KMS (AWS, GCP)')
    .configureOutput(commanderOutput('sigild', []))
    .exitOverride();

  program
    .command('serve')
    .description('serve with a config file')
    .requiredOption('-c, --config <file>', 'YAML config file')
    .action(async (o: { config: string }) => {
      // SIGHUP's default action ends the process: while the daemon starts (an audit check can take a while), a
      // reload asked for is remembered and runs once it serves.
      let early = false;
      const remember = (): void => void (early = true);
      process.on('SIGHUP', remember);
      let daemon: Daemon;
      try {
        const cfg = loadConfig(o.config);
        daemon = await startDaemon(cfg, { configFile: resolvePath(o.config), log: (daemonLog = createLogger({ level: cfg.log.level })) });
      } finally {
        process.off('SIGHUP', remember);
      }
      const serving = serveUntilSignal(daemon);
      if (early) void daemon.reload().catch((err: unknown) => process.stderr.write(`sigild: config reload failed: ${(err as Error).message}\n`));
      await serving;
    });

  program
    .command('dev')
    .description('serve the embedded default: a SoftHSM2 token, a SQLite store, a development operator CA and a swtpm as the demo builder\'s TPM, under one data directory')
    .option('-d, --data-dir <dir>', 'data directory (created when missing)', '.sigil-dev')
    .option('-l, --listen <host:port>', 'where to listen; port 0 picks a free port, written to DIR/sigild.addr', '127.0.0.1:0')
    .option('--log-file <file>', 'append the daemon\'s log to this file (opened once no other daemon serves DIR) instead of standard error')
    .action(async (o: { dataDir: string; listen: string; logFile?: string }) => {
      // Takes the store's lock before anything in the directory is touched (a second dev is refused there).
      const dev = await prepareDevDir(o.dataDir, o.listen);
      let daemon: Daemon;
      try {
        const cfg = loadConfig(dev.config);
        daemonLog = createLogger({ level: cfg.log.level, ...(o.logFile !== undefined ? { destination: resolvePath(o.logFile) } : {}) });
        daemon = await startDaemon(cfg, { configFile: resolvePath(dev.config), storeLock: dev.lock, log: daemonLog });
      } catch (err) {
        dev.lock.release();
        throw err;
      }
      // The demo builder's TPM; sigild itself never talks to it (it verifies attestation in software).
      const tpm = await stopLeftoverSwtpm(dev.swtpmPidFile, dev.swtpmState)
        .then(() => launchSwtpm(dev.swtpmState, ['--pid', `file=${dev.swtpmPidFile}`]))
        .catch(async (err: unknown) => {
          await daemon.stop();
          throw err;
        });
      writeAddrFile(dev.tpmFile, tpm.tcti);
      writeAddrFile(dev.addrFile, daemon.address);
      process.stderr.write(
        [
          `sigild dev: serving on ${daemon.address} (metrics http://${daemon.metricsAddress}/metrics)`,
          `  export SIGIL_ADDR=${daemon.address} SIGIL_CACERT=${dev.client.ca} SIGIL_CLIENT_CERT=${dev.client.adminCert} SIGIL_CLIENT_KEY=${dev.client.adminKey}`,
          '  then: npx sigilctl key create demo --alg ECDSA_P256_SHA256',
          `demo builder TPM (swtpm): ${tpm.tcti}`,
          `  npx sigil-agent enroll --addr ${daemon.address} --ca ${dev.client.ca} --tpm ${tpm.tcti} --policy dev`,
          '',
        ].join('\n'),
      );
      await serveUntilSignal(daemon, () => {
        rmSync(dev.addrFile, { force: true });
        rmSync(dev.tpmFile, { force: true });
        void tpm.stop().then(() => rmSync(dev.swtpmPidFile, { force: true }));
      });
    });

  program
    .command('backup')
    .description('copy the daemon\'s state (store, audit log, TPM key tables) into a new directory, while it runs; see docs/operations.md')
    .requiredOption('-c, --config <file>', 'the config file the daemon runs with')
    .requiredOption('-o, --out <dir>', 'a new or empty directory (made mode 0700)')
    .action(async (o: { config: string; out: string }) => {
      const m = await backupDaemonState(loadConfig(o.config), o.config, o.out, new Date());
      process.stdout.write(
        [
          `backup written to ${o.out}: ${m.store.keys} keys (${m.store.versions} versions), audit log of ${m.audit.entries} entries${m.audit.checkpoint ? ` (latest checkpoint: size ${m.audit.checkpoint.size}, ${m.audit.checkpoint.keyVersion})` : ''}`,
          m.audit.verified === null
            ? 'audit log copy: no signed checkpoint yet, not verified'
            : m.audit.verified.ok
              ? `audit log copy verified: its ${m.audit.verified.from > 0 ? `entries ${m.audit.verified.from} to ${m.audit.verified.size - 1} (those below ${m.audit.verified.from} are archived) with the archived prefix's subtrees` : `first ${m.audit.verified.size} entries`} hash to the checkpoint signed by ${m.audit.verified.signedBy}`
              : `AUDIT LOG COPY DOES NOT VERIFY: ${m.audit.verified.failure} (the copy is what the daemon holds: see docs/audit.md)`,
          ...m.files.map((f) => `  ${f.path}  ${f.bytes} bytes  sha256 ${f.sha256}`),
          'not included (back these up yourself):',
          ...m.notIncluded.map((x) => `  - ${x}`),
          '',
        ].join('\n'),
      );
      if (m.audit.verified !== null && !m.audit.verified.ok) process.exitCode = 1;
    });

  const audit = program.command('audit').description('audit log maintenance');
  audit
    .command('archive')
    .description('move the oldest audit entries into verified segment files and prune their data from the log, with sigild stopped; see docs/operations.md')
    .requiredOption('-c, --config <file>', 'the config file the daemon runs with')
    .requiredOption('-o, --out <dir>', 'the directory segment files are written to')
    .option('--before <index>', 'archive only entries below this index (default: all the latest checkpoint covers)')
    .option('--align <n>', 'the archived prefix ends on a multiple of this power of two', '65536')
    .option('--segment-max <n>', 'at most this many entries per segment file (a multiple of --align)', '262144')
    .option('--vacuum', 'afterwards, rewrite the audit file without its freed pages (SQLite VACUUM: needs free disk of about the new size)')
    .action(async (o: { config: string; out: string; before?: string; align: string; segmentMax: string; vacuum?: boolean }) => {
      const int = (v: string, what: string): number => {
        if (!/^\d{1,15}$/.test(v)) throw new SigilError('INVALID_ARGUMENT', `${what} must be a non-negative integer`);
        return Number(v);
      };
      const cfg = loadConfig(o.config);
      const r = await archiveAuditLog(cfg, {
        outDir: o.out,
        before: o.before === undefined ? undefined : int(o.before, '--before'),
        align: int(o.align, '--align'),
        segmentMax: int(o.segmentMax, '--segment-max'),
        vacuum: o.vacuum === true,
        who: `local:${osUser()}`,
        clock: systemClock,
        log: createLogger({ level: cfg.log.level === 'info' ? 'warn' : cfg.log.level }),
      });
      process.stdout.write(
        [
          r.nothing !== null ? `nothing archived: ${r.nothing}` : `archived ${r.segments.length} segment${r.segments.length === 1 ? '' : 's'} into ${o.out}, each verified before its entries were pruned:`,
          ...r.segments.map((s) => `  ${s.file}  entries ${s.start} to ${s.end - 1}  checkpoint ${s.checkpoint}  ${s.bytes} bytes  sha256 ${s.sha256}`),
          `the log holds ${r.size} entries; entries below ${r.archivedEnd} are archived (keep the segments: docs/operations.md)`,
          ...(r.vacuumed !== null ? [`audit file vacuumed: ${r.vacuumed} bytes`] : []),
          '',
        ].join('\n'),
      );
    });

  program
    .command('tpm')
    .description('tpm backend maintenance')
    .command('rekey')
    .description('give the tpm keys sigil made before it set an authValue (empty one) a fresh random authValue, with sigild stopped; see docs/operations.md')
    .requiredOption('-c, --config <file>', 'the config file the daemon runs with')
    .option('--backend <name>', 'only this tpm backend (default: every tpm backend in the config)')
    .option('--dry-run', 'list the keys that would get an authValue, change nothing')
    .action(async (o: { config: string; backend?: string; dryRun?: boolean }) => {
      const cfg = loadConfig(o.config);
      // Each key is printed as it is done: a failure on a later one still tells what already changed.
      const line = (k: RekeyedKey): void => void process.stdout.write(`${k.result === 'changed' ? 'new authValue' : 'would get a new authValue'}: ${k.backend} ${k.uri} (${k.label}${k.keyVersion !== null ? `, ${k.keyVersion}` : ''})\n`);
      const done = await rekeyTpmKeys(cfg, {
        backend: o.backend,
        dryRun: o.dryRun === true,
        who: `local:${osUser()}`,
        clock: systemClock,
        log: createLogger({ level: cfg.log.level === 'info' ? 'warn' : cfg.log.level }),
        onKey: line,
      });
      process.stdout.write(
        `${
          done.length === 0
            ? 'every tpm key sigil made has an authValue: nothing to do'
            : o.dryRun === true
              ? `${done.length} key(s) would change; run again without --dry-run`
              : `${done.length} key(s) changed; the empty authValue no longer signs with them (what another process did with them before is not undone: see docs/operations.md)`
        }\n`,
      );
    });

  program
    .command('config')
    .description('config file tools')
    .command('validate')
    .description('check a config file without starting; prints every problem at once')
    .argument('<file>', 'YAML config file')
    .action((file: string) => {
      // The TLS files too: a key that is not its certificate's would otherwise show only at start or reload.
      readServerTls(loadConfig(file).tls);
      process.stdout.write(`${file}: ok\n`);
    });

  try {
    await program.parseAsync(argv, { from: 'user' });
  } catch (err) {
    // commander printed help, or the usage error as one line (commanderOutput).
    const parsed = commanderExitCode(err);
    if (parsed !== null) {
      process.exitCode = parsed;
      return;
    }
    if (err instanceof SigilError) {
      process.stderr.write(`sigild: ${err.message}\n`);
      process.exitCode = err.code === 'CONFIG_INVALID' || err.code === 'INVALID_ARGUMENT' ? 2 : 1;
      return;
    }
    // Not one of sigil's errors (a tool that would not start, a bug): its detail (stack, cause) goes to the log,
    // and one line to the operator.
    const log = daemonLog ?? createLogger({ level: 'error' });
    log.error({ err }, 'sigild failed');
    // Written before the line below; a log that cannot flush (a file gone) does not hold it back for long.
    await new Promise<void>((resolve) => {
      const t = setTimeout(resolve, 1000);
      try {
        log.flush(() => {
          clearTimeout(t);
          resolve();
        });
      } catch {
        clearTimeout(t);
        resolve();
      }
    });
    process.stderr.write(`sigild: ${oneLine(err)}\n`);
    process.exitCode = 1;
  }
}
