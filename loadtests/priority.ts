import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { Agent, request } from 'node:http';
import { Queue } from 'bullmq';
import { QUEUES } from '@conveyor/shared/contract/jobs.contract';
import { redisKeys } from '@conveyor/shared/contract/redis-keys';
import { createLogger } from '@conveyor/shared/logger';
import { createRedis, waitForReady } from '@conveyor/shared/redis';
import { ApiKeyStore } from '../services/gateway/src/access/api-keys.js';
import { freePort } from '../harness/free-port.js';
import { multipartBody } from '../harness/load-client.js';
import { startRedis } from '../harness/redis-server.js';
import { ROOT, spawnService, type ServiceProcess } from '../harness/service-process.js';

/**
 * Request priorities, measured (docs/priorities.md): interactive sync traffic beside a batch
 * backfill from the same API key. A private Redis, one gateway with API keys required and two
 * digits workers (from source); one key (maximum `high`) both backfills and asks synchronously:
 *
 *   1. with no worker running, the key queues `--backlog` async jobs (the backfill);
 *   2. the workers start; while a backfill client keeps at least `--backlog` jobs waiting (topping
 *      it up as the workers drain it), the key sends `--samples` synchronous requests at `--rate`/s
 *      (a fixed rate, whatever the answers: no coordinated omission) and times each, request to
 *      answer; anything but a 200 is a miss, counted as slower than every bound.
 *
 * Run twice: `--modes none` sends no priority (what the code did before: the backfill and the sync
 * requests share one band, so a sync request waits for the key's whole backlog), `--modes on` sends
 * the backfill at `priority=low` and the sync requests at `priority=high`. The sync p95 of `on` is
 * checked against the SLO's `sync_predict.p95_ms` (loadtests/slo.yaml): exit 1 above it.
 *
 *   node --conditions=conveyor-source --import tsx loadtests/priority.ts [--backlog 5000]
 *        [--samples 300] [--rate 10] [--modes none,on]
 *
 * (Same key on purpose: fair queuing already keeps *another* key's backlog from delaying a sync
 * request by more than about one job per backlogged key; a key's own backlog is what only
 * priorities put behind it.)
 */
const { values } = parseArgs({
  options: {
    backlog: { type: 'string', default: '5000' },
    samples: { type: 'string', default: '300' },
    rate: { type: 'string', default: '10' },
    modes: { type: 'string', default: 'none,on' },
  },
});
const BACKLOG = Number(values.backlog);
const SAMPLES = Number(values.samples);
const RATE = Number(values.rate);
const image = multipartBody(readFileSync(path.join(ROOT, 'docs/examples/seven.png')));
const SLO_P95_MS = Number(
  /sync_predict:\s*\n\s*p95_ms:\s*([\d.]+)/.exec(readFileSync(path.join(ROOT, 'loadtests', 'slo.yaml'), 'utf8'))?.[1] ?? NaN,
);

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function client(port: number, maxSockets: number, key: string) {
  const agent = new Agent({ keepAlive: true, maxSockets });
  return {
    /** POSTs one job with `prefer`; resolves with the status and the time to the answer's end. */
    send: (prefer: string) =>
      new Promise<{ status: number; ms: number }>((resolve) => {
        const started = performance.now();
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
              ...(prefer ? { prefer } : {}),
            },
          },
          (res) => {
            res.resume();
            res.on('end', () => resolve({ status: res.statusCode ?? 0, ms: performance.now() - started }));
          },
        );
        req.on('error', () => resolve({ status: 0, ms: performance.now() - started }));
        req.end(image.body);
      }),
    close: () => agent.destroy(),
  };
}

function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

type Mode = 'none' | 'on';

