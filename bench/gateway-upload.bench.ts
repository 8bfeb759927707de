import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { Agent, request } from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { inferenceQueue } from '@conveyor/shared/contract/jobs.contract';
import { redisKeys } from '@conveyor/shared/contract/redis-keys';
import { freePort } from '../harness/free-port.js';
import { multipartBody } from '../harness/load-client.js';
import { startRedis } from '../harness/redis-server.js';
import { ENTRIES, ROOT } from '../harness/service-process.js';
import { scanImage } from './lib/scan-image.js';
import { median, round3, until } from './lib/drive.js';
import { photoCase } from './lib/photo-cases.js';
import { processCpuMs } from './lib/process-cpu.js';

/**
 * Issue 19's per-megabyte question: the gateway's own CPU per upload, by upload size and body shape,
 * with nothing else on the path. One private Redis, one gateway process per checkout compared (from
 * its TypeScript sources, as `--gateway label=DIR`; this checkout by default). Two modes:
 * - async: no worker; every request is `Prefer: respond-async` (202 as soon as the image and the
 *   job are in Redis), and the queue is emptied between cells (BullMQ's obliterate; the gateway's
 *   own reconciliation then gives the queued bytes back and deletes the images), so no cell sees a
 *   backlog left by another;
 * - sync: a real inference worker of the same checkout serves the gateway's queue (the digits model,
 *   for every case: the gateway's work does not depend on the model, and the photos cost the worker
 *   less that way); every request waits for its result (200): the gateway's result waiter, the reply
 *   and the answer's serialisation are in the figure. Only the gateway's CPU is counted.
 *
 * Cases (each sent as multipart/form-data with the image in `file`, and as a raw body with
 * `Content-Type: image/jpeg`):
 * - scan: one MNIST test digit as a 280×280 dark-on-light JPEG scan, the one nearest 5 KB (as
 *   bench/compare.bench.ts's digits case);
 * - photo: the three scikit-image photos re-encoded JPEG q90 (34–71 KB; bench/lib/photo-cases.ts
 *   `plain`, compare.bench.ts's moderation case), sent in turn;
 * - phone: the same photos upscaled to 12 MP, sRGB profile, EXIF orientation 6 (0.9–1.1 MB;
 *   `phone`, compare.bench.ts's moderation-phone case), sent in turn.
 *
 * Rounds are interleaved: each round runs every (gateway, case, body) cell once, the gateway order
 * alternating per round; CPU is the gateway process's utime+stime from /proc over the cell (from
 * before the first request to after the last answer), divided by the requests; medians of the
 * rounds are printed, and per MB of upload for the photo cases. With CONVEYOR_PROFILE_DIR set, each
 * gateway writes a V8 CPU profile there when it stops.
 *
 *   node --conditions=conveyor-source --import tsx bench/gateway-upload.bench.ts \
 *        [--gateway before=/tmp/before --gateway after=.] [--rounds 3] [--requests 200] [--warmup 300] \
 *        [--phone-requests 100] [--concurrency 4] [--cases scan,photo,phone] [--bodies multipart,raw]
 *        [--modes async,sync] [--out FILE]
 */
const { values } = parseArgs({
  options: {
    gateway: { type: 'string', multiple: true },
    rounds: { type: 'string', default: '3' },
    requests: { type: 'string', default: '200' },
    'phone-requests': { type: 'string', default: '100' },
    /**
     * Requests per cell before the measured rounds. V8 is still compiling the gateway's hot path long
     * after 60: an asynchronous scan cost 1.2–1.6 ms over the first 2,000 requests and 0.6 ms after.
     */
    warmup: { type: 'string', default: '300' },
    concurrency: { type: 'string', default: '4' },
    cases: { type: 'string', default: 'scan,photo,phone' },
    bodies: { type: 'string', default: 'multipart,raw' },
    /** async: 202 at once, no worker; sync: a worker answers, each request waits for its 200. */
    modes: { type: 'string', default: 'async,sync' },
    /** The gateway runs with --trace-gc: its GCs per request by kind, and their pauses, per cell. */
    gc: { type: 'boolean', default: false },
    /** More node options for the gateways (e.g. --perf-basic-prof, for `perf record -p PID`; the pids are printed). */
    'node-arg': { type: 'string', multiple: true },
    out: { type: 'string' },
  },
});
const traceGc = values.gc;

type CaseName = 'scan' | 'photo' | 'phone';
type BodyKind = 'multipart' | 'raw';
type Mode = 'async' | 'sync';
interface Upload {
  readonly body: Buffer;
  readonly type: string;
  readonly imageBytes: number;
}

