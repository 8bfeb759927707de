import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { Agent, request } from 'node:http';
import { JobStore } from '@conveyor/shared/contract/job-store';
import { redisKeys } from '@conveyor/shared/contract/redis-keys';
import { PredictionEvent } from '@conveyor/shared/contract/events.contract';
import { createLogger } from '@conveyor/shared/logger';
import { createRedis, waitForReady } from '@conveyor/shared/redis';
import { ApiKeyStore } from '../services/gateway/src/access/api-keys.js';
import { freePort } from '../harness/free-port.js';
import { multipartBody } from '../harness/load-client.js';
import { startRedis } from '../harness/redis-server.js';
import { ROOT, spawnService, type ServiceProcess } from '../harness/service-process.js';

/**
 * Fairness between tenants, measured (docs/fairness.md): a private Redis, one gateway with API keys
 * required and two digits workers (from source), run twice — FAIR_QUEUING=false (first come, first
 * served: what the code did before fair queuing) and FAIR_QUEUING=true:
 *
 *   polite alone   a polite key sends `--polite` async jobs at `--rate`/s; p50/p95 of their
 *                  accepted → result time (the result record's timings.totalMs)
 *   with a flood   the same, while another key floods `--flood` async jobs as fast as it can
 *   shares         keys of weight 3, 2 and 1 each queue `--backlog` jobs with no worker running;
 *                  then two workers start, and the completions are counted while all three still
 *                  have jobs waiting (until the first runs dry), in the order the results were committed
 *
 *   node --conditions=conveyor-source --import tsx loadtests/fairness.ts [--flood 10000] [--polite 200]
 *        [--rate 20] [--backlog 1500] [--modes fifo,fair]
 *
 * MAX_QUEUE_DEPTH is raised and FAIR_TENANT_SHARE set to 1 so the whole flood is queued: what is
 * measured is the order of service, not the refusal of the flood's excess.
 */
const { values } = parseArgs({
  options: {
    flood: { type: 'string', default: '10000' },
    polite: { type: 'string', default: '200' },
    rate: { type: 'string', default: '20' },
    backlog: { type: 'string', default: '1500' },
    modes: { type: 'string', default: 'fifo,fair' },
  },
});
const FLOOD = Number(values.flood);
const POLITE = Number(values.polite);
const RATE = Number(values.rate);
const BACKLOG = Number(values.backlog);
const image = multipartBody(readFileSync(path.join(ROOT, 'docs/examples/seven.png')));

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function client(port: number, maxSockets: number) {
  const agent = new Agent({ keepAlive: true, maxSockets });
  return {
    /** POSTs one async job with `key`; resolves with the job id (undefined if refused). */
    submit: (key: string) =>
      new Promise<string | undefined>((resolve, reject) => {
        const req = request(
          {
            host: '127.0.0.1',
            port,
            path: '/v1/predict',
            method: 'POST',
            agent,
            headers: {
              'content-type': image.type,
              'content-length': image.body.length,
              authorization: `Bearer ${key}`,
              prefer: 'respond-async',
            },
          },
          (res) => {
            const chunks: Buffer[] = [];
            res.on('data', (c: Buffer) => chunks.push(c));
            res.on('end', () => {
              if (res.statusCode !== 202) return resolve(undefined);
              resolve((JSON.parse(Buffer.concat(chunks).toString()) as { id: string }).id);
            });
          },
        );
        req.on('error', reject);
        req.end(image.body);
      }),
    close: () => agent.destroy(),
  };
}

function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

