/**
 * What every benchmark here measures with: nearest-rank percentiles, CPU and memory of processes from
 * /proc, and free loopback ports.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';

/** The nearest-rank percentile `p` (0-100) of ascending `sorted`; NaN when empty. */
export function percentile(sorted: ArrayLike<number>, p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
}

/**
 * Cumulative user+system CPU seconds of a process from /proc/PID/stat, with its reaped children unless
 * `children` is false (a child that exits between two readings is then neither lost nor counted twice).
 */
export function cpuSeconds(pid: number, children = true): number {
  try {
    const f = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // utime, stime, cutime, cstime are fields 14-17: 11-14 after the command name; clock ticks of 10 ms.
    const rest = f.slice(f.lastIndexOf(')') + 2).split(' ');
    return (Number(rest[11]) + Number(rest[12]) + (children ? Number(rest[13]) + Number(rest[14]) : 0)) / 100;
  } catch {
    return NaN;
  }
}

/** Busy CPU seconds of the whole machine (/proc/stat: user nice system irq softirq steal). */
export function machineBusySeconds(): number {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  return (f[0]! + f[1]! + f[2]! + f[5]! + f[6]! + f[7]!) / 100;
}

/** VmRSS of a process in MB, NaN once it is gone. */
export function rssMb(pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) / 1024 : NaN;
  } catch {
    return NaN;
  }
}

/** The pid of a direct child of this process with that command name (e.g. the swtpm startSwtpm ran), or null. */
export function childPidNamed(comm: string): number | null {
  for (const tid of readdirSync(`/proc/${process.pid}/task`)) {
    let kids: string[];
    try {
      kids = readFileSync(`/proc/${process.pid}/task/${tid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean);
    } catch {
      continue;
    }
    for (const k of kids) {
      try {
        if (readFileSync(`/proc/${k}/comm`, 'utf8').trim() === comm) return Number(k);
      } catch {
        // Gone meanwhile.
      }
    }
  }
  return null;
}

/** A free TCP port on 127.0.0.1 (bound, read, released). */
export function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once('error', rej);
    s.listen(0, '127.0.0.1', () => {
      const p = (s.address() as AddressInfo).port;
      s.close(() => res(p));
    });
  });
}
