import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { Redis } from 'ioredis';
import { redisKeys } from '@conveyor/shared/contract/redis-keys';
import { startRedis } from '../harness/redis-server.js';
import { ROOT } from '../harness/service-process.js';
import { IdempotencyStore, requestFingerprint } from '../services/gateway/src/jobs/idempotency.js';

/**
 * What an Idempotency-Key adds to a predict request, measured on the pieces themselves (no load
 * test): the fingerprint (SHA-256 of the image), the claim (SET NX PX GET) and the confirm (a
 * compare-and-set script), against a private redis-server. Reported as CPU, not wall time: the
 * gateway's CPU per request (process.cpuUsage), Redis's own per command (INFO commandstats), and
 * round trips. A plain GET per request is the baseline of one round trip.
 *
 *   node --conditions=conveyor-source --import tsx bench/idempotency.bench.ts [--requests 5000]
 */
const { values } = parseArgs({ options: { requests: { type: 'string', default: '5000' } } });
const n = Number(values.requests);
const dir = mkdtempSync(path.join(os.tmpdir(), 'idem-bench-'));
const server = await startRedis({ dir });
const redis = new Redis(server.url);
try {
  const keys = redisKeys('bench');
  const store = new IdempotencyStore(redis, keys, { ttlSeconds: 86_400, leaseMs: 35_000, keysPerClient: 100_000 });

  const cpuPer = async (label: string, task: (i: number) => Promise<unknown>) => {
    for (let i = 0; i < 200; i++) await task(-1 - i); // warm-up
    await redis.config('RESETSTAT');
    const redisBefore = redisCpuUs(await redis.info('cpu'));
    const start = process.cpuUsage();
    const t0 = performance.now();
    for (let i = 0; i < n; i++) await task(i);
    const wall = performance.now() - t0;
    const cpu = process.cpuUsage(start);
    const redisCpu = redisCpuUs(await redis.info('cpu')) - redisBefore;
    // Commands a script runs are counted too (under their own names): calls, not time, are read here.
    const stats = parseCommandStats(await redis.info('commandstats'));
    return {
      label,
      gatewayCpuUsPerRequest: round((cpu.user + cpu.system) / n),
      wallUsPerRequest: round((wall * 1000) / n),
      // The server process's CPU (its event loop, networking included), per request.
      redisCpuUsPerRequest: round(redisCpu / n),
      redisCommands: Object.fromEntries(
        Object.entries(stats).map(([cmd, s]) => [cmd, { calls: s.calls, usecPerCall: s.usecPerCall }]),
      ),
    };
  };

  const baseline = await cpuPer('baseline: one GET (one round trip)', () => redis.get('bench:nothing'));
  const withKey = await cpuPer('claim + confirm (a new key)', async () => {
    const claim = await store.claim('ip:127.0.0.1', randomUUID(), 'x'.repeat(43), randomUUID());
    if (claim.kind === 'claimed') await claim.lease.confirm();
  });
  const replayKey = randomUUID();
  await store
    .claim('ip:127.0.0.1', replayKey, 'x'.repeat(43), randomUUID())
    .then((c) => c.kind === 'claimed' && c.lease.confirm());
  const replay = await cpuPer('claim of a used key (a replay)', () =>
    store.claim('ip:127.0.0.1', replayKey, 'x'.repeat(43), randomUUID()),
  );

  const record = (await redis.keys('bench:idempotency:*'))[0]!;
  const bytesPerRecord = await redis.memory('USAGE', record);

  const hashCost = (bytes: Buffer) => {
    const reps = Math.max(20, Math.floor(50_000_000 / Math.max(bytes.length, 1) / 10));
    const start = process.cpuUsage();
    for (let i = 0; i < reps; i++) requestFingerprint({ model: 'digits', input: { kind: 'upload', bytes } });
    const cpu = process.cpuUsage(start);
    return round((cpu.user + cpu.system) / reps);
  };
  const seven = readFileSync(path.join(ROOT, 'docs/examples/seven.png'));
  const fingerprintUs = {
    [`seven.png (${seven.length} B)`]: hashCost(seven),
    '50 KB photo': hashCost(randomBytes(50 * 1024)),
    '3 MiB (MAX_UPLOAD_BYTES)': hashCost(randomBytes(3 * 1024 * 1024)),
  };
  console.log(
    JSON.stringify(
      { date: new Date().toISOString(), requests: n, runs: [baseline, withKey, replay], bytesPerRecord, fingerprintUs },
      null,
      2,
    ),
  );
} finally {
  redis.disconnect();
  await server.stop();
  rmSync(dir, { recursive: true, force: true });
}

function parseCommandStats(info: string): Record<string, { calls: number; usec: number; usecPerCall: number }> {
  const out: Record<string, { calls: number; usec: number; usecPerCall: number }> = {};
  for (const line of info.split('\n')) {
    const m = /^cmdstat_([a-z|]+):calls=(\d+),usec=(\d+),usec_per_call=([\d.]+)/.exec(line.trim());
    if (m && m[1] !== 'config' && m[1] !== 'info')
      out[m[1]!] = { calls: Number(m[2]), usec: Number(m[3]), usecPerCall: Number(m[4]) };
  }
  return out;
}

function redisCpuUs(info: string): number {
  const read = (field: string) => Number(new RegExp(`^${field}:([\\d.]+)`, 'm').exec(info)?.[1] ?? NaN);
  return (read('used_cpu_user') + read('used_cpu_sys')) * 1e6;
}

function round(x: number): number {
  return Math.round(x * 100) / 100;
}