const gateways = (values.gateway ?? [`current=${ROOT}`]).map((spec) => {
  const at = spec.indexOf('=');
  return at < 0 ? { label: spec, dir: ROOT } : { label: spec.slice(0, at), dir: path.resolve(spec.slice(at + 1)) };
});
const rounds = Number(values.rounds);
const concurrency = Number(values.concurrency);
const caseNames = values.cases.split(',') as CaseName[];
const bodyKinds = values.bodies.split(',') as BodyKind[];
const modes = values.modes.split(',') as Mode[];
const requestsOf = (c: CaseName) => Number(c === 'phone' ? values['phone-requests'] : values.requests);

const images: Record<CaseName, { bytes: Buffer; description: string }[]> = {
  scan: caseNames.includes('scan') ? [await scanImage()] : [],
  photo: caseNames.includes('photo') ? await photoCase('plain') : [],
  phone: caseNames.includes('phone') ? await photoCase('phone') : [],
};
const uploads = (c: CaseName, kind: BodyKind): Upload[] =>
  images[c].map(({ bytes }) =>
    kind === 'multipart'
      ? { ...multipartBody(bytes), imageBytes: bytes.length }
      : { body: bytes, type: 'image/jpeg', imageBytes: bytes.length },
  );

const dir = mkdtempSync(path.join(os.tmpdir(), 'gateway-upload-bench-'));
const redis = await startRedis({ dir: path.join(dir, 'redis') });
const admin = new Redis(redis.url, { maxRetriesPerRequest: 1 });
interface Running {
  readonly label: string;
  readonly prefix: string;
  readonly port: number;
  readonly child: ChildProcess;
  readonly checkout: string;
  /** The checkout's inference worker, once the synchronous cells start. */
  worker?: ChildProcess;
  readonly agent: Agent;
  readonly queue: Queue;
  readonly connection: Redis;
  /** GCs seen so far (with --gc): count and pause ms by kind. */
  readonly gcs: Map<string, { count: number; pauseMs: number }>;
}
const running: Running[] = [];
type Sample = {
  cpuMsPerRequest: number;
  requestsPerSecond: number;
  imageBytes: number;
  /** With --gc: GCs per request and their pause ms per request, by kind. */
  gc?: Record<string, { perRequest: number; pauseMsPerRequest: number }>;
};
const samples: Record<string, Sample[]> = {};
const cellKey = (label: string, c: CaseName, kind: BodyKind, mode: Mode) =>
  `${label} ${c} ${kind}${mode === 'async' ? '' : ' sync'}`;
try {
  for (const [i, g] of gateways.entries()) running.push(await startGateway(g.label, g.dir, `gwbench${i}`));
  // The modes one after the other: the workers start only for the synchronous cells, so that the
  // asynchronous ones queue with no worker taking the jobs.
  for (const mode of modes) {
    if (mode === 'sync') await Promise.all(running.map((g) => startWorker(g)));
    for (const g of running) {
      for (const c of caseNames) for (const kind of bodyKinds) await cell(g, uploads(c, kind), Number(values.warmup), mode);
    }
    for (let round = 1; round <= rounds; round++) {
      const order = round % 2 === 1 ? running : [...running].reverse();
      for (const c of caseNames) {
        for (const kind of bodyKinds) {
          for (const g of order) {
            const sample = await cell(g, uploads(c, kind), requestsOf(c), mode);
            (samples[cellKey(g.label, c, kind, mode)] ??= []).push(sample);
            console.error(`round ${round} ${cellKey(g.label, c, kind, mode)}: ${JSON.stringify(sample)}`);
          }
        }
      }
    }
  }
} finally {
  for (const g of running) {
    g.agent.destroy();
    await g.queue.close();
    g.connection.disconnect();
    await stop(g.child);
    if (g.worker) await stop(g.worker);
  }
  admin.disconnect();
  await redis.stop();
  rmSync(dir, { recursive: true, force: true });
}

