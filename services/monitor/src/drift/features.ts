import type { PredictionEvent } from '@conveyor/shared/contract/queue.contract';
import type { EmbeddingProfile } from '@conveyor/shared/model/reference-profile';

/**
 * What the monitor keeps of each prediction: the monitored numeric features, the predicted class,
 * and the embedding projected onto the reference's principal components. Compact, because a whole
 * window of these lives in Redis until it is evaluated.
 */
export interface Observation {
  /** Event time (ISO). */
  at: string;
  numeric: Record<string, number>;
  predictedClass: string;
  /** Projections on the reference PCA components (absent without an embedding or reference). */
  projections?: number[];
}

export const NUMERIC_FEATURES = ['brightness', 'contrast', 'inkRatio', 'confidence'] as const;

export function observe(event: PredictionEvent, embedding?: EmbeddingProfile): Observation {
  const numeric = {
    brightness: event.input.brightness,
    contrast: event.input.contrast,
    inkRatio: event.input.inkRatio,
    confidence: event.prediction.confidence,
  };
  const projections =
    embedding && event.embedding && event.embedding.length === embedding.dims ? project(event.embedding, embedding) : undefined;
  return { at: event.at, numeric, predictedClass: event.prediction.label, ...(projections ? { projections } : {}) };
}

export function project(vector: readonly number[], profile: EmbeddingProfile): number[] {
  return profile.components.map((component) => component.reduce((s, w, d) => s + w * (vector[d]! - profile.mean[d]!), 0));
}
