import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';

/**
 * CPU time of processes and whole process trees from /proc (Linux only), for the benchmarks'
 * "CPU milliseconds per request" of every process: a server that forks workers (uvicorn
 * --workers, BentoML's arbiter) is counted as the sum over its tree.
 */
const TICK_MS = (() => {
  try {
    return 1000 / Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim());
  } catch {
    return 10;
  }
})();

interface ProcStat {
  /** utime + stime of the process, plus cutime + cstime of its children that exited and were reaped. */
  readonly cpuMs: number;
}

function stat(pid: number): ProcStat | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined; // exited
  }
  // Fields after "(comm) ": state is [0], utime [11], stime [12], cutime [13], cstime [14].
  const fields = text.slice(text.lastIndexOf(') ') + 2).split(' ');
  const ticks = [11, 12, 13, 14].reduce((sum, i) => sum + Number(fields[i]), 0);
  return { cpuMs: ticks * TICK_MS };
}

/** CPU ms of one process (its own threads, and any children it reaped); undefined once it is gone. */
export function processCpuMs(pid: number): number | undefined {
  return stat(pid)?.cpuMs;
}

/** The process and all its live descendants, parents before children. */
export function processTree(pid: number): number[] {
  const tree: number[] = [];
  const queue = [pid];
  while (queue.length > 0) {
    const p = queue.shift()!;
    if (stat(p) === undefined) continue;
    tree.push(p);
    let tasks: string[];
    try {
      tasks = readdirSync(`/proc/${p}/task`);
    } catch {
      continue;
    }
    for (const task of tasks) {
      let children: string;
      try {
        children = readFileSync(`/proc/${p}/task/${task}/children`, 'utf8');
      } catch {
        continue;
      }
      for (const child of children.trim().split(/\s+/)) if (child) queue.push(Number(child));
    }
  }
  return tree;
}

/** This process's own CPU ms (the load generator, or the direct in-process system). */
export function ownCpuMs(): number {
  const { user, system } = process.cpuUsage();
  return (user + system) / 1000;
}