async function run(mode: Mode) {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'conveyor-priority-'));
  const redisServer = await startRedis({ dir });
  const log = createLogger('priority', 'warn');
  const redis = createRedis(redisServer.url, 'producer', 'priority', log);
  const queue = new Queue(QUEUES.inference, { connection: { url: redisServer.url }, prefix: 'conveyor' });
  const procs: ServiceProcess[] = [];
  try {
    // Generous: on a saturated machine even a fresh Redis can take a while to answer.
    await waitForReady(redis, 120_000);
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
          FAIR_TENANT_SHARE: '1',
          MAX_QUEUE_DEPTH: String(4 * BACKLOG + 1000),
        },
        { logs: false },
      ),
    );
    await until(async () => (await fetch(`${url}/health`).catch(() => undefined))?.ok === true);
    const store = new ApiKeyStore(redis, redisKeys('conveyor').apiKeys);
    const key = (await store.create('app', ['predict'], 1, 'high')).key;
    const backfill = client(port, 32, key);
    const interactive = client(port, 256, key);
    const backfillPrefer = mode === 'on' ? 'respond-async, priority=low' : 'respond-async';
    const syncPrefer = mode === 'on' ? 'wait=30, priority=high' : 'wait=30';
    const waiting = () => queue.getJobCountByTypes('waiting', 'prioritized');

    // 1. The backlog, with no worker running.
    let sent = 0;
    await Promise.all(
      Array.from({ length: 32 }, async () => {
        while (sent < BACKLOG) {
          sent++;
          await backfill.send(backfillPrefer);
        }
      }),
    );

    // 2. The workers start; the backfill keeps the backlog topped up while the sync requests run.
    procs.push(...[0, 1].map((i) => spawnService('inference-worker', env, { logs: false, label: `worker-${i}` })));
    await until(async () => {
      const ready = (await (await fetch(`${url}/ready`).catch(() => undefined))?.json().catch(() => undefined)) as
        { workers?: unknown[] } | undefined;
      return (ready?.workers?.length ?? 0) >= 2;
    });
    const phase = { measuring: true };
    let depth = await waiting();
    let smallest = depth;
    const topUp = Promise.all([
      (async () => {
        while (phase.measuring) {
          depth = await waiting();
          smallest = Math.min(smallest, depth);
          await sleep(100);
        }
      })(),
      ...Array.from({ length: 16 }, async () => {
        while (phase.measuring) {
          if (depth >= BACKLOG) await sleep(50);
          else {
            depth++;
            await backfill.send(backfillPrefer);
          }
        }
      }),
    ]);
    const answers: Promise<{ status: number; ms: number }>[] = [];
    for (let i = 0; i < SAMPLES; i++) {
      answers.push(interactive.send(syncPrefer));
      await sleep(1000 / RATE);
    }
    const samples = await Promise.all(answers);
    phase.measuring = false;
    await topUp;
    backfill.close();
    interactive.close();
    const times = samples.map((s) => (s.status === 200 ? s.ms : Infinity)).sort((a, b) => a - b);
    return {
      mode,
      p50: percentile(times, 50),
      p95: percentile(times, 95),
      p99: percentile(times, 99),
      misses: samples.filter((s) => s.status !== 200).length,
      smallestBacklog: smallest,
    };
  } finally {
    await Promise.all(procs.map((p) => p.stop()));
    await queue.close();
    redis.disconnect();
    await redisServer.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

async function until(check: () => Promise<boolean>, timeoutMs = 600_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error('timed out');
    await sleep(200);
  }
}

const modes = values.modes.split(',') as Mode[];
console.log(
  `priority: backlog ${BACKLOG} from the same key, ${SAMPLES} sync requests at ${RATE}/s; SLO p95 ${SLO_P95_MS} ms; ${new Date().toISOString()}`,
);
let failed = false;
for (const mode of modes) {
  const r = await run(mode);
  const ms = (v: number) => (Number.isFinite(v) ? `${Math.round(v)} ms` : 'missed');
  const within = r.p95 <= SLO_P95_MS;
  if (mode === 'on' && !within) failed = true;
  console.log(
    [
      mode === 'on' ? 'backfill priority=low, sync priority=high:' : 'no priorities (one band):               ',
      `sync p50 ${ms(r.p50)} p95 ${ms(r.p95)} p99 ${ms(r.p99)}, ${r.misses} of ${SAMPLES} not 200;`,
      `backlog never below ${r.smallestBacklog};`,
      `p95 ${within ? 'within' : 'above'} the SLO`,
    ].join(' '),
  );
}
process.exit(failed ? 1 : 0);
