import { parseArgs } from 'node:util';
import sharp from 'sharp';
import { restrictDecoders } from '@conveyor/shared/model/decoders';
import type { ModelManifest } from '@conveyor/shared/model/manifest';
import { preprocess } from '@conveyor/shared/model/preprocess';
import { readManifest } from '@conveyor/shared/model/runtime';
import { loadMnist, splitDataset } from '../services/trainer/src/pipeline/ingest.js';

/**
 * CPU per image of the worker's preprocessing alone, one image at a time in this process, beside
 * the cheapest thing libvips can do with the same bytes (decode to raw pixels and nothing else),
 * so the figure says how much of it is the decoder and how much is Conveyor's own work.
 *
 *   node --conditions=conveyor-source --import tsx bench/preprocess.bench.ts [--images 2000]
 */
const { values } = parseArgs({ options: { images: { type: 'string', default: '1500' } } });
const count = Number(values.images);

restrictDecoders();
sharp.cache(false);
sharp.concurrency(1);

const digits = await readManifest('models/digits');
const frame: Pick<ModelManifest, 'input' | 'preprocess'> = {
  input: { name: 'input', layout: 'NCHW', channels: 3, height: 224, width: 224 },
  preprocess: {
    ...digits.preprocess,
    color: 'rgb',
    resize: 'cover',
    polarity: 'none',
    normalize: { scale: 1 / 255, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] },
  },
};

// The real MobileNetV2's policy: bilinear-align-corners, resampled in floating point in process.
const moderation = await readManifest('models/moderation');

const dataset = loadMnist();
const split = splitDataset(dataset, { train: 0.7, validation: 0.15 }, 20261126);
const pixels = split.test.slice(0, 50).map((i) => dataset.samples[i]!.pixels);
const gray = (p: Uint8Array) => sharp(p, { raw: { width: 28, height: 28, channels: 1 } });
/** A textured colour picture (smooth gradients plus noise), like a photo to a JPEG encoder. */
const photo = (w: number, h: number, seed: number) => {
  const data = Buffer.alloc(w * h * 3);
  let s = seed;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      s = (s * 1103515245 + 12345) >>> 0;
      const noise = (s >>> 24) / 8;
      const o = (y * w + x) * 3;
      data[o] = Math.min(255, (x * 255) / w + noise);
      data[o + 1] = Math.min(255, (y * 255) / h + noise);
      data[o + 2] = Math.min(255, 128 + 100 * Math.sin((x + y) / 17) + noise);
    }
  }
  return sharp(data, { raw: { width: w, height: h, channels: 3 } });
};
const sets: { name: string; manifest: Pick<ModelManifest, 'input' | 'preprocess'>; images: Buffer[] }[] = [
  { name: 'digits: 28×28 PNG', manifest: digits, images: await Promise.all(pixels.map((p) => gray(p).png().toBuffer())) },
  {
    name: 'digits: 280×280 JPEG scan',
    manifest: digits,
    images: await Promise.all(
      pixels.map((p) =>
        sharp(
          Uint8Array.from(p, (v) => 255 - Math.round(v * 0.85)),
          { raw: { width: 28, height: 28, channels: 1 } },
        )
          .resize(280, 280, { kernel: 'cubic' })
          .jpeg({ quality: 85 })
          .toBuffer(),
      ),
    ),
  },
  {
    name: 'digits: 2000×1500 JPEG photo',
    manifest: digits,
    images: await Promise.all([1, 2, 3].map((s) => photo(2000, 1500, s).jpeg({ quality: 85 }).toBuffer())),
  },
  {
    name: 'frame 224: 224×224 JPEG',
    manifest: frame,
    images: await Promise.all([1, 2, 3, 4].map((s) => photo(224, 224, s).jpeg({ quality: 85 }).toBuffer())),
  },
  {
    name: 'frame 224: 640×480 JPEG',
    manifest: frame,
    images: await Promise.all([1, 2, 3, 4].map((s) => photo(640, 480, s).jpeg({ quality: 85 }).toBuffer())),
  },
  {
    name: 'moderation: 600×400 JPEG',
    manifest: moderation,
    images: await Promise.all([1, 2, 3, 4].map((s) => photo(600, 400, s).jpeg({ quality: 90 }).toBuffer())),
  },
];

const cpuMs = () => {
  const { user, system } = process.cpuUsage();
  return (user + system) / 1000;
};
async function perImage(n: number, run: (i: number) => Promise<unknown>): Promise<number> {
  for (let i = 0; i < Math.min(100, n); i++) await run(i);
  const before = cpuMs();
  for (let i = 0; i < n; i++) await run(i);
  return (cpuMs() - before) / n;
}

console.log(`CPU ms per image, one at a time (${count} images per row; large photos: ${Math.ceil(count / 20)})`);
for (const set of sets) {
  const n = set.name.includes('2000') ? Math.ceil(count / 20) : count;
  const sizes = await Promise.all(set.images.map(async (b) => sharp(b).metadata()));
  const decode = await perImage(n, (i) =>
    sharp(set.images[i % set.images.length])
      .raw()
      .toBuffer(),
  );
  const full = await perImage(n, (i) => {
    const m = sizes[i % sizes.length]!;
    return preprocess({ kind: 'encoded', bytes: set.images[i % set.images.length]! }, set.manifest, {
      maxPixels: 40_000_000,
      size: { width: m.width, height: m.height },
    });
  });
  const bytes = Math.round(set.images.reduce((s, b) => s + b.length, 0) / set.images.length);
  console.log(
    `  ${set.name.padEnd(30)} ${String(bytes).padStart(7)} B   decode only ${decode.toFixed(2)}   preprocess ${full.toFixed(2)}`,
  );
}
