import type { PredictionEvent } from '@conveyor/shared/contract/events.contract';
import type { EmbeddingProfile } from '@conveyor/shared/model/reference-profile';
import type { Observation } from '../store/store-records.js';

export type { Observation };

/** The monitored numeric features of a prediction (the observation keeps them; see store-records.ts). */
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
