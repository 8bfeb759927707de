import { z } from 'zod';
import { ModelName, ModelRef } from './common.contract.js';
import { LEGACY_QUEUE_MODEL } from './jobs.contract.js';

/**
 * The worker family: who is alive and what it serves (heartbeats), and what each served model is
 * (announcements). Written by the inference workers, read by the gateways (fleet-store.ts).
 */
/** One model a worker serves: warm (it has answered a synthetic input) and taking jobs from its queue. */
export const ServedModel = z.object({
  /** The serving name (routes, queue); `model` is what is loaded under it. */
  name: ModelName,
  model: ModelRef,
  concurrency: z.number().int().positive(),
  /**
   * How long one job of the model takes on this worker, start to commit (ms, a moving average of
   * the recent jobs); absent before the first. Gateways estimate queue waits from it (deadline
   * admission). Added within version 1.
   */
  serviceMs: z.number().nonnegative().optional(),
  /**
   * How many of the model's jobs this worker finishes per second while all its slots are busy (a
   * moving average over recent saturated stretches); absent until it has been saturated. Deadline
   * admission drains the queue at the sum over the live workers. Added within version 1.
   */
  jobsPerSecond: z.number().positive().optional(),
  /**
   * What this worker's answers depend on besides the image and the version (model/answer-spec.ts):
   * gateways use the result cache for the model only while every live worker announces one and the
   * same (version, cacheSpec). Added within version 1 (a worker of an earlier release sends none:
   * the cache is not used while it serves).
   */
  cacheSpec: z.string().min(1).max(64).optional(),
});
export type ServedModel = z.infer<typeof ServedModel>;

/**
 * A model a worker was configured to serve and refused: its folder failed its checks (manifest,
 * sha256, the model-folder suite, the warm-up answer) or onnxruntime could not load it. The worker
 * serves its other models and says so in every beat, so `GET /v1/models` shows why.
 */
export const RefusedModel = z.object({
  name: ModelName,
  problem: z.string(),
  at: z.iso.datetime(),
});
export type RefusedModel = z.infer<typeof RefusedModel>;

/**
 * Worker → anyone, the value of `redisKeys().worker(id)`: who is alive and what it serves. A worker
 * beats only once its first model is warm, and lists a model in `models` only once that model is.
 * `models` was added within version 1 (an additive field: readers of the previous release ignore
 * it and read `model`, which stays the first model served, and `concurrency`, the total).
 */
export const WorkerHeartbeat = z.object({
  kind: z.literal('worker-heartbeat'),
  version: z.literal(1),
  id: z.string(),
  hostname: z.string(),
  pid: z.number().int(),
  model: ModelRef,
  concurrency: z.number().int().positive(),
  models: z.array(ServedModel).min(1).optional(),
  /** Configured models this worker refused to serve (additive within version 1, like `models`). */
  refused: z.array(RefusedModel).optional(),
  startedAt: z.iso.datetime(),
  at: z.iso.datetime(),
  processed: z.number().int().min(0),
  failed: z.number().int().min(0),
});
export type WorkerHeartbeat = z.infer<typeof WorkerHeartbeat>;

/** What a heartbeat's worker serves; a worker of the previous release served one model, from the legacy queue. */
export function servedModels(heartbeat: WorkerHeartbeat): ServedModel[] {
  return heartbeat.models ?? [{ name: LEGACY_QUEUE_MODEL, model: heartbeat.model, concurrency: heartbeat.concurrency }];
}

/**
 * Worker → gateways, the value of `redisKeys().models[name]`: a model being served, as its manifest
 * describes it (what `GET /v1/models/{name}` shows). Rewritten by every heartbeat of a worker
 * serving it, so it survives a Redis that restarted empty.
 */
export const ModelAnnouncement = z.object({
  kind: z.literal('model-announcement'),
  version: z.literal(1),
  name: ModelName,
  model: ModelRef,
  description: z.string().optional(),
  input: z.object({
    name: z.string(),
    layout: z.enum(['NCHW', 'NHWC']),
    channels: z.number().int().positive(),
    height: z.number().int().positive(),
    width: z.number().int().positive(),
    color: z.enum(['gray', 'rgb']),
    resize: z.string(),
  }),
  labels: z.array(z.string()).min(1),
  /** When this version began serving. */
  at: z.iso.datetime(),
  /**
   * The heartbeat that wrote it: when a worker last served the model. Gateways stop listing a model
   * no live worker has served for MODEL_RETIRE_AFTER_SECONDS. Added within version 1 (absent from
   * workers of earlier releases: readers fall back to `at`).
   */
  seenAt: z.iso.datetime().optional(),
});
export type ModelAnnouncement = z.infer<typeof ModelAnnouncement>;
