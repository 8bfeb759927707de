import { z } from 'zod';
import {
  JobId,
  ModelName,
  ModelRef,
  Prediction,
  RequestId,
  Timings,
  ImageFormat,
  InputDescriptors,
  TraceContext,
} from './common.contract.js';
import { ProblemBody } from '../problem.js';
import { JobCache } from './cache.contract.js';

/**
 * The job family: the queues, the payload of an inference job and of a callback delivery, the
 * result a worker stores for a job, and its reply to the waiting gateway.
 *
 * Do not rename a queue without a migration: running processes of the previous release share them
 * during a rolling deploy.
 */
export const QUEUES = {
  /** The queue of LEGACY_QUEUE_MODEL; every other model has its own, see inferenceQueue(). */
  inference: 'inference',
  /** Deliveries of finished jobs to their callback URLs (the gateway both adds and takes them). */
  callbacks: 'callbacks',
} as const;

/**
 * The model whose jobs were on the queue `inference` when there was only one model: it keeps that
 * queue (and its reservation and lock keys), so gateways and workers of the previous release go on
 * sharing it with new ones during a rolling upgrade and nothing needs migrating. Other models get
 * `inference.<name>` (BullMQ forbids ':' in queue names). A function of the name alone, never of
 * configuration, so two processes can never disagree about where a model's jobs are.
 */
export const LEGACY_QUEUE_MODEL = 'digits';

/** The BullMQ queue of a model's jobs: one per model, so each model's workers scale on their own backlog. */
export function inferenceQueue(model: ModelName): string {
  return model === LEGACY_QUEUE_MODEL ? QUEUES.inference : `${QUEUES.inference}.${model}`;
}

export const InputSource = z.discriminatedUnion('kind', [
  z.object({ kind: z.literal('upload'), filename: z.string().max(256).optional() }),
  z.object({ kind: z.literal('url'), url: z.url() }),
]);

/** The payload of an inference job. The image itself lives under `redisKeys().input(jobId)`. */
export const InferenceJob = z.object({
  kind: z.literal('inference'),
  version: z.literal(1),
  requestId: RequestId,
  /** The gateway instance to notify when the job finishes; absent for fire-and-poll requests. */
  replyTo: z.string().min(1).max(64).optional(),
  /** When the gateway accepted the request (epoch ms). */
  acceptedAt: z.number().int().positive(),
  /**
   * The model the job is for; it is on that model's queue (inferenceQueue). Absent from jobs of
   * gateways that predate several models, which only ever queued for LEGACY_QUEUE_MODEL.
   */
  model: ModelName.optional(),
  /**
   * The caller's processing deadline (epoch ms, the gateway's clock): a worker that takes the job
   * later drops it before decoding it and records it `expired`. Absent: no deadline. Added within
   * version 1 (workers of the previous release ignore it and run the job).
   */
  deadline: z.number().int().positive().optional(),
  /**
   * The trace the job belongs to (the gateway's enqueue span), when tracing is on and the request
   * sampled. Added within version 1: workers of the previous release ignore it.
   */
  trace: TraceContext.optional(),
  /**
   * The result cache's facts (cache.contract.ts): the image's digest, whose share an entry counts
   * against, the in-flight record the job leads. Absent: the result is not stored. Added within version 1.
   */
  cache: JobCache.optional(),
  input: z.object({
    format: ImageFormat,
    bytes: z.number().int().positive(),
    width: z.number().int().positive(),
    height: z.number().int().positive(),
    source: InputSource,
  }),
});
export type InferenceJob = z.infer<typeof InferenceJob>;

const ResultBase = z.object({
  id: JobId,
  requestId: RequestId,
  acceptedAt: z.iso.datetime(),
  finishedAt: z.iso.datetime(),
  /** Delivery attempt that produced this record (1 = first). */
  attempt: z.number().int().positive(),
  worker: z.string(),
});

export const CompletedResult = ResultBase.extend({
  status: z.literal('completed'),
  model: ModelRef,
  prediction: Prediction,
  timings: Timings,
  input: InputDescriptors,
  /** The caller's processing deadline (`Prefer: deadline=`), when the request gave one: `finishedAt` is within it or not. */
  deadline: z.iso.datetime().optional(),
});
export type CompletedResult = z.infer<typeof CompletedResult>;

