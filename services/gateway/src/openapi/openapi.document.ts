import { z } from 'zod';
import {
  createDocument,
  type ZodOpenApiOperationObject,
  type ZodOpenApiPathsObject,
  type ZodOpenApiResponsesObject,
} from 'zod-openapi';
import {
  AcceptedJob,
  CallbackPayload,
  CancellingJob,
  DriftSummary,
  CompletedJob,
  FeedbackAccepted,
  FeedbackBody,
  Health,
  JobStatus,
  ModelDescription,
  ModelList,
  ModelReadiness,
  PREDICT_URL_MAX_CHARS,
  PredictUrlBody,
  Problem,
  ProblemType,
  Readiness,
} from '@conveyor/shared/contract/api.contract';
import { ModelName } from '@conveyor/shared/contract/common.contract';
import { problemCatalogue, problemSlugs } from '@conveyor/shared/problem';
import { IDEMPOTENCY_KEY_PATTERN } from '../http/idempotency-key.js';

/**
 * The OpenAPI 3.1 description of the gateway, generated from the zod schemas the gateway validates
 * with and answers from (`@conveyor/shared/contract/*`), so the document cannot describe a body the
 * code does not produce. Served at `/openapi.json`, rendered at `/docs`; `test/e2e/openapi.e2e.test.ts`
 * lints it and validates real answers against it.
 */
export interface DocumentOptions {
  readonly version: string;
  readonly defaultModel: string;
  readonly syncWaitDefaultSeconds: number;
  readonly syncWaitMaxSeconds: number;
  readonly maxUploadBytes: number;
  /** Whether the gateway has a CALLBACK_SECRET: without one, a `Callback-Url` is refused (400), so it is not offered. */
  readonly callbacks: boolean;
}

const problem = { 'application/problem+json': { schema: Problem } };
const json = <T extends z.ZodType>(schema: T) => ({ 'application/json': { schema } });

// Not a constraint: a malformed id is replaced, not refused (a proxy's own ids must not cost a request).
const requestId = z.string().optional().meta({
  description:
    'Used and echoed when it matches `^[A-Za-z0-9._:-]{1,128}$`, else one is generated (any other value is ignored, not refused); on every log line of the request and its job',
});

