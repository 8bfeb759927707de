import { cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { freePort } from '../harness/free-port.js';
import { multipartBody, predictClient } from '../harness/load-client.js';
import { startRedis, type LocalRedis } from '../harness/redis-server.js';
import { ROOT, spawnService, type ServiceProcess } from '../harness/service-process.js';
import { LOADTEST_GATEWAY_ENV } from './lib/system.js';

/**
 * Does shadow mode add latency to callers? (docs/shadow.md, issue 23.) A private Redis, one gateway
 * and one digits worker (from source; the worker restarted per round with shadow off or on), driven
 * open-loop (requests sent on a fixed schedule whatever the answers: no coordinated omission) at
 * `--load` × the worker's measured capacity. Rounds rotate through the modes so a busy spell of the machine
 * spreads over both; each round prints the client p50 / p95 (from each request's scheduled time to
 * its answer) and the worker's CPU per request (/proc), and the summary the medians across rounds
 * and their ratio. Shadow on: SHADOW_VERSION=digits=<a copy of models/digits>, rate 1, CPU share
 * `--share`: every job runs the shadow as well, the worst case for CPU; once at the default
 * SHADOW_NICENESS (19), once at production's priority (0).
 *
 *   node --conditions=conveyor-source --import tsx loadtests/shadow-latency.ts [--rounds 3]
 *        [--seconds 20] [--load 0.5] [--share 0.5] [--out docs/evidence/shadow-latency-<date>.json]
 *
 * A benchmark, not a test: its figures depend on the machine and what else runs on it.
 */
const { values } = parseArgs({
  options: {
    rounds: { type: 'string', default: '3' },
    seconds: { type: 'string', default: '20' },
    load: { type: 'string', default: '0.5' },
    share: { type: 'string', default: '0.5' },
    out: { type: 'string' },
  },
});
const ROUNDS = Number(values.rounds);
const SECONDS = Number(values.seconds);
const LOAD = Number(values.load);
const SHARE = values.share;
const image = multipartBody(readFileSync(path.join(ROOT, 'docs/examples/seven.png')));
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
// USER_HZ on Linux: /proc/<pid>/stat counts CPU time in 1/100 s.
const TICK = 100;

function cpuMs(pid: number): number {
  // Fields 14 and 15 (utime, stime) after the command name, which may hold spaces.
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / TICK;
}

function quantile(sorted: readonly number[], q: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))]!;
}
const median = (xs: readonly number[]) =>
  quantile(
    [...xs].sort((a, b) => a - b),
    0.5,
  );
const round2 = (v: number) => Math.round(v * 100) / 100;

/**
 * off: no shadow; on: the shadow at its default niceness (SHADOW_NICENESS 19); on-nice0: the shadow at
 * production's priority (SHADOW_NICENESS=0), what the first measurement ran.
 */
const MODES = ['off', 'on', 'on-nice0'] as const;
type Mode = (typeof MODES)[number];

interface Round {
  round: number;
  shadow: Mode;
  ratePerSecond: number;
  sent: number;
  ok: number;
  errors: number;
  p50Ms: number;
  p95Ms: number;
  workerCpuMsPerRequest: number;
  shadowRuns: Record<string, number> | null;
}

let redis: LocalRedis | undefined;
let gateway: ServiceProcess | undefined;
let worker: ServiceProcess | undefined;
const dir = mkdtempSync(path.join(os.tmpdir(), 'conveyor-shadow-latency-'));

async function startWorker(mode: Mode, metricsPort: number): Promise<ServiceProcess> {
  const shadow = mode !== 'off';
  const env: Record<string, string> = {
    REDIS_URL: redis!.url,
    LOG_LEVEL: 'info',
    METRICS_PORT: String(metricsPort),
    HEARTBEAT_INTERVAL_MS: '500',
    ...(shadow ? { SHADOW_VERSION: `digits=${path.join(dir, 'shadow')}`, SHADOW_SAMPLE_RATE: '1', SHADOW_CPU_SHARE: SHARE } : {}),
    ...(mode === 'on-nice0' ? { SHADOW_NICENESS: '0' } : {}),
  };
  // Its log lines are read for 'worker ready' (info, as in production: their cost is part of a job's); only the last few kept.
  const w = spawnService('inference-worker', env, { label: shadow ? 'worker-shadow' : 'worker', keep: 200 });
  await w.waitFor((r) => r.msg === 'worker ready', 60_000);
  if (shadow) await w.waitFor((r) => r.msg === 'shadow ready', 60_000);
  return w;
}

async function waitRouted(port: number): Promise<void> {
  for (;;) {
    const reply = await fetch(`http://127.0.0.1:${port}/v2/models/digits/ready`).catch(() => undefined);
    await reply?.body?.cancel();
    if (reply?.status === 200) return;
    await sleep(100);
  }
}

/** Closed loop at concurrency 8 for `seconds`: the worker's capacity in requests per second. */
async function capacity(port: number, seconds: number): Promise<number> {
  const client = predictClient(port, 8);
  const end = performance.now() + seconds * 1000;
  let done = 0;
  await Promise.all(
    Array.from({ length: 8 }, async () => {
      while (performance.now() < end) if ((await client.send(image.body, image.type)) === 200) done++;
    }),
  );
  client.close();
  return done / seconds;
}