const rows = Object.entries(samples).map(([key, list]) => {
  const cpu = median(list.map((s) => s.cpuMsPerRequest));
  const mb = list[0]!.imageBytes / 1e6;
  return {
    cell: key,
    meanImageBytes: list[0]!.imageBytes,
    cpuMsPerRequest: round3(cpu),
    // Per MB of image only where the image is most of the request (not the 5 KB scan).
    cpuMsPerMB: mb >= 0.02 ? round3(cpu / mb) : null,
    requestsPerSecond: Math.round(median(list.map((s) => s.requestsPerSecond))),
    rounds: list.map((s) => round3(s.cpuMsPerRequest)),
  };
});
console.log('\ncell | mean image bytes | gateway CPU ms/request (median) | ms per MB of image | req/s | per round');
for (const r of rows) {
  console.log(
    `${r.cell} | ${r.meanImageBytes} | ${r.cpuMsPerRequest} | ${r.cpuMsPerMB} | ${r.requestsPerSecond} | ${r.rounds.join(', ')}`,
  );
}
// The slope between the smallest and the largest case: the cost per MB with the fixed cost taken out.
for (const g of gateways) {
  for (const mode of modes) {
    for (const kind of bodyKinds) {
      const small = rows.find((r) => r.cell === cellKey(g.label, caseNames[0]!, kind, mode));
      const large = rows.find((r) => r.cell === cellKey(g.label, caseNames.at(-1)!, kind, mode));
      if (!small || !large || small === large) continue;
      const slope = (large.cpuMsPerRequest - small.cpuMsPerRequest) / ((large.meanImageBytes - small.meanImageBytes) / 1e6);
      console.log(`${g.label} ${kind} ${mode}: ${round3(slope)} ms per additional MB (${caseNames[0]} → ${caseNames.at(-1)})`);
    }
  }
}
const report = {
  date: new Date().toISOString(),
  command: `bench/gateway-upload.bench.ts ${process.argv.slice(2).join(' ')}`,
  machine: { cpus: os.cpus().length, model: os.cpus()[0]?.model, loadAvgAtEnd: os.loadavg() },
  gateways,
  settings: {
    rounds,
    concurrency,
    requests: Object.fromEntries(caseNames.map((c) => [c, requestsOf(c)])),
    bodies: bodyKinds,
    modes,
  },
  images: Object.fromEntries(caseNames.map((c) => [c, images[c].map((i) => i.description)])),
  rows,
  samples,
};
if (values.out) writeFileSync(values.out, `${JSON.stringify(report, null, 2)}\n`);

/**
 * `n` uploads (the given ones in turn) over `concurrency` keep-alive connections; each must be
 * answered 202 (async) or 200 with its result (sync).
 */
async function cell(g: Running, list: readonly Upload[], n: number, mode: Mode): Promise<Sample> {
  const expected = mode === 'async' ? 202 : 200;
  let next = 0;
  const gcBefore = new Map([...g.gcs].map(([k, v]) => [k, { ...v }]));
  const before = processCpuMs(g.child.pid!)!;
  const started = performance.now();
  const one = async () => {
    while (next < n) {
      const upload = list[next++ % list.length]!;
      const status = await post(g, upload, mode);
      if (status !== expected) throw new Error(`${g.label}: HTTP ${status}`);
    }
  };
  await Promise.all(Array.from({ length: concurrency }, one));
  const seconds = (performance.now() - started) / 1000;
  const cpuMs = processCpuMs(g.child.pid!)! - before;
  const gc = traceGc
    ? Object.fromEntries(
        [...g.gcs].map(([kind, v]) => {
          const was = gcBefore.get(kind) ?? { count: 0, pauseMs: 0 };
          return [
            kind,
            { perRequest: round3((v.count - was.count) / n), pauseMsPerRequest: round3((v.pauseMs - was.pauseMs) / n) },
          ];
        }),
      )
    : undefined;
  await drain(g);
  const imageBytes = list.reduce((sum, u) => sum + u.imageBytes, 0) / list.length;
  return {
    cpuMsPerRequest: cpuMs / n,
    requestsPerSecond: n / seconds,
    imageBytes: Math.round(imageBytes),
    ...(gc ? { gc } : {}),
  };
}

function post(g: Running, upload: Upload, mode: Mode): Promise<number> {
  const expected = mode === 'async' ? 202 : 200;
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host: '127.0.0.1',
        port: g.port,
        path: '/v1/predict',
        method: 'POST',
        agent: g.agent,
        headers: {
          'content-type': upload.type,
          'content-length': upload.body.length,
          prefer: mode === 'async' ? 'respond-async' : 'wait=30',
        },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          if (res.statusCode !== expected) console.error(Buffer.concat(chunks).toString());
          resolve(res.statusCode ?? 0);
        });
      },
    );
    req.on('error', reject);
    req.end(upload.body);
  });
}

/** Empties the gateway's queue and waits until its reconciliation has given the bytes back (and deleted the images). */
async function drain(g: Running): Promise<void> {
  await g.queue.obliterate({ force: true });
  const keys = redisKeys(g.prefix);
  await until('the queued images to be reconciled', async () => Number((await admin.get(keys.queuedBytes)) ?? 0) === 0, 60_000);
}

