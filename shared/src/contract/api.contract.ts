import { z } from 'zod';
import { problemSlugs } from '../problem.js';
import { CancelledResult, CompletedResult, ExpiredResult, FailedResult } from './jobs.contract.js';
import { ModelAnnouncement } from './workers.contract.js';
import { ModelName } from './common.contract.js';

/**
 * The HTTP API's bodies, as zod schemas: the gateway validates requests with them, the OpenAPI
 * document (`/openapi.json`) is generated from them, and the TypeScript client takes its types
 * from them. Results themselves are the queue contract's (a result is stored by a worker and
 * answered as it is); this file adds what only the HTTP side says.
 */

const JobId = z.uuid();

/** The longest image URL, in characters (code points, as JSON Schema's `maxLength` counts them). */
export const PREDICT_URL_MAX_CHARS = 4096;

/** `POST /v1/predict` with `Content-Type: application/json`. */
export const PredictUrlBody = z.strictObject({
  // A URL as WHATWG's `new URL()` parses it (the document says `format: uri`); the scheme and the
  // address are judged later (422 url-not-allowed).
  url: z
    .url()
    // Counted in code points, not UTF-16 units (`.max`): a URL of 4096 emoji is what the document allows.
    .refine((url) => Array.from(url).length <= PREDICT_URL_MAX_CHARS, `at most ${PREDICT_URL_MAX_CHARS} characters`)
    .meta({
      maxLength: PREDICT_URL_MAX_CHARS,
      description: 'An absolute http(s) URL of the image',
      example: 'https://example.org/seven.png',
    }),
});
export type PredictUrlBody = z.infer<typeof PredictUrlBody>;

/** `POST /v1/feedback`. */
/**
 * Strict, as the predict body is: a field it does not know is a 400, and the document says so
 * (`additionalProperties: false`). Loose, it promised to take any extra field, and the JSON parser
 * rightly refuses a `__proto__` key (prototype pollution): the API fuzzer found the mismatch.
 */
export const FeedbackBody = z.strictObject({ jobId: JobId, label: z.string().trim().min(1).max(64) });
export type FeedbackBody = z.infer<typeof FeedbackBody>;

/** Where an asynchronous job's result is POSTed, and how that went (`GET /v1/jobs/{id}`). */
export const CallbackState = z
  .object({
    url: z.string(),
    state: z.enum(['pending', 'delivered', 'failed']).meta({
      description:
        'pending: the job is not finished, or a delivery is being retried; delivered: the receiver answered 2xx; failed: every attempt failed (the result can still be polled)',
    }),
    attempts: z.number().int().min(0),
    lastStatus: z.number().int().optional().meta({ description: "The receiver's HTTP status on the last attempt" }),
    lastError: z.string().optional(),
    deliveredAt: z.iso.datetime().optional(),
    webhookId: z.string().meta({ description: 'The `webhook-id` header of every attempt (the same on retries)' }),
  })
  .meta({ id: 'CallbackState' });
export type CallbackState = z.infer<typeof CallbackState>;

const withCallback = { callback: CallbackState.optional() };

/** The 202 of a predict request that did not wait (or whose wait ran out). */
export const AcceptedJob = z
  .object({
    id: JobId,
    status: z.literal('queued'),
    requestId: z.string(),
    model: ModelName,
    links: z.object({ self: z.string(), events: z.string().optional() }),
    ...withCallback,
  })
  .meta({ id: 'AcceptedJob' });
export type AcceptedJob = z.infer<typeof AcceptedJob>;

/** `GET /v1/jobs/{id}` while the job waits or runs. */
export const PendingJob = z
  .object({ id: JobId, status: z.enum(['queued', 'active']), model: ModelName, ...withCallback })
  .meta({ id: 'PendingJob' });
export type PendingJob = z.infer<typeof PendingJob>;

/** A job BullMQ gave up on without a result record (it stalled on crashing workers too often). */
export const LostJob = z
  .object({
    id: JobId,
    status: z.literal('failed'),
    error: z.object({
      type: z.string(),
      title: z.string(),
      status: z.number().int(),
      detail: z.string(),
      slug: z.enum(problemSlugs),
    }),
    ...withCallback,
  })
  .meta({ id: 'LostJob' });

export const CompletedJob = CompletedResult.extend(withCallback).meta({ id: 'CompletedResult' });
export const FailedJob = FailedResult.extend(withCallback).meta({ id: 'FailedResult' });
export const CancelledJob = CancelledResult.extend(withCallback).meta({ id: 'CancelledResult' });
export const ExpiredJob = ExpiredResult.extend(withCallback).meta({ id: 'ExpiredResult' });

/** `DELETE /v1/jobs/{id}` of a job a worker is running (202): it goes on, its result will be discarded. */
export const CancellingJob = z
  .object({
    id: JobId,
    status: z.literal('active'),
    model: ModelName,
    cancelling: z.literal(true).meta({
      description: 'The job is not interrupted; when it finishes a cancelled result is kept instead of its own',
    }),
  })
  .meta({ id: 'CancellingJob' });
export type CancellingJob = z.infer<typeof CancellingJob>;

/**
 * What a callback receiver is POSTed once the job is finished (Standard Webhooks' envelope), with
 * the headers `webhook-id`, `webhook-timestamp` and `webhook-signature`.
 */
export const CallbackPayload = z
  .object({
    type: z.enum(['job.completed', 'job.failed', 'job.cancelled', 'job.expired']),
    timestamp: z.iso.datetime(),
    data: z.discriminatedUnion('status', [CompletedResult, FailedResult, CancelledResult, ExpiredResult]),
  })
  .meta({ id: 'CallbackPayload' });
