import { mkdtempSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { Redis } from 'ioredis';
import sharp from 'sharp';
import { preprocess } from '@conveyor/shared/model/preprocess';
import { classify, loadModel, type LoadedModel } from '@conveyor/shared/model/runtime';
import { freePort } from '../scripts/lib/free-port.js';
import { multipartBody, predictClient } from '../scripts/lib/load-client.js';
import { startRedis, type LocalRedis } from '../scripts/lib/redis-server.js';
import { ROOT, spawnService, type ServiceProcess } from '../scripts/lib/service-process.js';
import { loadMnist, splitDataset } from '../services/trainer/src/pipeline/ingest.js';
import { ownCpuMs, processCpuMs, processTree } from './lib/process-cpu.js';
import { ensureMobilenet } from './models/build-mobilenet.js';
import { ensurePeerVenv, startPeer, type PeerName, type PeerProcess } from './peers/peer-process.js';

/**
 * Issue 8's comparison: Conveyor (gateway → Redis/BullMQ → 1 or 2 worker processes, plus the
 * drift monitor, as `make run` starts them) against the services a team might write instead —
 * FastAPI + Pillow + onnxruntime under `uvicorn --workers 2`, BentoML 1.4 with adaptive batching
 * (2 workers, behind --bentoml) — and against sharp + onnxruntime called in this very process (the
 * floor: no HTTP, no queue). Two models: the digits model with a 280×280 dark-on-light JPEG scan,
 * and a MobileNet-v1-0.5-class model (bench/models/build-mobilenet.ts) with a 240×240 photo-like
 * JPEG. Every HTTP system gets the same multipart body from the same load generator
 * (scripts/lib/load-client.ts, closed loop: `c` requests in flight, a fixed count per cell).
 *
 * Rounds are interleaved: each round runs every system once at every concurrency (the system order
 * rotates per round), so a slow spell of the shared machine hits all systems alike; medians over
 * the rounds are reported. All systems of a model are up for the whole phase; the CPU the idle
 * ones burn meanwhile is recorded per cell as `bystanderCpuMs`. CPU per request is read from /proc
 * for every process — gateway, each worker, redis-server, monitor, each peer's whole process tree
 * — and for the load generator (this process), after the system has gone quiet (the monitor
 * consumes prediction events behind the responses).
 *
 * Read the peers' figures with their shortcuts in mind: for digits they do a plain resize to 28×28
 * (no crop to the ink, fit in 20×20 and centre by mass, which is most of Conveyor's preprocessing
 * CPU); BentoML's batchable API answers a one-element list. Both peers run 2 processes that
 * accept keep-alive connections from one shared socket, and the kernel may hand most connections
 * of a cell to one of them: the per-process CPU (`fastapi #2`, `bentoml #1`, …) shows the spread.
 * Before the rounds, each system's idle CPU (heartbeats, polling, supervisors) is sampled for 5 s.
 *
 *   make bench-compare                                   # 3 rounds × 800 requests per cell, c1/c16/c64, both models (~8 min)
 *   make bench-compare ARGS="--bentoml"                  # with the BentoML peer (~10 min)
 *   make bench-compare ARGS="--rounds 1 --requests 200 --bentoml"   # a quick look (~2 min)
 *   ARGS: --systems conveyor-1w,conveyor-2w,direct,fastapi,bentoml --models digits,mobilenet --concurrency 1,16,64
 *
 * The Python peers' venvs (.venv/bench-fastapi, .venv/bench-bentoml) are created from their lock
 * files on first use by bench/peers/ensure-venv.sh; the MobileNet-class folder is generated into
 * data/bench-models/ on first use. Results: bench/results/compare.json (every cell, medians, ratios).
 */
const SYSTEMS = ['conveyor-1w', 'conveyor-2w', 'direct', 'fastapi', 'bentoml'] as const;
type SystemName = (typeof SYSTEMS)[number];
const MODELS = ['digits', 'mobilenet'] as const;
type ModelName = (typeof MODELS)[number];

const { values } = parseArgs({
  options: {
    rounds: { type: 'string', default: '3' },
    requests: { type: 'string', default: '800' },
    concurrency: { type: 'string', default: '1,16,64' },
    systems: { type: 'string', default: 'conveyor-1w,conveyor-2w,direct,fastapi' },
    models: { type: 'string', default: MODELS.join(',') },
    bentoml: { type: 'boolean', default: false },
    // The gateway's CPU per request falls by a third over its first ~2,000 requests (the JIT tiers up).
    warmup: { type: 'string', default: '1000' },
    'bento-max-batch': { type: 'string', default: '32' },
    // BentoML answers 503 to requests it expects to miss this budget; 10 s is Conveyor's sync wait
    // (SYNC_WAIT_DEFAULT_SECONDS, after which it answers 202), so neither sheds load where the other would not.
    'bento-max-latency-ms': { type: 'string', default: '10000' },
    out: { type: 'string', default: path.join(ROOT, 'bench', 'results', 'compare.json') },
  },
});
const rounds = Number(values.rounds);
const requests = Number(values.requests);
const warmupRequests = Number(values.warmup);
const concurrencies = values.concurrency.split(',').map(Number);
const systems = values.systems.split(',').map((s) => s.trim()) as SystemName[];
if (values.bentoml && !systems.includes('bentoml')) systems.push('bentoml');
const models = values.models.split(',').map((s) => s.trim()) as ModelName[];
for (const s of systems) if (!SYSTEMS.includes(s)) throw new Error(`unknown system ${s} (known: ${SYSTEMS.join(', ')})`);
for (const m of models) if (!MODELS.includes(m)) throw new Error(`unknown model ${m} (known: ${MODELS.join(', ')})`);
if (![rounds, requests, ...concurrencies].every((n) => Number.isInteger(n) && n > 0)) {
  throw new Error('--rounds, --requests and --concurrency need positive integers');
}
/** A cell that takes longer than this has hung; it is cut short and reported as such. */
const CELL_LIMIT_MS = 180_000;

// ── the inputs ─────────────────────────────────────────────────────────────────────────────────

interface TestImage {
  readonly bytes: Buffer;
  readonly description: string;
}

/**
 * One MNIST test digit as a scan: dark ink on paper, 280×280 JPEG (as the earlier throughput benchmark
 * makes them, ~5 KB on average): of the first 50 test digits, the one whose scan is nearest 5 KB.
 */
async function scanImage(): Promise<TestImage> {
  const dataset = loadMnist();
  const split = splitDataset(dataset, { train: 0.7, validation: 0.15 }, 20261126);
  let best: { bytes: Buffer; label: number } | undefined;
  for (const index of split.test.slice(0, 50)) {
    const sample = dataset.samples[index]!;
    const bytes = await sharp(
      Uint8Array.from(sample.pixels, (v) => 255 - Math.round(v * 0.85)),
      { raw: { width: 28, height: 28, channels: 1 } },
    )
      .resize(280, 280, { kernel: 'cubic' })
      .jpeg({ quality: 85 })
      .toBuffer();
    if (!best || Math.abs(bytes.length - 5000) < Math.abs(best.bytes.length - 5000)) best = { bytes, label: sample.label };
  }
  return { bytes: best!.bytes, description: `MNIST test digit (a ${best!.label}) as a 280×280 dark-on-light JPEG scan` };
}

/**
 * A photo-like 240×240 RGB JPEG of about 11 KB, synthetic (no photo ships with the installed
 * packages): a sky-to-ground gradient, a dozen soft-edged coloured blobs, fine grain, a slight
 * blur; the JPEG quality is chosen to land nearest 11 KB. Square, so `cover` (Conveyor) and a
 * plain resize (the peers) see the same geometry.
 */
async function photoImage(): Promise<TestImage> {
  const side = 240;
  let seed = 424242;
  const rand = () => {
    seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0;
    return seed / 4294967296;
  };
  const blobs = Array.from({ length: 12 }, () => ({
    x: rand() * side,
    y: rand() * side,
    r: 15 + rand() * 50,
    c: [rand() * 255, rand() * 255, rand() * 255],
  }));
  const raw = Buffer.alloc(side * side * 3);
  for (let y = 0; y < side; y++) {
    for (let x = 0; x < side; x++) {
      const t = y / side;
      const rgb = [90 + 120 * (1 - t), 140 + 60 * (1 - t) - 40 * t, 200 * (1 - t) + 60 * t];
      for (const b of blobs) {
        const d = Math.hypot(x - b.x, y - b.y) / b.r;
        const w = d < 1 ? 1 : Math.max(0, 1 - (d - 1) * 4);
        for (let c = 0; c < 3; c++) rgb[c] = rgb[c]! * (1 - w * 0.8) + b.c[c]! * w * 0.8;
      }
      const grain = (rand() - 0.5) * 36;
      for (let c = 0; c < 3; c++) raw[(y * side + x) * 3 + c] = Math.max(0, Math.min(255, Math.round(rgb[c]! + grain)));
    }
  }
  let best: Buffer | undefined;
  let quality = 0;
  for (let q = 40; q <= 95; q += 5) {
    const bytes = await sharp(raw, { raw: { width: side, height: side, channels: 3 } })
      .blur(0.6)
      .jpeg({ quality: q })
      .toBuffer();
    if (!best || Math.abs(bytes.length - 11_000) < Math.abs(best.length - 11_000)) {
      best = bytes;
      quality = q;
    }
  }
  return { bytes: best!, description: `synthetic photo-like ${side}×${side} RGB JPEG (quality ${quality})` };
}

// ── the systems ────────────────────────────────────────────────────────────────────────────────

/** A running system: where to send requests, and the cumulative CPU ms of each of its processes. */
interface RunningSystem {
  readonly name: SystemName;
  /** undefined for the in-process system. */
  readonly port: number | undefined;
  cpu(): Promise<Record<string, number>>;
  /** Processes counted (a peer's tree can grow or shrink). */
  processes(): Record<string, number>;
  stop(): Promise<void>;
}

async function startConveyor(name: SystemName, workers: number, modelDir: string, dir: string): Promise<RunningSystem> {
  const redis: LocalRedis = await startRedis({ dir: path.join(dir, `${name}-redis`) });
  const services: ServiceProcess[] = [];
  const client = new Redis(redis.url, { lazyConnect: true, maxRetriesPerRequest: 1 });
  // What `make run` passes (REDIS_URL), plus a model folder, free ports and a scratch report dir;
  // REPORT_INTERVAL_MS=0 so a periodic drift report does not land in the middle of one cell.
  const env = { REDIS_URL: redis.url };
  const port = await freePort();
  const stop = async () => {
    client.disconnect();
    await services.find((s) => s.name === 'gateway')?.stop();
    await Promise.all(services.filter((s) => s.name.startsWith('worker')).map((s) => s.stop()));
    await services.find((s) => s.name === 'monitor')?.stop();
    await redis.stop();
  };
  try {
    for (let i = 1; i <= workers; i++) {
      services.push(
        spawnService('inference-worker', { ...env, MODEL_DIR: modelDir }, { label: `worker-${i}`, logs: false, built: true }),
      );
    }
    services.push(spawnService('gateway', { ...env, PORT: String(port), HOST: '127.0.0.1' }, { logs: false, built: true }));
    const monitorPort = await freePort();
    services.push(
      spawnService(
        'monitor',
        {
          ...env,
          MODEL_DIR: modelDir,
          MONITOR_PORT: String(monitorPort),
          MONITOR_HOST: '127.0.0.1',
          REPORT_DIR: path.join(dir, `${name}-reports`),
          REPORT_INTERVAL_MS: '0',
        },
        { logs: false, built: true },
      ),
    );
    await client.connect();
    const info = await client.info('server');
    const redisPid = Number(/process_id:(\d+)/.exec(info)?.[1]);
    client.disconnect(); // only the pid was needed: no idle connection of ours in the measurements
    const manifest = JSON.parse(readFileSync(path.join(modelDir, 'manifest.json'), 'utf8')) as { name: string; version: string };
    await waitFor(`${name} gateway with ${workers} worker(s) serving ${manifest.name}@${manifest.version}`, async () => {
      for (const s of services) if (s.child.exitCode !== null) throw new Error(`${s.name} exited with ${s.child.exitCode}`);
      const r = await fetch(`http://127.0.0.1:${port}/ready`).catch(() => undefined);
      if (!r?.ok) return false;
      const body = (await r.json()) as { workers: { model: { name: string; version: string } }[] };
      return (
        body.workers.length === workers &&
        body.workers.every((w) => w.model.name === manifest.name && w.model.version === manifest.version)
      );
    });
    await waitFor(
      `${name} monitor`,
      async () => (await fetch(`http://127.0.0.1:${monitorPort}/ready`).catch(() => undefined))?.ok === true,
    );
    const pids: Record<string, number> = { redis: redisPid };
    for (const s of services) pids[s.name] = s.child.pid!;
    return {
      name,
      port,
      cpu: () => Promise.resolve(Object.fromEntries(Object.entries(pids).map(([k, pid]) => [k, processCpuMs(pid) ?? NaN]))),
      processes: () => Object.fromEntries(Object.keys(pids).map((k) => [k, 1])),
      stop,
    };
  } catch (error) {
    await stop();
    throw error;
  }
}

/**
 * A peer's whole process tree: `<name> main` is the process started (uvicorn's supervisor,
 * BentoML's arbiter), `<name> #k` its descendants in the order first seen (the workers, and
 * helpers such as multiprocessing's resource tracker), so an uneven spread over workers shows.
 */
function fromPeer(name: SystemName, peer: PeerProcess): RunningSystem {
  const labels = new Map<number, string>([[peer.pid, `${name} main`]]);
  const label = (pid: number) => {
    let l = labels.get(pid);
    if (l === undefined) labels.set(pid, (l = `${name} #${labels.size}`));
    return l;
  };
  const tree = () => processTree(peer.pid).sort((a, b) => (a === peer.pid ? -1 : b === peer.pid ? 1 : a - b));
  return {
    name,
    port: peer.port,
    cpu: () => Promise.resolve(Object.fromEntries(tree().map((pid) => [label(pid), processCpuMs(pid) ?? 0]))),
    processes: () => ({ [name]: tree().length }),
    stop: () => peer.stop(),
  };
}

/** sharp + onnxruntime in this process; its CPU is this process's (load loop included). */
async function startDirect(modelDir: string): Promise<RunningSystem & { model: LoadedModel }> {
  const model = await loadModel(modelDir);
  return {
    name: 'direct',
    port: undefined,
    model,
    cpu: () => Promise.resolve({ direct: ownCpuMs() }),
    processes: () => ({ direct: 1 }),
    stop: () => model.close(),
  };
}

async function waitFor(what: string, check: () => Promise<boolean>, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 150));
  }
}