/** The problem answers a route can give, by status, each naming the problem types behind it. */
function problems(...statuses: number[]): ZodOpenApiResponsesObject {
  const out: ZodOpenApiResponsesObject = {};
  for (const status of statuses) {
    const slugs = problemSlugs.filter((s) => problemCatalogue[s].status === status);
    out[`${status}` as `4${string}`] = {
      description: `Problem: ${slugs.map((s) => `\`/problems/${s}\` (${problemCatalogue[s].title})`).join('; ')}`,
      content: problem,
    };
  }
  return out;
}

/**
 * What a job's id leads to (OpenAPI links, which stateful clients and fuzzers follow): reading it,
 * its event stream, cancelling it while it is not finished, and, once it has finished, its feedback.
 */
function jobLinks(finished: boolean) {
  const id = { id: '$response.body#/id' };
  return {
    GetJob: { operationId: 'getJob', parameters: id, description: 'The job: its state, then its result' },
    JobEvents: { operationId: 'jobEvents', parameters: id, description: 'Its state and result as Server-Sent Events' },
    ...(finished
      ? {}
      : {
          CancelJob: {
            operationId: 'cancelJob',
            parameters: id,
            description: 'Cancel it (waiting: at once; running: its result is discarded)',
          },
        }),
    ...(finished
      ? {
          Feedback: {
            operationId: 'feedback',
            requestBody: { jobId: '$response.body#/id', label: '$response.body#/prediction/label' },
            description: 'The true label of the finished job (here: the predicted one)',
          },
        }
      : {}),
  };
}

const retryAfter = z.string().meta({ description: 'Seconds before asking again' });
const accessProblems = problems(401, 403, 429);

/** What a predict answer echoes of the caller's preferences (RFC 7240). */
const preferenceApplied = z.string().optional().meta({
  description:
    'RFC 7240: `respond-async` or `wait=<seconds>` as applied, then `priority=<applied>` if a priority was asked for, then `deadline=<seconds>` if one was given',
  example: 'wait=10, priority=normal',
});
const callbackUrl = z
  .url()
  .optional()
  .meta({
    description:
      'Where to POST the finished job (result or error), signed as Standard Webhooks do (`webhook-id`, `webhook-timestamp`, ' +
      '`webhook-signature`), retried with backoff; the same address rules as image URLs apply (a refused literal address is a 422 at once). ' +
      'Given at most once (twice: 400). A client with CALLBACK_MAX_PENDING_PER_CLIENT callbacks pending is refused with a 429. ' +
      "Only the status of the receiver's answer is read. Delivery state is on `GET /v1/jobs/{id}`.",
  });
// Any value is accepted: one the W3C rules do not accept is ignored (a new trace starts), never refused.
const traceparent = z.string().optional().meta({
  description:
    "W3C Trace Context: with tracing on (OTEL_EXPORTER_OTLP_ENDPOINT), the request's spans join this trace, and its sampled flag is followed (docs/tracing.md). A malformed value starts a new trace; it is never refused. Ignored with tracing off.",
  example: '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01',
});
const tracestate = z.string().optional().meta({
  description:
    'W3C Trace Context vendor state, carried with `traceparent` (one the W3C rules do not accept is dropped, never refused)',
});

const idempotencyKey = z
  .string()
  // What the gateway accepts, less the RFC 8941 parameters (accepted and ignored) and spaces around.
  .regex(IDEMPOTENCY_KEY_PATTERN)
  .optional()
  .meta({
    description:
      'draft-ietf-httpapi-idempotency-key-header: an RFC 8941 string (quoted, printable ASCII, 1–255 characters; a UUID is a good key), or the same key bare (no spaces, quotes, commas or semicolons); ' +
      'anything else is a 400. A retry with the same key and the same request (model, image bytes or URL, Callback-Url) within ' +
      'IDEMPOTENCY_TTL_SECONDS gets the job the key made, never a second: 202 with the same id, or, for a caller who waits, its result ' +
      '(`Idempotent-Replayed: true`). The same key with a different request: 422. While the first request is still being accepted: ' +
      '409 with Retry-After. A request refused before its job exists leaves the key free. Keys are per API key (per client address when keys are off).',
    example: '"8e03978e-40d5-43e8-bc93-6894a57f9324"',
  });
const replayed = z
  .literal('true')
  .optional()
  .meta({ description: 'Present on the answer to a retry with an Idempotency-Key: the job is the one the key made' });
/** The result cache's answer headers (RESULT_CACHE on; docs/result-cache.md). */
const cacheStatus = z
  .string()
  .optional()
  .meta({
    description:
      'RFC 9211, with RESULT_CACHE on: `conveyor; hit` (a stored answer of the model version served now: no job was made, and the id names no job, so `GET /v1/jobs/{id}` is a 404), ' +
      '`conveyor; fwd=miss; collapsed` (an identical request of the same client was queued or running: this one waited for its job, whose id it names), ' +
      '`conveyor; fwd=miss` (its own job, whose answer is stored), `conveyor; fwd=request` (Cache-Control: no-cache or no-store), ' +
      '`conveyor; fwd=bypass; detail=callback|idempotency-key|versions` (not looked up: a Callback-Url, an Idempotency-Key, or two model versions live during a swap)',
    example: 'conveyor; hit',
  });
const age = z.string().optional().meta({ description: 'RFC 9111, on a cache hit: seconds since the answer was stored' });
const cacheControl = z
  .string()
  .optional()
  .meta({
    description:
      'RFC 9111 request directives, with RESULT_CACHE on: `no-cache` runs a fresh inference (no stored answer, no waiting for an identical request; its answer is stored), ' +
      '`no-store` does too and its answer is not stored; other directives are ignored',
    example: 'no-cache',
  });
const predictResponses: ZodOpenApiResponsesObject = {
  '200': {
    description:
      'The job finished within the wait: its result. With RESULT_CACHE on, also a stored answer (`Cache-Status: conveyor; hit`), which answers a `respond-async` caller at once too',
    headers: z.object({
      'Preference-Applied': preferenceApplied,
      'Idempotent-Replayed': replayed,
      'Cache-Status': cacheStatus,
      Age: age,
    }),
    content: json(CompletedJob),
    links: jobLinks(true),
  },
  '202': {
    description: 'Queued; poll `Location` (or follow `links.events`)',
    headers: z.object({
      Location: z.string().meta({ description: '`/v1/jobs/<id>`' }),
      'Retry-After': retryAfter,
      'Preference-Applied': preferenceApplied,
      'Idempotent-Replayed': replayed,
      'Cache-Status': cacheStatus,
    }),
    content: json(AcceptedJob),
    links: jobLinks(false),
  },
  ...problems(400, 404, 408, 410, 413, 415, 422, 500, 504),
  '409': {
    description:
      'Problem: `/problems/idempotency-key-in-use`: a request with the same Idempotency-Key is still being accepted (its job may yet fail to exist); ask again after Retry-After. `/problems/cancelled`: a synchronous request whose job was cancelled (DELETE /v1/jobs/{id}) while it waited',
    headers: z.object({ 'Retry-After': retryAfter }),
    content: problem,
  },
  '503': {
    description:
      'Problem: `/problems/no-worker` (no live worker serves the model: sync requests, or async ones with NO_WORKER_POLICY=refuse), `/problems/overloaded`, `/problems/not-ready`, `/problems/deadline-unmeetable` (the queue cannot finish the job within its `Prefer: deadline`), `/problems/not-ready` also when the identical request this one waited for could not queue its job; with Retry-After',
    headers: z.object({ 'Retry-After': retryAfter }),
    content: problem,
  },
  ...accessProblems,
};
const callbacks = {
  jobFinished: {
    '{$request.header.Callback-Url}': {
      post: {
        summary: 'The finished job, POSTed to the Callback-Url',
        description:
          'Signed per Standard Webhooks: `webhook-signature` is `v1,` + base64 HMAC-SHA256 of `<webhook-id>.<webhook-timestamp>.<body>` ' +
          'with the bytes of CALLBACK_SECRET (`whsec_<base64>`). Retried with exponential backoff until a 2xx, at most CALLBACK_MAX_ATTEMPTS times; ' +
          'the same `webhook-id` on every attempt.',
        requestParams: {
          header: z.object({
            'webhook-id': z.string(),
            'webhook-timestamp': z.string().meta({ description: 'Seconds since the epoch' }),
            'webhook-signature': z.string(),
          }),
        },
        requestBody: { required: true, content: json(CallbackPayload) },
        responses: {
          '200': { description: 'Delivered (any 2xx)' },
          '500': { description: 'Anything else: retried later' },
        },
      },
    },
  },
};
const jobId = z.object({ id: z.uuid().meta({ description: 'The job id a predict answer gave' }) });

/** The `Prefer` header of the predict routes: its waits and caps come from the deployment. */
function preferHeader(options: DocumentOptions) {
  return z
    .string()
    .optional()
    .meta({
      description:
        'RFC 7240. None: wait up to ' +
        `${options.syncWaitDefaultSeconds} s for the result (200), else 202. \`wait=<seconds>\`: wait that long (capped at ${options.syncWaitMaxSeconds} s). ` +
        '`respond-async`: 202 at once. A job is never dropped: whenever the wait runs out the answer is 202 with the place to poll. ' +
        "`deadline=<seconds>`: a processing deadline, counted from the request's arrival (capped at INPUT_TTL_SECONDS): a job no worker has started by then is dropped unrun and ends `expired` " +
        '(a waiting caller gets a 504 `/problems/deadline-exceeded`), and a deadline the queue cannot meet is refused at once (503 `/problems/deadline-unmeetable` with Retry-After). ' +
        'A non-positive or non-numeric deadline is ignored. ' +
        '`priority=low|normal|high` (default `normal`): every waiting job of a higher priority is served before any of a lower one ' +
        "(tenants share each priority fairly); capped at the API key's maximum (with keys off, the server's for every address, `normal` " +
        'unless configured): a higher ask is served at the maximum, not refused. Preferences combine with commas ' +
        '(`respond-async, priority=low`); unknown ones are ignored. ' +
        'The preferences honoured are echoed in `Preference-Applied`, the priority with the value applied (`priority=normal` when capped).',
      example: 'respond-async',
    });
}

