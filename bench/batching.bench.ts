import { parseArgs } from 'node:util';
import { loadModel } from '@conveyor/shared/model/runtime';
import { ensureMobilenet } from './models/build-mobilenet.js';

/**
 * Would cross-job micro-batching pay on this CPU? onnxruntime's own cost per image for the
 * MobileNet-class model at batch sizes 1, 2, 4 and 8, in alternating rounds, in one process with
 * one intra-op thread (as a worker runs it). Batching across jobs is only worth building if the
 * cost per image falls clearly below batch 1's: it also adds the batch's wait to every job's latency.
 *
 *   node --conditions=conveyor-source --import tsx bench/batching.bench.ts [--rounds 3] [--images 160]
 */
const { values } = parseArgs({
  options: { rounds: { type: 'string', default: '3' }, images: { type: 'string', default: '160' } },
});
const rounds = Number(values.rounds);
const images = Number(values.images);
const sizes = [1, 2, 4, 8];

const folder = ensureMobilenet();
const model = await loadModel(folder.dir, { threads: 1 });
const { channels, height, width } = model.manifest.input;
const inputs = Array.from({ length: 8 }, (_, k) =>
  Float32Array.from({ length: channels * height * width }, (_, i) => Math.sin(i * 0.001 + k)),
);
const cpuMs = () => {
  const { user, system } = process.cpuUsage();
  return (user + system) / 1000;
};

const perImage = new Map<number, number[]>(sizes.map((b) => [b, []]));
for (let round = 0; round < rounds; round++) {
  for (const b of sizes) {
    await model.run(inputs.slice(0, b));
    const calls = Math.ceil(images / b);
    const before = cpuMs();
    for (let i = 0; i < calls; i++) await model.run(inputs.slice(0, b));
    perImage.get(b)!.push((cpuMs() - before) / (calls * b));
  }
}
await model.close();

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const base = median(perImage.get(1)!);
console.log(
  `onnxruntime CPU ms per image, MobileNet-class (${(folder.macs / 1e6).toFixed(0)} M multiply-adds), median of ${rounds} rounds`,
);
for (const b of sizes) {
  const m = median(perImage.get(b)!);
  console.log(`  batch ${b}: ${m.toFixed(2)} ms   (${((m / base - 1) * 100).toFixed(1)} % vs batch 1)`);
}
