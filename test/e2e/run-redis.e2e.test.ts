import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import { Redis } from 'ioredis';
import { freePort } from '../../harness/free-port.js';
import { startRedis, type LocalRedis } from '../../harness/redis-server.js';
import { ROOT } from '../../harness/service-process.js';
import { randomPrefix, testRedisUrl } from '../support/redis.js';

/**
 * `make run` (scripts/run.ts) and the Redis it uses: a port someone else already listens on (a
 * system Redis after `apt-get install redis-server`, any other process) is refused with a message
 * naming it, never silently used; the Redis in use is printed. The script runs as `make run` runs
 * it, with the built services (`npm run build`); where it gets as far as starting them, it is
 * stopped after its first line, and every process it started is stopped too.
 */
interface RunScript {
  readonly child: ChildProcess;
  readonly stdout: string[];
  readonly stderr: string[];
  readonly exited: Promise<number | null>;
  waitForLine(pattern: RegExp, timeoutMs: number): Promise<string>;
  /** SIGTERM, then SIGKILL to it and to every service pid it logged, so nothing outlives the test. */
  stop(): Promise<void>;
}

function runScript(env: Record<string, string>): RunScript {
  const { REDIS_URL: _inherited, ...parentEnv } = process.env;
  const child = spawn(process.execPath, ['--conditions=conveyor-source', '--import', 'tsx', 'scripts/run.ts'], {
    cwd: ROOT,
    // No terminal: plain JSON log lines, each with the service's pid.
    env: { ...parentEnv, LOG_LEVEL: 'info', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
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
        child.kill('SIGTERM');
        const killer = setTimeout(() => child.kill('SIGKILL'), 10_000);
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

async function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

describe('make run and the Redis port', function () {
  this.timeout(20_000);
  let run: RunScript | undefined;

  afterEach(async () => {
    await run?.stop();
    run = undefined;
  });

  describe('a port another process listens on', () => {
    const sockets = new Set<net.Socket>();
    let dummy: net.Server;
    let port: number;
    before(async () => {
      port = await freePort();
      // Accepts and never answers: anything but a Redis.
      dummy = net.createServer((socket) => {
        sockets.add(socket);
        socket.on('error', () => undefined).on('close', () => sockets.delete(socket));
      });
      await new Promise<void>((resolve) => dummy.listen(port, '127.0.0.1', resolve));
    });
    after(async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => dummy.close(() => resolve()));
    });

    it('is refused, naming the port and the process and how to proceed, and nothing is started', async () => {
      run = runScript({ REDIS_PORT: String(port) });
      const code = await withTimeout(run.exited, 10_000, 'run.ts to exit');
      const err = run.stderr.join('\n');
      expect(code, err).to.equal(1);
      expect(err).to.include(`Redis port ${port} is already in use by`);
      if (process.platform === 'linux') expect(err).to.include(`(pid ${process.pid}), not a Redis`);
      expect(err).to.match(/REDIS_PORT=\d+ make run/);
      expect(err, 'not a Redis: no REDIS_URL hint').not.to.include('REDIS_URL=');
      expect(run.stdout.join('\n')).not.to.match(/started by make run|\[(gateway|worker|monitor)\]/);
    });
  });

  describe('a port a Redis it did not start listens on (a system Redis)', () => {
    let dir: string;
    let other: LocalRedis;
    before(async () => {
      dir = mkdtempSync(path.join(os.tmpdir(), 'conveyor-run-redis-'));
      other = await startRedis({ dir });
    });
    after(async () => {
      await other.stop();
      rmSync(dir, { recursive: true, force: true });
    });

    it('is refused with the REDIS_URL and REDIS_PORT ways out, and that Redis is left untouched', async () => {
      run = runScript({ REDIS_PORT: String(other.port) });
      const code = await withTimeout(run.exited, 10_000, 'run.ts to exit');
      const err = run.stderr.join('\n');
      expect(code, err).to.equal(1);
      expect(err).to.include(`Redis port ${other.port} is already in use by redis-server`);
      expect(err).to.include(`pid ${other.pid}`);
      expect(err).to.include(`REDIS_URL=redis://127.0.0.1:${other.port} make run`);
      expect(err).to.match(/REDIS_PORT=\d+ make run/);
      const client = new Redis(other.url, { maxRetriesPerRequest: 1 });
      try {
        expect(await client.dbsize(), 'no service wrote to it').to.equal(0);
      } finally {
        client.disconnect();
      }
    });
  });

  it('says which Redis it uses when REDIS_URL is set, and that it did not start it', async () => {
    run = runScript({
      REDIS_URL: testRedisUrl(),
      REDIS_PREFIX: randomPrefix('run'),
      PORT: '0',
      HOST: '127.0.0.1',
      MONITOR_PORT: '0',
      MONITOR_HOST: '127.0.0.1',
    });
    const line = await run.waitForLine(/^\[run\] Redis: /, 10_000);
    expect(line).to.include(new URL(testRedisUrl()).host);
    expect(line).to.include('from REDIS_URL (not started by make run');
    await run.stop();
    expect(run.child.signalCode, 'stopped by its own SIGTERM handler, not killed').to.equal(null);
  });
});