async function startGateway(label: string, checkout: string, prefix: string): Promise<Running> {
  const port = await freePort();
  // One folder per gateway: tsx's loader thread writes a profile of its own beside the main thread's.
  const profileDir = process.env.CONVEYOR_PROFILE_DIR ? path.join(process.env.CONVEYOR_PROFILE_DIR, label) : undefined;
  if (profileDir) mkdirSync(profileDir, { recursive: true });
  const profile = profileDir ? ['--cpu-prof', `--cpu-prof-dir=${profileDir}`] : [];
  const child = spawn(
    process.execPath,
    [
      '--conditions=conveyor-source',
      '--import',
      'tsx',
      ...profile,
      ...(traceGc ? ['--trace-gc'] : []),
      ...(values['node-arg'] ?? []),
      path.join(checkout, ENTRIES.gateway),
    ],
    {
      cwd: checkout,
      env: {
        ...process.env,
        REDIS_URL: redis.url,
        REDIS_PREFIX: prefix,
        PORT: String(port),
        HOST: '127.0.0.1',
        // Every request is asynchronous and no worker runs: the jobs wait for a worker as they would
        // with NO_WORKER_POLICY=queue (the default) until the bench empties the queue.
        NO_WORKER_POLICY: 'queue',
        // The bench empties the queue after every cell; the gateway gives the bytes back within a second.
        RECONCILE_INTERVAL_MS: '1000',
      },
      // As compare.bench.ts runs it: log level info (the access log is part of the cost), stdout discarded.
      stdio: ['ignore', traceGc ? 'pipe' : 'ignore', 'pipe'],
    },
  );
  const gcs = new Map<string, { count: number; pauseMs: number }>();
  if (traceGc) {
    // "[pid:0x…]   1234 ms: Scavenge 40.1 (45.2) -> 38.0 (46.2) MB, 1.23 / 0.00 ms  (…) allocation failure;"
    createInterface({ input: child.stdout! }).on('line', (line) => {
      const m = /ms: (Scavenge|Mark-Compact(?: \(reduce\))?|Mark-Sweep|Minor Mark-Sweep)\b.*?MB, ([\d.]+) \/ ([\d.]+) ms/.exec(
        line,
      );
      if (!m) return;
      const kind = m[1]!.startsWith('Mark-Compact') ? 'Mark-Compact' : m[1]!;
      const seen = gcs.get(kind) ?? { count: 0, pauseMs: 0 };
      gcs.set(kind, { count: seen.count + 1, pauseMs: seen.pauseMs + Number(m[2]) });
    });
  }
  createInterface({ input: child.stderr! }).on('line', (line) => console.error(`[${label}] ${line}`));
  console.error(`${label} gateway: pid ${child.pid}, port ${port}`);
  const base = `http://127.0.0.1:${port}`;
  await until(`the ${label} gateway`, async () => (await fetch(`${base}/health`).catch(() => undefined))?.ok === true, 60_000);
  const connection = admin.duplicate();
  const queue = new Queue(inferenceQueue('digits'), { connection, prefix });
  const agent = new Agent({ keepAlive: true, maxSockets: concurrency });
  return { label, prefix, port, checkout, child, agent, queue, connection, gcs };
}

/** The checkout's inference worker on the gateway's queue (the digits model), as `make run` starts one; waits until it serves. */
async function startWorker(g: Running): Promise<void> {
  const { label, checkout, prefix } = g;
  const worker = spawn(
    process.execPath,
    ['--conditions=conveyor-source', '--import', 'tsx', path.join(checkout, ENTRIES['inference-worker'])],
    {
      cwd: checkout,
      env: {
        ...process.env,
        REDIS_URL: redis.url,
        REDIS_PREFIX: prefix,
        MODELS: 'digits',
        DEFAULT_MODEL: 'digits',
        HEARTBEAT_INTERVAL_MS: '500',
        LOG_LEVEL: 'warn',
      },
      stdio: ['ignore', 'ignore', 'pipe'],
    },
  );
  createInterface({ input: worker.stderr }).on('line', (line) => console.error(`[${label} worker] ${line}`));
  console.error(`${label} worker: pid ${worker.pid}`);
  g.worker = worker;
  const base = `http://127.0.0.1:${g.port}`;
  await until(
    `the ${label} worker`,
    async () => (await fetch(`${base}/v2/models/digits/ready`).catch(() => undefined))?.ok === true,
    120_000,
  );
}

async function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGTERM');
  await exited;
}
