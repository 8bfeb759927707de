import path from 'node:path';
import { z } from 'zod';
import { inferenceQueue } from '@conveyor/shared/contract/jobs.contract';
import type { ModelName } from '@conveyor/shared/contract/common.contract';
import {
  checkMlflowAuth,
  checkRedisConfig,
  env,
  imageLimitsShape,
  logConfigShape,
  mlflowAuthShape,
  modelsConfigShape,
  redisConfigShape,
  resultConfigShape,
  tracingConfigShape,
  resultCacheConfigShape,
} from '@conveyor/shared/config';
import { planShadows, shadowConfigShape } from './shadow/shadow-config.js';
import { checkReplayConfig, planReplay, replayConfigShape } from './replay/replay-config.js';

const WorkerFields = z.object({
  ...redisConfigShape,
  ...logConfigShape,
  ...resultConfigShape,
  ...tracingConfigShape,
  ...resultCacheConfigShape,
  ...modelsConfigShape,
  ...replayConfigShape,
  MODELS_DIR: env.string(
    'models',
    'Folder holding one model folder per served model (<MODELS_DIR>/<name>: model.onnx + manifest.json), used when no MLflow registry is configured',
  ),
  MODEL_DIR: env.optionalString(
    'Model folder (model.onnx + manifest.json) of the default model (DEFAULT_MODEL), served when no MLflow registry is configured; unset: <MODELS_DIR>/<DEFAULT_MODEL>',
  ),
  MLFLOW_TRACKING_URI: z
    .url()
    .optional()
    .describe(
      'MLflow tracking server; when set, the worker serves every model from its registry (MODEL_URI for the default model, models:/<name>@production for the others) instead of from folders',
    ),
  // A READ-only account is enough (and all a worker should hold): it resolves aliases and downloads.
  ...mlflowAuthShape,
  MODEL_URI: z
    .string()
    .regex(/^models:\/[^/@]+(@[A-Za-z0-9_-]+|\/\d+)$/, 'models:/<name>@<alias> or models:/<name>/<version>')
    .optional()
    .describe(
      'Registry model served as the default model (with MLFLOW_TRACKING_URI); an alias is followed as it moves; unset: models:/<DEFAULT_MODEL>@production',
    ),
  MODEL_CACHE_DIR: env.string(
    'data/model-cache',
    'Where downloaded model versions are kept (verified by checksum, reused across restarts)',
  ),
  MODEL_SIGNING_PUBLIC_KEY_FILE: env.optionalString(
    "The trainer's Ed25519 public key (PEM); when set, only registry versions the trainer released (signed for their name, version and every file when the promotion gate passed) are served (monitor: only their reference profiles are used)",
  ),
  MODEL_POLL_INTERVAL_MS: env.int(10_000, 100, 3_600_000, 'How often the worker checks whether the alias it serves has moved'),
  WORKER_CONCURRENCY: env.int(
    4,
    1,
    256,
    'Jobs of each served model one worker process handles at once, unless MODELS gives the model its own (decoding overlaps on libuv threads)',
  ),
  ORT_THREADS: env.int(1, 1, 64, 'onnxruntime intra-op threads per process; scale with processes rather than threads'),
  INFERENCE_THREAD: env.bool(
    true,
    "Run each model's onnxruntime session on a worker thread of its own, so a slow model does not block the event loop (BullMQ lock renewals, Redis replies, heartbeats); false: on the event loop. See INFERENCE_THREAD_MIN_MS for fast models",
  ),
  INFERENCE_THREAD_MIN_MS: env.number(
    1,
    0,
    1000,
    'With INFERENCE_THREAD: a model that answers one image within this many milliseconds (timed at load, after its warm-up) runs on the event loop instead: the thread hop costs ~0.3 ms of CPU per job, more than such a model, and so short a block stalls nothing. Shadow models stay on their (lower-priority) threads. 0: every model on a thread',
  ),
  SHARP_CONCURRENCY: env.int(1, 0, 64, 'libvips threads per image (0 = one per core); 1 lets concurrent jobs use the cores'),
  ...imageLimitsShape,
  PREPROCESS_TIMEOUT_MS: env.int(
    5000,
    10,
    3_600_000,
    'Deadline for decoding and preparing one image; past it the job fails for good (422 processing-deadline), not retried',
  ),
  TOP_K: z.coerce
    .number()
    .int()
    .min(1)
    .max(100)
    .optional()
    .describe(
      "Classes listed in `prediction.top` for every model whose manifest sets no `topK`; unset: all of a model's classes when it has up to 10, else 5",
    ),
  LOCK_DURATION_MS: env.int(
    30_000,
    1000,
    600_000,
    'Job lock; a job whose worker stops renewing it (crash, SIGKILL) is retried elsewhere after this',
  ),
  STALLED_INTERVAL_MS: env.int(30_000, 1000, 600_000, 'How often each worker looks for stalled jobs of dead workers'),
  SHUTDOWN_BUDGET_MS: env.int(
    10_000,
    100,
    300_000,
    'On SIGTERM, time allowed for in-flight jobs before they are handed back to the queue',
  ),
  HEARTBEAT_INTERVAL_MS: env.int(
    5000,
    100,
    60_000,
    'How often a worker announces itself; it counts as gone after three missed beats',
  ),
  HEALTH_FILE: env.optionalString('A file the worker touches on every heartbeat (the container health check reads its age)'),
  PREDICTION_STREAM_MAXLEN: env.int(100_000, 100, 100_000_000, 'Approximate length the prediction event stream is trimmed to'),
  METRICS_PORT: z.coerce
    .number()
    .int()
    .min(0)
    .max(65_535)
    .optional()
    .describe(
      "Port of the worker's Prometheus endpoint (GET /metrics); unset: none, since workers scale to several processes per host and any fixed default would collide (`make run` gives each worker its own from 9101, compose sets 9101 in every container); 0: a free port, logged",
    ),
  METRICS_HOST: env.string(
    '127.0.0.1',
    'Interface the metrics endpoint listens on; the default keeps it to this machine (compose sets 0.0.0.0 inside its network and publishes no port)',
  ),
  EVENT_EMBEDDINGS: env.bool(
    true,
    'Publish the model embedding (when it has one) with each prediction event, for drift monitoring',
  ),
  ...shadowConfigShape,
});
/** A model this worker serves, with where it comes from: resolved once, with the rest of the configuration. */
export interface ModelPlan {
  readonly name: ModelName;
  readonly queue: string;
  readonly concurrency: number;
  /** The folder it is served from without a registry. */
  readonly dir: string;
  /** The registry model it follows with MLFLOW_TRACKING_URI. */
  readonly uri: string;
}

