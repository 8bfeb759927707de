import { mkdtempSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { Redis } from 'ioredis';
import sharp from 'sharp';
import { preprocess } from '@conveyor/shared/model/preprocess';
import { classify, loadModel } from '@conveyor/shared/model/runtime';
import { freePort } from '../scripts/lib/free-port.js';
import { multipartBody, predictClient } from '../scripts/lib/load-client.js';
import { startRedis } from '../scripts/lib/redis-server.js';
import { ROOT, spawnService } from '../scripts/lib/service-process.js';
import { loadMnist, splitDataset } from '../services/trainer/src/pipeline/ingest.js';

/**
 * Throughput and latency of the full HTTP path (client → gateway → Redis/BullMQ → one worker
 * process → result) against one process calling sharp + onnxruntime directly on the same images.
 * The two are measured in alternating rounds in one run (the machine is shared and noisy), and the
 * medians over the rounds are reported. Everything runs on this machine: the load generator, the
 * gateway, the worker and Redis share its cores. The services run from their compiled build
 * (`make bench` builds first), as in a container. Beside the rates, it reports where the CPU goes:
 * milliseconds of CPU per image for the direct path, and per request for each process of the full
 * path (the per-process figures read /proc, so they are Linux only).
 *
 *   make bench                       # both image sets, 3 rounds
 *   make bench ARGS="--rounds 5 --requests 1000"
 */
const { values } = parseArgs({
  options: {
    rounds: { type: 'string', default: '3' },
    requests: { type: 'string', default: '600' },
    concurrency: { type: 'string', default: '16' },
    'worker-concurrency': { type: 'string', default: '4' },
    images: { type: 'string', default: 'mnist-png,scan-jpeg' },
    out: { type: 'string', default: path.join(ROOT, 'bench', 'results', 'throughput.json') },
  },
});
const rounds = Number(values.rounds);
const requests = Number(values.requests);
const concurrency = Number(values.concurrency);
const modelDir = path.join(ROOT, 'models', 'digits');

interface Stats {
  imagesPerSecond: number;
  p50: number;
  p95: number;
  p99: number;
  /** CPU milliseconds per image, per process (direct: this process; full path: each process). */
  cpuMs: Record<string, number>;
}

/** CPU time (user + system) of a child process in ms, from /proc; undefined where there is none. */
function processCpuMs(pid: number | undefined): number | undefined {
  if (pid === undefined || process.platform !== 'linux') return undefined;
  // Fields after the command name: utime and stime are the 12th and 13th, in clock ticks (100 Hz on Linux).
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return (Number(fields[11]) + Number(fields[12])) * 10;
}

/** Redis's own CPU time in ms (INFO cpu), which works wherever Redis runs. */
async function redisCpuMs(redis: Redis): Promise<number> {
  const fields = new Map((await redis.info('cpu')).split('\r\n').map((line) => line.split(':') as [string, string]));
  return (Number(fields.get('used_cpu_user') ?? 0) + Number(fields.get('used_cpu_sys') ?? 0)) * 1000;
}

const ownCpuMs = () => {
  const { user, system } = process.cpuUsage();
  return (user + system) / 1000;
};

function quantile(sorted: number[], q: number): number {
  const pos = (sorted.length - 1) * q;
  const lo = Math.floor(pos);
  return sorted[lo]! + (sorted[Math.ceil(pos)]! - sorted[lo]!) * (pos - lo);
}

function stats(latencies: number[], seconds: number, cpuMs: Record<string, number>): Stats {
  const sorted = [...latencies].sort((a, b) => a - b);
  const perImage = Object.fromEntries(Object.entries(cpuMs).map(([k, v]) => [k, v / latencies.length]));
  return {
    imagesPerSecond: latencies.length / seconds,
    p50: quantile(sorted, 0.5),
    p95: quantile(sorted, 0.95),
    p99: quantile(sorted, 0.99),
    cpuMs: perImage,
  };
}

const median = (xs: number[]) =>
  quantile(
    [...xs].sort((a, b) => a - b),
    0.5,
  );

async function imageSets(): Promise<Record<string, Buffer[]>> {
  const dataset = loadMnist();
  const split = splitDataset(dataset, { train: 0.7, validation: 0.15 }, 20261126);
  const pixels = split.test.slice(0, 200).map((i) => dataset.samples[i]!.pixels);
  const raw = (p: Uint8Array) => sharp(p, { raw: { width: 28, height: 28, channels: 1 } });
  return {
    // What MNIST-style clients send: a 28×28 PNG of ~0.4 KB.
    'mnist-png': await Promise.all(pixels.map((p) => raw(p).png().toBuffer())),
    // A scan: dark ink on paper, 280×280 JPEG of ~5 KB, so decoding and resizing cost more.
    'scan-jpeg': await Promise.all(
      pixels.map((p) =>
        sharp(
          Uint8Array.from(p, (v) => 255 - Math.round(v * 0.85)),
          { raw: { width: 28, height: 28, channels: 1 } },
        )
          .resize(280, 280, { kernel: 'cubic' })
          .jpeg({ quality: 85 })
          .toBuffer(),
      ),
    ),
  };
}

/** sharp + onnxruntime in this process, `inFlight` images at a time. */
async function direct(images: Buffer[], inFlight: number): Promise<Stats> {
  const model = await loadModel(modelDir);
  const latencies: number[] = [];
  let next = 0;
  const cpuBefore = ownCpuMs();
  const started = performance.now();
  await Promise.all(
    Array.from({ length: inFlight }, async () => {
      while (next < requests) {
        const bytes = images[next++ % images.length]!;
        const t = performance.now();
        const p = await preprocess({ kind: 'encoded', bytes }, model.manifest, { maxPixels: 40_000_000 });
        const [out] = await model.run([p.tensor]);
        classify(out!.probabilities, model.manifest.labels);
        latencies.push(performance.now() - t);
      }
    }),
  );
  const result = stats(latencies, (performance.now() - started) / 1000, { direct: ownCpuMs() - cpuBefore });
  await model.close();
  return result;
}

/** The processes of the full path whose CPU time is counted. */
interface FullPathProcesses {
  readonly gateway: number | undefined;
  readonly worker: number | undefined;
  readonly redis: Redis;
}

async function fullPath(port: number, images: Buffer[], inFlight: number, procs: FullPathProcesses): Promise<Stats> {
  const client = predictClient(port, inFlight);
  // Pre-built multipart bodies, so the load generator spends as little CPU as possible.
  const bodies = images.map(multipartBody);
  const latencies: number[] = [];
  let next = 0;
  let failures = 0;
  const cpu = async () => ({
    gateway: processCpuMs(procs.gateway),
    worker: processCpuMs(procs.worker),
    redis: await redisCpuMs(procs.redis),
    loadGenerator: ownCpuMs(),
  });
  const before = await cpu();
  const started = performance.now();
  await Promise.all(
    Array.from({ length: inFlight }, async () => {
      while (next < requests) {
        const b = bodies[next++ % bodies.length]!;
        const t = performance.now();
        if ((await client.send(b.body, b.type)) !== 200) failures++;
        latencies.push(performance.now() - t);
      }
    }),
  );
  const seconds = (performance.now() - started) / 1000;
  const after = await cpu();
  client.close();
  if (failures) throw new Error(`${failures} requests did not answer 200`);
  const used: Record<string, number> = {};
  for (const key of Object.keys(after) as (keyof typeof after)[]) {
    const [a, b] = [after[key], before[key]];
    if (a !== undefined && b !== undefined) used[key] = a - b;
  }
  return stats(latencies, seconds, used);
}

async function waitReady(port: number): Promise<void> {
  for (let i = 0; i < 200; i++) {
    const ok = await fetch(`http://127.0.0.1:${port}/ready`).then(
      (r) => r.ok,
      () => false,
    );
    if (ok) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error('the system did not become ready');
}

const sets = await imageSets();
const dir = mkdtempSync(path.join(os.tmpdir(), 'conveyor-bench-'));
const redis = await startRedis({ dir });
const port = await freePort();
const env = { REDIS_URL: redis.url, REDIS_PREFIX: 'bench', LOG_LEVEL: 'info' };
const worker = spawnService(
  'inference-worker',
  { ...env, WORKER_CONCURRENCY: values['worker-concurrency'] },
  { logs: false, built: true },
);
const gateway = spawnService(
  'gateway',
  { ...env, PORT: String(port), HOST: '127.0.0.1', MAX_QUEUE_DEPTH: '100000' },
  { logs: false, built: true },
);
const redisClient = new Redis(redis.url, { lazyConnect: true });
const procs: FullPathProcesses = { gateway: gateway.child.pid, worker: worker.child.pid, redis: redisClient };

const report: Record<string, unknown> = {
  machine: { cpus: os.cpus().length, model: os.cpus()[0]?.model, node: process.version },
  settings: { rounds, requests, concurrency, workerConcurrency: Number(values['worker-concurrency']) },
  results: {},
};
try {
  await waitReady(port);
  await redisClient.connect();
  for (const name of values.images.split(',')) {
    const images = sets[name];
    if (!images) throw new Error(`unknown image set ${name}`);
    // Warm both paths (JIT, connection pools, libvips caches) before measuring.
    await direct(images.slice(0, 50), 4);
    await fullPath(port, images.slice(0, 50), 4, procs);
    const r: Record<string, Stats[]> = { directSerial: [], directParallel: [], fullLowLoad: [], fullLoaded: [] };
    for (let round = 0; round < rounds; round++) {
      r.directSerial!.push(await direct(images, 1));
      r.fullLowLoad!.push(await fullPath(port, images, 1, procs));
      r.directParallel!.push(await direct(images, 4));
      r.fullLoaded!.push(await fullPath(port, images, concurrency, procs));
    }
    const med = (k: string, f: Exclude<keyof Stats, 'cpuMs'>) => median(r[k]!.map((s) => s[f]));
    const medCpu = (k: string) =>
      Object.fromEntries(Object.keys(r[k]![0]!.cpuMs).map((p) => [p, median(r[k]!.map((s) => s.cpuMs[p] ?? NaN))]));
    const summary = {
      bytesPerImage: Math.round(images.reduce((s, b) => s + b.length, 0) / images.length),
      directSerial: { imagesPerSecond: med('directSerial', 'imagesPerSecond'), p50Ms: med('directSerial', 'p50') },
      directParallel4: {
        imagesPerSecond: med('directParallel', 'imagesPerSecond'),
        p50Ms: med('directParallel', 'p50'),
        cpuMsPerImage: medCpu('directParallel'),
      },
      fullPathConcurrency1: {
        imagesPerSecond: med('fullLowLoad', 'imagesPerSecond'),
        p50Ms: med('fullLowLoad', 'p50'),
        p95Ms: med('fullLowLoad', 'p95'),
        p99Ms: med('fullLowLoad', 'p99'),
      },
      [`fullPathConcurrency${concurrency}`]: {
        imagesPerSecond: med('fullLoaded', 'imagesPerSecond'),
        p50Ms: med('fullLoaded', 'p50'),
        p95Ms: med('fullLoaded', 'p95'),
        p99Ms: med('fullLoaded', 'p99'),
        cpuMsPerRequest: medCpu('fullLoaded'),
      },
      throughputRatio: med('fullLoaded', 'imagesPerSecond') / med('directParallel', 'imagesPerSecond'),
      addedMedianMsAtLowLoad: med('fullLowLoad', 'p50') - med('directSerial', 'p50'),
      rounds: r,
    };
    (report.results as Record<string, unknown>)[name] = summary;
    const f = (v: number) => v.toFixed(v < 10 ? 2 : 0);
    console.log(`\n${name} (${summary.bytesPerImage} B per image, median of ${rounds} rounds × ${requests} images)`);
    console.log(
      `  direct, 1 in flight      ${f(summary.directSerial.imagesPerSecond)} img/s   p50 ${f(summary.directSerial.p50Ms)} ms`,
    );
    console.log(`  direct, 4 in flight      ${f(summary.directParallel4.imagesPerSecond)} img/s`);
    const low = summary.fullPathConcurrency1;
    console.log(
      `  full path, concurrency 1 ${f(low.imagesPerSecond)} img/s   p50 ${f(low.p50Ms)} ms  p95 ${f(low.p95Ms)} ms  p99 ${f(low.p99Ms)} ms`,
    );
    const high = summary[`fullPathConcurrency${concurrency}`] as typeof low & { cpuMsPerRequest: Record<string, number> };
    console.log(
      `  full path, concurrency ${concurrency} ${f(high.imagesPerSecond)} img/s   p50 ${f(high.p50Ms)} ms  p95 ${f(high.p95Ms)} ms  p99 ${f(high.p99Ms)} ms`,
    );
    const cpuLine = (cpu: Record<string, number>) =>
      Object.entries(cpu)
        .map(([p, v]) => `${p} ${v.toFixed(2)}`)
        .join(', ');
    const totalCpu = Object.values(high.cpuMsPerRequest).reduce((a, b) => a + b, 0);
    console.log(`  CPU ms per image, direct (4 in flight): ${cpuLine(summary.directParallel4.cpuMsPerImage)}`);
    console.log(
      `  CPU ms per request, full path (${concurrency} in flight): ${cpuLine(high.cpuMsPerRequest)}; total ${totalCpu.toFixed(2)}`,
    );
    console.log(
      `  full path / direct (4 in flight): ${(summary.throughputRatio * 100).toFixed(0)} %   added median at low load: ${f(summary.addedMedianMsAtLowLoad)} ms`,
    );
  }
  mkdirSync(path.dirname(values.out), { recursive: true });
  writeFileSync(values.out, `${JSON.stringify({ at: new Date().toISOString(), ...report }, null, 2)}\n`);
  console.log(`\nwritten to ${path.relative(ROOT, values.out)}`);
} finally {
  redisClient.disconnect();
  await gateway.stop();
  await worker.stop();
  await redis.stop();
  rmSync(dir, { recursive: true, force: true });
}
