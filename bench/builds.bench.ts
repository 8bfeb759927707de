import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { freePort } from '../harness/free-port.js';
import { startRedis } from '../harness/redis-server.js';
import { ROOT } from '../harness/service-process.js';
import { startBuilt, stopChild } from './lib/build-process.js';
import { drive, median, round3, until } from './lib/drive.js';
import { photoCase } from './lib/photo-cases.js';
import { processCpuMs } from './lib/process-cpu.js';
import { formatBreakdown, medianBreakdown, RedisCommandStats, type RedisBreakdown } from './lib/redis-commandstats.js';

/**
 * The hot path's cost, build against build: the same requests through the compiled gateway and
 * worker of two checkouts (`--before DIR`, e.g. a worktree of an older commit after `npm run build`
 * there; `--after DIR`, this checkout by default), in interleaved rounds on one private Redis, with
 * each build's default settings. Reports CPU per request from /proc (gateway, worker, both, and
 * redis-server) and requests per second, medians of the rounds, and after/before ratios.
 *
 * `--redis-breakdown` adds, per build, Redis's time per request by command and by script (BullMQ's
 * and the project's, named by hashing each checkout's Lua sources) and calls per request, for the
 * gateway's and the worker's connections apart, plus INFO commandstats (commands run inside scripts
 * included): bench/lib/redis-commandstats.ts. It logs every command to Redis's slow log while
 * measuring, which costs Redis some CPU: compare the redis CPU figure only between runs alike.
 *
 *   git worktree add /tmp/before <commit> && (cd /tmp/before && cp -al $PWD/node_modules . && npm run build)
 *   node --conditions=conveyor-source --import tsx bench/builds.bench.ts --before /tmp/before
 *        [--model digits|moderation] [--requests 1500] [--rounds 3] [--concurrency 8] [--redis-breakdown]
 */
const { values } = parseArgs({
  options: {
    before: { type: 'string' },
    after: { type: 'string', default: ROOT },
    model: { type: 'string', default: 'digits' },
    requests: { type: 'string', default: '1500' },
    rounds: { type: 'string', default: '3' },
    concurrency: { type: 'string', default: '8' },
    'redis-breakdown': { type: 'boolean', default: false },
    out: { type: 'string' },
  },
});
if (!values.before) throw new Error('--before DIR: a built checkout to compare with');
const builds = { before: path.resolve(values.before), after: path.resolve(values.after) } as const;
type Build = keyof typeof builds;
const model = values.model;
const requests = Number(values.requests);
const rounds = Number(values.rounds);
const concurrency = Number(values.concurrency);
// digits: a 28×28 PNG; any other model: the bench's first photo (JPEG q90, no ICC profile).
const image =
  model === 'digits' ? readFileSync(path.join(ROOT, 'docs/examples/seven.png')) : (await photoCase('plain'))[0]!.bytes;
const route = model === 'digits' ? '/v1/predict' : `/v1/models/${model}/predict`;

