import { z } from 'zod';
import { problemSlugs } from '../problem.js';

/**
 * The contract between the gateway, the inference workers and the monitor: queue names, Redis
 * keys, job payloads, results and events. Producers and consumers import these schemas and
 * consumers validate what they receive. Messages are tagged by `kind` and carry a `version`.
 *
 * Do not rename a queue, key or stream without a migration: running processes of the previous
 * release share them during a rolling deploy.
 */
export const QUEUES = {
  /** The queue of LEGACY_QUEUE_MODEL; every other model has its own, see inferenceQueue(). */
  inference: 'inference',
  /** Deliveries of finished jobs to their callback URLs (the gateway both adds and takes them). */
  callbacks: 'callbacks',
} as const;

/**
 * A model's serving name: the `{name}` of `/v1/models/{name}/predict`, the suffix of its queue, the
 * `model` label of the metrics. The same rule as a manifest's `name`. Names reach Redis keys and
 * metric labels only once a worker announced them or the configuration names them, never from a
 * request alone, so they stay a small, bounded set.
 */
export const ModelName = z
  .string()
  .regex(/^[a-z0-9][a-z0-9._-]{0,63}$/, 'a model name: lowercase letters, digits, ".", "_" and "-", at most 64, e.g. digits');
export type ModelName = z.infer<typeof ModelName>;

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

export const STREAMS = {
  predictions: 'stream:predictions',
  feedback: 'stream:feedback',
  alerts: 'stream:alerts',
} as const;

/** Redis keys other than BullMQ's own, all under the deployment prefix. */
export function keys(prefix: string) {
  return {
    /** The uploaded image bytes of a job, stored as a binary string (not base64 inside job JSON). */
    input: (jobId: string) => `${prefix}:input:${jobId}`,
    /** The finished job (result or error), JSON, expires after RESULT_TTL_SECONDS. */
    result: (jobId: string) => `${prefix}:result:${jobId}`,
    /** The callback of an asynchronous job and how its delivery went (CallbackState JSON, api.contract). */
    callback: (jobId: string) => `${prefix}:callback:${jobId}`,
    /**
     * The API key id that made a job (JobStore.putOwner), when keys are required: only it (or an
     * admin key) may read the job, its events, its callback details, or give its feedback. Kept
     * while the job waits (at most INPUT_TTL_SECONDS + RESULT_TTL_SECONDS), then, from the result
     * commit on, exactly as long as the result.
     */
    owner: (jobId: string) => `${prefix}:owner:${jobId}`,
    /**
     * Sorted set of the callbacks a client has pending (gateway callbacks): member the job id, score
     * the time (ms) its delivery gives up at the latest, so a delivery that never settles stops
     * counting by itself. `client` is an API key id (`key:<id>`) or an address (`ip:<address>`).
     */
    callbacksPending: (client: string) => `${prefix}:callbacks:pending:${client}`,
    /** Marks that ground truth was recorded for a job (feedback is accepted once per job). */
    feedback: (jobId: string) => `${prefix}:feedback:${jobId}`,
    /** Pub/sub channel on which workers announce finished jobs to the gateway instance waiting for them. */
    replies: (gatewayId: string) => `${prefix}:replies:${gatewayId}`,
    /**
     * BullMQ's own lock of an active job (bullmq 6: `<prefix>:<queue>:<id>:lock`, holding the
     * processing attempt's token). A worker commits a result only while its attempt holds it;
     * `workers.e2e.test.ts` checks the name against a running BullMQ.
     */
    jobLock: (queue: string, jobId: string) => `${prefix}:${queue}:${jobId}:lock`,
    /**
     * Sorted set of places in a queue reserved by requests whose job is not queued yet (gateway
     * admission): member the job id the request will use, score the time (ms) the place lapses. The
     * legacy queue keeps the key it always had, so old and new gateways count the same places.
     */
    admissionReserved: (queue: string) =>
      queue === QUEUES.inference ? `${prefix}:admission:reservations` : `${prefix}:admission:reservations:${queue}`,
    /**
     * Fair queuing of a model's queue (gateway, jobs/fair-queue.ts): hash tenant → the virtual
     * finish time of its last job. Deleted whenever the queue is found empty (virtual time restarts).
     */
    fairFinish: (queue: string) => `${prefix}:fair:${queue}:finish`,
    /**
     * Fair queuing: sorted set of one tenant's places in a model's queue (member job id, score its
     * virtual start time), pruned from the bottom once those jobs have left the queue.
     */
    fairPlaces: (queue: string, tenant: string) => `${prefix}:fair:${queue}:places:${tenant}`,
    /**
     * The images admission counts, one field per job: job id → `<bytes> <job key prefix> <reservations
     * key>`. Set at admission, corrected once the image is stored, removed by the job's result commit,
     * by a request that failed, or by the gateways' reconciliation once the job no longer waits (removed
     * by an operator, failed without a commit). Each job's bytes are given back once, by whoever removes
     * its field, so the sum cannot drift from the jobs that exist. (The counter this replaced,
     * `admission:queued-bytes`, fell only in the commit: a queue emptied from the dashboard kept its
     * bytes counted for ever.)
     */
    queuedImages: `${prefix}:admission:queued-images`,
    /** The sum of queuedImages' bytes, kept by the same scripts that change it (admission reads one key). */
    queuedBytes: `${prefix}:admission:queued-images:bytes`,
    /** Hash of API keys: id → JSON { name, sha256 of the key, scopes, createdAt } (never the key itself). */
    apiKeys: `${prefix}:api-keys`,
    /** Hash `name@version` → JSON array of the model's labels, written by the workers serving it. */
    modelLabels: `${prefix}:model-labels`,
    /**
     * Hash serving name → ModelAnnouncement JSON: every model a worker has ever announced (warm and
     * serving), with the version and input it announced last. Never expires: a model once served
     * stays known (async requests for it are queued while no worker is up); `HDEL` retires one.
     */
    models: `${prefix}:models`,
    /** Sorted set of live workers, scored by the time their heartbeat expires. */
    workers: `${prefix}:workers`,
    /** Heartbeat details of one worker, JSON, with a TTL. */
    worker: (workerId: string) => `${prefix}:worker:${workerId}`,
    predictions: `${prefix}:${STREAMS.predictions}`,
    feedbackStream: `${prefix}:${STREAMS.feedback}`,
    alerts: `${prefix}:${STREAMS.alerts}`,
  };
}
export type Keys = ReturnType<typeof keys>;

