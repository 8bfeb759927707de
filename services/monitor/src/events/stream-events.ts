import { FeedbackEvent, PredictionEvent } from '@conveyor/shared/contract/events.contract';
import { servingName } from '@conveyor/shared/contract/common.contract';
import { ShadowEvent } from '@conveyor/shared/contract/shadow.contract';
import type { Logger } from '@conveyor/shared/logger';
import type { z } from 'zod';
import type { StreamEntry } from '../store/stream-consumer.js';
import { trackedKey, type TrackedModel } from '../store/store-records.js';

/**
 * Stream entries become typed events here, or are skipped (logged) when they break the contract:
 * a malformed entry is acknowledged, never retried, since no redelivery will mend it.
 */
function parseEntry<T>(entry: StreamEntry, schema: z.ZodType<T>, what: string, log: Logger): T | undefined {
  let raw: unknown;
  try {
    raw = JSON.parse(entry.fields.event ?? 'null');
  } catch {
    log.warn({ id: entry.id }, `skipping a ${what} entry that is not JSON`);
    return undefined;
  }
  const parsed = schema.safeParse(raw);
  if (parsed.success) return parsed.data;
  log.warn({ id: entry.id, issues: parsed.error.issues.slice(0, 3) }, `skipping a malformed ${what} event`);
  return undefined;
}

export const parsePrediction = (entry: StreamEntry, log: Logger): PredictionEvent | undefined =>
  parseEntry(entry, PredictionEvent, 'prediction', log);

export const parseFeedback = (entry: StreamEntry, log: Logger): FeedbackEvent | undefined =>
  parseEntry(entry, FeedbackEvent, 'feedback', log);

export const parseShadow = (entry: StreamEntry, log: Logger): ShadowEvent | undefined =>
  parseEntry(entry, ShadowEvent, 'shadow', log);

/** The model version an event counts for: its serving name and the version loaded under it. */
export function trackedOf(event: PredictionEvent): TrackedModel {
  return { name: servingName(event), model: event.model };
}

export interface ModelBatch {
  readonly model: TrackedModel;
  /** The batch's events of this model version, in stream order. */
  readonly events: PredictionEvent[];
  /** The position of each event's entry in the read. */
  readonly at: number[];
}

/** A read of the predictions stream, split by model version (malformed entries left out). */
export function byModelVersion(entries: readonly StreamEntry[], log: Logger): ModelBatch[] {
  const groups = new Map<string, ModelBatch>();
  for (const [i, entry] of entries.entries()) {
    const event = parsePrediction(entry, log);
    if (!event) continue;
    const model = trackedOf(event);
    const key = trackedKey(model);
    let group = groups.get(key);
    if (!group) groups.set(key, (group = { model, events: [], at: [] }));
    group.events.push(event);
    group.at.push(i);
  }
  return [...groups.values()];
}
