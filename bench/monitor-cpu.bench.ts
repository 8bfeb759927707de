import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { Redis } from 'ioredis';
import { redisKeys } from '@conveyor/shared/contract/redis-keys';
import type { PredictionEvent } from '@conveyor/shared/contract/events.contract';
import { loadModel } from '@conveyor/shared/model/runtime';
import { startRedis } from '../harness/redis-server.js';
import { ROOT, spawnService } from '../harness/service-process.js';
import { loadMnist } from '../services/trainer/src/pipeline/ingest.js';
import { predictionEvents } from '../test/support/events.js';
import { processCpuMs } from './lib/process-cpu.js';
import { formatBreakdown, RedisCommandStats } from './lib/redis-commandstats.js';

/**
 * The monitor's CPU per prediction event at a steady rate, as in the full system (where its share
 * of CPU per request includes its idle polling): one compiled monitor (services/monitor/dist, with
 * its defaults but REPORT_INTERVAL_MS=0), events published at `--rate` per second for `--seconds`
 * (in 10 ms batches, as a busy worker pool publishes them), and the monitor's CPU from /proc over
 * the window (until every event is acknowledged), divided by the events. Also its idle CPU per
 * second, with no events at all, over `--idle-seconds`.
 *
 *   npm run build && node --conditions=conveyor-source --import tsx bench/monitor-cpu.bench.ts [--rate 150] [--seconds 20]
 *        [--idle-seconds 10] [--env READ_LINGER_MS=1000 …]
 */
const { values } = parseArgs({
  options: {
    rate: { type: 'string', default: '150' },
    seconds: { type: 'string', default: '20' },
    'idle-seconds': { type: 'string', default: '10' },
    // More of the monitor's settings, KEY=VALUE (e.g. READ_LINGER_MS=1000), repeatable.
    env: { type: 'string', multiple: true, default: [] },
    // Redis's time per event by command and script, and calls per event (bench/lib/redis-commandstats.ts).
    'redis-breakdown': { type: 'boolean', default: false },
  },
});
const rate = Number(values.rate);
const seconds = Number(values.seconds);
const idleSeconds = Number(values['idle-seconds']);

const model = await loadModel(path.join(ROOT, 'models', 'digits'));
const dataset = loadMnist();
const events: PredictionEvent[] = await predictionEvents(
  model,
  dataset.samples.slice(0, 2000).map((s) => s.pixels),
);
await model.close();

const dir = mkdtempSync(path.join(os.tmpdir(), 'monitor-cpu-bench-'));
const redis = await startRedis({ dir });
const client = new Redis(redis.url);
const stats = values['redis-breakdown'] ? new RedisCommandStats(redis.url, [ROOT]) : undefined;
await stats?.watchScriptLoads();
const prefix = 'bench';
const keys = redisKeys(prefix);
const monitor = spawnService(
  'monitor',
  {
    REDIS_URL: redis.url,
    REDIS_PREFIX: prefix,
    MONITOR_PORT: '0',
    LOG_LEVEL: 'info',
    REPORT_INTERVAL_MS: '0',
    REPORT_DIR: path.join(dir, 'reports'),
    ...Object.fromEntries(values.env.map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)])),
  },
  { built: true, label: 'monitor' },
);
try {
  await monitor.waitFor((r) => r.msg === 'monitor listening');
  const cpu = () => processCpuMs(monitor.child.pid!) ?? NaN;
  // Warm-up: a few windows' worth, so the JIT and the group exist before measuring.
  await paced(Math.min(rate * 5, 2000), rate);
  await drained();

  const idleStart = cpu();
  await new Promise((r) => setTimeout(r, idleSeconds * 1000));
  const idleMsPerSecond = (cpu() - idleStart) / idleSeconds;

  const n = Math.round(rate * seconds);
  const start = cpu();
  const startSplit = userSystem(monitor.child.pid!);
  await stats?.begin();
  const started = performance.now();
  await paced(n, rate);
  await drained();
  const elapsed = (performance.now() - started) / 1000;
  const ms = cpu() - start;
  const endSplit = userSystem(monitor.child.pid!);
  if (stats) console.error(formatBreakdown('per event', await stats.end(n, { monitor: monitor.child.pid!, bench: process.pid })));
  console.log(
    JSON.stringify(
      {
        date: new Date().toISOString(),
        command: `bench/monitor-cpu.bench.ts --rate ${rate} --seconds ${seconds} --idle-seconds ${idleSeconds}${values.env.map((kv) => ` --env ${kv}`).join('')}`,
        events: n,
        seconds: Math.round(elapsed * 100) / 100,
        monitorCpuMsPerEvent: Math.round((ms / n) * 10000) / 10000,
        monitorKernelShare:
          Math.round(
            ((endSplit.system - startSplit.system) / (endSplit.user + endSplit.system - startSplit.user - startSplit.system)) *
              100,
          ) / 100,
        monitorIdleCpuMsPerSecond: Math.round(idleMsPerSecond * 100) / 100,
      },
      null,
      2,
    ),
  );
} finally {
  await monitor.stop();
  await stats?.close();
  client.disconnect();
  await redis.stop();
  rmSync(dir, { recursive: true, force: true });
}

/** User and system CPU ticks of a process (/proc/<pid>/stat fields 14 and 15). */
function userSystem(pid: number): { user: number; system: number } {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(') ') + 2).split(' ');
  return { user: Number(fields[11]), system: Number(fields[12]) };
}

/** `n` events at `perSecond`, in batches every 10 ms (their ids and times fresh). */
async function paced(n: number, perSecond: number): Promise<void> {
  const t0 = performance.now();
  let sent = 0;
  while (sent < n) {
    const due = Math.min(n, Math.floor(((performance.now() - t0) / 1000) * perSecond) + 1);
    if (due > sent) {
      const pipeline = client.pipeline();
      for (; sent < due; sent++) {
        const e = events[sent % events.length]!;
        const event = { ...e, jobId: `${e.jobId.slice(0, 24)}${String(sent).padStart(12, '0')}`, at: new Date().toISOString() };
        pipeline.xadd(keys.predictions, '*', 'event', JSON.stringify(event));
      }
      await pipeline.exec();
    }
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Every event published so far acknowledged by the monitor's group. */
async function drained(): Promise<void> {
  for (;;) {
    const groups = (await client.xinfo('GROUPS', keys.predictions)) as unknown[][];
    const group = groups.map((g) => Object.fromEntries(chunks(g)) as Record<string, unknown>).find((g) => g.name === 'monitor');
    const lastId = (await client.xrevrange(keys.predictions, '+', '-', 'COUNT', 1))[0]?.[0] ?? '0-0';
    if (group && group['last-delivered-id'] === lastId && group.pending === 0) return;
    await new Promise((r) => setTimeout(r, 20));
  }
}

function chunks(list: unknown[]): [unknown, unknown][] {
  const out: [unknown, unknown][] = [];
  for (let i = 0; i + 1 < list.length; i += 2) out.push([list[i], list[i + 1]]);
  return out;
}
