import { spawn, type ChildProcess } from 'node:child_process';
import { ROOT } from '../../harness/service-process.js';

/**
 * `make run`'s script as a user starts it: `scripts/run.ts` itself (RUN_TS), or `make run` with its
 * build first (MAKE_RUN), with its output kept line by line. The services it starts log JSON lines,
 * each with the service's pid, prefixed `[gateway]`, `[worker]`, …
 */
export const RUN_TS = [process.execPath, '--conditions=conveyor-source', '--import', 'tsx', 'scripts/run.ts'] as const;
export const MAKE_RUN = ['make', '--no-print-directory', 'run'] as const;

export interface RunScript {
  readonly child: ChildProcess;
  readonly stdout: string[];
  readonly stderr: string[];
  readonly exited: Promise<number | null>;
  waitForLine(pattern: RegExp, timeoutMs: number): Promise<string>;
  /** SIGTERM, then SIGKILL to it and to every service pid it logged, so nothing outlives the test. */
  stop(): Promise<void>;
}

export function runScript(env: Record<string, string>, command: readonly string[] = RUN_TS): RunScript {
  const { REDIS_URL: _inherited, ...parentEnv } = process.env;
  const child = spawn(command[0]!, command.slice(1), {
    cwd: ROOT,
    // No terminal: plain JSON log lines, each with the service's pid.
    env: { ...parentEnv, LOG_LEVEL: 'info', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
    // A group of its own: `make run` is make and, under it, run.ts; a stop reaches both.
    detached: true,
  });
  const stdout: string[] = [];
  const stderr: string[] = [];
  const waiters = new Set<() => void>();
  const collect = (into: string[]) => (chunk: Buffer) => {
    into.push(...chunk.toString().split('\n').filter(Boolean));
    for (const wake of waiters) wake();
  };
  child.stdout.on('data', collect(stdout));
  child.stderr.on('data', collect(stderr));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const all = () => [...stdout, ...stderr];
  return {
    child,
    stdout,
    stderr,
    exited,
    waitForLine(pattern, timeoutMs) {
      return new Promise((resolve, reject) => {
        const check = () => {
          const line = all().find((l) => pattern.test(l));
          if (line === undefined) return;
          waiters.delete(check);
          clearTimeout(timer);
          resolve(line);
        };
        const timer = setTimeout(() => {
          waiters.delete(check);
          reject(new Error(`no line matching ${String(pattern)} within ${timeoutMs} ms:\n${all().join('\n')}`));
        }, timeoutMs);
        waiters.add(check);
        check();
      });
    },
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        signalGroup(child, 'SIGTERM');
        const killer = setTimeout(() => signalGroup(child, 'SIGKILL'), 10_000);
        await exited;
        clearTimeout(killer);
      }
      // The services run in process groups of their own (detached): the script stops them on
      // SIGTERM, this is for a script that could not.
      const pids = new Set(all().flatMap((l) => [...l.matchAll(/"pid":(\d+)/g)].map((m) => Number(m[1]))));
      for (const pid of pids) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // Already gone, as it should be.
        }
      }
    },
  };
}

function signalGroup(child: ChildProcess, signal: NodeJS.Signals): void {
  try {
    process.kill(-child.pid!, signal);
  } catch {
    child.kill(signal);
  }
}