/** The predict routes' body: an upload of at most the deployment's size, or a URL. */
function predictBody(options: DocumentOptions) {
  return {
    required: true,
    description: `The image (JPEG, PNG, WebP, GIF, TIFF or AVIF, recognised from its bytes; at most ${options.maxUploadBytes} bytes), or where to fetch it`,
    content: {
      'multipart/form-data': {
        // Exactly one of the two, and nothing else: the gateway refuses (400) a form with both, neither, or another field.
        schema: z
          .xor([
            z.strictObject({
              file: z.string().min(1).meta({ format: 'binary', description: 'The image (an empty file is a 400)' }),
            }),
            z.strictObject({
              url: PredictUrlBody.shape.url.meta({ description: 'Instead of `file`: an absolute http(s) URL of the image' }),
            }),
          ])
          .meta({ description: `A \`file\` part or a \`url\` field (at most ${PREDICT_URL_MAX_CHARS} characters), not both` }),
        encoding: { file: { contentType: 'image/*, application/octet-stream' } },
      },
      'application/json': { schema: PredictUrlBody },
      'image/*': { schema: z.string().min(1).meta({ format: 'binary', description: 'The raw image bytes' }) },
      'application/octet-stream': { schema: z.string().min(1).meta({ format: 'binary', description: 'The raw image bytes' }) },
    },
  };
}