// ── one cell ───────────────────────────────────────────────────────────────────────────────────

interface Cell {
  model: ModelName;
  system: SystemName;
  concurrency: number;
  round: number;
  requests: number;
  seconds: number;
  /** Answers with status 200 per second (a shed 503 is quick and would flatter the rate). */
  requestsPerSecond: number;
  /** Over every answer, whatever its status. */
  p50Ms: number;
  p95Ms: number;
  p99Ms: number;
  maxMs: number;
  non200: number;
  /** Connection errors and requests cut short by the cell's time limit. */
  errors: number;
  /** CPU ms per request, per process; `loadGenerator` is this process (absent for `direct`, which is it). */
  cpuMsPerRequest: Record<string, number>;
  /** The system's own processes together, load generator excluded. */
  serverCpuMsPerRequest: number;
  /** CPU ms the other, idle systems burnt during this cell, in total. */
  bystanderCpuMs: number;
}

function quantile(sorted: readonly number[], q: number): number {
  if (sorted.length === 0) return NaN;
  const pos = (sorted.length - 1) * q;
  const lo = Math.floor(pos);
  return sorted[lo]! + (sorted[Math.ceil(pos)]! - sorted[lo]!) * (pos - lo);
}

const median = (xs: readonly number[]) =>
  quantile(
    [...xs].filter((x) => !Number.isNaN(x)).sort((a, b) => a - b),
    0.5,
  );