export type CallbackPayload = z.infer<typeof CallbackPayload>;

/** Everything `GET /v1/jobs/{id}` answers with 200. */
export const JobStatus = z
  .union([PendingJob, CompletedJob, FailedJob, CancelledJob, ExpiredJob, LostJob])
  .meta({ id: 'JobStatus' });
export type JobStatus = z.infer<typeof JobStatus>;

/** RFC 9457 problem details, as every error is answered; a problem may carry more members. */
export const Problem = z
  .looseObject({
    type: z.string().meta({ description: 'A relative URI, `/problems/<slug>`; GET it for its meaning' }),
    title: z.string(),
    status: z.number().int().min(400).max(599),
    detail: z.string(),
    instance: z.string(),
    requestId: z.string(),
    jobId: JobId.optional(),
  })
  .meta({ id: 'Problem' });
export type Problem = z.infer<typeof Problem>;

export const ProblemType = z
  .object({ type: z.string(), status: z.number().int(), title: z.string() })
  .meta({ id: 'ProblemType' });

export const ModelDescription = z
  .object({
    name: ModelName,
    default: z.boolean(),
    ready: z.boolean().meta({ description: 'A live worker has the model warm' }),
    workers: z.number().int().min(0),
    concurrency: z.number().int().min(0),
    serviceMs: z.number().min(0).optional().meta({
      description:
        'How long one job takes on its live workers, start to commit (ms, their recent average); what deadline admission estimates queue waits from. Absent before any job was measured',
    }),
    jobsPerSecond: z.number().min(0).optional().meta({
      description:
        'How many jobs its live workers finish per second together while all their slots are busy (measured; the queue drain deadline admission plans with). Absent until every live worker has been saturated',
    }),
    versions: z.array(z.string()),
    lastAnnounced: z.object({ version: z.string(), artifact: z.string(), at: z.iso.datetime() }).optional(),
    description: z.string().optional(),
    input: ModelAnnouncement.shape.input.optional(),
    labels: z.array(z.string()).optional(),
    refused: z
      .array(z.object({ worker: z.string(), problem: z.string(), at: z.iso.datetime() }))
      .optional()
      .meta({
        description:
          'Live workers configured to serve the model that refused it (its folder failed its checks), and why; absent when none did',
      }),
    links: z.object({ self: z.string(), predict: z.string(), ready: z.string() }),
  })
  .meta({ id: 'ModelDescription' });
export type ModelDescription = z.infer<typeof ModelDescription>;

export const ModelList = z.object({ models: z.array(ModelDescription) }).meta({ id: 'ModelList' });
export type ModelList = z.infer<typeof ModelList>;

/** The Open Inference Protocol's model readiness answer. */
export const ModelReadiness = z.object({ name: ModelName, ready: z.boolean() }).meta({ id: 'ModelReadiness' });

export const FeedbackAccepted = z
  .object({
    jobId: JobId,
    label: z.string(),
    status: z.literal('accepted'),
    predicted: z.string(),
    model: z.object({ name: z.string(), version: z.string() }),
  })
  .meta({ id: 'FeedbackAccepted' });

export const Health = z.object({ status: z.literal('ok') });

export const Readiness = z
  .object({
    status: z.enum(['ready', 'not-ready']),
    redis: z.object({ ok: z.boolean(), latencyMs: z.number() }),
    models: z.record(z.string(), z.object({ ready: z.boolean(), workers: z.number().int(), versions: z.array(z.string()) })),
    workers: z.array(
      z.object({
        id: z.string(),
        model: z.object({ name: z.string(), version: z.string() }),
        models: z.array(z.object({ name: z.string(), version: z.string(), concurrency: z.number().int() })),
        concurrency: z.number().int(),
        processed: z.number().int(),
        lastSeen: z.string(),
      }),
    ),
  })
  .meta({ id: 'Readiness' });

export const DriftLevel = z.enum(['ok', 'warn', 'alert']);

/** `GET /v1/drift`: the monitor's drift state per model version, summed up for the page. */
export const DriftSummary = z
  .object({
    monitor: z.boolean().meta({ description: 'Whether the gateway has a monitor to ask (MONITOR_URL)' }),
    models: z.array(
      z.object({
        model: z.string(),
        version: z.string(),
        level: z.enum([...DriftLevel.options, 'learning']).meta({
          description:
            'The worst level of any feature; `learning` until a drift window of the version has been judged (a reference being learned, or too few predictions yet)',
        }),
        features: z.record(z.string(), DriftLevel),
        window: z.string().meta({ description: 'The current window: insufficient_data, provisional, no_reference, learning' }),
      }),
    ),
    shadows: z
      .array(
        z.object({
          model: z.string().meta({ description: 'The served model it shadows' }),
          shadowVersion: z.string(),
          productionVersion: z.string().meta({ description: 'The production version of its newest pair' }),
          pairs: z.number().int().min(0).meta({ description: 'Pairs counted since the shadow was first seen' }),
          agreement: z.number().min(0).max(1).nullable().meta({
            description:
              "Share of the window's pairs whose top-1 labels agree: the last closed window's, else the filling one's; null without pairs",
          }),
          window: z.object({
            size: z.number().int().min(0),
            status: z.enum(['closed', 'provisional', 'insufficient_data']).meta({
              description:
                'closed: the last full window (WINDOW_SIZE pairs); provisional / insufficient_data: the filling one, with at least / fewer than MIN_WINDOW pairs',
            }),
          }),
        }),
      )
      .meta({ description: 'Shadow versions (SHADOW_VERSION on the workers) and their agreement with production, beside drift' }),
  })
  .meta({ id: 'DriftSummary' });
export type DriftSummary = z.infer<typeof DriftSummary>;