/** One predict route's operation, as the deployment configures it (callbacks offered or not). */
function predictOperation(options: DocumentOptions) {
  const prefer = preferHeader(options);
  const body = predictBody(options);
  return (summary: string, description: string, named: boolean): ZodOpenApiOperationObject => ({
    summary,
    description,
    tags: ['predict'],
    requestParams: {
      ...(named
        ? { path: z.object({ name: ModelName.meta({ description: 'A model name, as `GET /v1/models` lists them' }) }) }
        : {}),
      header: z.object({
        Prefer: prefer,
        ...(options.callbacks ? { 'Callback-Url': callbackUrl } : {}),
        'Idempotency-Key': idempotencyKey,
        'Cache-Control': cacheControl,
        'X-Request-Id': requestId,
        traceparent,
        tracestate,
      }),
    },
    requestBody: body,
    responses: predictResponses,
    ...(options.callbacks ? { callbacks } : {}),
  });
}

export function openApiDocument(options: DocumentOptions): ReturnType<typeof createDocument> {
  const predict = predictOperation(options);
  const document = createDocument({
    openapi: '3.1.0',
    info: {
      title: 'Conveyor',
      version: options.version,
      description:
        'Queue-based image inference. Every error is `application/problem+json` (RFC 9457) with the `requestId`; ' +
        '`GET /problems/{slug}` says what a problem type means. With API keys required, `/v1` routes need ' +
        '`Authorization: Bearer <key>` (or `X-API-Key`) with the route scope.',
    },
    servers: [{ url: '/' }],
    security: [{ bearer: [] }, { apiKey: [] }, {}],
    tags: [
      { name: 'predict', description: 'Classify an image' },
      { name: 'jobs', description: 'Follow a job' },
      { name: 'models', description: 'What the deployment serves' },
      { name: 'feedback', description: 'Ground truth, learnt later' },
      { name: 'ops', description: 'Probes, metrics and this description' },
    ],
    paths: {
      ...predictPaths(predict, options),
      ...jobPaths(),
      ...modelPaths(),
      ...opsPaths(),
    },
    components: {
      securitySchemes: {
        bearer: { type: 'http', scheme: 'bearer', description: 'An API key from `make api-key`' },
        apiKey: { type: 'apiKey', in: 'header', name: 'X-API-Key' },
      },
    },
  });
  // zod-openapi cannot say `contentSchema` with a $ref: the event stream's schema is set here.
  const paths = document.paths as Record<string, { get?: { responses?: Record<string, { content?: Record<string, unknown> }> } }>;
  const events = paths['/v1/jobs/{id}/events']?.get?.responses?.['200']?.content;
  if (!events) throw new Error('the document has no event stream to describe');
  events['text/event-stream'] = { schema: jobEvent };
  return document;
}

/** The predict routes: by model name, the default model's, and the first release's alias. */
function predictPaths(predict: ReturnType<typeof predictOperation>, options: DocumentOptions): ZodOpenApiPathsObject {
  return {
    '/v1/models/{name}/predict': {
      post: {
        operationId: 'predictModel',
        ...predict(
          'Classify an image with a named model',
          'An unknown name is 404 before the body is read; a known model with no live worker is 503 for a caller who would wait.',
          true,
        ),
      },
    },
    '/v1/predict': {
      post: {
        operationId: 'predict',
        ...predict(`Classify an image with the default model (${options.defaultModel})`, 'Alias: `POST /predict`.', false),
      },
    },
    '/predict': {
      post: {
        operationId: 'predictLegacy',
        ...predict('Alias of /v1/predict', 'Kept for clients of the first release.', false),
      },
    },
  };
}

