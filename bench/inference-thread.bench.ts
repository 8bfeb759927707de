import { parseArgs } from 'node:util';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { loadModel, type LoadedModel } from '@conveyor/shared/model/runtime';
import { ensureModerationModel, MODERATION_DIR } from '../scripts/models/moderation.js';

/**
 * What running onnxruntime on a worker thread (LoadOptions.offThread, the worker's
 * INFERENCE_THREAD) costs per run, in CPU (process.cpuUsage: every thread), against the session on
 * the calling thread, for the moderation model at batch 1; and the event loop's delay (p99) while
 * runs go on back to back, which is what BullMQ's lock renewals and Redis replies wait on.
 * Alternating rounds, medians.
 *
 *   node --conditions=conveyor-source --import tsx bench/inference-thread.bench.ts [--runs 100] [--rounds 6] [--batch 1] [--dir models/digits]
 */
const { values } = parseArgs({
  options: {
    runs: { type: 'string', default: '100' },
    rounds: { type: 'string', default: '6' },
    // A batch of 128 takes ~1–2 s: the slow model of issue 19's goal, in one run() call.
    batch: { type: 'string', default: '1' },
    // Another model folder (e.g. models/digits, where a run is ~0.1 ms and the hand-off shows most).
    dir: { type: 'string' },
  },
});
const runs = Number(values.runs);
const rounds = Number(values.rounds);
const dir = values.dir ?? MODERATION_DIR;
if (!values.dir) await ensureModerationModel();
const models: Record<string, LoadedModel> = {
  'calling thread': await loadModel(dir),
  'worker thread': await loadModel(dir, { offThread: true }),
};
const { channels, height, width } = models['calling thread']!.manifest.input;
const batch = Array.from({ length: Number(values.batch) }, () => new Float32Array(channels * height * width).fill(0.5));
const cpu = () => {
  const { user, system } = process.cpuUsage();
  return (user + system) / 1000;
};
const results: Record<string, { cpu: number[]; lagP99: number[] }> = {};
for (let r = 0; r < rounds; r++) {
  for (const [name, model] of Object.entries(models)) {
    const lag = monitorEventLoopDelay({ resolution: 1 });
    lag.enable();
    const t0 = cpu();
    for (let i = 0; i < runs; i++) await model.run(batch);
    const perRun = (cpu() - t0) / runs;
    lag.disable();
    (results[name] ??= { cpu: [], lagP99: [] }).cpu.push(perRun);
    results[name].lagP99.push(lag.percentile(99) / 1e6);
  }
}
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
for (const [name, r] of Object.entries(results)) {
  console.log(
    `${name.padEnd(15)} CPU ${median(r.cpu).toFixed(2)} ms per run (rounds ${r.cpu.map((v) => v.toFixed(2)).join(' ')}), event-loop delay p99 ${median(r.lagP99).toFixed(1)} ms`,
  );
}
await Promise.all(Object.values(models).map((m) => m.close()));