/** The formats Conveyor accepts (sniffed from the bytes; see model/decoders.ts for the decoders allowed to run). */
export const ImageFormat = z.enum(['jpeg', 'png', 'webp', 'gif', 'tiff', 'avif']);
export type ImageFormat = z.infer<typeof ImageFormat>;

const JobId = z.uuid();
const RequestId = z.string().min(1).max(128);

export const InputSource = z.discriminatedUnion('kind', [
  z.object({ kind: z.literal('upload'), filename: z.string().max(256).optional() }),
  z.object({ kind: z.literal('url'), url: z.url() }),
]);

/** The payload of an inference job. The image itself lives under `keys().input(jobId)`. */
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
  input: z.object({
    format: ImageFormat,
    bytes: z.number().int().positive(),
    width: z.number().int().positive(),
    height: z.number().int().positive(),
    source: InputSource,
  }),
});
export type InferenceJob = z.infer<typeof InferenceJob>;

export const ModelRef = z.object({ name: z.string(), version: z.string() });
export type ModelRef = z.infer<typeof ModelRef>;

export const Prediction = z.object({
  label: z.string(),
  index: z.number().int().min(0),
  confidence: z.number().min(0).max(1),
  top: z.array(z.object({ label: z.string(), confidence: z.number().min(0).max(1) })).min(1),
});
export type Prediction = z.infer<typeof Prediction>;

export const Timings = z.object({
  /** From acceptance by the gateway until a worker started the job. */
  queueMs: z.number().min(0),
  /** Fetching the image from Redis, decoding and preparing the tensor. */
  preprocessMs: z.number().min(0),
  /** The onnxruntime session run. */
  inferenceMs: z.number().min(0),
  /** From acceptance by the gateway until the result was stored. */
  totalMs: z.number().min(0),
});
export type Timings = z.infer<typeof Timings>;