/** A job after its predict answer: polled, cancelled, followed as events. */
function jobPaths(): ZodOpenApiPathsObject {
  return {
    '/v1/jobs/{id}': {
      get: {
        operationId: 'getJob',
        summary: 'A job of any model: its state while waiting or running, its result or error once finished',
        description:
          "With API keys, a job is only the key's that made it (or an admin key's): another key's job is 404, as an unknown one.",
        tags: ['jobs'],
        requestParams: { path: jobId },
        responses: {
          '200': {
            description: 'While queued or active (with Retry-After: 1), the result once completed, the error once failed',
            content: json(JobStatus),
          },
          ...problems(404),
          ...accessProblems,
        },
      },
      delete: {
        operationId: 'cancelJob',
        summary: 'Cancel a job that has not finished',
        description:
          'A waiting job is cancelled at once: 200 with its final state `cancelled`, which GET, the event stream, a waiting caller (409 `/problems/cancelled`) and its callback (`job.cancelled`) are told. ' +
          'A running job is not interrupted: 202, and when it finishes a cancelled result is kept instead of its own. ' +
          'A finished job (completed, failed, expired) is a 409. Cancelling again answers the same. ' +
          "With API keys, only the key that made the job (or an admin key) may cancel it; another key's job is 404.",
        tags: ['jobs'],
        requestParams: { path: jobId },
        responses: {
          '200': { description: 'Cancelled (now, or before): the job as GET answers it', content: json(JobStatus) },
          '202': {
            description: 'Running: its result will be discarded for a cancelled one when it finishes',
            headers: z.object({ Location: z.string(), 'Retry-After': retryAfter }),
            content: json(CancellingJob),
          },
          ...problems(404, 409),
          ...accessProblems,
        },
      },
    },
    '/v1/jobs/{id}/events': {
      get: {
        operationId: 'jobEvents',
        summary: 'Server-Sent Events: the job state as it changes, then its result, then the stream ends',
        description:
          'Events: `state` (data: the PendingJob body) whenever the state changes, then one `result` (a completed or failed job) and the end of the stream. ' +
          'Comments keep an idle connection alive; a stream is closed after SSE_MAX_SECONDS (a `timeout` event), and when the gateway shuts down (a `shutdown` event with `retry: 1000`: reconnect). Connections per key (per IP without keys) are bounded.',
        tags: ['jobs'],
        requestParams: { path: jobId },
        responses: {
          '200': {
            description: 'An event stream (each event described below)',
            content: { 'text/event-stream': { schema: z.string() } },
          },
          ...problems(404),
          ...accessProblems,
        },
      },
    },
  };
}

/** What the deployment serves, its readiness per model, ground truth and drift. */
function modelPaths(): ZodOpenApiPathsObject {
  return {
    '/v1/models': {
      get: {
        operationId: 'listModels',
        summary: 'Every model the deployment knows, as its workers describe it',
        tags: ['models'],
        responses: { '200': { description: 'The models', content: json(ModelList) }, ...accessProblems },
      },
    },
    '/v1/models/{name}': {
      get: {
        operationId: 'getModel',
        summary: 'One model',
        tags: ['models'],
        requestParams: { path: z.object({ name: ModelName }) },
        responses: {
          '200': { description: 'The model', content: json(ModelDescription) },
          ...problems(404),
          ...accessProblems,
        },
      },
    },
    '/v2/models/{name}/ready': {
      get: {
        operationId: 'modelReady',
        summary: "The Open Inference Protocol's model readiness probe (no key needed)",
        tags: ['models'],
        security: [{}],
        requestParams: { path: z.object({ name: ModelName }) },
        responses: {
          '200': { description: 'A live worker has the model warm', content: json(ModelReadiness) },
          '503': { description: 'No live worker has it warm', content: json(ModelReadiness) },
          ...problems(404),
        },
      },
    },
    '/v1/feedback': {
      post: {
        operationId: 'feedback',
        summary: 'The true label of a finished job, once per job while its result is kept',
        description: "With API keys, only for the key's own jobs (or any, with an admin key): another key's job is 404.",
        tags: ['feedback'],
        requestBody: { required: true, content: json(FeedbackBody) },
        responses: {
          '202': { description: 'Recorded; the monitor joins it to the prediction', content: json(FeedbackAccepted) },
          ...problems(400, 404, 409, 415, 422, 503),
          ...accessProblems,
        },
      },
    },
    '/v1/drift': {
      get: {
        operationId: 'drift',
        summary: "The drift monitor's state per model version (what the page at / shows)",
        tags: ['models'],
        responses: {
          '200': {
            description: 'The state; `monitor: false` when the gateway has no MONITOR_URL',
            content: json(DriftSummary),
          },
          '503': { description: 'Problem: `/problems/not-ready` (the monitor cannot be reached)', content: problem },
          ...accessProblems,
        },
      },
    },
  };
}

