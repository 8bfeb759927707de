import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import { Redis } from 'ioredis';
import { redisKeys } from '@conveyor/shared/contract/redis-keys';
import { startRedis, type LocalRedis } from '../../harness/redis-server.js';
import type { ServiceProcess } from '../../harness/service-process.js';
import { digitPng, heldOutDigits } from '../support/images.js';
import { predict, request } from '../support/http.js';
import { randomPrefix } from '../support/redis.js';
import { quietFor, until } from '../support/wait.js';
import { dumpLogsOnFailure, spawnGateway, spawnMonitor, startWorker, stopAll } from '../support/services.js';

const logged = (proc: ServiceProcess, msg: string) => proc.records.filter((r) => r.msg === msg);

/**
 * Redis goes away and comes back empty (a restart without persistence, the worst case): every
 * process stays up and says so in a few structured lines, the gateway answers 503 problems instead
 * of hanging, everything recovers on its own, and a shutdown during the outage is prompt. The suite
 * runs its own redis-server, since it has to stop it.
 */
describe('Redis outage and recovery', function () {
  this.timeout(90_000);
  const prefix = randomPrefix('outage');
  const keys = redisKeys(prefix);
  let dir: string;
  let redis: LocalRedis;
  let gateway: Awaited<ReturnType<typeof spawnGateway>>;
  let worker: ServiceProcess & { id: string };
  let monitor: ServiceProcess & { url: string };
  let seven: Buffer;
  let services: ServiceProcess[];

  before(async () => {
    const { dataset, split } = await heldOutDigits();
    seven = await digitPng(dataset.samples[split.test.find((i) => dataset.samples[i]!.label === 7)!]!.pixels);
    dir = mkdtempSync(path.join(os.tmpdir(), 'conveyor-outage-'));
    redis = await startRedis({ dir });
    const env = { REDIS_URL: redis.url };
    [gateway, worker, monitor] = await Promise.all([
      // Processes: the suite stops them during the outage and checks how they end.
      spawnGateway(prefix, env),
      startWorker(prefix, env),
      spawnMonitor(prefix, { ...env, WINDOW_SIZE: '50', MIN_WINDOW: '10' }),
    ]);
    services = [gateway, worker, monitor];
  });
  afterEach(function () {
    dumpLogsOnFailure(this, gateway, worker, monitor);
  });
  after(async () => {
    await stopAll(gateway, worker, monitor);
    await redis.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('predicts before the outage', async () => {
    expect((await predict(gateway.url, seven)).status).to.equal(200);
  });

  it('answers 503 problems while Redis is down, with every process up and a few structured warnings', async () => {
    await redis.stop();
    await until('/ready to fail', async () => (await request(`${gateway.url}/ready`)).status === 503);
    const reply = await predict(gateway.url, seven);
    expect(reply.status).to.equal(503);
    expect(reply.headers.get('content-type')).to.match(/^application\/problem\+json/);
    expect(reply.headers.get('retry-after')).to.match(/^\d+$/);
    expect(reply.body).to.include({ status: 503, type: '/problems/not-ready' });
    expect(reply.body.requestId).to.be.a('string');
    await gateway.waitFor((r) => r.msg === 'request' && r.requestId === reply.body.requestId && r.status === 503);
    expect(
      gateway.records.filter((r) => r.msg === 'unhandled error'),
      'not an unhandled error',
    ).to.deep.equal([]);
    // Several reconnect attempts a second: each connection warns once, not once per attempt. Every
    // process has warned (waited for), and then no connection warns again while it keeps retrying:
    // an absence, watched for 4 s (a dozen and more reconnect attempts per connection).
    await until('every process to warn about the outage', () =>
      Promise.resolve(services.every((proc) => logged(proc, 'redis connection error').length > 0)),
    );
    await quietFor(4000, 'second warning from one Redis connection', () =>
      services.some((proc) => {
        const warnings = logged(proc, 'redis connection error');
        return warnings.length > new Set(warnings.map((r) => r.redisConnection)).size;
      }),
    );
    for (const proc of services) {
      expect(proc.child.exitCode, `${proc.name} still running`).to.equal(null);
      expect(
        proc.records.filter((r) => String(r.msg).includes('Unhandled error event')),
        `${proc.name}: no unhandled ioredis errors`,
      ).to.deep.equal([]);
      const warnings = logged(proc, 'redis connection error');
      const connections = new Set(warnings.map((r) => r.redisConnection));
      expect(warnings.length, `${proc.name}: warned about the outage`).to.be.greaterThan(0);
      expect(warnings.length, `${proc.name}: one warning per connection`).to.equal(connections.size);
    }
  });

  it('recovers on its own when Redis returns empty: ready, predicting, monitored', async () => {
    redis = await startRedis({ dir, port: redis.port });
    await until('/ready to pass', async () => (await request(`${gateway.url}/ready`)).status === 200);
    const reply = await predict(gateway.url, seven);
    expect(reply.status).to.equal(200);
    expect(reply.body.prediction).to.include({ label: '7' });
    // The restart lost the monitor's consumer group with the data; it makes a new one and reads on.
    const probe = new Redis(redis.url);
    try {
      await until('the monitor to read the new event', async () => {
        const groups = (await probe.xinfo('GROUPS', keys.predictions).catch(() => [])) as unknown[][];
        const group = groups
          .map((g) => Object.fromEntries(chunk(g)) as Record<string, unknown>)
          .find((g) => g.name === 'monitor');
        const [last] = await probe.xrevrange(keys.predictions, '+', '-', 'COUNT', 1);
        return group !== undefined && last !== undefined && group['last-delivered-id'] === last[0] && group.pending === 0;
      });
    } finally {
      probe.disconnect();
    }
    // Log lines are flushed every 250 ms: wait for them rather than read them at once.
    await monitor.waitFor((r) => r.msg === 'consumer group missing; creating it again', 5000);
    for (const proc of services) await proc.waitFor((r) => r.msg === 'redis connection restored', 5000);
  });

  it('shuts down promptly and cleanly while Redis is down', async () => {
    await redis.stop();
    await until('/ready to fail', async () => (await request(`${gateway.url}/ready`)).status === 503);
    const timings = await Promise.all(
      services.map(async (proc) => {
        const started = performance.now();
        const code = await proc.stop('SIGTERM', 20_000);
        return { name: proc.name, code, ms: performance.now() - started };
      }),
    );
    for (const t of timings) {
      expect(t.code, `${t.name} exit code`).to.equal(0);
      expect(t.ms, `${t.name} shutdown time`).to.be.lessThan(5000);
    }
  });
});

function chunk(flat: unknown[]): [unknown, unknown][] {
  const pairs: [unknown, unknown][] = [];
  for (let i = 0; i + 1 < flat.length; i += 2) pairs.push([flat[i], flat[i + 1]]);
  return pairs;
}