export const FailedResult = ResultBase.extend({
  status: z.literal('failed'),
  error: ProblemBody,
  model: ModelRef.optional(),
});
export type FailedResult = z.infer<typeof FailedResult>;

/**
 * A job cancelled before its result was kept (`DELETE /v1/jobs/{id}`, or its synchronous caller
 * gone while it waited): recorded by the gateway for a job still waiting (`attempt` 0, `worker` the
 * gateway), or by the worker's commit instead of its result when the job was cancelled while it ran.
 */
export const CancelledResult = ResultBase.extend({
  status: z.literal('cancelled'),
  /** 0: cancelled while it waited, no worker attempted it. */
  attempt: z.number().int().min(0),
  error: ProblemBody,
  model: ModelRef.optional(),
});
export type CancelledResult = z.infer<typeof CancelledResult>;

/** A job whose deadline had passed when a worker took it: dropped before its image was decoded. */
export const ExpiredResult = ResultBase.extend({
  status: z.literal('expired'),
  error: ProblemBody,
  /** The deadline the caller gave (InferenceJob.deadline). */
  deadline: z.iso.datetime(),
});
export type ExpiredResult = z.infer<typeof ExpiredResult>;

/** What `GET /v1/jobs/:id` and a synchronous `POST /v1/predict` answer for a finished job. */
export const JobResult = z.discriminatedUnion('status', [CompletedResult, FailedResult, CancelledResult, ExpiredResult]);
export type JobResult = z.infer<typeof JobResult>;

/** Worker → gateway, on `redisKeys().replies(gatewayId)`. */
export const ReplyMessage = z.object({
  kind: z.literal('job-finished'),
  version: z.literal(1),
  result: JobResult,
});
export type ReplyMessage = z.infer<typeof ReplyMessage>;

/** Job options every producer uses, so retries and clean-up behave the same everywhere. */
export const INFERENCE_JOB_OPTIONS = {
  /** Transient failures (a Redis blip, a worker crash) are retried; bad input is not (see ProblemError). */
  attempts: 3,
  backoff: { type: 'exponential', delay: 250 },
  /**
   * The result lives under redisKeys().result with its own TTL; BullMQ keeps the last 100 completed
   * jobs of each queue for an hour (a few hundred bytes each, the image is under redisKeys().input)
   * so the dashboard shows recent successes, not only failures.
   */
  removeOnComplete: { age: 3600, count: 100 },
  /** Failed jobs stay a day (bounded) for the dashboard; their result record expires on its own. */
  removeOnFail: { age: 24 * 3600, count: 1000 },
} as const;

export const INFERENCE_JOB_NAME = 'predict';

/**
 * What a worker's processor returns to BullMQ for an inference job (BullMQ's return value, not the
 * result: that is committed under redisKeys().result). With the payload and the name it types the queues
 * on both sides: `Queue<InferenceJob, InferenceJobReturn, InferenceJobName>`.
 */
export interface InferenceJobReturn {
  /** The predicted label, or 'duplicate' when another attempt had committed the job. */
  readonly label: string;
}
export type InferenceJobName = typeof INFERENCE_JOB_NAME;

/** Gateway → gateway, on QUEUES.callbacks: POST the result of `jobId` to `url` once it is finished. */
export const CallbackJob = z.object({
  kind: z.literal('callback'),
  version: z.literal(1),
  jobId: JobId,
  requestId: RequestId,
  url: z.url(),
  /** The `webhook-id` of every attempt, so receivers can drop duplicates. */
  webhookId: z.string().min(1).max(64),
  /** Whose pending callback this is (redisKeys().callbacksPending), released when the delivery settles. */
  client: z.string().min(1).max(200).optional(),
  /** The trace of the request that asked for the callback: each delivery attempt is a span in it. */
  trace: TraceContext.optional(),
});
export type CallbackJob = z.infer<typeof CallbackJob>;
