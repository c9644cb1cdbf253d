// Micro-benchmark of the audit log alone: entries/s with 32 concurrent recorders (group commit), and
// proof latency on a large log. Run: node bench/audit-log.ts [entries]
import { generateKeyPairSync, sign } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { AuditLog } from '../src/audit/audit-log.ts';
import { systemClock } from '../src/clock.ts';

const total = Number(process.argv[2] ?? 500_000);
const dir = mkdtempSync(join(tmpdir(), 'sigil-audit-bench-'));
const pair = generateKeyPairSync('ed25519');
const spki = pair.publicKey.export({ format: 'der', type: 'spki' });
const open = () =>
  AuditLog.open({
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
t = performance.now();
log = open();
console.log(`reopen with self-verification of ${size} entries: ${(performance.now() - t).toFixed(0)} ms; rss growth while filling ${Math.round((process.memoryUsage().rss - rss0) / 1e6)} MB`);
await log.close();
rmSync(dir, { recursive: true, force: true });
