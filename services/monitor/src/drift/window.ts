import { binCounts, type ReferenceProfile } from '@conveyor/shared/model/reference-profile';
import { jsDistance, proportions, psi } from './divergence.js';
import type { Observation } from './features.js';

/**
 * A window's drift against the reference profile of the model version that produced it: PSI and
 * JS distance for each numeric feature and for the predicted classes (with a bucket for classes the
 * reference never saw), and for the embedding the share of principal components whose PSI crosses
 * the warn threshold (Evidently's "share of drifted components" method, with PSI per component).
 */
export interface Thresholds {
  warn: number;
  alert: number;
}

export type Level = 'ok' | 'warn' | 'alert';

export interface FeatureDrift {
  metric: 'psi' | 'drifted-component-share';
  value: number;
  js: number | null;
  level: Level;
  thresholds: Thresholds;
}

export interface WindowDrift {
  size: number;
  from: string;
  to: string;
  features: Record<string, FeatureDrift>;
}

export function levelOf(value: number, thresholds: Thresholds): Level {
  return value >= thresholds.alert ? 'alert' : value >= thresholds.warn ? 'warn' : 'ok';
}

export function evaluateWindow(
  profile: ReferenceProfile,
  window: readonly Observation[],
  thresholdsFor: (feature: string) => Thresholds,
): WindowDrift {
  if (window.length === 0) throw new Error('an empty window has no drift');
  const features: Record<string, FeatureDrift> = {};
  for (const [name, reference] of Object.entries(profile.features)) {
    const values = window.map((o) => o.numeric[name]).filter((v): v is number => typeof v === 'number');
    if (values.length === 0) continue;
    const ref = proportions(reference.counts);
    const cur = proportions(binCounts(values, reference.edges));
    const value = psi(ref, cur);
    const thresholds = thresholdsFor(name);
    features[name] = { metric: 'psi', value, js: jsDistance(ref, cur), level: levelOf(value, thresholds), thresholds };
  }

  // Predicted classes, with one extra bucket for labels the reference never produced.
  const categories = profile.predictedClass.categories;
  const known = new Map(categories.map((c, i) => [c, i]));
  const counts = new Array<number>(categories.length + 1).fill(0);
  for (const o of window) counts[known.get(o.predictedClass) ?? categories.length]!++;
  const refClasses = proportions([...profile.predictedClass.counts, 0]);
  const curClasses = proportions(counts);
  const classPsi = psi(refClasses, curClasses);
  const classThresholds = thresholdsFor('predicted-class');
  features['predicted-class'] = {
    metric: 'psi',
    value: classPsi,
    js: jsDistance(refClasses, curClasses),
    level: levelOf(classPsi, classThresholds),
    thresholds: classThresholds,
  };

  const embedding = profile.embedding;
  const projected = window.filter((o) => o.projections?.length === embedding?.components.length);
  if (embedding && projected.length > 0) {
    const componentThresholds = thresholdsFor('embedding-component');
    const drifted = embedding.projections.filter((reference, c) => {
      const values = projected.map((o) => o.projections![c]!);
      return psi(proportions(reference.counts), proportions(binCounts(values, reference.edges))) >= componentThresholds.warn;
    }).length;
    const share = drifted / embedding.projections.length;
    const thresholds = thresholdsFor('embedding');
    features.embedding = {
      metric: 'drifted-component-share',
      value: share,
      js: null,
      level: levelOf(share, thresholds),
      thresholds,
    };
  }
  const times = window.map((o) => o.at).sort();
  return { size: window.length, from: times[0]!, to: times.at(-1)!, features };
}