/** Open loop: request i leaves at start + i / rate; its latency counts from that moment. */
async function openLoop(port: number, rate: number, seconds: number) {
  const client = predictClient(port, 256);
  const latencies: number[] = [];
  let errors = 0;
  const total = Math.round(rate * seconds);
  const start = performance.now() + 50;
  const inFlight: Promise<void>[] = [];
  for (let i = 0; i < total; i++) {
    const at = start + (i * 1000) / rate;
    const wait = at - performance.now();
    if (wait > 1) await sleep(wait);
    inFlight.push(
      client.send(image.body, image.type).then(
        (status) => {
          if (status === 200) latencies.push(performance.now() - at);
          else errors++;
        },
        () => {
          errors++;
        },
      ),
    );
  }
  await Promise.all(inFlight);
  client.close();
  return { sent: total, latencies: latencies.sort((a, b) => a - b), errors };
}

async function shadowRuns(metricsPort: number): Promise<Record<string, number>> {
  const text = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
  const runs: Record<string, number> = {};
  for (const m of text.matchAll(/^conveyor_shadow_runs_total\{model="digits",outcome="(\w+)"\} (\d+)/gm))
    runs[m[1]!] = Number(m[2]);
  return runs;
}

async function main(): Promise<void> {
  cpSync(path.join(ROOT, 'models/digits'), path.join(dir, 'shadow'), { recursive: true });
  redis = await startRedis({ dir: path.join(dir, 'redis') });
  const port = await freePort();
  gateway = spawnService('gateway', { REDIS_URL: redis.url, PORT: String(port), LOG_LEVEL: 'warn', ...LOADTEST_GATEWAY_ENV });
  const metricsPort = await freePort();

  worker = await startWorker('off', metricsPort);
  await waitRouted(port);
  await capacity(port, 2); // warm-up
  const measured = await capacity(port, 8);
  const rate = Math.max(1, Math.round(measured * LOAD));
  console.log(`capacity (closed loop, c8, shadow off): ${measured.toFixed(1)} req/s → open loop at ${rate} req/s`);
  await worker.stop();
  worker = undefined;

  const rounds: Round[] = [];
  for (let r = 0; r < ROUNDS * MODES.length; r++) {
    // The modes in turn, the order rotated each cycle: none always follows another.
    const cycle = Math.floor(r / MODES.length);
    const mode = MODES[(r + cycle) % MODES.length]!;
    const shadow = mode !== 'off';
    worker = await startWorker(mode, metricsPort);
    await waitRouted(port);
    await openLoop(port, rate, 2); // warm-up, not counted
    const before = cpuMs(worker.child.pid!);
    const result = await openLoop(port, rate, SECONDS);
    const cpu = cpuMs(worker.child.pid!) - before;
    const row: Round = {
      round: r + 1,
      shadow: mode,
      ratePerSecond: rate,
      sent: result.sent,
      ok: result.latencies.length,
      errors: result.errors,
      p50Ms: round2(quantile(result.latencies, 0.5)),
      p95Ms: round2(quantile(result.latencies, 0.95)),
      // Shadow runs still queued when the load ends are not in it; the backlog is tiny (SHADOW_BACKLOG).
      workerCpuMsPerRequest: round2(cpu / Math.max(1, result.latencies.length)),
      shadowRuns: shadow ? await shadowRuns(metricsPort) : null,
    };
    rounds.push(row);
    console.log(JSON.stringify(row));
    await worker.stop();
    worker = undefined;
  }

  const of = (mode: Mode, key: 'p50Ms' | 'p95Ms' | 'workerCpuMsPerRequest') =>
    median(rounds.filter((x) => x.shadow === mode).map((x) => x[key]));
  const figure = (key: 'p50Ms' | 'p95Ms' | 'workerCpuMsPerRequest') =>
    Object.fromEntries(MODES.map((m) => [m, of(m, key)])) as Record<Mode, number>;
  const summary = { p50Ms: figure('p50Ms'), p95Ms: figure('p95Ms'), workerCpuMsPerRequest: figure('workerCpuMsPerRequest') };
  const report = {
    date: new Date().toISOString(),
    command: `node --conditions=conveyor-source --import tsx loadtests/shadow-latency.ts --rounds ${ROUNDS} --seconds ${SECONDS} --load ${LOAD} --share ${SHARE}`,
    machine: { cpus: os.cpus().length, model: os.cpus()[0]?.model ?? 'unknown', loadavg: os.loadavg().map(round2) },
    capacityPerSecond: round2(measured),
    settings: { load: LOAD, shadowSampleRate: 1, shadowCpuShare: Number(SHARE), secondsPerRound: SECONDS, roundsPerMode: ROUNDS },
    rounds,
    medians: summary,
  };
  console.log('\n| shadow | p50 (ms) | p95 (ms) | p95 ÷ off | worker CPU per request (ms) |\n|---|---|---|---|---|');
  for (const m of MODES)
    console.log(
      `| ${m} | ${summary.p50Ms[m]} | ${summary.p95Ms[m]} | ×${round2(summary.p95Ms[m] / summary.p95Ms.off)} | ${summary.workerCpuMsPerRequest[m]} |`,
    );
  const out = values.out ?? path.join(ROOT, 'docs', 'evidence', `shadow-latency-${report.date.slice(0, 10)}.json`);
  mkdirSync(path.dirname(out), { recursive: true });
  writeFileSync(out, `${JSON.stringify(report, null, 2)}\n`);
  console.log(`written: ${path.relative(ROOT, out)}`);
}

try {
  await main();
} finally {
  await worker?.stop();
  await gateway?.stop();
  await redis?.stop();
  rmSync(dir, { recursive: true, force: true });
}
