import type { LoadedModel } from '@conveyor/shared/model/runtime';
import type { FeatureSet } from './features.js';

/** Offline evaluation of an ONNX model through the serving runtime (`@conveyor/shared/model/runtime`). */
export interface ClassMetrics {
  label: string;
  precision: number;
  recall: number;
  f1: number;
  support: number;
}

export interface Evaluation {
  accuracy: number;
  macroF1: number;
  perClass: ClassMetrics[];
  /** confusion[actual][predicted] */
  confusion: number[][];
  n: number;
  /** Probabilities of every sample, row by row (to compare exports, and for reference profiles). */
  probabilities: Float32Array;
  predictions: Int32Array;
}

export async function evaluate(model: LoadedModel, set: FeatureSet): Promise<Evaluation> {
  const labels = model.manifest.labels;
  const k = labels.length;
  const confusion = labels.map(() => new Array<number>(k).fill(0));
  const probabilities = new Float32Array(set.n * k);
  const predictions = new Int32Array(set.n);
  const step = 64;
  for (let start = 0; start < set.n; start += step) {
    const images = [];
    for (let i = start; i < Math.min(set.n, start + step); i++) images.push(set.x.subarray(i * set.size, (i + 1) * set.size));
    const outputs = await model.run(images);
    outputs.forEach((o, j) => {
      const i = start + j;
      probabilities.set(o.probabilities, i * k);
      let best = 0;
      for (let c = 1; c < k; c++) if (o.probabilities[c]! > o.probabilities[best]!) best = c;
      predictions[i] = best;
      confusion[set.y[i]!]![best]!++;
    });
  }
  const perClass = labels.map((label, c) => {
    const tp = confusion[c]![c]!;
    const support = confusion[c]!.reduce((a, b) => a + b, 0);
    const predicted = confusion.reduce((a, row) => a + row[c]!, 0);
    const precision = predicted ? tp / predicted : 0;
    const recall = support ? tp / support : 0;
    const f1 = precision + recall ? (2 * precision * recall) / (precision + recall) : 0;
    return { label, precision, recall, f1, support };
  });
  const correct = labels.reduce((a, _, c) => a + confusion[c]![c]!, 0);
  return {
    accuracy: correct / set.n,
    macroF1: perClass.reduce((a, m) => a + m.f1, 0) / k,
    perClass,
    confusion,
    n: set.n,
    probabilities,
    predictions,
  };
}

export interface Latency {
  batch1MedianMs: number;
  batch1P95Ms: number;
  batch32PerImageMs: number;
}

/** Inference latency of the ONNX session alone (no preprocessing), median over repeated runs. */
export async function measureLatency(model: LoadedModel, set: FeatureSet, runs = 300): Promise<Latency> {
  const one = (i: number) => set.x.subarray((i % set.n) * set.size, ((i % set.n) + 1) * set.size);
  const singles: number[] = [];
  for (let i = 0; i < runs; i++) {
    const t = performance.now();
    await model.run([one(i)]);
    singles.push(performance.now() - t);
  }
  const batches: number[] = [];
  for (let i = 0; i < Math.max(10, runs / 10); i++) {
    const images = Array.from({ length: 32 }, (_, j) => one(i * 32 + j));
    const t = performance.now();
    await model.run(images);
    batches.push((performance.now() - t) / 32);
  }
  return {
    batch1MedianMs: quantile(singles, 0.5),
    batch1P95Ms: quantile(singles, 0.95),
    batch32PerImageMs: quantile(batches, 0.5),
  };
}

export function quantile(values: readonly number[], q: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  const pos = (sorted.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return sorted[lo]! + (sorted[hi]! - sorted[lo]!) * (pos - lo);
}
