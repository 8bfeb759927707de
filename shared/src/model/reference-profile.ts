import { z } from 'zod';

/**
 * What "normal" looks like for a model, measured on its validation set when it was trained, and
 * shipped in its model folder (`reference-profile.json`). The drift monitor compares live traffic
 * against it; the worker checks a model against it when loading. Bin edges come from the
 * reference alone (deciles), with open outer bins, so live windows never move them.
 */
export const REFERENCE_PROFILE_FILE = 'reference-profile.json';

export const NumericProfile = z.object({
  kind: z.literal('numeric'),
  n: z.number().int().positive(),
  mean: z.number(),
  std: z.number().min(0),
  min: z.number(),
  max: z.number(),
  /** Inner bin edges, strictly ascending: bin i is (edges[i-1], edges[i]], the outer bins are open. */
  edges: z.array(z.number()),
  /** Reference counts per bin: edges.length + 1 entries. */
  counts: z.array(z.number().int().min(0)),
});
export type NumericProfile = z.infer<typeof NumericProfile>;

export const CategoricalProfile = z.object({
  kind: z.literal('categorical'),
  n: z.number().int().positive(),
  categories: z.array(z.string()),
  counts: z.array(z.number().int().min(0)),
});
export type CategoricalProfile = z.infer<typeof CategoricalProfile>;

export const EmbeddingProfile = z.object({
  dims: z.number().int().positive(),
  /** Principal components fitted on the reference embeddings (rows are unit vectors). */
  mean: z.array(z.number()),
  components: z.array(z.array(z.number())),
  explainedVarianceRatio: z.array(z.number()),
  /** The reference distribution of each projection. */
  projections: z.array(NumericProfile),
});
export type EmbeddingProfile = z.infer<typeof EmbeddingProfile>;

export const ReferenceProfile = z.object({
  schema: z.literal('conveyor.reference/v1'),
  model: z.object({ name: z.string(), version: z.string() }),
  dataset: z.object({ hash: z.string(), split: z.string(), n: z.number().int().positive() }),
  /** The images the model was trained on. */
  image: z.object({
    width: z.number().int().positive(),
    height: z.number().int().positive(),
    channels: z.number().int().positive(),
  }),
  features: z.record(z.string(), NumericProfile),
  predictedClass: CategoricalProfile,
  embedding: EmbeddingProfile.optional(),
  /** Absent for a profile measured on unlabelled images (`models profile` over a flat folder). */
  quality: z
    .object({
      accuracy: z.number(),
      atThreshold: z.array(z.object({ threshold: z.number(), accuracy: z.number(), coverage: z.number() })),
    })
    .optional(),
});
export type ReferenceProfile = z.infer<typeof ReferenceProfile>;

/** Reference deciles as bin edges (duplicates merged, so heavy ties do not make empty bins). */
export function numericProfile(values: readonly number[], bins = 10): NumericProfile {
  if (values.length === 0) throw new Error('cannot profile an empty sample');
  const sorted = [...values].sort((a, b) => a - b);
  const n = sorted.length;
  const mean = sorted.reduce((s, v) => s + v, 0) / n;
  const std = Math.sqrt(sorted.reduce((s, v) => s + (v - mean) ** 2, 0) / n);
  const edges: number[] = [];
  for (let i = 1; i < bins; i++) {
    // The i-th decile: the largest value with at most i/bins of the sample at or below it.
    const q = sorted[Math.max(0, Math.ceil((i * n) / bins) - 1)]!;
    if (edges.length === 0 || q > edges.at(-1)!) edges.push(q);
  }
  // The top edge must leave something above it, or the last bin would be empty by construction.
  while (edges.length > 0 && edges.at(-1)! >= sorted[n - 1]!) edges.pop();
  return { kind: 'numeric', n, mean, std, min: sorted[0]!, max: sorted[n - 1]!, edges, counts: binCounts(values, edges) };
}

/** Index of the bin a value falls in: (-inf, e0], (e0, e1], …, (e_last, +inf). */
export function binOf(value: number, edges: readonly number[]): number {
  let lo = 0;
  let hi = edges.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (value <= edges[mid]!) hi = mid;
    else lo = mid + 1;
  }
  return lo;
}

export function binCounts(values: readonly number[], edges: readonly number[]): number[] {
  const counts = new Array<number>(edges.length + 1).fill(0);
  for (const v of values) counts[binOf(v, edges)]!++;
  return counts;
}

/**
 * A flat placeholder profile for a generated model that has no training data (the tests' and the
 * benchmarks' synthetic models): it satisfies the model-folder checks; drift against it means nothing.
 */
export function placeholderProfile(manifest: {
  readonly name: string;
  readonly version: string;
  readonly input: { readonly width: number; readonly height: number; readonly channels: number };
  readonly labels: readonly string[];
}): ReferenceProfile {
  const flat = numericProfile([0, 0.25, 0.5, 0.75, 1]);
  return {
    schema: 'conveyor.reference/v1',
    model: { name: manifest.name, version: manifest.version },
    dataset: { hash: 'synthetic', split: 'validation', n: 5 },
    image: { width: manifest.input.width, height: manifest.input.height, channels: manifest.input.channels },
    features: { brightness: flat, contrast: flat, inkRatio: flat, confidence: flat },
    predictedClass: {
      kind: 'categorical',
      n: manifest.labels.length,
      categories: [...manifest.labels],
      counts: manifest.labels.map(() => 1),
    },
    quality: { accuracy: 1, atThreshold: [] },
  };
}