/** Closed-loop load: `concurrency` loops, `count` requests in all. */
async function drive(
  send: () => Promise<number>,
  concurrency: number,
  count: number,
): Promise<{ latencies: number[]; non200: number; errors: number; seconds: number }> {
  const latencies: number[] = [];
  let next = 0;
  let non200 = 0;
  let errors = 0;
  let cut = false;
  const started = performance.now();
  const timer = setTimeout(() => (cut = true), CELL_LIMIT_MS);
  await Promise.all(
    Array.from({ length: Math.min(concurrency, count) }, async () => {
      while (next < count && !cut) {
        next++;
        const t = performance.now();
        try {
          if ((await send()) !== 200) non200++;
          latencies.push(performance.now() - t);
        } catch {
          errors++;
        }
      }
    }),
  );
  clearTimeout(timer);
  return { latencies, non200, errors: errors + (count - next), seconds: (performance.now() - started) / 1000 };
}

/** Waits until a system's processes stop using CPU (≤ 2 ms over 300 ms), at most 5 s. */
async function quiet(system: RunningSystem): Promise<Record<string, number>> {
  let last = await system.cpu();
  const total = (r: Record<string, number>) => Object.values(r).reduce((a, b) => a + b, 0);
  for (let i = 0; i < 16; i++) {
    await new Promise((r) => setTimeout(r, 300));
    const now = await system.cpu();
    // Quiet: the snapshot from before this idle window, so idle time is not billed to the requests.
    if (total(now) - total(last) <= 2) return last;
    last = now;
  }
  return last;
}

