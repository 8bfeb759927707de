import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { Redis } from 'ioredis';
import sharp from 'sharp';
import { CachedAnswer, cacheEntryKey, imageDigest } from '@conveyor/shared/contract/cache.contract';
import { freePort } from '../harness/free-port.js';
import { startRedis } from '../harness/redis-server.js';
import { ROOT, spawnService, type ServiceProcess } from '../harness/service-process.js';
import { processCpuMs } from './lib/process-cpu.js';

/**
 * What a result-cache hit costs the gateway, against a miss (docs/result-cache.md): a gateway and a
 * worker as processes of their own (RESULT_CACHE on) on a private redis-server, and this process as
 * the client. Each round sends `--requests` synchronous uploads, `--concurrency` at a time: hits (the
 * same image, answered once before) or misses (a new image each, so a job and an inference each).
 * CPU is read from /proc for each process (the client's own CPU is not counted), per request; the
 * median of `--rounds` rounds is reported, with the floor every request pays (`GET /health`: HTTP and
 * Koa alone) and the Redis commands a hit sends (INFO commandstats, scripts' own calls included).
 *
 *   node --conditions=conveyor-source --import tsx bench/cache-hit.bench.ts [--requests 400 --rounds 5 --concurrency 4]
 *   make bench-cache
 */
const { values } = parseArgs({
  options: {
    requests: { type: 'string', default: '400' },
    rounds: { type: 'string', default: '5' },
    concurrency: { type: 'string', default: '4' },
  },
});
const n = Number(values.requests);
const rounds = Number(values.rounds);
const concurrency = Number(values.concurrency);

