/**
 * What one job leaves in Redis, measured through the real system: a private redis-server (with
 * `make run`'s AOF), a gateway, a digits worker and a monitor, `REQUESTS` synchronous digit
 * predictions at `CONCURRENCY`, then, once the monitor has read every event: `INFO memory`'s growth
 * per job and `MEMORY USAGE` per key family (job ids folded into `<id>`), with each family's TTL.
 *
 *   npm run redis-memory                      # REQUESTS=5000 CONCURRENCY=16
 *   REQUESTS=20000 npm run redis-memory
 *
 * Prints one JSON document (the figures of docs/redis-memory.md). Not a test: it loads the machine.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Redis } from 'ioredis';
import { startRedis } from '../harness/redis-server.js';
import { spawnService, type ServiceProcess } from '../harness/service-process.js';
import { multipartBody, predictClient } from '../harness/load-client.js';
import { digitPng, heldOutDigits } from '../test/support/images.js';

const REQUESTS = Number(process.env.REQUESTS ?? 5000);
const CONCURRENCY = Number(process.env.CONCURRENCY ?? 16);
const PREFIX = 'conveyor';

const UUID = /[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/g;

interface Family {
  keys: number;
  bytes: number;
  /** TTLs seen (s; -1 none), min and max. */
  ttlMin: number;
  ttlMax: number;
}

async function families(redis: Redis): Promise<Record<string, Family>> {
  const out: Record<string, Family> = {};
  let cursor = '0';
  do {
    const [next, batch] = await redis.scan(cursor, 'COUNT', 1000);
    cursor = next;
    const pipeline = redis.pipeline();
    for (const key of batch) pipeline.memory('USAGE', key, 'SAMPLES', 0).ttl(key);
    const replies = (await pipeline.exec()) ?? [];
    batch.forEach((key, i) => {
      const bytes = Number(replies[2 * i]?.[1] ?? 0);
      const ttl = Number(replies[2 * i + 1]?.[1] ?? -1);
      const name = key.replace(UUID, '<id>').replace(/\d{10,}-\d+/g, '<n>');
      const f = (out[name] ??= { keys: 0, bytes: 0, ttlMin: Infinity, ttlMax: -Infinity });
      f.keys++;
      f.bytes += bytes;
      f.ttlMin = Math.min(f.ttlMin, ttl);
      f.ttlMax = Math.max(f.ttlMax, ttl);
    });
  } while (cursor !== '0');
  return out;
}

function info(text: string, field: string): number {
  const line = text.split(/\r?\n/).find((l) => l.startsWith(`${field}:`));
  return Number(line?.slice(field.length + 1) ?? 0);
}

async function main(): Promise<void> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'conveyor-redis-memory-'));
  const server = await startRedis({ dir, persist: true });
  const redis = new Redis(server.url);
  const env = { REDIS_URL: server.url, REDIS_PREFIX: PREFIX, LOG_LEVEL: 'warn' };
  const procs: ServiceProcess[] = [];
  try {
    const worker = spawnService('inference-worker', { ...env, LOG_LEVEL: 'info' }, { label: 'worker' });
    procs.push(worker);
    const monitor = spawnService('monitor', { ...env, LOG_LEVEL: 'info', MONITOR_PORT: '0', REPORT_INTERVAL_MS: '0' });
    procs.push(monitor);
    const gateway = spawnService('gateway', { ...env, LOG_LEVEL: 'info', PORT: '0', HOST: '127.0.0.1' });
    procs.push(gateway);
    const [listening] = await Promise.all([
      gateway.waitFor((r) => r.msg === 'gateway listening', 60_000),
      worker.waitFor((r) => r.msg === 'worker ready', 60_000),
      monitor.waitFor((r) => r.msg === 'monitor listening', 60_000),
    ]);
    const client = predictClient(Number(listening.port), CONCURRENCY);
    const { dataset, split } = await heldOutDigits();
    const bodies = await Promise.all(
      split.test.slice(0, 200).map(async (i) => multipartBody(await digitPng(dataset.samples[i]!.pixels))),
    );
    const send = async (count: number) => {
      let next = 0;
      const statuses: Record<string, number> = {};
      await Promise.all(
        Array.from({ length: CONCURRENCY }, async () => {
          while (next < count) {
            const { body, type } = bodies[next++ % bodies.length]!;
            const status = await client.send(body, type);
            statuses[status] = (statuses[status] ?? 0) + 1;
          }
        }),
      );
      return statuses;
    };
    const settled = async () => {
      // The monitor has read and acknowledged every prediction event.
      for (;;) {
        const groups = (await redis.xinfo('GROUPS', `${PREFIX}:stream:predictions`).catch(() => [])) as unknown[][];
        const group = groups.map((g) => Object.fromEntries(chunk(g))).find((g) => g.name === 'monitor');
        if (group && Number(group.pending) === 0 && Number(group.lag) === 0) return;
        await new Promise((r) => setTimeout(r, 200));
      }
    };
    await send(200); // warm-up: streams, groups, the model's keys exist before the baseline
    await settled();
    const before = await redis.info();
    const startedAt = Date.now();
    const statuses = await send(REQUESTS);
    const seconds = (Date.now() - startedAt) / 1000;
    await settled();
    const after = await redis.info();
    const usedGrowth = info(after, 'used_memory') - info(before, 'used_memory');
    const aofGrowth = info(after, 'aof_current_size') - info(before, 'aof_current_size');
    const byFamily = await families(redis);
    const perJob = Object.fromEntries(
      Object.entries(byFamily)
        .filter(([, f]) => f.bytes > 0)
        .sort(([, a], [, b]) => b.bytes - a.bytes)
        .map(([name, f]) => [
          name,
          {
            keys: f.keys,
            bytes: f.bytes,
            bytesPerJob: Math.round((f.bytes / (REQUESTS + 200)) * 10) / 10,
            ttlSeconds: f.ttlMin === f.ttlMax ? f.ttlMax : [f.ttlMin, f.ttlMax],
          },
        ]),
    );
    client.close();
    process.stdout.write(
      `${JSON.stringify(
        {
          at: new Date().toISOString(),
          requests: REQUESTS,
          concurrency: CONCURRENCY,
          statuses,
          requestsPerSecond: Math.round(REQUESTS / seconds),
          usedMemoryGrowthBytes: usedGrowth,
          usedMemoryBytesPerJob: Math.round(usedGrowth / REQUESTS),
          aofBytesPerJob: Math.round(aofGrowth / REQUESTS),
          usedMemory: info(after, 'used_memory'),
          keyFamilies: perJob,
        },
        null,
        2,
      )}\n`,
    );
  } finally {
    await Promise.all(procs.map((p) => p.stop('SIGTERM')));
    redis.disconnect();
    await server.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

function chunk(list: unknown[]): [string, unknown][] {
  const pairs: [string, unknown][] = [];
  for (let i = 0; i + 1 < list.length; i += 2) pairs.push([String(list[i]), list[i + 1]]);
  return pairs;
}

await main();
