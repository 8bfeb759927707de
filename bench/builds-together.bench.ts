import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { Redis } from 'ioredis';
import { freePort } from '../harness/free-port.js';
import { startRedis, type LocalRedis } from '../harness/redis-server.js';
import { ROOT } from '../harness/service-process.js';
import { startBuilt, stopChild } from './lib/build-process.js';
import { drive, median, round3, until } from './lib/drive.js';
import { photoCase } from './lib/photo-cases.js';
import { processCpuMs } from './lib/process-cpu.js';

/**
 * Two builds' worker CPU per request, served at the same time: each build gets its own Redis, its
 * compiled gateway and one worker, and both are driven with the same load in parallel, so a shared
 * machine's changing load hits both alike (sequential rounds, as in builds.bench.ts, moved a worker's
 * CPU per request by ±15 % from round to round here, more than the changes being measured). Reports
 * per round and as medians: worker and gateway CPU per request from /proc, and Redis's commands
 * (commandstats: script-internal calls included) and bytes received per request on each side.
 *
 *   node --conditions=conveyor-source --import tsx bench/builds-together.bench.ts --a /work/main [--b .]
 *        [--model digits|moderation] [--requests 2000] [--rounds 4] [--concurrency 8]
 *        [--env-a KEY=VALUE …] [--env-b KEY=VALUE …] [--out file.json]
 *
 * `--a . --b . --env-b INFERENCE_THREAD=false` compares two settings of one build.
 */
const { values } = parseArgs({
  options: {
    a: { type: 'string' },
    b: { type: 'string', default: ROOT },
    model: { type: 'string', default: 'digits' },
    requests: { type: 'string', default: '2000' },
    rounds: { type: 'string', default: '4' },
    concurrency: { type: 'string', default: '8' },
    'env-a': { type: 'string', multiple: true, default: [] },
    'env-b': { type: 'string', multiple: true, default: [] },
    out: { type: 'string' },
  },
});
if (!values.a) throw new Error('--a DIR: a built checkout to compare with');
type Side = 'a' | 'b';
const sides: Record<Side, { dir: string; env: Record<string, string> }> = {
  a: { dir: path.resolve(values.a), env: envOf(values['env-a']) },
  b: { dir: path.resolve(values.b), env: envOf(values['env-b']) },
};
const model = values.model;
const requests = Number(values.requests);
const rounds = Number(values.rounds);
const concurrency = Number(values.concurrency);
const image =
  model === 'digits' ? readFileSync(path.join(ROOT, 'docs/examples/seven.png')) : (await photoCase('plain'))[0]!.bytes;
const route = model === 'digits' ? '/v1/predict' : `/v1/models/${model}/predict`;

interface Sample {
  worker: number;
  gateway: number;
  redis: Record<string, number>;
}
const samples: Record<Side, Sample[]> = { a: [], b: [] };
for (let round = 1; round <= rounds; round++) {
  const stacks = await Promise.all((['a', 'b'] as const).map((side) => stack(side, `together-${round}`)));
  try {
    await Promise.all(
      stacks.map((s) =>
        until(
          `a warm ${model} worker (${s.side})`,
          async () => (await fetch(`${s.base}/v2/models/${model}/ready`).catch(() => undefined))?.ok === true,
        ),
      ),
    );
    await Promise.all(stacks.map((s) => drive(`${s.base}${route}`, image, 300, concurrency))); // warm-up
    const first = await Promise.all(stacks.map((s) => s.reading()));
    await Promise.all(stacks.map((s) => drive(`${s.base}${route}`, image, requests, concurrency)));
    const last = await Promise.all(stacks.map((s) => s.reading()));
    stacks.forEach((s, i) => {
      const [before, after] = [first[i]!, last[i]!];
      const redis: Record<string, number> = {};
      for (const [name, count] of Object.entries(after.redis)) {
        const perRequest = (count - (before.redis[name] ?? 0)) / requests;
        if (perRequest > 0) redis[name] = Math.round(perRequest * 100) / 100;
      }
      const sample = {
        worker: (after.worker - before.worker) / requests,
        gateway: (after.gateway - before.gateway) / requests,
        redis,
      };
      samples[s.side].push(sample);
      console.error(
        `round ${round} ${s.side}: worker ${round3(sample.worker)} ms, gateway ${round3(sample.gateway)} ms per request`,
      );
    });
  } finally {
    await Promise.all(stacks.map((s) => s.stop()));
  }
}
const summary = (side: Side) => ({
  ...sides[side],
  workerCpuMsPerRequest: round3(median(samples[side].map((s) => s.worker))),
  gatewayCpuMsPerRequest: round3(median(samples[side].map((s) => s.gateway))),
  redisPerRequest: samples[side].at(-1)?.redis,
});
const report = {
  date: new Date().toISOString(),
  command: `bench/builds-together.bench.ts --model ${model} --requests ${requests} --rounds ${rounds} --concurrency ${concurrency}`,
  machine: { cpus: os.cpus().length, model: os.cpus()[0]?.model, loadavg: os.loadavg() },
  a: summary('a'),
  b: summary('b'),
  workerCpuDifferenceMsPerRound: samples.b.map((s, i) => round3(s.worker - samples.a[i]!.worker)),
  samples,
};
console.log(JSON.stringify(report, null, 2));
if (values.out) writeFileSync(values.out, `${JSON.stringify(report, null, 2)}\n`);

function envOf(pairs: readonly string[]): Record<string, string> {
  return Object.fromEntries(pairs.map((pair) => [pair.slice(0, pair.indexOf('=')), pair.slice(pair.indexOf('=') + 1)]));
}

/** One side's private Redis, gateway and worker. */
async function stack(side: Side, prefix: string) {
  const { dir, env: extra } = sides[side];
  const redisDir = mkdtempSync(path.join(os.tmpdir(), `together-${side}-`));
  const redis: LocalRedis = await startRedis({ dir: redisDir });
  const port = await freePort();
  const env = { REDIS_URL: redis.url, REDIS_PREFIX: prefix, LOG_LEVEL: 'warn', DEFAULT_MODEL: 'digits', MODELS: model, ...extra };
  const worker = startBuilt(side, dir, 'services/inference-worker/dist/main.js', { ...env, HEARTBEAT_INTERVAL_MS: '500' });
  const gateway = startBuilt(side, dir, 'services/gateway/dist/main.js', { ...env, PORT: String(port), HOST: '127.0.0.1' });
  const admin = new Redis(redis.url);
  return {
    side,
    base: `http://127.0.0.1:${port}`,
    async reading() {
      const text = `${await admin.info('commandstats')}${await admin.info('stats')}`;
      const counts: Record<string, number> = {};
      for (const m of text.matchAll(/cmdstat_([^:]+):calls=(\d+)/g)) counts[m[1]!] = Number(m[2]);
      counts.net_input_bytes = Number(/total_net_input_bytes:(\d+)/.exec(text)?.[1] ?? NaN);
      return { worker: processCpuMs(worker.pid!) ?? NaN, gateway: processCpuMs(gateway.pid!) ?? NaN, redis: counts };
    },
    async stop() {
      await Promise.all([stopChild(gateway), stopChild(worker)]);
      await admin.quit();
      await redis.stop();
      rmSync(redisDir, { recursive: true, force: true });
    },
  };
}
