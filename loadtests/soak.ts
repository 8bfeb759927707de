import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Redis } from 'ioredis';
import { redisKeys } from '@conveyor/shared/contract/redis-keys';
import { ROOT } from '../harness/service-process.js';
import { ensureImageSet, LOADTEST_MODELS } from './lib/images.js';
import { startSystem, type LoadSystem } from './lib/system.js';
import { ensurePython, run } from './lib/tools.js';

/**
 * The soak (`make soak`, `make soak-ci`): a whole Conveyor system of its own (Redis with a
 * `maxmemory` as `make run` sets it, the gateway with callbacks on, 2 workers serving every model,
 * the monitor) under the realistic Locust mix at ~80 % of the measured capacity for SOAK_MINUTES
 * (default 120), with hostile clients (loadtests/hostile.ts) starting one after another beside it.
 * Every SOAK_SAMPLE_SECONDS it samples Redis memory, the processes' RSS, the queues and the
 * queued-bytes counter against the bytes the queued inputs really hold; it follows the prediction
 * stream to see every completion (and any job completed twice). At the end: accepted / completed /
 * lost / duplicated jobs, the polite clients' percentiles against the SLO, the slopes, a CSV, a JSON
 * summary and PNG plots in loadtests/results/soak/ (SOAK_OUT), and exit 1 on any breach. See docs/soak.md.
 */
const env = process.env;
const setting = (name: string, fallback: number): number => {
  const raw = env[name];
  if (raw === undefined || raw === '') return fallback;
  const n = Number(raw);
  if (!Number.isFinite(n) || n < 0) throw new Error(`${name} must be a non-negative number, got ${JSON.stringify(raw)}`);
  return n;
};
const minutes = setting('SOAK_MINUTES', 120);
const sampleSeconds = setting('SOAK_SAMPLE_SECONDS', minutes <= 15 ? 5 : 10);
const drainSeconds = setting('SOAK_DRAIN_SECONDS', 300);
const warmupSeconds = setting('SOAK_WARMUP_SECONDS', 30);
const loadShare = setting('SOAK_LOAD_SHARE', 0.8);
const maxMemory = env.SOAK_REDIS_MAXMEMORY || '1gb';
const outDir = path.resolve(env.SOAK_OUT || path.join(ROOT, 'loadtests', 'results', 'soak'));
const hostileKinds = (env.SOAK_HOSTILE ?? 'callback-polite,callback-bomb,callback-silent,upload-hog,flood,conn-hog')
  .split(',')
  .map((k) => k.trim())
  .filter((k) => k && k !== 'none');
const durationS = minutes * 60;
/**
 * SOAK_ENV: `NAME=value` pairs (space-separated) given to the gateway, the workers and the monitor, e.g.
 * `SOAK_ENV="RESULT_TTL_SECONDS=300"` so that a short run outlives the results it keeps.
 */
const serviceEnv = Object.fromEntries(
  (env.SOAK_ENV ?? '')
    .split(/\s+/)
    .filter(Boolean)
    .map((pair) => {
      const at = pair.indexOf('=');
      if (at < 1) throw new Error(`SOAK_ENV: expected NAME=value, got ${JSON.stringify(pair)}`);
      return [pair.slice(0, at), pair.slice(at + 1)];
    }),
);
const runsDir = path.join(ROOT, 'data', 'loadtests', 'soak');
rmSync(runsDir, { recursive: true, force: true });
mkdirSync(runsDir, { recursive: true });
mkdirSync(outDir, { recursive: true });
const PREFIX = 'conveyor';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const loadAverage = () =>
  os
    .loadavg()
    .map((l) => l.toFixed(1))
    .join(' ');

/**
 * The polite traffic's rate: SOAK_RATE if given, else SOAK_LOAD_SHARE (0.8) of the capacity of the
 * mix with 2 workers, from loadtests/results/capacity.csv: per model the highest rate within the SLO,
 * combined by the mix's shares of requests (digits' cost for bad inputs, which are cheaper still) —
 * but never above the rate the SLO is stated at (loadtests/slo.yaml `stated_at.sync_rate_rps`): the
 * soak judges the polite clients by the SLO, which promises nothing above it. The capacity file is
 * vegeta's, one model at a time, sync only; the soak's Locust mix also polls async jobs, fetches
 * URLs, sends bad inputs, and Locust itself runs on the same cores (its CPU per request is in the
 * summary), so 0.8 of vegeta's figure is nearer 0.9 of what the mix leaves (docs/soak.md).
 */
