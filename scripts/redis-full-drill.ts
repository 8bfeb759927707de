/**
 * The issue's full-Redis drill, smaller: a private redis-server whose maxmemory is set HEADROOM bytes
 * above its use, a gateway and a digits worker, N asynchronous uploads at concurrency C; then the
 * limit is lifted and every accepted job is polled to its end. Prints one JSON line: answers by
 * status, answers that carried Redis's own text, how the accepted jobs ended, the gateway's
 * "unhandled error" and "refused" lines, the worker's waits for room, and what was left behind
 * (images, queued bytes).
 *
 *   N=6000 C=32 HEADROOM=5000000 npm run redis-full-drill
 *
 * Not a test: it loads the machine for a minute or two.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Redis } from 'ioredis';
import { digitPng, heldOutDigits } from '../test/support/images.js';
import { startRedis } from '../harness/redis-server.js';
import { spawnService, type LogRecord, type ServiceProcess } from '../harness/service-process.js';

const N = Number(process.env.N ?? 6000);
const C = Number(process.env.C ?? 32);
const HEADROOM = Number(process.env.HEADROOM ?? 5_000_000);

const count = (proc: ServiceProcess, pattern: RegExp) =>
  proc.records.filter((r: LogRecord) => pattern.test(String(r.msg))).length;

async function main(): Promise<void> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'conveyor-full-drill-'));
  const server = await startRedis({ dir });
  const redis = new Redis(server.url);
  await redis.config('SET', 'maxmemory-policy', 'noeviction');
  const env = { REDIS_URL: server.url, REDIS_PREFIX: 'conveyor', LOG_LEVEL: 'info' };
  const gateway = spawnService('gateway', { ...env, PORT: '0', HOST: '127.0.0.1' });
  const worker = spawnService('inference-worker', env);
  try {
    const [listening] = await Promise.all([
      gateway.waitFor((r) => r.msg === 'gateway listening', 60_000),
      worker.waitFor((r) => r.msg === 'worker ready', 60_000),
    ]);
    const base = `http://127.0.0.1:${String(listening.port)}`;
    const { dataset, split } = await heldOutDigits();
    const image = await digitPng(dataset.samples[split.test[0]!]!.pixels);
    const used = Number(/used_memory:(\d+)/.exec(await redis.info('memory'))?.[1]);
    await redis.config('SET', 'maxmemory', String(used + HEADROOM));

    const statuses: Record<string, number> = {};
    const accepted: string[] = [];
    let redisTextInAnswers = 0;
    let sent = 0;
    await Promise.all(
      Array.from({ length: C }, async () => {
        while (sent++ < N) {
          const form = new FormData();
          form.append('file', new Blob([image]), 'digit.png');
          const reply = await fetch(`${base}/v1/predict`, { method: 'POST', body: form, headers: { Prefer: 'respond-async' } });
          const text = await reply.text();
          statuses[reply.status] = (statuses[reply.status] ?? 0) + 1;
          if (/OOM|maxmemory|script:/.test(text)) redisTextInAnswers++;
          if (reply.status === 202) accepted.push((JSON.parse(text) as { id: string }).id);
        }
      }),
    );
    await redis.config('SET', 'maxmemory', '0');

    const ends: Record<string, number> = {};
    for (const id of accepted) {
      for (;;) {
        const reply = await fetch(`${base}/v1/jobs/${id}`);
        const body = (await reply.json()) as { status: string; error?: { detail: string } };
        if (body.status === 'queued' || body.status === 'active') {
          await new Promise((resolve) => setTimeout(resolve, 100));
          continue;
        }
        const end = `${reply.status} ${body.status}${body.error ? `: ${body.error.detail.slice(0, 60)}` : ''}`;
        ends[end] = (ends[end] ?? 0) + 1;
        break;
      }
    }
    await new Promise((resolve) => setTimeout(resolve, 500)); // the services' buffered log lines
    const inputs = await redis.keys('conveyor:input:*');
    process.stdout.write(
      `${JSON.stringify({
        at: new Date().toISOString(),
        N,
        C,
        HEADROOM,
        statuses,
        redisTextInAnswers,
        accepted: accepted.length,
        ends,
        gatewayUnhandledErrorLines: count(gateway, /^unhandled error$/),
        gatewayRefusedLines: count(gateway, /^refused/),
        workerWaitsForRoom: count(worker, /Redis is full/),
        imagesLeft: inputs.length,
        queuedBytesLeft: {
          counter: await redis.get('conveyor:admission:queued-bytes'),
          perJob: await redis.get('conveyor:admission:queued-images:bytes'),
        },
      })}\n`,
    );
  } finally {
    await Promise.all([gateway.stop('SIGTERM'), worker.stop('SIGTERM')]);
    redis.disconnect();
    await server.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
