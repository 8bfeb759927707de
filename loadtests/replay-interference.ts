import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { Agent, request } from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { freePort } from '../harness/free-port.js';
import { multipartBody } from '../harness/load-client.js';
import { startRedis } from '../harness/redis-server.js';
import { ROOT, spawnService, type ServiceProcess } from '../harness/service-process.js';
import { recordThroughGateway, replayThroughGateway } from '../services/trainer/src/replay/replay-client.js';
import { readReplaySet, writeReplaySet } from '../services/trainer/src/replay/replay-set.js';
import { replayName, stageCandidate } from '../services/trainer/src/replay/run-replay.js';
import { digitPng, heldOutDigits } from '../test/support/images.js';

/**
 * Does a replay delay production? (issue 23, docs/replay.md.) A private Redis, one gateway and one
 * production digits worker, as `make run` starts them; a recorded set of 200 held-out digits; then
 * production's own traffic — synchronous requests at a fixed rate of `--load` × the measured
 * capacity (open loop) — in interleaved rounds of `--seconds` each, in three conditions:
 *
 *   none         production traffic alone
 *   replay       a replay running throughout, as `make replay` runs one: its own worker
 *                (MODELS=digits-replay:1), its requests at low priority through the same gateway,
 *                one after another, over and over
 *   replay-nice  the same with the replay worker at niceness 19
 *   replay-paced the same, its requests paced to `--replay-rate` a second (what `make replay` does)
 *
 * Prints per condition the medians over rounds of production's client-side p50/p95/p99, its
 * throughput, the replay's throughput, and each worker's CPU per round (from /proc). Exit 0 always:
 * a measurement, not a test.
 *
 *   node --conditions=conveyor-source --import tsx loadtests/replay-interference.ts [--rounds 3]
 *        [--seconds 30] [--load 0.5] [--replay-rate 20] [--out docs/evidence/replay-interference.json]
 */
const { values } = parseArgs({
  options: {
    rounds: { type: 'string', default: '3' },
    seconds: { type: 'string', default: '30' },
    load: { type: 'string', default: '0.5' },
    calibrate: { type: 'string', default: '400' },
    'replay-rate': { type: 'string', default: '20' },
    out: { type: 'string' },
  },
});
const ROUNDS = Number(values.rounds);
const SECONDS = Number(values.seconds);
const LOAD = Number(values.load);
const CALIBRATE = Number(values.calibrate);
const REPLAY_RATE = Number(values['replay-rate']);
const CONDITIONS = ['none', 'replay', 'replay-nice', 'replay-paced'] as const;
type Condition = (typeof CONDITIONS)[number];
const image = multipartBody(readFileSync(path.join(ROOT, 'docs/examples/seven.png')));
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const TICKS = 100; // USER_HZ on Linux

interface Answer {
  status: number;
  ms: number;
}

function client(port: number) {
  const agent = new Agent({ keepAlive: true, maxSockets: 1024 });
  const call = (method: string, urlPath: string, headers: Record<string, string | number> = {}, body?: Buffer) =>
    new Promise<Answer & { text: string }>((resolve, reject) => {
      const started = performance.now();
      const req = request({ host: '127.0.0.1', port, path: urlPath, method, agent, headers }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () =>
          resolve({ status: res.statusCode ?? 0, ms: performance.now() - started, text: Buffer.concat(chunks).toString() }),
        );
      });
      req.on('error', reject);
      req.end(body);
    });
  return {
    predict: (prefer: string) =>
      call('POST', '/v1/predict', { 'content-type': image.type, 'content-length': image.body.length, prefer }, image.body),
    get: (urlPath: string) => call('GET', urlPath),
    close: () => agent.destroy(),
  };
}

/** CPU seconds (user + system) a process has used so far. */
function cpuSeconds(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return (Number(fields[11]) + Number(fields[12])) / TICKS;
}

const pct = (xs: number[], p: number) => {
  const sorted = [...xs].sort((a, b) => a - b);
  return sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]! : NaN;
};
const median = (xs: number[]) => pct(xs, 0.5);
const round1 = (x: number) => Math.round(x * 10) / 10;
const share = (cpuSeconds: number, wall: number) => Math.round((cpuSeconds / wall) * 1000) / 1000;