function politeRate(models: readonly string[]): { rate: number; how: string } {
  const given = setting('SOAK_RATE', 0);
  if (given > 0) return { rate: given, how: 'SOAK_RATE' };
  const file = path.join(ROOT, 'loadtests', 'results', 'capacity.csv');
  const capacity: Record<string, number> = {};
  if (existsSync(file)) {
    const [header = '', ...rows] = readFileSync(file, 'utf8').trim().split('\n');
    const cols = header.split(',');
    const at = (row: string[], name: string) => row[cols.indexOf(name)] ?? '';
    for (const line of rows) {
      const row = line.split(',');
      if (at(row, 'workers') !== '2' || at(row, 'within_slo') !== 'yes') continue;
      const model = at(row, 'model');
      capacity[model] = Math.max(capacity[model] ?? 0, Number(at(row, 'target_rps')));
    }
  }
  const digits = capacity.digits ?? 200;
  const moderation = capacity.moderation ?? 60;
  // locustfile.py's task weights: 60 sync, 15 moderation, 10 URL, 20 async, 8 bad input.
  const moderationShare = models.includes('moderation') ? 15 / 113 : 0;
  const mixed = 1 / ((1 - moderationShare) / digits + moderationShare / moderation);
  const share = Math.round(loadShare * mixed);
  const stated = Number(
    /sync_rate_rps:\s*([\d.]+)/.exec(readFileSync(path.join(ROOT, 'loadtests', 'slo.yaml'), 'utf8'))?.[1] ?? NaN,
  );
  const capacityHow = `${loadShare} × the mix's capacity ${mixed.toFixed(0)}/s (digits ${digits}/s, moderation ${moderation}/s with 2 workers, capacity.csv)`;
  if (Number.isFinite(stated) && stated < share)
    return { rate: stated, how: `the SLO's stated rate (slo.yaml), below ${capacityHow} = ${share}/s` };
  return { rate: share, how: capacityHow };
}

/** When each hostile client starts, as a share of the run: a polite baseline first, then one more at a time. */
const HOSTILE_START: Record<string, number> = {
  'callback-polite': 0,
  'callback-bomb': 0.1,
  'callback-silent': 0.2,
  'upload-hog': 0.3,
  flood: 0.4,
  'conn-hog': 0.5,
};
/** Each hostile client's own address (keys are off: the address is the tenant). */
const HOSTILE_FROM: Record<string, string> = { flood: '127.0.0.2', 'upload-hog': '127.0.0.3', 'conn-hog': '127.0.0.4' };

interface Sample {
  t_s: number;
  load_1m: number;
  redis_used_memory_mb: number;
  rss_mb: Record<string, number>;
  waiting: Record<string, number>;
  active: number;
  callbacks_pending: number;
  queued_bytes_counter: number;
  queued_input_bytes: number;
  all_input_bytes: number;
  input_keys: number;
  completed: number;
  duplicates: number;
}

/**
 * What the queued-bytes counter still holds, job by job (at most `limit`): each entry of the
 * per-job hash with the state of its BullMQ job, its reservation and its result, so that a
 * counter left above the held bytes says which path kept it.
 */
async function counterEntries(redis: Redis, system: LoadSystem, limit = 10): Promise<Record<string, unknown>[]> {
  const k = redisKeys(PREFIX);
  const entries = Object.entries(await redis.hgetall(k.queuedImages)).slice(0, limit);
  const out: Record<string, unknown>[] = [];
  for (const [id, held] of entries) {
    const row: Record<string, unknown> = { id, held };
    for (const model of system.models) {
      const queue = `${PREFIX}:${model === 'digits' ? 'inference' : `inference.${model}`}`;
      const job = await redis.hgetall(`${queue}:${id}`);
      if (Object.keys(job).length === 0) continue;
      const { data: _data, opts: _opts, ...state } = job;
      row.job = { model, ...state };
      row.delayed = (await redis.zscore(`${queue}:delayed`, id)) !== null;
    }
    const reservations = held.split(' ')[2];
    row.reservation_lapses_at = reservations ? await redis.zscore(reservations, id) : null;
    row.result = await redis.get(k.result(id));
    row.input_exists = (await redis.exists(k.input(id))) === 1;
    out.push(row);
  }
  return out;
}

/** The ids in one model queue's wait, active, prioritized, delayed and paused sets, in that order. */
async function queueLists(redis: Redis, model: string): Promise<string[][]> {
  const queue = `${PREFIX}:${model === 'digits' ? 'inference' : `inference.${model}`}`;
  return (await redis
    .pipeline()
    .lrange(`${queue}:wait`, 0, -1)
    .lrange(`${queue}:active`, 0, -1)
    .zrange(`${queue}:prioritized`, 0, -1)
    .zrange(`${queue}:delayed`, 0, -1)
    .lrange(`${queue}:paused`, 0, -1)
    .exec())!.map(([, v]) => v as string[]);
}

/** The queued-bytes counter, and the bytes the inputs of the jobs in the model queues hold. */
async function counterAndHeld(redis: Redis, system: LoadSystem): Promise<[number, number]> {
  const ids: string[] = [];
  for (const model of system.models) ids.push(...(await queueLists(redis, model)).flat());
  const p = redis.pipeline().get(redisKeys(PREFIX).queuedBytes);
  for (const id of ids) p.strlen(redisKeys(PREFIX).input(id));
  const [first, ...lengths] = (await p.exec())!;
  return [Number(first?.[1] ?? 0), lengths.reduce((a, [, n]) => a + Number(n), 0)];
}