/** The page, the probes, the metrics, the problem types and this document. */
function opsPaths(): ZodOpenApiPathsObject {
  return {
    '/': {
      get: {
        operationId: 'page',
        summary: 'A small page: classify an image, follow asynchronous jobs, see drift',
        tags: ['ops'],
        security: [{}],
        responses: { '200': { description: 'HTML', content: { 'text/html': { schema: z.string() } } } },
      },
    },
    '/health': {
      get: {
        operationId: 'health',
        summary: 'The process is alive',
        tags: ['ops'],
        security: [{}],
        responses: { '200': { description: 'Alive', content: json(Health) } },
      },
    },
    '/ready': {
      get: {
        operationId: 'ready',
        summary: 'Redis answers and a worker with a warm model is alive',
        tags: ['ops'],
        security: [{}],
        responses: {
          '200': { description: 'Ready', content: json(Readiness) },
          '503': { description: 'Not ready', content: json(Readiness) },
        },
      },
    },
    '/metrics': {
      get: {
        operationId: 'metrics',
        summary: 'Prometheus metrics',
        tags: ['ops'],
        security: [{}],
        responses: {
          '200': { description: 'The text exposition format', content: { 'text/plain': { schema: z.string() } } },
        },
      },
    },
    '/problems/{slug}': {
      get: {
        operationId: 'problemType',
        summary: 'What a problem type means',
        tags: ['ops'],
        security: [{}],
        requestParams: { path: z.object({ slug: z.enum(problemSlugs) }) },
        responses: { '200': { description: 'The problem type', content: json(ProblemType) }, ...problems(404) },
      },
    },
    '/openapi.json': {
      get: {
        operationId: 'openapi',
        summary: 'This document',
        tags: ['ops'],
        security: [{}],
        responses: { '200': { description: 'OpenAPI 3.1', content: { 'application/json': { schema: z.looseObject({}) } } } },
      },
    },
  };
}

/**
 * One event of `GET /v1/jobs/{id}/events` as it is on the wire (OpenAPI 3.1 lets a stream's schema
 * describe each event): its `data` is JSON text, whose content is given by `contentSchema`. The
 * stream opens with a bare `retry:` line (an event without data).
 */
const jsonData = (schema: object) => ({ type: 'string', contentMediaType: 'application/json', contentSchema: schema });
const ref = (id: string) => ({ $ref: `#/components/schemas/${id}` });
const detail = {
  type: 'object',
  properties: { detail: { type: 'string' } },
  required: ['detail'],
  additionalProperties: false,
};
const jobEvent = {
  oneOf: [
    {
      type: 'object',
      description: 'The job is queued or running (sent whenever that changes)',
      properties: { event: { const: 'state' }, data: jsonData(ref('PendingJob')) },
      required: ['event', 'data'],
    },
    {
      type: 'object',
      description: 'The job finished: its result or error; the stream ends',
      properties: {
        event: { const: 'result' },
        data: jsonData({
          oneOf: [ref('CompletedResult'), ref('FailedResult'), ref('CancelledResult'), ref('ExpiredResult'), ref('LostJob')],
        }),
      },
      required: ['event', 'data'],
    },
    {
      type: 'object',
      description:
        '`timeout`: the stream reached SSE_MAX_SECONDS; `shutdown`: the gateway is stopping (with `retry`); `gone`: the result expired; `error`: the job could not be read. The stream ends; reconnect (or poll) to go on',
      properties: {
        event: { enum: ['timeout', 'shutdown', 'gone', 'error'] },
        data: jsonData(detail),
        retry: { type: 'integer', minimum: 0 },
      },
      required: ['event', 'data'],
    },
    {
      type: 'object',
      description: 'The first line of every stream: how long to wait before reconnecting (ms)',
      properties: { retry: { type: 'integer', minimum: 0 } },
      required: ['retry'],
      additionalProperties: false,
    },
  ],
};