async function run(mode: 'fifo' | 'fair') {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'conveyor-fairness-'));
  const redisServer = await startRedis({ dir });
  const log = createLogger('fairness', 'warn');
  const redis = createRedis(redisServer.url, 'producer', 'fairness', log);
  await waitForReady(redis, 10_000);
  const procs: ServiceProcess[] = [];
  let workers: ServiceProcess[] = [];
  try {
    const port = await freePort();
    const url = `http://127.0.0.1:${port}`;
    const env = { REDIS_URL: redisServer.url, LOG_LEVEL: 'warn' };
    procs.push(
      spawnService(
        'gateway',
        {
          ...env,
          PORT: String(port),
          HOST: '127.0.0.1',
          API_KEYS_REQUIRED: 'true',
          FAIR_QUEUING: String(mode === 'fair'),
          FAIR_TENANT_SHARE: '1',
          MAX_QUEUE_DEPTH: String(FLOOD + 3 * BACKLOG + POLITE + 1000),
        },
        { logs: false },
      ),
    );
    const startWorkers = async () => {
      workers = [0, 1].map((i) => spawnService('inference-worker', env, { logs: false, label: `worker-${i}` }));
      await until(async () => {
        const ready = (await (await fetch(`${url}/ready`).catch(() => undefined))?.json().catch(() => undefined)) as
          { workers?: unknown[] } | undefined;
        return (ready?.workers?.length ?? 0) >= 2;
      });
    };
    const stopWorkers = async () => {
      await Promise.all(workers.map((w) => w.stop()));
      workers = [];
    };
    await until(async () => (await fetch(`${url}/health`).catch(() => undefined))?.ok === true);
    await startWorkers();
    const keys = redisKeys('conveyor');
    const store = new ApiKeyStore(redis, keys.apiKeys);
    const jobs = new JobStore(redis, keys, { resultTtlSeconds: 3600 });
    const http = client(port, 64);

    /** `count` polite jobs at RATE/s; their accepted → result times once all are done. */
    const polite = async (key: string) => {
      const ids: string[] = [];
      const sent: Promise<void>[] = [];
      for (let i = 0; i < POLITE; i++) {
        sent.push(
          http.submit(key).then((id) => {
            if (id) ids.push(id);
          }),
        );
        await sleep(1000 / RATE);
      }
      await Promise.all(sent);
      let results = await jobs.readResults(ids);
      for (let tries = 0; results.some((r) => !r) && tries < 3000; tries++) {
        await sleep(200);
        results = await jobs.readResults(ids);
      }
      const times = results.map((r) => (r?.status === 'completed' ? r.timings.totalMs : Infinity)).sort((a, b) => a - b);
      return { p50: percentile(times, 50), p95: percentile(times, 95), n: times.length };
    };

    // 1. The polite tenant alone.
    const politeKey = (await store.create('polite', ['predict'])).key;
    const alone = await polite(politeKey);

    // 2. With a flood from another tenant, started just before.
    const floodKey = (await store.create('flood', ['predict'])).key;
    let floodAccepted = 0;
    let floodSent = 0;
    const flood = Promise.all(
      Array.from({ length: 32 }, async () => {
        while (floodSent < FLOOD) {
          floodSent++;
          if (await http.submit(floodKey)) floodAccepted++;
        }
      }),
    );
    // The polite tenant starts once the flood is under way.
    await until(() => Promise.resolve(floodSent >= Math.min(500, FLOOD)), 60_000);
    const withFlood = await polite(politeKey);
    await flood;
    await until(async () => (await redis.xlen(keys.predictions)) >= floodAccepted + 2 * POLITE, 600_000);

    // 3. Shares under saturation: three weighted keys with a backlog, then the workers.
    await stopWorkers();
    const weights = [3, 2, 1];
    const tenants = await Promise.all(weights.map(async (w) => ({ w, key: (await store.create(`w${w}`, ['predict'], w)).key })));
    const owner = new Map<string, number>();
    await Promise.all(
      tenants.map(async ({ w, key }) => {
        for (let i = 0; i < BACKLOG; i++) {
          const id = await http.submit(key);
          if (id) owner.set(id, w);
        }
      }),
    );
    const before = await redis.xlen(keys.predictions);
    await startWorkers();
    await until(async () => (await redis.xlen(keys.predictions)) >= before + owner.size, 600_000);
    const entries = await redis.xrange(keys.predictions, '-', '+');
    const order = entries.map(([, fields]) => PredictionEvent.parse(JSON.parse(fields[1]!)).jobId).filter((id) => owner.has(id));
    // The window: until the first tenant has no job left.
    const done = new Map<number, number>();
    let window = order.length;
    for (let i = 0; i < order.length; i++) {
      const w = owner.get(order[i]!)!;
      done.set(w, (done.get(w) ?? 0) + 1);
      if (done.get(w) === BACKLOG) {
        window = i + 1;
        break;
      }
    }
    const inWindow = order.slice(0, window);
    const shares = weights.map((w) => inWindow.filter((id) => owner.get(id) === w).length / window);
    http.close();
    return { mode, alone, withFlood, floodAccepted, shares, window };
  } finally {
    await Promise.all(workers.map((w) => w.stop()));
    await Promise.all(procs.map((p) => p.stop()));
    redis.disconnect();
    await redisServer.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

async function until(check: () => Promise<boolean>, timeoutMs = 90_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error('timed out');
    await sleep(200);
  }
}

const modes = values.modes.split(',') as ('fifo' | 'fair')[];
console.log(
  `fairness: flood ${FLOOD}, polite ${POLITE} at ${RATE}/s, backlog ${BACKLOG} per weighted key; ${new Date().toISOString()}`,
);
for (const mode of modes) {
  const r = await run(mode);
  const ms = (v: number) => (Number.isFinite(v) ? `${Math.round(v)} ms` : 'not done');
  console.log(
    [
      `${mode === 'fair' ? 'FAIR_QUEUING=true ' : 'FAIR_QUEUING=false'}:`,
      `polite alone p50 ${ms(r.alone.p50)} p95 ${ms(r.alone.p95)};`,
      `with a flood of ${r.floodAccepted} p50 ${ms(r.withFlood.p50)} p95 ${ms(r.withFlood.p95)} (p95 ×${(r.withFlood.p95 / r.alone.p95).toFixed(2)});`,
      `shares 3:2:1 over ${r.window} completions = ${r.shares.map((s) => s.toFixed(3)).join(' : ')}`,
      `(ideal 0.500 : 0.333 : 0.167)`,
    ].join(' '),
  );
}