/** CPU seconds a process has used so far (user + system, from /proc/<pid>/stat; NaN once it is gone). */
function cpuSeconds(pid: number | undefined): number {
  if (pid === undefined) return NaN;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The fields after the command's closing parenthesis: state is the first, utime the 12th, stime the 13th.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS;
  } catch {
    return NaN;
  }
}
const CLOCK_TICKS = Number(spawnSync('getconf', ['CLK_TCK']).stdout.toString().trim()) || 100;

function rssMb(pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) / 1024 : NaN;
  } catch {
    return NaN;
  }
}

/** Every completion on the prediction stream, read from the start with a cursor of its own (no consumer group). */
class StreamWatch {
  readonly seen = new Map<string, number>();
  duplicates = 0;
  private stopped = false;
  private readonly done: Promise<void>;
  constructor(private readonly redis: Redis) {
    this.done = this.loop();
  }
  private async loop(): Promise<void> {
    let last = '0';
    while (!this.stopped) {
      const reply = await this.redis.xread('COUNT', 2000, 'BLOCK', 1000, 'STREAMS', `${PREFIX}:stream:predictions`, last);
      for (const [, entries] of reply ?? []) {
        for (const [id, fields] of entries) {
          last = id;
          const event = fields[fields.indexOf('event') + 1];
          if (!event) continue;
          const jobId = (JSON.parse(event) as { jobId: string }).jobId;
          const n = (this.seen.get(jobId) ?? 0) + 1;
          this.seen.set(jobId, n);
          if (n > 1) this.duplicates++;
        }
      }
    }
  }
  async stop(): Promise<void> {
    this.stopped = true;
    await this.done;
  }
}

async function sample(redis: Redis, system: LoadSystem, t0: number, watch: StreamWatch): Promise<Sample> {
  const info = await redis.info('memory');
  const used = Number(/used_memory:(\d+)/.exec(info)?.[1] ?? NaN);
  const waiting: Record<string, number> = {};
  let active = 0;
  const queuedIds: string[] = [];
  for (const model of system.models) {
    const [wait, act, prio, delayed, paused] = await queueLists(redis, model);
    waiting[model] = wait!.length + prio!.length + paused!.length;
    active += act!.length;
    queuedIds.push(...wait!, ...act!, ...prio!, ...delayed!, ...paused!);
  }
  const [[, cbWait], [, cbDelayed], [, counter]] = (await redis
    .pipeline()
    .llen(`${PREFIX}:callbacks:wait`)
    .zcard(`${PREFIX}:callbacks:delayed`)
    // From the contract, not spelled here: the key moved once (admission:queued-bytes → the sum
    // beside the per-job hash) and a spelled-out name read a key nobody wrote any more.
    .get(redisKeys(PREFIX).queuedBytes)
    .exec()) as [[null, number], [null, number], [null, string | null]];
  const strlen = async (keys: string[]) => {
    let total = 0;
    for (let i = 0; i < keys.length; i += 1000) {
      const p = redis.pipeline();
      for (const k of keys.slice(i, i + 1000)) p.strlen(k);
      for (const [, v] of (await p.exec())!) total += Number(v);
    }
    return total;
  };
  const queuedInputBytes = await strlen(queuedIds.map((id) => `${PREFIX}:input:${id}`));
  const inputKeys: string[] = [];
  let cursor = '0';
  do {
    const [next, found] = await redis.scan(cursor, 'MATCH', `${PREFIX}:input:*`, 'COUNT', 2000);
    cursor = next;
    inputKeys.push(...found);
  } while (cursor !== '0');
  const rss: Record<string, number> = {};
  for (const [label, pid] of Object.entries(system.pids())) rss[label] = rssMb(pid);
  return {
    t_s: (Date.now() - t0) / 1000,
    load_1m: os.loadavg()[0]!,
    redis_used_memory_mb: used / 1048576,
    rss_mb: rss,
    waiting,
    active,
    callbacks_pending: cbWait + cbDelayed,
    queued_bytes_counter: Number(counter ?? 0),
    queued_input_bytes: queuedInputBytes,
    all_input_bytes: await strlen(inputKeys),
    input_keys: inputKeys.length,
    completed: watch.seen.size,
    duplicates: watch.duplicates,
  };
}

/** Least-squares slope of y over x. */
function slope(points: [number, number][]): number {
  const ok = points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
  if (ok.length < 2) return NaN;
  const mx = ok.reduce((s, [x]) => s + x, 0) / ok.length;
  const my = ok.reduce((s, [, y]) => s + y, 0) / ok.length;
  const sxx = ok.reduce((s, [x]) => s + (x - mx) ** 2, 0);
  return sxx === 0 ? NaN : ok.reduce((s, [x, y]) => s + (x - mx) * (y - my), 0) / sxx;
}