const dir = mkdtempSync(path.join(os.tmpdir(), 'cache-bench-'));
const redis = await startRedis({ dir });
const services: ServiceProcess[] = [];
try {
  const env = { REDIS_URL: redis.url, RESULT_CACHE: 'true', LOG_LEVEL: 'warn' };
  const port = await freePort();
  const worker = spawnService('inference-worker', env, { logs: false });
  const gateway = spawnService('gateway', { ...env, PORT: String(port), HOST: '127.0.0.1' }, { logs: false });
  services.push(gateway, worker);
  const base = `http://127.0.0.1:${port}`;
  const seven = readFileSync(path.join(ROOT, 'docs/examples/seven.png'));
  /** A multipart upload (what most clients send), or with `raw` the bytes as the body (`Content-Type: image/png`). */
  const send = async (image: Buffer, raw = false) => {
    const form = new FormData();
    form.append('file', new Blob([image]), 'seven.png');
    const reply = await fetch(`${base}/v1/predict`, {
      method: 'POST',
      body: raw ? image : form,
      headers: raw ? { prefer: 'wait=60', 'content-type': 'image/png' } : { prefer: 'wait=60' },
    });
    await reply.arrayBuffer();
    if (reply.status !== 200) throw new Error(`predict answered ${reply.status}`);
    return reply.headers.get('cache-status');
  };

  // Ready once a request is answered with a Cache-Status: a worker serves the model and announced its spec.
  for (const started = Date.now(); ;) {
    const status = await send(seven).catch(() => null);
    if (status === 'conveyor; hit') break;
    if (Date.now() - started > 120_000) throw new Error('the gateway never answered from the cache');
    await new Promise((r) => setTimeout(r, 250));
  }

  let serial = 0;
  /** A new image each: the seven with its first pixels changed (other bytes, the same digit). */
  const fresh = async () => {
    const { data, info } = await sharp(seven).raw().toBuffer({ resolveWithObject: true });
    const k = ++serial;
    data[0] = k % 256;
    data[1] = Math.floor(k / 256) % 256;
    data[2] = Math.floor(k / 65536) % 256;
    return sharp(data, { raw: { width: info.width, height: info.height, channels: info.channels } })
      .png()
      .toBuffer();
  };

  const round = async (images: readonly Buffer[], expected: string, raw = false) => {
    const before = { gateway: processCpuMs(gateway.child.pid!)!, worker: processCpuMs(worker.child.pid!)! };
    let next = 0;
    await Promise.all(
      Array.from({ length: concurrency }, async () => {
        while (next < images.length) {
          if (expected === 'health') {
            next++;
            await (await fetch(`${base}/health`)).arrayBuffer();
            continue;
          }
          const status = await send(images[next++]!, raw);
          if (status !== expected) throw new Error(`expected Cache-Status ${expected}, got ${status}`);
        }
      }),
    );
    return {
      gateway: (processCpuMs(gateway.child.pid!)! - before.gateway) / images.length,
      worker: (processCpuMs(worker.child.pid!)! - before.worker) / images.length,
    };
  };

  const client = new Redis(redis.url);
  await client.config('RESETSTAT');
  await round(Array<Buffer>(200).fill(seven), 'conveyor; hit');
  const commandsPerHit = Object.fromEntries(
    (await client.info('commandstats'))
      .split('\n')
      .flatMap((line) => {
        const m = /^cmdstat_([a-z|]+):calls=(\d+)/.exec(line.trim());
        return m && m[1] !== 'config' && m[1] !== 'info' ? [[m[1]!, Number(m[2]) / 200] as const] : [];
      })
      .filter(([, calls]) => calls >= 0.05),
  );
  client.disconnect();

  const floors: number[] = [];
  const hits: { gateway: number; worker: number }[] = [];
  const rawHits: number[] = [];
  const misses: { gateway: number; worker: number }[] = [];
  // One warm-up round of each, not counted (JIT, connection pools).
  await round(Array<Buffer>(n).fill(seven), 'conveyor; hit');
  await round(await Promise.all(Array.from({ length: Math.min(n, 100) }, fresh)), 'conveyor; fwd=miss');
  for (let r = 0; r < rounds; r++) {
    floors.push((await round(Array<Buffer>(n).fill(seven), 'health')).gateway);
    hits.push(await round(Array<Buffer>(n).fill(seven), 'conveyor; hit'));
    rawHits.push((await round(Array<Buffer>(n).fill(seven), 'conveyor; hit', true)).gateway);
    misses.push(await round(await Promise.all(Array.from({ length: n }, fresh)), 'conveyor; fwd=miss'));
  }
  // What the cache itself adds to a request, in this process: the key (SHA-256 of the bytes, then of
  // the parts) and reading a stored answer (JSON.parse and the contract's check).
  const stored = await storedAnswer(base, seven);
  const micro = (f: () => unknown, reps = 20_000) => {
    for (let i = 0; i < 2000; i++) f();
    const start = process.cpuUsage();
    for (let i = 0; i < reps; i++) f();
    const cpu = process.cpuUsage(start);
    return Math.round(((cpu.user + cpu.system) / reps) * 100) / 100;
  };
  const cacheOwnUs = {
    key: micro(() => cacheEntryKey('digits', { version: 'v', spec: 's' }, imageDigest(seven))),
    readAnswer: micro(() => CachedAnswer.safeParse(JSON.parse(stored))),
  };
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  const ms = (x: number) => Math.round(x * 1000) / 1000;
  console.log(
    JSON.stringify(
      {
        date: new Date().toISOString(),
        requests: n,
        rounds,
        concurrency,
        cpuMsPerRequest: {
          hit: { gateway: ms(median(hits.map((h) => h.gateway))), worker: ms(median(hits.map((h) => h.worker))) },
          miss: { gateway: ms(median(misses.map((m) => m.gateway))), worker: ms(median(misses.map((m) => m.worker))) },
          hitRawBody: { gateway: ms(median(rawHits)) },
          floorGetHealth: { gateway: ms(median(floors)) },
        },
        redisCommandsPerHit: commandsPerHit,
        cacheOwnCpuUsPerHit: cacheOwnUs,
        perRound: { hits: hits.map((h) => ms(h.gateway)), misses: misses.map((m) => ms(m.gateway)) },
      },
      null,
      2,
    ),
  );
} finally {
  for (const service of services) await service.stop();
  await redis.stop();
  rmSync(dir, { recursive: true, force: true });
}

/** A stored answer as the cache holds it, from a real hit's body. */
async function storedAnswer(base: string, image: Buffer): Promise<string> {
  const form = new FormData();
  form.append('file', new Blob([image]), 'seven.png');
  const body = (await (await fetch(`${base}/v1/predict`, { method: 'POST', body: form })).json()) as Record<string, unknown>;
  const { model, prediction, input, worker, finishedAt } = body;
  return JSON.stringify({
    kind: 'cached-answer',
    version: 1,
    model,
    prediction,
    input,
    worker,
    finishedAt,
    storedAt: Date.now(),
  });
}
