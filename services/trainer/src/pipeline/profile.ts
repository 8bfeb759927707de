import { preprocess } from '@conveyor/shared/model/preprocess';
import { numericProfile, type EmbeddingProfile, type ReferenceProfile } from '@conveyor/shared/model/reference-profile';
import { classify, type LoadedModel } from '@conveyor/shared/model/runtime';
import type { Dataset } from './ingest.js';

/**
 * The reference profile of a model: the serving pipeline (preprocess → ONNX) run over the
 * validation split, summarised as the drift monitor will need it — the input descriptors, the top
 * confidence, the predicted classes, and the embedding reduced by PCA.
 */
const PCA_COMPONENTS = 4;
const THRESHOLDS = [0.5, 0.7, 0.9, 0.95];

export async function buildReferenceProfile(
  model: LoadedModel,
  dataset: Dataset,
  indices: readonly number[],
): Promise<ReferenceProfile> {
  const { manifest } = model;
  const features: Record<string, number[]> = { brightness: [], contrast: [], inkRatio: [], confidence: [] };
  const predicted: number[] = [];
  const correct: boolean[] = [];
  const embeddings: Float32Array[] = [];
  for (let start = 0; start < indices.length; start += 64) {
    const batch = indices.slice(start, start + 64);
    const prepared = await Promise.all(
      batch.map((i) =>
        preprocess(
          { kind: 'raw', data: dataset.samples[i]!.pixels, width: dataset.side, height: dataset.side, channels: 1 },
          manifest,
          {
            maxPixels: dataset.side * dataset.side,
          },
        ),
      ),
    );
    const outputs = await model.run(prepared.map((p) => p.tensor));
    outputs.forEach((out, j) => {
      const d = prepared[j]!.descriptors;
      // Exactly what the worker publishes (classify rounds), or near-1 confidences would land in
      // different bins in production than in the reference and read as drift.
      const { index: best, confidence } = classify(out.probabilities, manifest.labels);
      features.brightness!.push(d.brightness);
      features.contrast!.push(d.contrast);
      features.inkRatio!.push(d.inkRatio);
      features.confidence!.push(confidence);
      predicted.push(best);
      correct.push(best === dataset.samples[batch[j]!]!.label);
      if (out.embedding) embeddings.push(out.embedding);
    });
  }
  const n = indices.length;
  return {
    schema: 'conveyor.reference/v1',
    model: { name: manifest.name, version: manifest.version },
    dataset: { hash: dataset.hash, split: 'validation', n },
    image: { width: dataset.side, height: dataset.side, channels: 1 },
    features: Object.fromEntries(Object.entries(features).map(([k, v]) => [k, numericProfile(v)])),
    predictedClass: {
      kind: 'categorical',
      n,
      categories: [...manifest.labels],
      counts: manifest.labels.map((_, c) => predicted.filter((p) => p === c).length),
    },
    ...(embeddings.length ? { embedding: pcaProfile(embeddings, PCA_COMPONENTS) } : {}),
    quality: {
      accuracy: correct.filter(Boolean).length / n,
      atThreshold: THRESHOLDS.map((threshold) => {
        const kept = features.confidence!.map((c, i) => [c, correct[i]!] as const).filter(([c]) => c >= threshold);
        return {
          threshold,
          accuracy: kept.length ? kept.filter(([, ok]) => ok).length / kept.length : 0,
          coverage: kept.length / n,
        };
      }),
    },
  };
}

/**
 * Principal components by power iteration with deflation on the covariance matrix: deterministic
 * (fixed start vector), and plenty for a 64-dimensional embedding.
 */
export function pcaProfile(rows: readonly Float32Array[], k: number): EmbeddingProfile {
  const dims = rows[0]!.length;
  const n = rows.length;
  const mean = new Array<number>(dims).fill(0);
  for (const r of rows) for (let d = 0; d < dims; d++) mean[d]! += r[d]! / n;
  const cov = Array.from({ length: dims }, () => new Float64Array(dims));
  for (const r of rows) {
    for (let a = 0; a < dims; a++) {
      const da = r[a]! - mean[a]!;
      if (da === 0) continue;
      const row = cov[a]!;
      for (let b = 0; b < dims; b++) row[b]! += (da * (r[b]! - mean[b]!)) / (n - 1);
    }
  }
  const total = cov.reduce((s, row, i) => s + row[i]!, 0);
  const components: number[][] = [];
  const explained: number[] = [];
  for (let c = 0; c < Math.min(k, dims); c++) {
    let v = Array.from({ length: dims }, (_, i) => 1 / Math.sqrt(dims) + (i % 2 ? 1e-3 : -1e-3));
    let eigen = 0;
    for (let iter = 0; iter < 500; iter++) {
      const w = cov.map((row) => row.reduce((s, x, j) => s + x * v[j]!, 0));
      const norm = Math.sqrt(w.reduce((s, x) => s + x * x, 0));
      if (norm === 0) break;
      const next = w.map((x) => x / norm);
      const delta = next.reduce((s, x, j) => s + Math.abs(x - v[j]!), 0);
      v = next;
      eigen = norm;
      if (delta < 1e-10) break;
    }
    // Deflate: remove this component's variance before finding the next one.
    for (let a = 0; a < dims; a++) for (let b = 0; b < dims; b++) cov[a]![b]! -= eigen * v[a]! * v[b]!;
    components.push(v);
    explained.push(total > 0 ? eigen / total : 0);
  }
  const projections = components.map((comp) =>
    numericProfile(rows.map((r) => r.reduce((s, x, d) => s + (x - mean[d]!) * comp[d]!, 0))),
  );
  return { dims, mean, components, explainedVarianceRatio: explained, projections };
}
