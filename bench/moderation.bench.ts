import { parseArgs } from 'node:util';
import sharp from 'sharp';
import { restrictDecoders } from '@conveyor/shared/model/decoders';
import { preprocess } from '@conveyor/shared/model/preprocess';
import { loadCheckedModel } from '@conveyor/shared/validation/model-folder-checks';
import { ensureModerationModel, MODERATION_DIR, PHOTOS, readPhoto } from '../scripts/models/moderation.js';

/**
 * Cost per image of the converted nsfwjs MobileNetV2 (models/moderation) as a worker serves it:
 * onnxruntime-node with one intra-op thread (the worker's ORT_THREADS default) on one 224×224
 * image at a time, and, beside it, the worker's preprocessing of the same photos (PNG decode and
 * the align-corners bilinear resize). Builds the model first if it is missing.
 *
 *   node --conditions=conveyor-source --import tsx bench/moderation.bench.ts [--runs 50]
 */
const { values } = parseArgs({ options: { runs: { type: 'string', default: '50' } } });
const runs = Number(values.runs);

restrictDecoders();
sharp.cache(false);
sharp.concurrency(1);

await ensureModerationModel();
const model = await loadCheckedModel(MODERATION_DIR, { threads: 1 });
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const p90 = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length * 0.9)]!;

const inference: number[] = [];
const preparing: number[] = [];
for (const photo of PHOTOS) {
  const { bytes } = readPhoto(photo.name);
  const prepared = await preprocess({ kind: 'encoded', bytes }, model.manifest, { maxPixels: 40_000_000 });
  for (let i = 0; i < runs; i++) {
    let t = performance.now();
    await preprocess({ kind: 'encoded', bytes }, model.manifest, { maxPixels: 40_000_000 });
    preparing.push(performance.now() - t);
    t = performance.now();
    await model.run([prepared.tensor]);
    inference.push(performance.now() - t);
  }
}
await model.close();
console.log(
  `models/moderation (nsfwjs MobileNetV2 → ONNX), onnxruntime-node, 1 thread, batch 1, ${inference.length} runs over ${PHOTOS.length} photos:`,
);
console.log(`  inference     median ${median(inference).toFixed(2)} ms per image, p90 ${p90(inference).toFixed(2)} ms`);
console.log(
  `  preprocessing median ${median(preparing).toFixed(2)} ms per image, p90 ${p90(preparing).toFixed(2)} ms (PNG decode + resize)`,
);
