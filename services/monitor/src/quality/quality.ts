import type { Level } from '../drift/window.js';
import type { Labelled, QualitySnapshot } from '../store/store-records.js';

export type { Labelled, QualitySnapshot };

/**
 * Rolling quality from delayed ground truth: over the last N labelled predictions, the accuracy
 * of those at or above a confidence threshold, the coverage (share above the threshold), and a
 * Wilson 95 % interval for the accuracy.
 */
export function quality(window: readonly Labelled[], threshold: number): QualitySnapshot {
  const kept = window.filter((l) => l.confidence >= threshold);
  const correct = kept.filter((l) => l.correct).length;
  const n = kept.length;
  const interval = n ? wilson(correct, n) : null;
  return {
    labelled: window.length,
    covered: n,
    coverage: window.length ? n / window.length : 0,
    accuracy: n ? correct / n : null,
    lower: interval?.[0] ?? null,
    upper: interval?.[1] ?? null,
    threshold,
  };
}

export function wilson(successes: number, n: number, z = 1.959964): [number, number] {
  const p = successes / n;
  const z2 = z * z;
  const centre = (p + z2 / (2 * n)) / (1 + z2 / n);
  const half = (z / (1 + z2 / n)) * Math.sqrt((p * (1 - p)) / n + z2 / (4 * n * n));
  return [Math.max(0, centre - half), Math.min(1, centre + half)];
}

/**
 * Below target is a warning; below target with the whole interval under it is an alert. Too few
 * labels say nothing.
 */
export function qualityLevel(snapshot: QualitySnapshot, target: number, minLabels: number): Level | 'insufficient_data' {
  if (snapshot.covered < minLabels || snapshot.accuracy === null) return 'insufficient_data';
  if (snapshot.upper! < target) return 'alert';
  if (snapshot.accuracy < target) return 'warn';
  return 'ok';
}