interface Target {
  readonly body: { body: Buffer; type: string };
  readonly image: Buffer;
  readonly direct?: LoadedModel;
}

async function runCell(
  system: RunningSystem,
  others: readonly RunningSystem[],
  target: Target,
  concurrency: number,
  count: number,
): Promise<Omit<Cell, 'model' | 'round'>> {
  // The in-process system's CPU is this process's, which is the load generator's: not a bystander.
  const bystanders = others.filter((o) => o.port !== undefined);
  const totals = async () => (await Promise.all(bystanders.map((o) => o.cpu()))).flatMap((r) => Object.values(r));
  const sum = (xs: readonly number[]) => xs.reduce((a, b) => a + b, 0);
  const before = await system.cpu();
  const loadBefore = ownCpuMs();
  const othersBefore = sum(await totals());
  let result: Awaited<ReturnType<typeof drive>>;
  if (system.port === undefined) {
    const model = target.direct!;
    result = await drive(
      async () => {
        const p = await preprocess({ kind: 'encoded', bytes: target.image }, model.manifest, { maxPixels: 40_000_000 });
        const [out] = await model.run([p.tensor]);
        classify(out!.probabilities, model.manifest.labels);
        return 200;
      },
      concurrency,
      count,
    );
  } else {
    const client = predictClient(system.port, concurrency);
    result = await drive(() => client.send(target.body.body, target.body.type), concurrency, count);
    client.close();
  }
  const loadCpu = ownCpuMs() - loadBefore;
  const after = system.port === undefined ? await system.cpu() : await quiet(system);
  const othersAfter = sum(await totals());
  const n = Math.max(1, result.latencies.length);
  const cpuMsPerRequest: Record<string, number> = {};
  // A process that appeared during the cell counts from zero.
  for (const [k, v] of Object.entries(after)) cpuMsPerRequest[k] = (v - (before[k] ?? 0)) / n;
  const serverCpuMsPerRequest = sum(Object.values(cpuMsPerRequest));
  if (system.port !== undefined) cpuMsPerRequest.loadGenerator = loadCpu / n;
  const sorted = [...result.latencies].sort((a, b) => a - b);
  return {
    system: system.name,
    concurrency,
    requests: result.latencies.length,
    seconds: result.seconds,
    requestsPerSecond: (result.latencies.length - result.non200) / result.seconds,
    p50Ms: quantile(sorted, 0.5),
    p95Ms: quantile(sorted, 0.95),
    p99Ms: quantile(sorted, 0.99),
    maxMs: sorted.at(-1) ?? NaN,
    non200: result.non200,
    errors: result.errors,
    cpuMsPerRequest,
    serverCpuMsPerRequest,
    bystanderCpuMs: othersAfter - othersBefore,
  };
}