function parseBytes(text: string): number {
  const m = /^(\d+)([kmg]?)b?$/i.exec(text.trim());
  if (!m) throw new Error(`SOAK_REDIS_MAXMEMORY: not a size: ${text}`);
  return Number(m[1]) * { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 }[m[2]!.toLowerCase() as '' | 'k' | 'm' | 'g'];
}

async function workerOutcomes(urls: readonly string[]): Promise<Record<string, number>> {
  const totals: Record<string, number> = {};
  for (const url of urls) {
    const text = await (await fetch(url).catch(() => undefined))?.text().catch(() => '');
    for (const line of (text ?? '').split('\n')) {
      const m = /^conveyor_worker_jobs_total\{.*outcome="([a-z_]+)".*\} (\S+)$/.exec(line);
      if (m) totals[m[1]!] = (totals[m[1]!] ?? 0) + Number(m[2]);
    }
  }
  return totals;
}

// ── the run ─────────────────────────────────────────────────────────────────────────────────────

const python = ensurePython();
const set = await ensureImageSet();
const models = existsSync(path.join(ROOT, 'models', 'moderation', 'model.onnx')) ? [...LOADTEST_MODELS] : ['digits'];
const { rate, how } = politeRate(models);
const users = Math.max(10, Math.round(setting('SOAK_USERS', rate)));
// Real clients arrive from many hosts: each polite user sends from its own loopback address (one
// tenant each, for fair queuing and the per-client shares), unless SOAK_CLIENTS says fewer.
const clients = Math.round(setting('SOAK_CLIENTS', users));
const digitImage = set.valid.find((i) => i.model === 'digits' && i.contentType === 'image/png')!;
const callbackSecret = `whsec_${Buffer.from('conveyor-soak-callback-secret-32bytes!!').toString('base64')}`;
console.log(
  `soak: ${minutes} min, polite ${rate} tasks/s (${how}) from ${users} Locust users; models ${models.join(', ')}` +
    `${models.length === 1 ? ' (models/moderation/model.onnx missing: `make model-moderation` for both)' : ''}; Redis maxmemory ${maxMemory};` +
    ` hostile: ${hostileKinds.join(', ') || 'none'}; sample every ${sampleSeconds} s; load average ${loadAverage()} (${os.cpus().length} cores)`,
);

const system = await startSystem({
  workers: 2,
  models,
  redisMaxMemory: maxMemory,
  redisPersist: env.SOAK_REDIS_AOF !== '0',
  workerMetrics: true,
  gateway: { CALLBACK_SECRET: callbackSecret, ...serviceEnv },
  worker: serviceEnv,
  monitor: serviceEnv,
  verbose: env.SOAK_VERBOSE === '1',
});
/** Locust's arguments for the polite users over `seconds`, writing its files under `name` in the runs folder. */
const locustArgs = (seconds: number, name: string) => [
  '-f',
  path.join(ROOT, 'loadtests', 'locustfile.py'),
  '--headless',
  '--host',
  system.url,
  '--shape',
  'soak',
  '--soak-rate',
  String(rate),
  '--soak-users',
  String(users),
  '--soak-seconds',
  String(seconds),
  '--client-addresses',
  String(clients),
  '--models',
  models.join(','),
  '--jobs-file',
  path.join(runsDir, `${name}-jobs.json`),
  '--csv',
  path.join(runsDir, name),
  '--csv-full-history',
  '--html',
  path.join(runsDir, `${name}-report.html`),
  '--only-summary',
  '--loglevel',
  'WARNING',
];
// Warm-up: the same polite traffic for SOAK_WARMUP_SECONDS before the measured run, its figures not
// judged (its jobs are accounted for like the others). Started cold, the first seconds of a run
// answered in ~1 s (code paths compiled on first use, each model's first inferences, 100 users
// arriving at once): a few seconds of that spend half of a p95's 5 % on start-up, which is not what
// a soak measures. A service that has run for hours is warm.
if (warmupSeconds > 0) {
  console.log(`  warm-up: ${warmupSeconds} s of the polite traffic, not judged`);
  await run(path.join(path.dirname(python), 'locust'), [...locustArgs(warmupSeconds, 'warmup')], {
    quiet: true,
  });
}
const redis = new Redis(system.redisUrl, { maxRetriesPerRequest: 3 });
const streamRedis = new Redis(system.redisUrl, { maxRetriesPerRequest: null });
const watch = new StreamWatch(streamRedis);
const samples: Sample[] = [];
const events: { t_s: number; what: string }[] = [];
const children: ChildProcess[] = [];
const t0 = Date.now();
let locustPid: number | undefined;
const settled = { afterS: NaN };
let locustCpuLast = NaN;
const sampling = { on: true };
const sampler = (async () => {
  while (sampling.on) {
    const started = Date.now();
    const locustCpu = cpuSeconds(locustPid);
    if (Number.isFinite(locustCpu)) locustCpuLast = locustCpu;
    try {
      samples.push(await sample(redis, system, t0, watch));
    } catch (error) {
      events.push({ t_s: (Date.now() - t0) / 1000, what: `sample failed: ${String(error)}` });
    }
    await sleep(Math.max(0, sampleSeconds * 1000 - (Date.now() - started)));
  }
})();

