import { z } from 'zod';
import { ModelRef } from '@conveyor/shared/contract/common.contract';

/**
 * Everything the monitor keeps in Redis, as schemas: what one monitor writes another (of this
 * release or the next) reads back, so each record is parsed on the way in, never cast. Fields
 * added later are optional, and a record of an older monitor still parses.
 */

const Level = z.enum(['ok', 'warn', 'alert']);

/**
 * A model the monitor follows, one per serving name and version: `name` is the serving name (the
 * `model` label, the `{name}` of the routes), `model` what was loaded under it (the registry or
 * manifest name and version the reference profile is looked up by). Hash `monitor:tracked`, field
 * `<name>@<version>`, rewritten by every batch of its events.
 */
export const TrackedModel = z.object({
  name: z.string().min(1),
  model: ModelRef,
  /** Event time of the newest event applied so far (ISO): the version a model serves now is its newest. */
  lastEventAt: z.string().optional(),
});
export type TrackedModel = z.infer<typeof TrackedModel>;

/** The key of a tracked model version in every per-version Redis key: `<serving name>@<version>`. */
export const trackedKey = (m: Pick<TrackedModel, 'name' | 'model'>): string => `${m.name}@${m.model.version}`;

/**
 * What a window keeps of one prediction (`monitor:window:<key>` and `monitor:closedwin:<key>:<i>`,
 * one JSON per list element): the monitored numeric features, the predicted class, and the
 * embedding projected onto the reference's principal components. Compact: a whole window of
 * these lives in Redis until it is evaluated.
 */
export const Observation = z.object({
  /** Event time (ISO). */
  at: z.string(),
  numeric: z.record(z.string(), z.number()),
  predictedClass: z.string(),
  /** Projections on the reference PCA components (absent without an embedding or reference). */
  projections: z.array(z.number()).optional(),
});
export type Observation = z.infer<typeof Observation>;

/**
 * A prediction as feedback joins to it (`monitor:pred:<jobId>`, with a TTL). Its existence also
 * marks the job as counted. `name` was added with several models: a record without it is of the
 * model `model.name`.
 */
export const StoredPrediction = z.object({
  label: z.string(),
  confidence: z.number(),
  model: ModelRef,
  name: z.string().optional(),
});
export type StoredPrediction = z.infer<typeof StoredPrediction>;

/** One labelled prediction of the rolling quality window (`monitor:quality:<key>`, newest first). */
export const Labelled = z.object({ correct: z.boolean(), confidence: z.number() });
export type Labelled = z.infer<typeof Labelled>;

/** The alert state machine of one feature (`monitor:state:<key>`, one field per feature); see alert-state.ts. */
export const FeatureState = z.object({
  level: Level,
  /** A level being confirmed, and for how many windows in a row. */
  pending: Level.nullable(),
  streak: z.number().int().min(0),
  /** The highest severity announced in the current episode. */
  announced: z.enum(['none', 'warn', 'alert']),
  /** Whether this episode was announced at all (false when it started inside the cooldown). */
  suppressed: z.boolean(),
  resolvedAt: z.number().nullable(),
});
export type FeatureState = z.infer<typeof FeatureState>;

export const FeatureRecord = z.object({
  metric: z.string(),
  value: z.number(),
  js: z.number().nullable(),
  level: Level,
  /** The feature's alert state after this window. */
  state: Level,
  warn: z.number(),
  alert: z.number(),
});
export type FeatureRecord = z.infer<typeof FeatureRecord>;

/**
 * An evaluated window: an entry of the stream `monitor:windows` (the reports read it) and the
 * field `drift` of `monitor:latest:<key>`. `name` was added with several models (absent: `model.name`).
 */
export const WindowRecord = z.object({
  model: ModelRef,
  name: z.string().optional(),
  index: z.number().int().min(1),
  evaluatedAt: z.string(),
  size: z.number().int().min(0),
  from: z.string(),
  to: z.string(),
  /** `learning`: pooled into the reference being learned (no figures, no alerts); see learned-reference.ts. */
  status: z.enum(['evaluated', 'no_reference', 'learning']),
  features: z.record(z.string(), FeatureRecord),
  /** What an evaluated window was compared with: a measured profile or one learned from the first windows. */
  reference: z.enum(['measured', 'learned']).optional(),
  /** For a `learning` window: observations pooled so far, of those needed. */
  learning: z.object({ have: z.number().int().min(0), need: z.number().int().min(0) }).optional(),
});
export type WindowRecord = z.infer<typeof WindowRecord>;

/**
 * What monitors before several models also wrote to the windows stream for a closed window found
 * already evaluated; read (and skipped) so such a stream still parses. Nothing writes it now.
 */
export const StaleWindowRecord = z.object({ stale: z.literal(true), model: ModelRef, index: z.number().int() });

export const WindowStreamEntry = z.union([WindowRecord, StaleWindowRecord]);

/** Rolling quality (field `quality` of `monitor:latest:<key>`); see quality.ts. */
export const QualitySnapshot = z.object({
  labelled: z.number().int().min(0),
  covered: z.number().int().min(0),
  coverage: z.number(),
  accuracy: z.number().nullable(),
  lower: z.number().nullable(),
  upper: z.number().nullable(),
  threshold: z.number(),
});
export type QualitySnapshot = z.infer<typeof QualitySnapshot>;