/** One request whose answer is read, before anything is measured: the system classifies this image. */
async function checkAnswer(system: RunningSystem, target: Target): Promise<string> {
  if (system.port === undefined) {
    const model = target.direct!;
    const p = await preprocess({ kind: 'encoded', bytes: target.image }, model.manifest, { maxPixels: 40_000_000 });
    const [out] = await model.run([p.tensor]);
    return classify(out!.probabilities, model.manifest.labels).label;
  }
  const port = system.port;
  const text = await new Promise<string>((resolve, reject) => {
    const req = request(
      {
        host: '127.0.0.1',
        port,
        path: '/v1/predict',
        method: 'POST',
        headers: { 'content-type': target.body.type, 'content-length': target.body.body.length },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const body = Buffer.concat(chunks).toString();
          if (res.statusCode === 200) resolve(body);
          else reject(new Error(`${system.name} answered ${res.statusCode}: ${body.slice(0, 300)}`));
        });
      },
    );
    req.on('error', reject);
    req.end(target.body.body);
  });
  const label = findLabel(JSON.parse(text));
  if (label === undefined) throw new Error(`${system.name}: no label in its answer ${text.slice(0, 300)}`);
  return label;
}

function findLabel(value: unknown): string | undefined {
  if (Array.isArray(value)) return value.map(findLabel).find((l) => l !== undefined);
  if (value && typeof value === 'object') {
    const record = value as Record<string, unknown>;
    if (typeof record.label === 'string') return record.label;
    return Object.values(record)
      .map(findLabel)
      .find((l) => l !== undefined);
  }
  return undefined;
}