const prefix = path.join(runsDir, 'polite');
const jobsFile = `${prefix}-jobs.json`;
const locust = run(path.join(path.dirname(python), 'locust'), locustArgs(durationS, 'polite'), {
  onSpawn: (child) => (locustPid = child.pid),
});
// CPU seconds per process over the load phase (the services, and Locust itself: on one machine the
// load generator's CPU is taken from the system it measures).
const loadStarted = Date.now();
let loadSeconds = NaN;
const cpuUsed: Record<string, number> = {};
const cpuAtStart = Object.fromEntries(Object.entries(system.pids()).map(([l, pid]) => [l, cpuSeconds(pid)]));

const hostile = hostileKinds.map(async (kind) => {
  if (!(kind in HOSTILE_START))
    throw new Error(`SOAK_HOSTILE: unknown client ${kind} (known: ${Object.keys(HOSTILE_START).join(', ')})`);
  const startAt = HOSTILE_START[kind]! * durationS;
  await sleep(startAt * 1000);
  const seconds = Math.max(1, Math.round(durationS - (Date.now() - t0) / 1000));
  events.push({ t_s: (Date.now() - t0) / 1000, what: `${kind} starts` });
  console.log(`  t=${((Date.now() - t0) / 1000).toFixed(0)} s: ${kind} starts (load average ${loadAverage()})`);
  const args = [
    '--conditions=conveyor-source',
    '--import',
    'tsx',
    path.join(ROOT, 'loadtests', 'hostile.ts'),
    kind,
    '--gateway',
    system.url,
    '--seconds',
    String(seconds),
    '--image',
    path.join(set.dir, digitImage.file),
    '--out',
    path.join(runsDir, `${kind}.json`),
    '--ids',
    path.join(runsDir, `${kind}-ids.txt`),
    '--from',
    HOSTILE_FROM[kind] ?? '127.0.0.1',
    ...(kind === 'callback-bomb' ? ['--every', '10', '--bomb-mb', String(setting('SOAK_BOMB_MB', 128))] : []),
    ...(kind === 'callback-silent' ? ['--every', '1'] : []),
    ...(kind === 'callback-polite' ? ['--every', '2'] : []),
    ...(kind === 'flood' ? ['--jobs', String(setting('SOAK_FLOOD_JOBS', 10_000))] : []),
  ];
  const child = spawn(process.execPath, args, { cwd: ROOT, stdio: ['ignore', 'inherit', 'inherit'] });
  children.push(child);
  const code = await new Promise<number>((resolve) => child.once('exit', (c) => resolve(c ?? 1)));
  events.push({ t_s: (Date.now() - t0) / 1000, what: `${kind} ended (${code})` });
});

let locustCode: number;
try {
  locustCode = await locust;
  loadSeconds = (Date.now() - loadStarted) / 1000;
  for (const [l, pid] of Object.entries(system.pids())) cpuUsed[l] = cpuSeconds(pid) - (cpuAtStart[l] ?? NaN);
  cpuUsed.locust = locustCpuLast;
  events.push({ t_s: (Date.now() - t0) / 1000, what: 'polite load ended' });
  for (const c of children) if (c.exitCode === null) c.kill('SIGTERM');
  await Promise.all(hostile);
  // Drain: every queue empty (and no callback left to try) or SOAK_DRAIN_SECONDS.
  const drainUntil = Date.now() + drainSeconds * 1000;
  while (Date.now() < drainUntil) {
    const last = samples.at(-1);
    if (last && last.t_s * 1000 > Date.now() - t0 - sampleSeconds * 2000) {
      const waiting = Object.values(last.waiting).reduce((a, b) => a + b, 0);
      if (waiting === 0 && last.active === 0) break;
    }
    await sleep(1000);
  }
  // Settled: the counter may still hold the reservations of uploads cut when Locust stopped its
  // users (given back when the gateway sees the socket end or its upload guard cuts it) and the
  // bytes of jobs that left without a commit (given back by the gateways' reconciliation every
  // RECONCILE_INTERVAL_MS; a lost release once its reservation lapses, 60 s). The product's promise
  // is that it settles, so the check waits for the counter to equal the bytes the queued inputs
  // hold, up to 60 + 10 s + a margin, and reports how long it took.
  const settleFrom = Date.now();
  const settleUntil = settleFrom + 80_000;
  for (;;) {
    const [counter, held] = await counterAndHeld(redis, system);
    settled.afterS = (Date.now() - settleFrom) / 1000;
    if (counter === held || Date.now() > settleUntil) break;
    await sleep(1000);
  }
  await sleep(sampleSeconds * 1000 + 500);
  events.push({
    t_s: (Date.now() - t0) / 1000,
    what: `drained (queued-bytes counter settled after ${settled.afterS.toFixed(0)} s)`,
  });
} finally {
  sampling.on = false;
  await sampler;
}

