import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { freePort } from '../harness/free-port.js';
import { startJaeger } from '../harness/jaeger.js';
import { startRedis } from '../harness/redis-server.js';
import { ROOT, spawnService, type ServiceProcess } from '../harness/service-process.js';
import { carrierOf, logIds, NO_SPAN } from '@conveyor/shared/tracing';
import { drive, median, round3, until } from './lib/drive.js';
import { processCpuMs } from './lib/process-cpu.js';

/**
 * What tracing costs: the gateway's and the worker's CPU per request (from /proc) with tracing off
 * (the default) and on (every request sampled, exported over OTLP/HTTP protobuf to a real Jaeger),
 * in interleaved rounds on one private Redis, digits at concurrency 8 through the compiled services
 * (`make build` first). And the off path itself, timed alone: what a request does with tracing off
 * that it did not do before tracing existed (a few checks on a span that records nothing).
 *
 *   node --conditions=conveyor-source --import tsx bench/tracing.bench.ts [--requests 1500] [--rounds 3]
 */
const { values } = parseArgs({
  options: {
    requests: { type: 'string', default: '1500' },
    rounds: { type: 'string', default: '3' },
    concurrency: { type: 'string', default: '8' },
    out: { type: 'string' },
  },
});
const requests = Number(values.requests);
const rounds = Number(values.rounds);
const concurrency = Number(values.concurrency);
const image = readFileSync(path.join(ROOT, 'docs/examples/seven.png'));

const offPath = measureOffPath();
const dir = mkdtempSync(path.join(os.tmpdir(), 'tracing-bench-'));
const redis = await startRedis({ dir });
const jaeger = await startJaeger();
type Mode = 'off' | 'on';
const samples: Record<Mode, { gateway: number; worker: number; rps: number }[]> = { off: [], on: [] };
try {
  for (let round = 1; round <= rounds; round++) {
    for (const mode of round % 2 === 1 ? (['off', 'on'] as const) : (['on', 'off'] as const)) {
      const sample = await measure(mode, `bench-${round}-${mode}`);
      samples[mode].push(sample);
      console.error(`round ${round} ${mode}: ${JSON.stringify(sample)}`);
    }
  }
} finally {
  await jaeger.stop();
  await redis.stop();
  rmSync(dir, { recursive: true, force: true });
}

const summary = (mode: Mode) => ({
  gatewayCpuMsPerRequest: round3(median(samples[mode].map((s) => s.gateway))),
  workerCpuMsPerRequest: round3(median(samples[mode].map((s) => s.worker))),
  totalCpuMsPerRequest: round3(median(samples[mode].map((s) => s.gateway + s.worker))),
  requestsPerSecond: Math.round(median(samples[mode].map((s) => s.rps))),
});
const off = summary('off');
const on = summary('on');
const report = {
  date: new Date().toISOString(),
  command: `bench/tracing.bench.ts --requests ${requests} --rounds ${rounds} --concurrency ${concurrency}`,
  machine: { cpus: os.cpus().length, model: os.cpus()[0]?.model },
  offPathNsPerRequest: offPath,
  off,
  on,
  onOverOff: {
    totalCpu: round3(on.totalCpuMsPerRequest / off.totalCpuMsPerRequest),
    requestsPerSecond: round3(on.requestsPerSecond / off.requestsPerSecond),
  },
  samples,
};
console.log(JSON.stringify(report, null, 2));
if (values.out) writeFileSync(values.out, `${JSON.stringify(report, null, 2)}\n`);

/** One round: a gateway and a worker with tracing `mode`, warmed up, then `requests` requests timed. */
async function measure(mode: Mode, prefix: string) {
  const port = await freePort();
  const tracing: Record<string, string> =
    mode === 'on' ? { OTEL_EXPORTER_OTLP_ENDPOINT: jaeger.otlpEndpoint, OTEL_EXPORTER_OTLP_PROTOCOL: 'http/protobuf' } : {};
  const common = { REDIS_URL: redis.url, REDIS_PREFIX: prefix, LOG_LEVEL: 'warn', ...tracing };
  const worker = spawnService(
    'inference-worker',
    { ...common, LOG_LEVEL: 'info', HEARTBEAT_INTERVAL_MS: '500' },
    { built: true, keep: 20 },
  );
  const gateway = spawnService('gateway', { ...common, PORT: String(port), HOST: '127.0.0.1' }, { built: true, keep: 20 });
  const base = `http://127.0.0.1:${port}`;
  try {
    await worker.waitFor((r) => r.msg === 'worker ready', 60_000);
    await until(
      'a warm digits worker',
      async () => (await fetch(`${base}/v2/models/digits/ready`).catch(() => undefined))?.ok === true,
    );
    await drive(`${base}/v1/predict`, image, 300, concurrency); // warm-up: JIT, connections, the first export
    const before = cpu(gateway, worker);
    const started = performance.now();
    await drive(`${base}/v1/predict`, image, requests, concurrency);
    const seconds = (performance.now() - started) / 1000;
    const after = cpu(gateway, worker);
    return {
      gateway: (after.gateway - before.gateway) / requests,
      worker: (after.worker - before.worker) / requests,
      rps: requests / seconds,
    };
  } finally {
    await Promise.all([gateway.stop(), worker.stop()]);
  }
}

function cpu(gateway: ServiceProcess, worker: ServiceProcess) {
  return { gateway: processCpuMs(gateway.child.pid!) ?? NaN, worker: processCpuMs(worker.child.pid!) ?? NaN };
}

/** The calls a request and its job make on the off path, timed alone (ns per request; median of 5). */
function measureOffPath(): number {
  const n = 1_000_000;
  const runs: number[] = [];
  let sink = 0;
  for (let run = 0; run < 5; run++) {
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < n; i++) {
      // Gateway: the server span check, log ids, admission's and enqueue's checks, the job's carrier.
      if (NO_SPAN.isRecording()) sink++;
      sink += Object.keys(logIds(NO_SPAN)).length;
      if (NO_SPAN.isRecording()) sink++;
      if (carrierOf(NO_SPAN)) sink++;
      NO_SPAN.end();
      // Worker: a job with no trace field, the attempt span's checks.
      if ((undefined as unknown) !== undefined) sink++;
      if (NO_SPAN.isRecording()) sink++;
    }
    runs.push(Number(process.hrtime.bigint() - t0) / n);
  }
  if (sink === -1) console.error(sink);
  return round3(runs.sort((a, b) => a - b)[2]!);
}
