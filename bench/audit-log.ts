// Micro-benchmark of the audit log alone: entries/s with 32 concurrent recorders (group commit), proof
// latency on a large log, and the reopen time on both start paths (full check at open; fast start on the
// latest checkpoint with the full check in the background). Run: node bench/audit-log.ts [entries]
import { generateKeyPairSync, sign } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { pino } from 'pino';
import { AuditLog } from '../src/audit/audit-log.ts';
import { systemClock } from '../src/clock.ts';

const total = Number(process.argv[2] ?? 500_000);
const dir = mkdtempSync(join(tmpdir(), 'sigil-audit-bench-'));
const pair = generateKeyPairSync('ed25519');
const spki = pair.publicKey.export({ format: 'der', type: 'spki' });
const open = (fullCheckAtStartMax = Number.MAX_SAFE_INTEGER) =>
  AuditLog.open({
    fullCheckAtStartMax,
    path: join(dir, 'audit.db'),
    origin: 'sigil/bench/audit',
    clock: systemClock,
    log: pino({ level: 'silent' }),
    key: { publicKey: () => ({ keyVersion: 'sigil/audit@1', spki }), sign: async (t) => ({ signature: sign(null, t, pair.privateKey), keyVersion: 'sigil/audit@1' }) },
  });
let log = open();
const event = (i: number) => ({ who: 'CN=ci-signer-1', act: 'sign', key: 'release/app@1', digest: i.toString(16).padStart(64, '0'), result: 'ok' as const });

async function recorders(n: number, perRecorder: number): Promise<number> {
  const t0 = performance.now();
  let next = log.size;
  await Promise.all(Array.from({ length: n }, async () => {
    for (let i = 0; i < perRecorder; i++) await log.record(event(next++));
  }));
  return (n * perRecorder) / ((performance.now() - t0) / 1000);
}

const rate = await recorders(32, Math.ceil(50_000 / 32));
console.log(`32 concurrent recorders: ${Math.round(rate)} entries/s, ${log.stats.flushes} flushes for ${log.stats.entries} entries (${(log.stats.entries / log.stats.flushes).toFixed(1)} per flush)`);
const rss0 = process.memoryUsage().rss;
// Fill to `total` with large bursts, then measure proofs and a restart.
while (log.size < total) await Promise.all(Array.from({ length: Math.min(5000, total - log.size) }, (_, i) => log.record(event(log.size + i))));
const size = log.size;
let t = performance.now();
for (let i = 0; i < 100; i++) log.inclusionProof(Math.floor(Math.random() * size), size);
console.log(`inclusion proof at size ${size}: ${((performance.now() - t) / 100).toFixed(2)} ms each`);
t = performance.now();
for (let i = 0; i < 100; i++) log.consistencyProof(1 + Math.floor(Math.random() * (size - 1)), size);
console.log(`consistency proof at size ${size}: ${((performance.now() - t) / 100).toFixed(2)} ms each`);
t = performance.now();
await log.latestCheckpoint();
console.log(`checkpoint signature: ${(performance.now() - t).toFixed(2)} ms`);
await log.close();
const bytes = ['audit.db', 'audit.db-wal'].reduce((n, f) => n + (existsSync(join(dir, f)) ? statSync(join(dir, f)).size : 0), 0);
console.log(`disk: ${(bytes / 1e6).toFixed(1)} MB for ${size} entries, ${Math.round(bytes / size)} bytes per entry (audit.db and its -wal after close)`);
console.log(`rss growth while filling: ${Math.round((process.memoryUsage().rss - rss0) / 1e6)} MB`);
t = performance.now();
log = open();
console.log(`reopen, full check at open of ${size} entries: ${(performance.now() - t).toFixed(0)} ms`);
await log.close();
t = performance.now();
log = open(0);
console.log(`reopen, fast start on the checkpoint at ${log.fullCheck.size}: ${(performance.now() - t).toFixed(1)} ms`);
// The event loop's delays while the background check runs (sampled every 1 ms): it must not block the loop.
const lag = monitorEventLoopDelay({ resolution: 1 });
lag.enable();
const bg = await log.fullCheckDone();
lag.disable();
console.log(`background full check: ${bg.state}, ${bg.verified} entries in ${bg.seconds?.toFixed(2)} s; event-loop delay meanwhile max ${(lag.max / 1e6).toFixed(1)} ms, p99 ${(lag.percentile(99) / 1e6).toFixed(1)} ms`);
// Entries after the checkpoint are read one by one at a fast start: 5000 of them.
await Promise.all(Array.from({ length: 5000 }, (_, i) => log.record(event(log.size + i))));
await log.close();
t = performance.now();
log = open(0);
console.log(`reopen, fast start with ${log.size - log.fullCheck.size} entries after the checkpoint: ${(performance.now() - t).toFixed(1)} ms`);
await log.close();
rmSync(dir, { recursive: true, force: true });