// ── accounting ──────────────────────────────────────────────────────────────────────────────────

const accepted = new Map<string, string>(); // id → who
const politeJobs = existsSync(jobsFile) ? (JSON.parse(readFileSync(jobsFile, 'utf8')) as Record<string, string>) : {};
for (const id of Object.keys(politeJobs)) accepted.set(id, 'polite');
const warmupJobsFile = path.join(runsDir, 'warmup-jobs.json');
if (existsSync(warmupJobsFile))
  for (const id of Object.keys(JSON.parse(readFileSync(warmupJobsFile, 'utf8')) as Record<string, string>))
    accepted.set(id, 'warm-up');
const hostileStats: Record<string, unknown> = {};
for (const kind of hostileKinds) {
  const ids = path.join(runsDir, `${kind}-ids.txt`);
  if (existsSync(ids)) for (const id of readFileSync(ids, 'utf8').split('\n').filter(Boolean)) accepted.set(id, kind);
  const summary = path.join(runsDir, `${kind}.json`);
  hostileStats[kind] = existsSync(summary) ? JSON.parse(readFileSync(summary, 'utf8')) : { error: 'no summary (crashed?)' };
}
await watch.stop();
const outcomes = await workerOutcomes(system.workerMetricsUrls);
const unresolved = [...accepted.keys()].filter((id) => !watch.seen.has(id));
const results = new Map<string, string>();
for (let i = 0; i < unresolved.length; i += 500) {
  const chunk = unresolved.slice(i, i + 500);
  const values = await redis.mget(chunk.map((id) => `${PREFIX}:result:${id}`));
  chunk.forEach((id, j) => {
    const value = values[j];
    if (value) results.set(id, value);
  });
}
const lostIds: { id: string; who: string; why: string }[] = [];
let refused = 0;
for (const id of unresolved) {
  const raw = results.get(id);
  const parsed = raw
    ? (JSON.parse(raw) as { status: string; error?: { status: number; slug: string; detail: string } })
    : undefined;
  if (parsed?.status === 'completed') continue; // completed before the stream was read (cannot happen) or trimmed
  if (parsed?.status === 'failed' && parsed.error && parsed.error.status < 500) {
    refused++;
    continue;
  }
  const why = parsed?.error
    ? `failed ${parsed.error.status} ${parsed.error.slug}: ${parsed.error.detail.slice(0, 160)}`
    : 'no result';
  lostIds.push({ id, who: accepted.get(id)!, why });
}
const acceptedCompleted = [...accepted.keys()].filter(
  (id) => watch.seen.has(id) || results.get(id)?.includes('"completed"'),
).length;
const publishedTwice = [...watch.seen.values()].filter((n) => n > 1).length;
const duplicated = publishedTwice + (outcomes.not_published ?? 0);

const leftInCounter = await counterEntries(redis, system).catch((error: unknown) => [{ error: String(error) }]);
const pids = system.pids();
await system.stop().catch(() => undefined);
redis.disconnect();
streamRedis.disconnect();

// ── verdict ─────────────────────────────────────────────────────────────────────────────────────

const loadEnd = durationS;
const labels = Object.keys(pids);
const csvFile = path.join(outDir, 'soak.csv');
const header = [
  't_s',
  'load_1m',
  'redis_used_memory_mb',
  ...labels.map((l) => `${l}_rss_mb`),
  ...models.map((m) => `waiting_${m}`),
  'active',
  'callbacks_pending',
  'queued_bytes_counter',
  'queued_input_bytes',
  'all_input_bytes',
  'input_keys',
  'completed',
  'duplicates',
];
writeFileSync(
  csvFile,
  [
    header.join(','),
    ...samples.map((s) =>
      [
        s.t_s.toFixed(1),
        s.load_1m.toFixed(2),
        s.redis_used_memory_mb.toFixed(2),
        ...labels.map((l) => (s.rss_mb[l] ?? NaN).toFixed(1)),
        ...models.map((m) => s.waiting[m] ?? 0),
        s.active,
        s.callbacks_pending,
        s.queued_bytes_counter,
        s.queued_input_bytes,
        s.all_input_bytes,
        s.input_keys,
        s.completed,
        s.duplicates,
      ].join(','),
    ),
  ].join('\n') + '\n',
);
writeFileSync(
  path.join(outDir, 'events.csv'),
  ['t_s,event', ...events.map((e) => `${e.t_s.toFixed(1)},${e.what}`)].join('\n') + '\n',
);