// ── the run ────────────────────────────────────────────────────────────────────────────────────

const dir = mkdtempSync(path.join(os.tmpdir(), 'conveyor-compare-'));
const running: RunningSystem[] = [];
let stopping: Promise<void> | undefined;
const stopAll = () =>
  (stopping ??= (async () => {
    for (const s of running.splice(0).reverse()) {
      await s.stop().catch((error: unknown) => console.error(`stopping ${s.name}: ${String(error)}`));
    }
  })());
const onSignal = () => {
  console.error('\ninterrupted: stopping every system…');
  void stopAll().finally(() => {
    rmSync(dir, { recursive: true, force: true });
    process.exit(130);
  });
};
process.once('SIGINT', onSignal);
process.once('SIGTERM', onSignal);
// The worker sets libvips to one thread per image (SHARP_CONCURRENCY=1); the direct path does too.
sharp.concurrency(1);

const cells: Cell[] = [];
const modelInfo: Record<string, unknown> = {};
const answers: Record<string, Record<string, string>> = {};
/** CPU ms per second each system uses while every system is idle, per model. */
const idle: Record<string, Record<string, number>> = {};
const IDLE_SAMPLE_MS = 5000;
const settings = {
  rounds,
  requestsPerCell: requests,
  warmupRequests,
  concurrencies,
  systems,
  models,
  conveyor: 'gateway + N inference workers (WORKER_CONCURRENCY 4, defaults) + monitor + own redis-server, from dist/',
  fastapi: 'uvicorn --workers 2 --loop uvloop --http nodelay:HttpToolsNoDelay; onnxruntime 1 intra-op thread per process',
  bentoml: {
    workers: 2,
    maxBatchSize: Number(values['bento-max-batch']),
    maxLatencyMs: Number(values['bento-max-latency-ms']),
  },
};
const started = Date.now();
try {
  for (const peer of systems.filter((s): s is PeerName => s === 'fastapi' || s === 'bentoml')) ensurePeerVenv(peer);
  for (const modelName of models) {
    const mobilenet = modelName === 'mobilenet' ? ensureMobilenet() : undefined;
    const modelDir = mobilenet?.dir ?? path.join(ROOT, 'models', 'digits');
    const image = modelName === 'digits' ? await scanImage() : await photoImage();
    const manifest = JSON.parse(readFileSync(path.join(modelDir, 'manifest.json'), 'utf8')) as Record<string, unknown>;
    modelInfo[modelName] = {
      dir: path.relative(ROOT, modelDir),
      name: manifest.name,
      version: manifest.version,
      image: image.description,
      imageBytes: image.bytes.length,
      ...(mobilenet ? { multiplyAdds: mobilenet.macs, parameters: mobilenet.parameters } : {}),
    };
    const size = mobilenet
      ? ` (${(mobilenet.macs / 1e6).toFixed(0)} M multiply-adds = ${((2 * mobilenet.macs) / 1e6).toFixed(0)} MFLOPs)`
      : '';
    console.log(
      `\n${modelName}: ${path.relative(ROOT, modelDir)}${size}, ${image.description}, ${image.bytes.length} B; starting ${systems.join(', ')}…`,
    );
    const bySystem = new Map<SystemName, RunningSystem>();
    let direct: LoadedModel | undefined;
    for (const name of systems) {
      let system: RunningSystem;
      switch (name) {
        case 'conveyor-1w':
          system = await startConveyor(name, 1, modelDir, dir);
          break;
        case 'conveyor-2w':
          system = await startConveyor(name, 2, modelDir, dir);
          break;
        case 'direct': {
          const d = await startDirect(modelDir);
          direct = d.model;
          system = d;
          break;
        }
        case 'fastapi':
        case 'bentoml':
          system = fromPeer(
            name,
            await startPeer(name, {
              modelDir,
              port: await freePort(),
              dataDir: dir,
              maxBatch: settings.bentoml.maxBatchSize,
              maxLatencyMs: settings.bentoml.maxLatencyMs,
            }),
          );
          break;
      }
      running.push(system);
      bySystem.set(name, system);
    }
    const target: Target = { body: multipartBody(image.bytes), image: image.bytes, ...(direct ? { direct } : {}) };
    answers[modelName] = {};
    for (const system of bySystem.values()) {
      answers[modelName][system.name] = await checkAnswer(system, target);
      // Warm-up, not measured: JIT, connection pools, libvips caches, BentoML's batch-size training.
      const others = [...bySystem.values()].filter((o) => o !== system);
      await runCell(system, others, target, Math.min(16, warmupRequests), warmupRequests);
    }
    // What each system burns doing nothing (heartbeats, polling, supervisors), all of them idle at once.
    const idleBefore = await Promise.all([...bySystem.values()].map((s) => s.cpu()));
    const idleStarted = performance.now();
    await new Promise((r) => setTimeout(r, IDLE_SAMPLE_MS));
    const idleAfter = await Promise.all([...bySystem.values()].map((s) => s.cpu()));
    const idleSeconds = (performance.now() - idleStarted) / 1000;
    idle[modelName] = Object.fromEntries(
      [...bySystem.keys()].map((name, i) => {
        const [a, b] = [idleAfter[i]!, idleBefore[i]!];
        return [name, Object.keys(a).reduce((sum, k) => sum + a[k]! - (b[k] ?? 0), 0) / idleSeconds];
      }),
    );
    console.log(
      `  idle CPU ms per second: ${Object.entries(idle[modelName])
        .map(([s, v]) => `${s} ${v.toFixed(0)}`)
        .join(', ')}`,
    );
    console.log(
      `  answers: ${Object.entries(answers[modelName])
        .map(([s, l]) => `${s} ${l}`)
        .join(', ')}; processes: ${[...bySystem.values()]
        .map((s) => `${s.name} ${Object.values(s.processes()).reduce((a, b) => a + b, 0)}`)
        .join(', ')}`,
    );
    for (let round = 0; round < rounds; round++) {
      const order = [...bySystem.values()];
      for (let i = 0; i < round % order.length; i++) order.push(order.shift()!);
      for (const concurrency of concurrencies) {
        for (const system of order) {
          const cell = await runCell(
            system,
            order.filter((o) => o !== system),
            target,
            concurrency,
            requests,
          );
          cells.push({ model: modelName, round, ...cell });
          const failed = cell.non200 + cell.errors;
          console.log(
            `  round ${round + 1} c${String(concurrency).padEnd(3)} ${system.name.padEnd(12)} ${cell.requestsPerSecond.toFixed(0).padStart(5)} req/s  p50 ${cell.p50Ms.toFixed(1)} ms  server CPU ${cell.serverCpuMsPerRequest.toFixed(2)} ms/req${failed ? `  FAILED ${failed}` : ''}`,
          );
        }
      }
    }
    await stopAll();
    stopping = undefined;
  }

  // ── report ──
  const summary: Record<string, Record<string, Record<string, Record<string, unknown>>>> = {};
  const f = (v: number, digits = v < 10 ? 2 : v < 100 ? 1 : 0) => (Number.isFinite(v) ? v.toFixed(digits) : '–');
  const ratios: Record<string, Record<string, Record<string, number>>> = {};
  for (const modelName of models) {
    summary[modelName] = {};
    const info = modelInfo[modelName] as { image: string; imageBytes: number };
    console.log(
      `\n${modelName} — ${info.image}, ${info.imageBytes} B; medians of ${rounds} round(s) × ${requests} requests per cell; !200 summed over rounds`,
    );
    console.log(
      `  ${'system'.padEnd(12)} ${'c'.padStart(3)} ${'req/s'.padStart(6)} ${'p50'.padStart(6)} ${'p95'.padStart(6)} ${'p99'.padStart(6)} ${'!200'.padStart(5)}  ${'CPU ms/req'.padStart(10)}  per process (+ load generator)`,
    );
    for (const system of systems) {
      summary[modelName][system] = {};
      for (const concurrency of concurrencies) {
        const rs = cells.filter((c) => c.model === modelName && c.system === system && c.concurrency === concurrency);
        if (rs.length === 0) continue;
        const med = (k: 'requestsPerSecond' | 'p50Ms' | 'p95Ms' | 'p99Ms' | 'serverCpuMsPerRequest') =>
          median(rs.map((r) => r[k]));
        const cpu = Object.fromEntries(
          [...new Set(rs.flatMap((r) => Object.keys(r.cpuMsPerRequest)))].map((p) => [
            p,
            median(rs.map((r) => r.cpuMsPerRequest[p] ?? 0)),
          ]),
        );
        const row = {
          requestsPerSecond: med('requestsPerSecond'),
          p50Ms: med('p50Ms'),
          p95Ms: med('p95Ms'),
          p99Ms: med('p99Ms'),
          non200: rs.reduce((s, r) => s + r.non200 + r.errors, 0),
          serverCpuMsPerRequest: med('serverCpuMsPerRequest'),
          cpuMsPerRequest: cpu,
          bystanderCpuMsPerRequest: median(rs.map((r) => r.bystanderCpuMs / Math.max(1, r.requests))),
        };
        summary[modelName][system][`c${concurrency}`] = row;
        const breakdown = Object.entries(cpu)
          .map(([p, v]) => `${p} ${f(v)}`)
          .join(', ');
        console.log(
          `  ${system.padEnd(12)} ${String(concurrency).padStart(3)} ${f(row.requestsPerSecond, 0).padStart(6)} ${f(row.p50Ms).padStart(6)} ${f(row.p95Ms).padStart(6)} ${f(row.p99Ms).padStart(6)} ${String(row.non200).padStart(5)}  ${f(row.serverCpuMsPerRequest).padStart(10)}  ${breakdown}`,
        );
      }
    }
    ratios[modelName] = {};
    for (const peer of ['fastapi', 'bentoml'] as const) {
      if (!systems.includes('conveyor-2w') || !systems.includes(peer)) continue;
      const parts: string[] = [];
      for (const concurrency of concurrencies) {
        const a = summary[modelName]['conveyor-2w']![`c${concurrency}`] as {
          requestsPerSecond: number;
          p50Ms: number;
          serverCpuMsPerRequest: number;
        };
        const b = summary[modelName][peer]![`c${concurrency}`] as typeof a;
        const r = {
          throughput: a.requestsPerSecond / b.requestsPerSecond,
          p50: a.p50Ms / b.p50Ms,
          cpuPerRequest: a.serverCpuMsPerRequest / b.serverCpuMsPerRequest,
        };
        ratios[modelName][`conveyor-2w/${peer} c${concurrency}`] = r;
        parts.push(`c${concurrency}: req/s ×${f(r.throughput)}, p50 ×${f(r.p50)}, CPU/req ×${f(r.cpuPerRequest)}`);
      }
      console.log(`  Conveyor 2 workers / ${peer}: ${parts.join('; ')}`);
    }
  }
  const report = {
    at: new Date().toISOString(),
    minutes: (Date.now() - started) / 60_000,
    machine: { cpus: os.cpus().length, model: os.cpus()[0]?.model, node: process.version },
    settings,
    models: modelInfo,
    answers,
    idleCpuMsPerSecond: idle,
    summary,
    ratios,
    cells,
  };
  mkdirSync(path.dirname(values.out), { recursive: true });
  writeFileSync(values.out, `${JSON.stringify(report, null, 2)}\n`);
  console.log(`\n${((Date.now() - started) / 60_000).toFixed(1)} min; written to ${path.relative(ROOT, values.out)}`);
} finally {
  await stopAll();
  rmSync(dir, { recursive: true, force: true });
}