/** What preprocessing measures of an image (see model/preprocess.ts), without the upload's own facts. */
export const ImageDescriptors = z.object({
  /** Size of the image as uploaded, after EXIF orientation. */
  width: z.number().int().positive(),
  height: z.number().int().positive(),
  /** Mean and standard deviation of the gray level (0–1) at working resolution, before inversion. */
  brightness: z.number().min(0).max(1),
  contrast: z.number().min(0).max(1),
  /** Share of pixels that are ink after normalisation (0–1). */
  inkRatio: z.number().min(0).max(1),
  /** Whether the image was inverted to light-on-dark. */
  inverted: z.boolean(),
});
export type ImageDescriptors = z.infer<typeof ImageDescriptors>;

/** Cheap facts about an input, published with every prediction for drift monitoring. */
export const InputDescriptors = z.object({
  format: ImageFormat,
  bytes: z.number().int().positive(),
  ...ImageDescriptors.shape,
});
export type InputDescriptors = z.infer<typeof InputDescriptors>;

export const ProblemBody = z.object({
  type: z.string(),
  title: z.string(),
  status: z.number().int().min(400).max(599),
  detail: z.string(),
  slug: z.enum(problemSlugs),
});
export type ProblemBody = z.infer<typeof ProblemBody>;

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
});
export type CompletedResult = z.infer<typeof CompletedResult>;

export const FailedResult = ResultBase.extend({
  status: z.literal('failed'),
  error: ProblemBody,
  model: ModelRef.optional(),
});
export type FailedResult = z.infer<typeof FailedResult>;

/** What `GET /v1/jobs/:id` and a synchronous `POST /v1/predict` answer for a finished job. */
export const JobResult = z.discriminatedUnion('status', [CompletedResult, FailedResult]);
export type JobResult = z.infer<typeof JobResult>;

/** Worker → gateway, on `keys().replies(gatewayId)`. */
export const ReplyMessage = z.object({
  kind: z.literal('job-finished'),
  version: z.literal(1),
  result: JobResult,
});
export type ReplyMessage = z.infer<typeof ReplyMessage>;

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
 * The serving name of a prediction event (or of a record made from one that may predate the field):
 * its own, or the loaded model's when the producer did not send it.
 */
export function servingName(record: { readonly name?: string | undefined; readonly model: { readonly name: string } }): string {
  return record.name ?? record.model.name;
}

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

/** One model a worker serves: warm (it has answered a synthetic input) and taking jobs from its queue. */
export const ServedModel = z.object({
  /** The serving name (routes, queue); `model` is what is loaded under it. */
  name: ModelName,
  model: ModelRef,
  concurrency: z.number().int().positive(),
});
export type ServedModel = z.infer<typeof ServedModel>;

/**
 * Worker → anyone, the value of `keys().worker(id)`: who is alive and what it serves. A worker
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
 * Worker → gateways, the value of `keys().models[name]`: a model being served, as its manifest
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

/** Job options every producer uses, so retries and clean-up behave the same everywhere. */
export const INFERENCE_JOB_OPTIONS = {
  /** Transient failures (a Redis blip, a worker crash) are retried; bad input is not (see ProblemError). */
  attempts: 3,
  backoff: { type: 'exponential', delay: 250 },
  /** The result lives under keys().result with its own TTL; BullMQ's copy is not needed. */
  removeOnComplete: true,
  /** Failed jobs stay a day (bounded) for the dashboard; their result record expires on its own. */
  removeOnFail: { age: 24 * 3600, count: 1000 },
} as const;

export const INFERENCE_JOB_NAME = 'predict';

/**
 * What a worker's processor returns to BullMQ for an inference job (BullMQ's return value, not the
 * result: that is committed under keys().result). With the payload and the name it types the queues
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
  /** Whose pending callback this is (keys().callbacksPending), released when the delivery settles. */
  client: z.string().min(1).max(200).optional(),
});
export type CallbackJob = z.infer<typeof CallbackJob>;

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