// Slopes over the load phase after its first quarter (the start-up transient and first fills excluded).
const steady = samples.filter((s) => s.t_s >= loadEnd / 4 && s.t_s <= loadEnd);
const perHour = (pick: (s: Sample) => number) => slope(steady.map((s) => [s.t_s / 3600, pick(s)])) || NaN;
const memorySlope = perHour((s) => s.redis_used_memory_mb);
const maxMemoryMb = parseBytes(maxMemory) / 1048576;
const lastMemory = steady.at(-1)?.redis_used_memory_mb ?? NaN;
const peakMemory = Math.max(...samples.map((s) => s.redis_used_memory_mb));
// Plateau: a day more at this slope stays under 80 % of maxmemory (a flat or falling curve always does).
const dayProjection = lastMemory + Math.max(0, memorySlope) * 24;
const plateau = Number.isFinite(dayProjection) && dayProjection <= 0.8 * maxMemoryMb && peakMemory < 0.9 * maxMemoryMb;
const rssSlopes = Object.fromEntries(labels.map((l) => [l, perHour((s) => s.rss_mb[l] ?? NaN)]));
const drift = samples.map((s) => s.queued_bytes_counter - s.queued_input_bytes);
const finalDrift = drift.at(-1) ?? NaN;
const lastSample = samples.at(-1);
// Once drained, the counter must equal the bytes the queued inputs hold: both 0 when nothing is queued.
const drained = lastSample !== undefined && lastSample.active === 0 && Object.values(lastSample.waiting).every((n) => n === 0);
// Read at slightly different moments, the lists and the counter may disagree by a job in flight,
// at most an image (3 MiB), while anything is queued; once nothing is, only an exact 0 will do.
const driftOk = Number.isFinite(finalDrift) && Math.abs(finalDrift) <= (drained ? 0 : 3 * 1024 * 1024);

const verdictFile = path.join(runsDir, 'polite-verdict.json');
const checkCode = await run(python, [path.join(ROOT, 'loadtests', 'check_slo.py'), 'locust', prefix, '--json', verdictFile]);
const verdict = existsSync(verdictFile)
  ? (JSON.parse(readFileSync(verdictFile, 'utf8')) as {
      ok: boolean;
      rows: { objective: string; limit: string; measured: string; ok: boolean }[];
      measured: {
        sync: { name: string; p50: number | null; p95: number | null; p99: number | null; count: number; misses: number }[];
        async_e2e: { p50: number | null; p95: number | null; p99: number | null } | null;
      };
    })
  : undefined;

/** Requests per second the polite users really sent (a closed model: fewer when the answers are slow). */
const politeSent = (() => {
  const file = `${prefix}_stats.csv`;
  if (!existsSync(file)) return NaN;
  const [header = '', ...rows] = readFileSync(file, 'utf8').trim().split('\n');
  const cols = header.split(',');
  const total = rows.find((r) => r.split(',')[1] === 'Aggregated')?.split(',');
  return total ? Number(total[cols.indexOf('Request Count')]) / durationS : NaN;
})();

const breaches: string[] = [];
if (lostIds.length > 0) breaches.push(`${lostIds.length} accepted jobs lost`);
if (duplicated > 0)
  breaches.push(`${duplicated} duplicated (published twice ${publishedTwice}, second inferences ${outcomes.not_published ?? 0})`);
if (!verdict?.ok)
  breaches.push(
    `polite clients outside the SLO (${
      verdict?.rows
        .filter((r) => !r.ok)
        .map((r) => r.objective)
        .join(', ') ?? 'no verdict'
    })`,
  );
if (!plateau)
  breaches.push(
    `Redis memory not plateaued (slope ${memorySlope.toFixed(1)} MB/h after the first quarter, ${lastMemory.toFixed(0)} MB now → ${dayProjection.toFixed(0)} MB in 24 h; bound 80 % of ${maxMemoryMb.toFixed(0)} MB)`,
  );
if (!driftOk)
  breaches.push(`queued-bytes counter drift ${finalDrift} bytes ${drained ? 'after draining' : '(queues not drained)'}`);

