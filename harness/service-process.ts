import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

/**
 * Starts a Conveyor service from its TypeScript source as a child process (as `make run`, the
 * integration tests and the benchmarks do) and follows its JSON log lines.
 */
export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

export const ENTRIES = {
  gateway: 'services/gateway/src/main.ts',
  'inference-worker': 'services/inference-worker/src/main.ts',
  monitor: 'services/monitor/src/main.ts',
} as const;
export type ServiceName = keyof typeof ENTRIES;

/** The compiled entry point (`npm run build`), as containers run it. */
export function builtEntry(service: ServiceName): string {
  return ENTRIES[service].replace('/src/', '/dist/').replace(/\.ts$/, '.js');
}

export type LogRecord = Record<string, unknown> & { msg?: string; level?: string };

/** A running service, in a process of its own or in this one (tests): its log records, how to stop it. */
export interface ServiceHandle {
  readonly name: string;
  /** Every log record so far (non-JSON lines are kept as `{ msg: line }`). */
  readonly records: LogRecord[];
  /** Settles with the exit code once it has ended (0 for a service stopped in this process). */
  readonly exited: Promise<number | null>;
  /** Still running: not exited, not stopped. */
  readonly running: boolean;
  waitFor(predicate: (record: LogRecord) => boolean, timeoutMs?: number): Promise<LogRecord>;
  /** Stops it (a process: sends the signal, SIGKILL after `timeoutMs`) and waits for the end. */
  stop(signal?: NodeJS.Signals, timeoutMs?: number): Promise<number | null>;
}

export interface ServiceProcess extends ServiceHandle {
  readonly child: ChildProcess;
}

/**
 * The log records of one service as they arrive, and waiting for one: shared by a spawned process
 * (its stdout and stderr lines) and a service run in this process (its logger's lines).
 */
export class LogFollower {
  readonly records: LogRecord[] = [];
  private readonly watchers = new Set<{ predicate: (r: LogRecord) => boolean; resolve: (r: LogRecord) => void }>();

  constructor(
    readonly name: string,
    private readonly ended: Promise<number | null>,
    private readonly options: {
      keep?: number | undefined;
      onRecord?: ((record: LogRecord, raw: string) => void) | undefined;
    } = {},
  ) {}

  /** One line of output: a JSON record, or any other text kept as `{ msg }`. */
  line(line: string): void {
    if (!line.trim()) return;
    let record: LogRecord;
    try {
      record = JSON.parse(line) as LogRecord;
    } catch {
      record = { msg: line };
    }
    keepRecord(this.records, record, this.options.keep);
    this.options.onRecord?.(record, line);
    for (const w of this.watchers) {
      if (w.predicate(record)) {
        this.watchers.delete(w);
        w.resolve(record);
      }
    }
  }

  waitFor(predicate: (record: LogRecord) => boolean, timeoutMs = 20_000): Promise<LogRecord> {
    const seen = this.records.find(predicate);
    if (seen) return Promise.resolve(seen);
    const tail = (n: number) =>
      this.records
        .slice(-n)
        .map((r) => JSON.stringify(r))
        .join('\n');
    return new Promise((resolve, reject) => {
      const watcher = { predicate, resolve };
      this.watchers.add(watcher);
      const timer = setTimeout(() => {
        this.watchers.delete(watcher);
        reject(new Error(`${this.name}: no matching log line within ${timeoutMs} ms; last lines:\n${tail(15)}`));
      }, timeoutMs);
      void this.ended.then((code) => {
        if (!this.watchers.has(watcher)) return;
        this.watchers.delete(watcher);
        clearTimeout(timer);
        reject(new Error(`${this.name} exited with ${code} before the expected log line; last lines:\n${tail(10)}`));
      });
      watcher.resolve = (r) => {
        clearTimeout(timer);
        resolve(r);
      };
    });
  }
}

/**
 * Appends a record, and with `keep` trims to the last `keep` once twice as many have gathered (so the
 * trimming costs O(1) per line on average).
 */
export function keepRecord(records: LogRecord[], record: LogRecord, keep?: number): void {
  records.push(record);
  if (keep !== undefined && records.length >= keep * 2) records.splice(0, records.length - keep);
}

export function spawnService(
  service: ServiceName,
  env: Record<string, string>,
  options: {
    label?: string;
    onRecord?: (record: LogRecord, raw: string) => void;
    nodeArgs?: string[];
    /** false: discard stdout (benchmarks, where parsing logs would load the measuring process). */
    logs?: boolean;
    /** Run the compiled JavaScript from dist/ (after `npm run build`) instead of the sources. */
    built?: boolean;
    /**
     * In a process group of its own, so a Ctrl-C in the terminal reaches only the parent, which
     * then stops its children in order (`make run`).
     */
    detached?: boolean;
    /**
     * Keep only the last `keep` log records (a long-running `make run` or soak would otherwise hold
     * every line it ever printed); unset keeps them all, which tests that count lines rely on.
     */
    keep?: number;
    /**
     * Start it at this niceness (nice(1), 0–19: every thread it makes inherits it), so that on a
     * shared machine the kernel gives other processes the CPU first: background work such as a
     * replay worker (docs/replay.md measures what it changes).
     */
    nice?: number;
  } = {},
): ServiceProcess {
  // CONVEYOR_PROFILE_DIR=dir: every service writes a V8 CPU profile there when it exits (how the
  // benchmarks' CPU per request was taken apart).
  const profile = process.env.CONVEYOR_PROFILE_DIR ? ['--cpu-prof', `--cpu-prof-dir=${process.env.CONVEYOR_PROFILE_DIR}`] : [];
  const args = options.built
    ? [...(options.nodeArgs ?? []), ...profile, path.join(ROOT, builtEntry(service))]
    : ['--conditions=conveyor-source', '--import', 'tsx', ...(options.nodeArgs ?? []), path.join(ROOT, ENTRIES[service])];
  // nice(1) execs node in place: the child's pid is node's.
  const [file, argv] =
    options.nice === undefined ? [process.execPath, args] : ['nice', ['-n', String(options.nice), process.execPath, ...args]];
  const child = spawn(file, argv, {
    cwd: ROOT,
    env: { ...process.env, ...env },
    stdio: ['ignore', options.logs === false ? 'ignore' : 'pipe', 'pipe'],
    detached: options.detached ?? false,
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const name = options.label ?? service;
  const follower = new LogFollower(name, exited, { keep: options.keep, onRecord: options.onRecord });
  const onLine = (line: string) => follower.line(line);
  if (child.stdout) createInterface({ input: child.stdout }).on('line', onLine);
  createInterface({ input: child.stderr! }).on('line', onLine);

  return {
    name,
    child,
    records: follower.records,
    exited,
    get running() {
      return child.exitCode === null && child.signalCode === null;
    },
    waitFor: (predicate, timeoutMs) => follower.waitFor(predicate, timeoutMs),
    async stop(signal = 'SIGTERM', timeoutMs = 15_000) {
      if (child.exitCode !== null || child.signalCode !== null) return child.exitCode;
      child.kill(signal);
      const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
      const code = await exited;
      clearTimeout(timer);
      return code;
    },
  };
}
