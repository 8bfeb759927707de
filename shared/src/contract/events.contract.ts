import { z } from 'zod';
import { JobId, ModelName, ModelRef, Prediction, RequestId, Timings, InputDescriptors } from './common.contract.js';
import type { CompletedResult } from './jobs.contract.js';

/**
 * The event family, on Redis streams: predictions (worker → monitor), feedback (gateway →
 * monitor) and alerts (monitor → anyone). Each entry's field `event` holds one message.
 *
 * Do not rename a stream without a migration: running processes of the previous release share them
 * during a rolling deploy.
 */
export const STREAMS = {
  predictions: 'stream:predictions',
  feedback: 'stream:feedback',
  alerts: 'stream:alerts',
} as const;

/** Worker → monitor, one entry per completed prediction on the predictions stream (field `event`). */
export const PredictionEvent = z.object({
  kind: z.literal('prediction'),
  version: z.literal(1),
  jobId: JobId,
  requestId: RequestId,
  at: z.iso.datetime(),
  /**
   * The serving name the job was for (its route, its queue, the `model` label of every metric).
   * `model` is what was loaded under it, whose name may differ (a registry model of another name
   * behind MODEL_URI). Added within version 1: absent from workers that do not set it, and then
   * readers take `model.name` (servingName()).
   */
  name: ModelName.optional(),
  model: ModelRef,
  prediction: Prediction,
  timings: Timings,
  input: InputDescriptors,
  /** The model's embedding output (e.g. the penultimate layer), when its manifest declares one. */
  embedding: z.array(z.number()).optional(),
});
export type PredictionEvent = z.infer<typeof PredictionEvent>;

/**
 * The event of a completed job: the result's own fields, so the two cannot disagree, and the name
 * the model is served under (its queue's; the loaded model's own name may differ).
 */
export function predictionEvent(result: CompletedResult, name: string, embedding?: readonly number[]): PredictionEvent {
  return {
    kind: 'prediction',
    version: 1,
    name,
    jobId: result.id,
    requestId: result.requestId,
    at: result.finishedAt,
    model: result.model,
    prediction: result.prediction,
    timings: result.timings,
    input: result.input,
    ...(embedding ? { embedding: [...embedding] } : {}),
  };
}

/** Gateway → monitor, one entry per `POST /v1/feedback` on the feedback stream (field `event`). */
export const FeedbackEvent = z.object({
  kind: z.literal('feedback'),
  version: z.literal(1),
  jobId: JobId,
  /** The true label, as the caller learnt it later. */
  label: z.string().min(1).max(64),
  at: z.iso.datetime(),
  requestId: RequestId,
  /**
   * The job's prediction, as its result (which the gateway read to accept the feedback) has it:
   * the monitor joins feedback to it without keeping a record per prediction for as long as
   * feedback may come. Added within version 1: absent from gateways that do not send it, and then
   * the monitor joins to the record it kept (PREDICTION_TTL_SECONDS).
   */
  predicted: z
    .object({
      label: z.string(),
      confidence: z.number().min(0).max(1),
      model: z.object({ name: z.string(), version: z.string() }),
    })
    .optional(),
});
export type FeedbackEvent = z.infer<typeof FeedbackEvent>;

export const Severity = z.enum(['warn', 'alert', 'resolved']);
export type Severity = z.infer<typeof Severity>;

/** Monitor → anyone (alerts stream, webhook, log line): a drift or quality state change. */
export const AlertEvent = z.object({
  kind: z.literal('alert'),
  version: z.literal(1),
  id: z.string(),
  at: z.iso.datetime(),
  severity: Severity,
  /** `psi`, `js`, `embedding-drift-share`, `accuracy`… */
  metric: z.string(),
  /** `brightness`, `confidence`, `predicted-class`, `embedding`, `quality`… */
  feature: z.string(),
  value: z.number().nullable(),
  threshold: z.number().nullable(),
  /** The window the decision was made on. */
  window: z.object({ index: z.number().int().min(0), size: z.number().int().min(0), from: z.string(), to: z.string() }),
  model: ModelRef,
  /** The serving name of the model (see PredictionEvent.name); added within version 1. */
  name: z.string().optional(),
  state: z.object({ from: z.string(), to: z.string() }),
  message: z.string(),
});
export type AlertEvent = z.infer<typeof AlertEvent>;