const summary = {
  date: new Date().toISOString(),
  commit: (await import('node:child_process')).execSync('git rev-parse --short HEAD', { cwd: ROOT }).toString().trim(),
  minutes,
  polite_rate: rate,
  polite_rate_from: how,
  polite_sent_per_s: politeSent,
  service_env: serviceEnv,
  users,
  models,
  redis_maxmemory: maxMemory,
  hostile: hostileKinds.map((k) => ({ kind: k, starts_at_s: HOSTILE_START[k]! * durationS, ...(hostileStats[k] as object) })),
  load_average_end: loadAverage(),
  load_1m_mean: samples.reduce((a, s) => a + s.load_1m, 0) / Math.max(1, samples.length),
  jobs: {
    accepted: accepted.size,
    completed: acceptedCompleted,
    refused_with_reason: refused,
    lost: lostIds.length,
    lost_by_client: lostIds.reduce<Record<string, number>>((m, l) => ((m[l.who] = (m[l.who] ?? 0) + 1), m), {}),
    lost_examples: lostIds.slice(0, 10),
    completions_seen: watch.seen.size,
    published_twice: publishedTwice,
    worker_outcomes: outcomes,
    duplicated,
  },
  polite: verdict
    ? { ok: verdict.ok, rows: verdict.rows, sync: verdict.measured.sync, async_e2e: verdict.measured.async_e2e }
    : null,
  redis: {
    peak_mb: peakMemory,
    last_load_mb: lastMemory,
    slope_mb_per_h: memorySlope,
    day_projection_mb: dayProjection,
    maxmemory_mb: maxMemoryMb,
    plateau,
  },
  rss_slope_mb_per_h: rssSlopes,
  rss_peak_mb: Object.fromEntries(labels.map((l) => [l, Math.max(...samples.map((s) => s.rss_mb[l] ?? 0))])),
  queued_bytes: {
    final_counter: lastSample?.queued_bytes_counter,
    final_held: lastSample?.queued_input_bytes,
    final_drift: finalDrift,
    max_drift: Math.max(...drift),
    final_all_input_bytes: lastSample?.all_input_bytes,
    final_input_keys: lastSample?.input_keys,
    settled_after_s: settled.afterS,
    // Up to 10 entries the counter still held at the end, with their jobs' state (why it drifted).
    entries_left: leftInCounter,
  },
  // CPU seconds over the load phase and per polite task: what the system spent, and what the load
  // generator took from the same two cores.
  cpu_seconds: cpuUsed,
  cpu_ms_per_polite_request: Object.fromEntries(
    Object.entries(cpuUsed).map(([l, s]) => [l, Number(((s * 1000) / Math.max(1, politeSent * loadSeconds)).toFixed(2))]),
  ),
  load_seconds: loadSeconds,
  locust_exit: locustCode,
  slo_check_exit: checkCode,
  breaches,
};
writeFileSync(path.join(outDir, 'summary.json'), `${JSON.stringify(summary, null, 2)}\n`);
await run(python, [path.join(ROOT, 'loadtests', 'plot_soak.py'), outDir, `${prefix}_stats_history.csv`]);

const f = (v: number | null | undefined, unit = '') =>
  v === null || v === undefined || !Number.isFinite(v) ? '—' : `${v.toFixed(1)}${unit}`;
console.log(
  `\nsoak: ${minutes} min at ${rate}/s polite (sent ${f(politeSent, '/s')}), models ${models.join(', ')}; load average ${loadAverage()} (mean 1-min ${summary.load_1m_mean.toFixed(1)})`,
);
console.log(
  `  jobs: ${accepted.size} accepted, ${acceptedCompleted} completed, ${refused} refused with a reason, ${lostIds.length} lost, ${duplicated} duplicated` +
    ` (published twice ${publishedTwice}, second inferences ${outcomes.not_published ?? 0})`,
);
for (const l of lostIds.slice(0, 5)) console.log(`    lost ${l.id} (${l.who}): ${l.why}`);
for (const s of verdict?.measured.sync ?? [])
  console.log(
    `  polite ${s.name}: p50 ${f(s.p50, ' ms')} p95 ${f(s.p95, ' ms')} p99 ${f(s.p99, ' ms')} (${s.count} requests, ${s.misses} not 200)`,
  );
console.log(
  `  Redis used_memory: peak ${f(peakMemory, ' MB')}, slope after the first quarter ${f(memorySlope, ' MB/h')} → ${f(dayProjection, ' MB')} in 24 h (maxmemory ${maxMemoryMb.toFixed(0)} MB): ${plateau ? 'plateau' : 'NOT PLATEAUED'}`,
);
console.log(
  `  CPU over the load phase (s): ${Object.entries(cpuUsed)
    .map(([l, s]) => `${l} ${f(s)}`)
    .join(', ')} (${f(loadSeconds)} s × ${os.cpus().length} cores)`,
);
console.log(`  RSS slopes (MB/h): ${labels.map((l) => `${l} ${f(rssSlopes[l])}`).join(', ')}`);
console.log(
  `  queued-bytes counter ${lastSample?.queued_bytes_counter} vs held ${lastSample?.queued_input_bytes} after draining (drift ${finalDrift}); every input key: ${lastSample?.all_input_bytes} bytes in ${lastSample?.input_keys} keys`,
);
for (const [kind, st] of Object.entries(hostileStats)) console.log(`  ${kind}: ${JSON.stringify(st)}`);
console.log(`  wrote ${path.relative(ROOT, csvFile)}, summary.json, events.csv and the plots in ${path.relative(ROOT, outDir)}`);
if (breaches.length) {
  console.log(`SOAK FAILED: ${breaches.join('; ')}`);
  process.exit(1);
}
console.log('soak passed: 0 lost, 0 duplicated, polite within the SLO, memory plateaued, queued bytes exact');
process.exit(0);
