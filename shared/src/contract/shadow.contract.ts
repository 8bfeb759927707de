import { z } from 'zod';
import { JobId, ModelName, ModelRef, Prediction } from './common.contract.js';

/**
 * The shadow family (docs/shadow.md): with SHADOW_VERSION set for a model, a worker also runs a
 * shadow version of it on a sampled share of live jobs, after the caller was answered, and publishes
 * the pair of answers on the shadow stream (field `event`). The monitor turns pairs into agreement
 * beside drift; `make shadow-report` turns them into the replay report. Neither the image nor who
 * asked (request id, client) is kept: a pair says how two models answered, not what or for whom.
 *
 * Do not rename the stream without a migration (redis-keys.ts).
 */
export const SHADOW_STREAM = 'stream:shadow';

/** One model's answer in a pair: the version that gave it, the answer, its onnxruntime time. */
export const ShadowAnswer = z.object({
  model: ModelRef,
  prediction: Prediction,
  inferenceMs: z.number().min(0),
});
export type ShadowAnswer = z.infer<typeof ShadowAnswer>;

export const ShadowEvent = z.object({
  kind: z.literal('shadow'),
  version: z.literal(1),
  /** The production job whose input both models answered (BullMQ job id; never the request id). */
  jobId: JobId,
  /** When the shadow answered. */
  at: z.iso.datetime(),
  /** The serving name (route, queue, the `model` label). */
  name: ModelName,
  production: ShadowAnswer,
  shadow: ShadowAnswer.extend({
    /** The registered model version it was downloaded as, when it came from the MLflow registry. */
    registry: z.object({ name: z.string().min(1), version: z.string().regex(/^\d+$/) }).optional(),
  }),
});
export type ShadowEvent = z.infer<typeof ShadowEvent>;
