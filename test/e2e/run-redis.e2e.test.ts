import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import { Redis } from 'ioredis';
import { freePort } from '../../harness/free-port.js';
import { startRedis, type LocalRedis } from '../../harness/redis-server.js';
import { randomPrefix, testRedisUrl } from '../support/redis.js';
import { runScript, type RunScript } from '../support/run-script.js';

/**
 * `make run` (scripts/run.ts) and the Redis it uses: a port someone else already listens on (a
 * system Redis after `apt-get install redis-server`, any other process) is refused with a message
 * naming it, never silently used; the Redis in use is printed. The script runs as `make run` runs
 * it, with the built services (`npm run build`); where it gets as far as starting them, it is
 * stopped after its first line, and every process it started is stopped too.
 */
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
