import { mkdtempSync, readFileSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { Redis } from 'ioredis';
import { redisKeys } from '@conveyor/shared/contract/redis-keys';
import type { PredictionEvent } from '@conveyor/shared/contract/events.contract';
import { loadModel } from '@conveyor/shared/model/runtime';
import { readReferenceProfile } from '@conveyor/shared/validation/model-folder-checks';
import { INITIAL_STATE, step, type FeatureState } from '../services/monitor/src/alerts/alert-state.js';
import { observe, type Observation } from '../services/monitor/src/drift/features.js';
import { evaluateWindow } from '../services/monitor/src/drift/window.js';
import { startRedis } from '../harness/redis-server.js';
import { ROOT, spawnService } from '../harness/service-process.js';
import { loadMnist, splitDataset } from '../services/trainer/src/pipeline/ingest.js';
import { predictionEvents, publish } from '../test/support/events.js';

/**
 * The monitor's figures, on the committed model and its reference profile:
 *  1. false alarms at the default window: windows bootstrapped from held-out test digits (never
 *     seen by the reference, which is the validation split), single-window WARN rates per feature,
 *     and announced alerts with the default hysteresis;
 *  2. the window at which a 0.5σ shift of brightness is caught (≥ 95 % of windows at WARN);
 *  3. events per second through a real monitor process (and two sharing the stream).
 */
const { values } = parseArgs({
  options: {
    windows: { type: 'string', default: '1000' },
    events: { type: 'string', default: '20000' },
    // Only part 3, without writing bench/results (repeated throughput runs on a shared machine).
    'throughput-only': { type: 'boolean', default: false },
  },
});
const throughputOnly = values['throughput-only'];
const nWindows = Number(values.windows);
const nEvents = Number(values.events);
// The monitor's defaults (services/monitor/src/config.ts).
const thresholds = (feature: string) =>
  feature === 'embedding'
    ? { warn: 0.25, alert: 0.5 }
    : feature === 'embedding-component'
      ? { warn: 0.2, alert: 0.4 }
      : { warn: 0.1, alert: 0.25 };

const modelDir = path.join(ROOT, 'models', 'digits');
const model = await loadModel(modelDir);
const profile = (await readReferenceProfile(modelDir))!;
const manifestSplit = model.manifest.training.split as { seed: number; train: number; validation: number };
const dataset = loadMnist();
const split = splitDataset(dataset, manifestSplit, manifestSplit.seed);
const testEvents = await predictionEvents(
  model,
  split.test.map((i) => dataset.samples[i]!.pixels),
);
const observations = testEvents.map((e) => observe(e, profile.embedding));

let seed = 12345;
const rand = () => {
  seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0;
  return seed / 4294967296;
};
const bootstrap = (size: number, shift = 0): Observation[] =>
  Array.from({ length: size }, () => {
    const o = observations[Math.floor(rand() * observations.length)]!;
    return shift ? { ...o, numeric: { ...o.numeric, brightness: (o.numeric.brightness ?? 0) + shift } } : o;
  });

const windowSize = 500;
let falseAlarms: Record<string, number> = {};
let announced = 0;
let shift = 0;
const detection: { window: number; detected: number; alerted: number; falseAlarm: number }[] = [];
let caughtAt: number | null = null;
if (!throughputOnly) {
  // 1. False alarms at the default window.
  const features = Object.keys(evaluateWindow(profile, bootstrap(windowSize), thresholds).features);
  const warnCounts = Object.fromEntries(features.map((f) => [f, 0]));
  const states: Record<string, FeatureState> = Object.fromEntries(features.map((f) => [f, INITIAL_STATE]));
  for (let w = 0; w < nWindows; w++) {
    const drift = evaluateWindow(profile, bootstrap(windowSize), thresholds);
    for (const [f, d] of Object.entries(drift.features)) {
      if (d.level !== 'ok') warnCounts[f]!++;
      const next = step(states[f]!, d.level, w * 60_000, { consecutive: 2, cooldownMs: 600_000 });
      states[f] = next.state;
      if (next.transition?.notify && next.transition.notify !== 'resolved') announced++;
    }
  }
  falseAlarms = Object.fromEntries(Object.entries(warnCounts).map(([f, c]) => [f, c / nWindows]));
  console.log(
    `\nFalse alarms at the default window (${windowSize}), ${nWindows} windows bootstrapped from ${observations.length} held-out digits:`,
  );
  for (const [f, r] of Object.entries(falseAlarms))
    console.log(`  ${f.padEnd(16)} single windows at WARN or above: ${(r * 100).toFixed(2)} %`);
  console.log(
    `  alerts announced with hysteresis (2 windows): ${announced} in ${nWindows} windows × ${features.length} features`,
  );

  // 2. Detection of a 0.5σ brightness shift by window size.
  shift = 0.5 * profile.features.brightness!.std;
  for (const size of [25, 50, 75, 100, 150, 200, 300, 500]) {
    let hit = 0;
    let alerted = 0;
    let falseAlarms = 0;
    for (let w = 0; w < 400; w++) {
      const level = evaluateWindow(profile, bootstrap(size, shift), thresholds).features.brightness!.level;
      if (level !== 'ok') hit++;
      if (level === 'alert') alerted++;
      if (evaluateWindow(profile, bootstrap(size), thresholds).features.brightness!.level !== 'ok') falseAlarms++;
    }
    detection.push({ window: size, detected: hit / 400, alerted: alerted / 400, falseAlarm: falseAlarms / 400 });
  }
  console.log(`\n0.5σ brightness shift (+${shift.toFixed(4)}), 400 shifted and 400 unshifted windows per size:`);
  for (const d of detection) {
    const pct = (v: number) => `${(v * 100).toFixed(1)} %`;
    console.log(
      `  window ${String(d.window).padStart(4)}: WARN or above ${pct(d.detected)}, ALERT ${pct(d.alerted)}, false alarms ${pct(d.falseAlarm)}`,
    );
  }
  // Caught: flagged in ≥ 95 % of shifted windows while unshifted ones raise ≤ 5 % false alarms.
  caughtAt = detection.find((d) => d.detected >= 0.95 && d.falseAlarm <= 0.05)?.window ?? null;
  console.log(`  smallest window that catches it (≥ 95 % flagged, ≤ 5 % false alarms): ${caughtAt ?? 'none tested'}`);
}

// 3. Throughput of real monitor processes, timed from the moment the events are in the stream.
const events: PredictionEvent[] = Array.from({ length: nEvents }, (_, i) => ({
  ...testEvents[i % testEvents.length]!,
  jobId: crypto.randomUUID(),
}));
const throughput: Record<string, { eventsPerSecond: number; monitorCpuMsPerEvent: number; redisCpuMsPerEvent: number }> = {};
// CPU of a process from /proc (utime + stime, in clock ticks of 10 ms on Linux).
const processCpuMs = (pid: number): number => {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) * 10;
};
const redisCpuMs = async (client: Redis): Promise<number> => {
  const info = await client.info('cpu');
  const fields = new Map(info.split(/\r?\n/).map((line) => line.split(':') as [string, string]));
  return (Number(fields.get('used_cpu_user')) + Number(fields.get('used_cpu_sys'))) * 1000;
};
for (const monitors of [1, 2]) {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'conveyor-drift-bench-'));
  const redis = await startRedis({ dir });
  const client = new Redis(redis.url);
  const prefix = `bench${monitors}`;
  // What publishing alone costs Redis (XADD), to subtract from the figure measured with monitors.
  const publishStart = await redisCpuMs(client);
  await publish(client, `${prefix}:baseline`, events);
  const publishCpu = (await redisCpuMs(client)) - publishStart;
  await client.del(`${prefix}:baseline`);
  const procs = Array.from({ length: monitors }, (_, i) =>
    spawnService(
      'monitor',
      {
        REDIS_URL: redis.url,
        REDIS_PREFIX: prefix,
        MONITOR_PORT: '0',
        LOG_LEVEL: 'info',
        REPORT_INTERVAL_MS: '0',
        REPORT_DIR: path.join(dir, 'reports'),
      },
      { built: true, label: `monitor-${i}` },
    ),
  );
  await Promise.all(procs.map((p) => p.waitFor((r) => r.msg === 'monitor listening')));
  const monitorCpu = () => procs.reduce((sum, p) => sum + processCpuMs(p.child.pid!), 0);
  const cpuStart = { monitor: monitorCpu(), redis: await redisCpuMs(client) };
  const started = performance.now();
  await publish(client, redisKeys(prefix).predictions, events);
  for (;;) {
    const done = await client.xlen(`${prefix}:monitor:windows`);
    if (done >= Math.floor(nEvents / 500)) break;
    await new Promise((r) => setTimeout(r, 20));
  }
  const seconds = (performance.now() - started) / 1000;
  const monitorMs = monitorCpu() - cpuStart.monitor;
  const redisMs = (await redisCpuMs(client)) - cpuStart.redis - publishCpu;
  const figures = {
    eventsPerSecond: Math.round(nEvents / seconds),
    monitorCpuMsPerEvent: monitorMs / nEvents,
    redisCpuMsPerEvent: redisMs / nEvents,
  };
  throughput[`${monitors} monitor${monitors > 1 ? 's' : ''}`] = figures;
  console.log(
    `\n${monitors} monitor process${monitors > 1 ? 'es' : ''}: ${nEvents} events published and drained in ${seconds.toFixed(2)} s → ${figures.eventsPerSecond} events/s;` +
      ` CPU per event: monitor${monitors > 1 ? 's' : ''} ${figures.monitorCpuMsPerEvent.toFixed(4)} ms, redis-server ${figures.redisCpuMsPerEvent.toFixed(4)} ms` +
      ` (publishing, subtracted: ${(publishCpu / nEvents).toFixed(4)} ms)`,
  );
  await Promise.all(procs.map((p) => p.stop()));
  client.disconnect();
  await redis.stop();
  rmSync(dir, { recursive: true, force: true });
}

if (!throughputOnly) {
  const out = path.join(ROOT, 'bench', 'results', 'drift.json');
  mkdirSync(path.dirname(out), { recursive: true });
  writeFileSync(
    out,
    `${JSON.stringify({ at: new Date().toISOString(), model: model.manifest.version, windowSize, falseAlarms, announced, nWindows, brightnessShift: { sigma: 0.5, delta: shift, detection, caughtAt }, throughput }, null, 2)}\n`,
  );
  console.log(`\nwritten to ${path.relative(ROOT, out)}`);
}
await model.close();