interface RoundResult {
  condition: Condition;
  round: number;
  sent: number;
  ok: number;
  p50: number;
  p95: number;
  p99: number;
  productionPerSecond: number;
  replayPerSecond: number;
  productionWorkerCpuShare: number;
  replayWorkerCpuShare: number;
  gatewayCpuShare: number;
}

async function main() {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'conveyor-replay-interference-'));
  const redis = await startRedis({ dir });
  const procs: ServiceProcess[] = [];
  try {
    const port = await freePort();
    const env = { REDIS_URL: redis.url, LOG_LEVEL: 'warn', HEARTBEAT_INTERVAL_MS: '500' };
    const gateway = spawnService(
      'gateway',
      { ...env, PORT: String(port), HOST: '127.0.0.1', MAX_CONNECTIONS: '8192', MAX_CONNECTIONS_PER_CLIENT: '8192' },
      { logs: false },
    );
    const production = spawnService('inference-worker', { ...env, MODELS: 'digits' }, { logs: false, label: 'production' });
    procs.push(gateway, production);
    const http = client(port);
    const gatewayTarget = { url: `http://127.0.0.1:${port}` };
    for (;;) {
      const ready = await http.get('/v2/models/digits/ready').catch(() => undefined);
      if (ready?.status === 200) break;
      await sleep(200);
    }

    // The recorded set: 200 held-out digits answered by production.
    const { dataset, split } = await heldOutDigits();
    const images = await Promise.all(
      split.test.slice(0, 200).map(async (i) => ({ name: `digit-${i}.png`, bytes: await digitPng(dataset.samples[i]!.pixels) })),
    );
    const setDir = path.join(dir, 'set');
    await writeReplaySet(setDir, await recordThroughGateway({ ...gatewayTarget, concurrency: 2 }, 'digits', images));
    const examples = await readReplaySet(setDir);
    const replayModel = replayName('digits');
    const workDir = path.join(dir, 'work');
    await mkdir(workDir, { recursive: true });
    await stageCandidate(path.join(ROOT, 'models/digits'), replayModel, workDir);

    // Capacity: synchronous requests all at once, timed to the last answer.
    const started = performance.now();
    const burst = await Promise.all(Array.from({ length: CALIBRATE }, () => http.predict('wait=60')));
    const capacity = burst.filter((a) => a.status === 200).length / ((performance.now() - started) / 1000);
    const rate = capacity * LOAD;
    console.log(`capacity ${capacity.toFixed(0)} req/s; production load ${rate.toFixed(0)} req/s (${LOAD} ×)`);

    const results: RoundResult[] = [];
    for (let round = 1; round <= ROUNDS; round++) {
      // A fresh order each round: no condition always follows another.
      const order = [...CONDITIONS].sort(() => Math.random() - 0.5);
      for (const condition of order) {
        let replayWorker: ServiceProcess | undefined;
        const replay = { stop: false };
        let replayed = 0;
        let replayLoop: Promise<void> = Promise.resolve();
        if (condition !== 'none') {
          replayWorker = spawnService(
            'inference-worker',
            { ...env, MODELS: `${replayModel}:1`, DEFAULT_MODEL: replayModel, MODELS_DIR: workDir },
            { logs: false, label: 'replay', ...(condition === 'replay' ? {} : { nice: 19 }) },
          );
          for (;;) {
            const ready = await http.get(`/v2/models/${replayModel}/ready`).catch(() => undefined);
            if (ready?.status === 200) break;
            await sleep(200);
          }
          replayLoop = (async () => {
            while (!replay.stop) {
              const target = condition === 'replay-paced' ? { ...gatewayTarget, ratePerSecond: REPLAY_RATE } : gatewayTarget;
              const answers = await replayThroughGateway(target, replayModel, setDir, examples);
              replayed += answers.filter((a) => a.status === 'completed').length;
            }
          })();
          // Let the replay reach its pace before production's round starts.
          await sleep(2000);
        }
        const cpu = (p: ServiceProcess | undefined) => (p?.child.pid ? cpuSeconds(p.child.pid) : 0);
        const before = { production: cpu(production), replay: cpu(replayWorker), gateway: cpu(gateway), replayed };
        const total = Math.round(rate * SECONDS);
        const answers: Promise<Answer>[] = [];
        const t0 = performance.now();
        for (let i = 0; i < total; i++) {
          const ahead = t0 + (i * 1000) / rate - performance.now();
          if (ahead > 1) await sleep(ahead);
          answers.push(http.predict('wait=30').catch(() => ({ status: 0, ms: 0, text: '' })));
        }
        const settled = await Promise.all(answers);
        const wall = (performance.now() - t0) / 1000;
        const after = { production: cpu(production), replay: cpu(replayWorker), gateway: cpu(gateway), replayed };
        replay.stop = true;
        await replayLoop;
        await replayWorker?.stop('SIGTERM');
        const ok = settled.filter((a) => a.status === 200).map((a) => a.ms);
        const result: RoundResult = {
          condition,
          round,
          sent: total,
          ok: ok.length,
          p50: round1(pct(ok, 0.5)),
          p95: round1(pct(ok, 0.95)),
          p99: round1(pct(ok, 0.99)),
          productionPerSecond: round1(ok.length / wall),
          replayPerSecond: round1((after.replayed - before.replayed) / wall),
          productionWorkerCpuShare: share(after.production - before.production, wall),
          replayWorkerCpuShare: share(after.replay - before.replay, wall),
          gatewayCpuShare: share(after.gateway - before.gateway, wall),
        };
        results.push(result);
        console.log(JSON.stringify(result));
      }
    }
    const summary = CONDITIONS.map((condition) => {
      const rs = results.filter((r) => r.condition === condition);
      return {
        condition,
        rounds: rs.length,
        p50: median(rs.map((r) => r.p50)),
        p95: median(rs.map((r) => r.p95)),
        p99: median(rs.map((r) => r.p99)),
        failed: rs.reduce((s, r) => s + r.sent - r.ok, 0),
        productionPerSecond: median(rs.map((r) => r.productionPerSecond)),
        replayPerSecond: median(rs.map((r) => r.replayPerSecond)),
        productionWorkerCpuShare: median(rs.map((r) => r.productionWorkerCpuShare)),
        replayWorkerCpuShare: median(rs.map((r) => r.replayWorkerCpuShare)),
        gatewayCpuShare: median(rs.map((r) => r.gatewayCpuShare)),
      };
    });
    const none = summary[0]!;
    console.log('\ncondition     p50 ms  p95 ms  p99 ms  p95 vs none  prod/s  replay/s  worker CPU  replay CPU  gateway CPU');
    for (const s of summary)
      console.log(
        `${s.condition.padEnd(12)}  ${String(s.p50).padStart(6)}  ${String(s.p95).padStart(6)}  ${String(s.p99).padStart(6)}  ${(s.p95 / none.p95).toFixed(2).padStart(10)}×  ${String(s.productionPerSecond).padStart(6)}  ${String(s.replayPerSecond).padStart(8)}  ${String(s.productionWorkerCpuShare).padStart(10)}  ${String(s.replayWorkerCpuShare).padStart(10)}  ${String(s.gatewayCpuShare).padStart(11)}`,
      );
    const record = {
      date: new Date().toISOString(),
      command: `loadtests/replay-interference.ts --rounds ${ROUNDS} --seconds ${SECONDS} --load ${LOAD} --replay-rate ${REPLAY_RATE}`,
      machine: { cpus: os.cpus().length, model: os.cpus()[0]?.model, load: os.loadavg() },
      capacity: Math.round(capacity),
      rate: Math.round(rate),
      summary,
      rounds: results,
    };
    if (values.out) writeFileSync(values.out, `${JSON.stringify(record, null, 2)}\n`);
    http.close();
  } finally {
    for (const p of procs.reverse()) await p.stop('SIGTERM');
    await redis.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