const dir = mkdtempSync(path.join(os.tmpdir(), 'builds-bench-'));
const redis = await startRedis({ dir });
interface Sample {
  gateway: number;
  worker: number;
  redis: number;
  rps: number;
}
const samples: Record<Build, Sample[]> = { before: [], after: [] };
const breakdowns: Record<Build, RedisBreakdown[]> = { before: [], after: [] };
const stats = values['redis-breakdown'] ? new RedisCommandStats(redis.url, [builds.before, builds.after]) : undefined;
try {
  for (let round = 1; round <= rounds; round++) {
    for (const build of round % 2 === 1 ? (['before', 'after'] as const) : (['after', 'before'] as const)) {
      const sample = await measure(build, `bench-${round}-${build}`);
      samples[build].push(sample);
      console.error(`round ${round} ${build}: ${JSON.stringify(sample)}`);
    }
  }
} finally {
  await stats?.close();
  await redis.stop();
  rmSync(dir, { recursive: true, force: true });
}
const summary = (build: Build) => ({
  dir: builds[build],
  gatewayCpuMsPerRequest: round3(median(samples[build].map((s) => s.gateway))),
  workerCpuMsPerRequest: round3(median(samples[build].map((s) => s.worker))),
  totalCpuMsPerRequest: round3(median(samples[build].map((s) => s.gateway + s.worker))),
  redisCpuMsPerRequest: round3(median(samples[build].map((s) => s.redis))),
  requestsPerSecond: Math.round(median(samples[build].map((s) => s.rps))),
});
const before = summary('before');
const after = summary('after');
const redisBreakdown = stats && { before: medianBreakdown(breakdowns.before), after: medianBreakdown(breakdowns.after) };
const report = {
  date: new Date().toISOString(),
  command: `bench/builds.bench.ts --model ${model} --requests ${requests} --rounds ${rounds} --concurrency ${concurrency}${stats ? ' --redis-breakdown' : ''}`,
  machine: { cpus: os.cpus().length, model: os.cpus()[0]?.model },
  before,
  after,
  afterOverBefore: {
    gatewayCpu: round3(after.gatewayCpuMsPerRequest / before.gatewayCpuMsPerRequest),
    workerCpu: round3(after.workerCpuMsPerRequest / before.workerCpuMsPerRequest),
    totalCpu: round3(after.totalCpuMsPerRequest / before.totalCpuMsPerRequest),
    requestsPerSecond: round3(after.requestsPerSecond / before.requestsPerSecond),
  },
  samples,
  ...(redisBreakdown ? { redis: redisBreakdown } : {}),
};
if (redisBreakdown) {
  for (const build of ['before', 'after'] as const) {
    console.error(formatBreakdown(`${build} (${builds[build]}), median of ${rounds} rounds`, redisBreakdown[build]));
  }
}
console.log(JSON.stringify(report, null, 2));
if (values.out) writeFileSync(values.out, `${JSON.stringify(report, null, 2)}\n`);

/** One round: that build's gateway and worker, warmed up, then `requests` requests timed. */
async function measure(build: Build, prefix: string): Promise<Sample> {
  const port = await freePort();
  await stats?.watchScriptLoads();
  const env = { REDIS_URL: redis.url, REDIS_PREFIX: prefix, LOG_LEVEL: 'warn', DEFAULT_MODEL: 'digits', MODELS: model };
  const worker = startBuilt(build, builds[build], 'services/inference-worker/dist/main.js', {
    ...env,
    HEARTBEAT_INTERVAL_MS: '500',
  });
  const gateway = startBuilt(build, builds[build], 'services/gateway/dist/main.js', {
    ...env,
    PORT: String(port),
    HOST: '127.0.0.1',
  });
  const base = `http://127.0.0.1:${port}`;
  try {
    await until(
      `a warm ${model} worker`,
      async () => (await fetch(`${base}/v2/models/${model}/ready`).catch(() => undefined))?.ok === true,
    );
    await drive(`${base}${route}`, image, 300, concurrency); // warm-up: JIT, connections
    const cpu = () => ({
      gateway: processCpuMs(gateway.pid!) ?? NaN,
      worker: processCpuMs(worker.pid!) ?? NaN,
      redis: processCpuMs(redis.pid) ?? NaN,
    });
    await stats?.begin();
    const first = cpu();
    const started = performance.now();
    await drive(`${base}${route}`, image, requests, concurrency);
    const seconds = (performance.now() - started) / 1000;
    const last = cpu();
    if (stats) breakdowns[build].push(await stats.end(requests, { gateway: gateway.pid!, worker: worker.pid! }));
    return {
      gateway: (last.gateway - first.gateway) / requests,
      worker: (last.worker - first.worker) / requests,
      redis: (last.redis - first.redis) / requests,
      rps: requests / seconds,
    };
  } finally {
    await Promise.all([stopChild(gateway), stopChild(worker)]);
  }
}