type WorkerFields = z.output<typeof WorkerFields>;

function planModels(config: WorkerFields): ModelPlan[] {
  const entries = config.MODELS ?? [{ name: config.DEFAULT_MODEL }];
  return entries.map(({ name, concurrency }) => {
    const isDefault = name === config.DEFAULT_MODEL;
    return {
      name,
      queue: inferenceQueue(name),
      concurrency: concurrency ?? config.WORKER_CONCURRENCY,
      // MODEL_DIR and MODEL_URI are the single-model settings: they keep meaning the default model.
      dir: (isDefault ? config.MODEL_DIR : undefined) ?? path.join(config.MODELS_DIR, name),
      uri: (isDefault ? config.MODEL_URI : undefined) ?? `models:/${name}@production`,
    };
  });
}

// Cross-field rules (user and password together, no credentials in the URL) need the whole object.
export const WorkerConfig = WorkerFields.superRefine(checkMlflowAuth)
  .superRefine(checkRedisConfig)
  .superRefine((config, ctx) => {
    checkReplayConfig(config, ctx);
    for (const message of planShadows(config, planModels(config)).problems)
      ctx.addIssue({ code: 'custom', path: ['SHADOW_VERSION'], message });
  })
  .transform((config) => {
    /** What this worker serves, in MODELS order (the first is the one older gateways see in the heartbeat). */
    const models = planModels(config);
    return {
      ...config,
      models,
      /** The served models' shadows (SHADOW_VERSION), checked above. */
      shadows: planShadows(config, models).plans,
      /** The live replay recorder's plan (replay/replay-config.ts); undefined: recording off. */
      replay: planReplay(
        config,
        models.map((m) => m.name),
      ),
    };
  });
export type WorkerConfig = z.infer<typeof WorkerConfig>;
