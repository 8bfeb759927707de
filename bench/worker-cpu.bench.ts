import { readFileSync, writeFileSync } from 'node:fs';
import { constants, PerformanceObserver } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import sharp from 'sharp';
import { restrictDecoders } from '@conveyor/shared/model/decoders';
import { preprocess, Workspace } from '@conveyor/shared/model/preprocess';
import { loadCheckedModel } from '@conveyor/shared/validation/model-folder-checks';
import { ensureModerationModel, MODERATION_DIR } from '../scripts/models/moderation.js';
import { photoCase, type PhotoCase } from './lib/photo-cases.js';

/**
 * CPU per image of a worker's compute for one job (preprocess as the processor calls it, then
 * `model.run`), in process, one image at a time, measured with process.cpuUsage (all threads:
 * libvips' and onnxruntime's included), so that a shared, noisy machine still gives comparable
 * figures (wall-clock throughput does not). Medians over rounds; major GCs counted per 100 images.
 * `--save FILE` writes each photo's probabilities; `--compare FILE` prints the largest difference.
 *
 *   node --conditions=conveyor-source --import tsx bench/worker-cpu.bench.ts [--cases plain,srgb-icc,phone]
 *        [--runs 30] [--rounds 5] [--save f.json] [--compare f.json] [--preprocess '{"shrinkOnLoad":2}'] [--off-thread] [--fresh-buffers]
 */
const { values } = parseArgs({
  options: {
    cases: { type: 'string', default: 'plain,srgb-icc,phone' },
    runs: { type: 'string', default: '30' },
    rounds: { type: 'string', default: '5' },
    save: { type: 'string' },
    compare: { type: 'string' },
    preprocess: { type: 'string' },
    'off-thread': { type: 'boolean', default: false },
    // Allocate every buffer afresh per image, as before the per-slot workspace.
    'fresh-buffers': { type: 'boolean', default: false },
  },
});
const runs = Number(values.runs);
const rounds = Number(values.rounds);
const cases = values.cases.split(',') as PhotoCase[];

restrictDecoders();
sharp.cache(false);
sharp.concurrency(1);
await ensureModerationModel();
const model = await loadCheckedModel(MODERATION_DIR, { threads: 1, offThread: values['off-thread'] });
const manifest = values.preprocess
  ? { ...model.manifest, preprocess: { ...model.manifest.preprocess, ...(JSON.parse(values.preprocess) as object) } }
  : model.manifest;

let majorGcs = 0;
let gcPauseMs = 0;
new PerformanceObserver((list) => {
  for (const entry of list.getEntries()) {
    gcPauseMs += entry.duration;
    if (((entry as { detail?: unknown }).detail as { kind?: number } | undefined)?.kind === constants.NODE_PERFORMANCE_GC_MAJOR)
      majorGcs++;
  }
}).observe({ entryTypes: ['gc'] });

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const cpuMs = () => {
  const { user, system } = process.cpuUsage();
  return (user + system) / 1000;
};
const limits = { maxPixels: 40_000_000, maxSide: 16_384, maxAspectRatio: 20, timeoutMs: 5000 };
const saved: Record<string, number[]> = {};
const reference = values.compare ? (JSON.parse(readFileSync(values.compare, 'utf8')) as Record<string, number[]>) : undefined;

for (const kind of cases) {
  const photos = await photoCase(kind);
  const workspace = new Workspace();
  const job = async (i: number) => {
    const photo = photos[i % photos.length]!;
    const prepared = await preprocess({ kind: 'encoded', bytes: photo.bytes }, manifest, {
      ...limits,
      size: { width: photo.width, height: photo.height },
      ...(values['fresh-buffers'] ? {} : { workspace }),
    });
    const [output] = await model.run([prepared.tensor]);
    return output!.probabilities;
  };
  for (let i = 0; i < photos.length; i++) saved[`${kind}/${photos[i]!.name}`] = Array.from(await job(i));
  for (let i = 0; i < 10; i++) await job(i); // warm
  const perImage: number[] = [];
  const gcs: number[] = [];
  const pauses: number[] = [];
  for (let r = 0; r < rounds; r++) {
    const gc0 = majorGcs;
    const pause0 = gcPauseMs;
    const t0 = cpuMs();
    for (let i = 0; i < runs; i++) await job(i);
    perImage.push((cpuMs() - t0) / runs);
    await new Promise((resolve) => setImmediate(resolve)); // let the GC observer report
    gcs.push(((majorGcs - gc0) * 100) / runs);
    pauses.push((gcPauseMs - pause0) / runs);
  }
  let worst = 0;
  if (reference) {
    for (const photo of photos) {
      const key = `${kind}/${photo.name}`;
      const ref = reference[key];
      if (ref) saved[key]!.forEach((p, i) => (worst = Math.max(worst, Math.abs(p - ref[i]!))));
    }
  }
  console.log(
    `${kind.padEnd(9)} CPU ${median(perImage).toFixed(2)} ms/image (rounds: ${perImage.map((v) => v.toFixed(2)).join(' ')}), ` +
      `major GCs ${median(gcs).toFixed(1)} per 100 images, GC pauses ${median(pauses).toFixed(3)} ms/image` +
      (reference ? `, max |Δp| vs ${values.compare} ${worst.toExponential(2)}` : ''),
  );
  for (const photo of photos) console.log(`    ${photo.description}`);
}
if (values.save) writeFileSync(values.save, `${JSON.stringify(saved, null, 1)}\n`);
await model.close();
