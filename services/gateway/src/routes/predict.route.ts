import { randomUUID } from 'node:crypto';
import type Router from '@koa/router';
import type { CallbackState } from '@conveyor/shared/contract/api.contract';
import { ProblemError } from '@conveyor/shared/problem';
import type { Access } from '../access/access.middleware.js';
import type { GatewayConfig } from '../config.js';
import { clientOf } from '../http/client-identity.js';
import type { GatewayContext, GatewayState } from '../http/context.js';
import type { HttpMetrics, PredictMode } from '../http/metrics.js';
import { appliedWith, parsePrefer } from '../http/prefer.js';
import { capPriority } from '../http/priority.js';
import { sendProblem } from '../http/problem.middleware.js';
import type { ImageFetcher } from '../intake/fetch-image.js';
import { inspectImage } from '../intake/inspect-image.js';
import { MULTIPART_SLACK, predictBodyParser, readPredictInput } from '../intake/read-input.js';
import { uploadGuard, type UploadBudget } from '../intake/upload-guard.js';
import type { AdmittedPlace, CreatedJob, JobIntake } from '../jobs/job-intake.js';
import type { ModelCatalogue, ModelStatus } from '../models/model-catalogue.js';

export interface PredictDeps {
  readonly config: Pick<
    GatewayConfig,
    | 'MAX_UPLOAD_BYTES'
    | 'MIN_UPLOAD_BYTES_PER_SECOND'
    | 'UPLOAD_GRACE_MS'
    | 'MAX_IMAGE_PIXELS'
    | 'MAX_IMAGE_SIDE'
    | 'MAX_ASPECT_RATIO'
    | 'SYNC_WAIT_DEFAULT_SECONDS'
    | 'SYNC_WAIT_MAX_SECONDS'
    | 'DEFAULT_MODEL'
    | 'NO_WORKER_POLICY'
  >;
  readonly catalogue: Pick<ModelCatalogue, 'resolve' | 'known'>;
  /** Where a job comes to exist: its queue place, then the job with its reply ticket and callback. */
  readonly intake: Pick<JobIntake, 'admit' | 'create'>;
  readonly fetchImage: ImageFetcher;
  readonly metrics: HttpMetrics;
  readonly uploadBudget: UploadBudget;
  readonly access: Access;
  /** Reads a request's Callback-Url (refused when callbacks are off). */
  readonly callbackUrl: (values: readonly string[] | undefined) => URL | undefined;
}

/**
 * POST /v1/models/{name}/predict, and POST /v1/predict (alias /predict) for the default model:
 * check the image, queue a job on the model's queue, then either answer 202 at once
 * (`Prefer: respond-async`) or wait for the result, answering 202 anyway if the wait runs out.
 * A job, once queued, is never dropped: the 202 says where to poll.
 *
 * Before any of the body is read: an unknown model is a 404; a model no live worker serves is a
 * 503 no-worker with Retry-After for a caller who would wait (a sync wait would only run out), and
 * for an asynchronous caller too with NO_WORKER_POLICY=refuse (else the job waits for a worker).
 *
 * HTTP only: what makes the job (its ticket, its callback, the queue, and undoing them) is JobIntake's.
 */
export function registerPredictRoute(router: Router<GatewayState>, deps: PredictDeps): void {
  const { config } = deps;
  const guard = uploadGuard(deps.uploadBudget, {
    undeclaredBytes: config.MAX_UPLOAD_BYTES + MULTIPART_SLACK,
    minBytesPerSecond: config.MIN_UPLOAD_BYTES_PER_SECOND,
    graceMs: config.UPLOAD_GRACE_MS,
  });
  const parse = predictBodyParser(config.MAX_UPLOAD_BYTES);
  const allowed = deps.access.require('predict');
  const handler = (ctx: GatewayContext) => predict(ctx, deps);
  const defaultModel = () => config.DEFAULT_MODEL;
  const named = (ctx: GatewayContext) => (ctx as { params?: Record<string, string> }).params?.name ?? '';
  router.post('/v1/predict', allowed, admit(deps, defaultModel), guard, parse, handler);
  router.post('/predict', allowed, admit(deps, defaultModel), guard, parse, handler);
  router.post('/v1/models/:name/predict', allowed, admit(deps, named), guard, parse, handler);
}

/** Reads and inspects the image, has the job made, and answers: the result, a problem, or a 202. */
async function predict(ctx: GatewayContext, deps: PredictDeps): Promise<void> {
  const { config } = deps;
  const acceptedAt = Date.now();
  const { input, bytes, facts, callbackUrl } = await readImage(ctx, deps);
  const prefer = parsePrefer(ctx.get('prefer'), config.SYNC_WAIT_DEFAULT_SECONDS, config.SYNC_WAIT_MAX_SECONDS);
  // Chosen at admission, which reserved the place under it; named in answers once the job exists.
  const jobId = ctx.state.reservation?.jobId ?? randomUUID();
  ctx.state.jobId = jobId;
  ctx.state.log = ctx.state.log.child({ jobId });
  ctx.set('Preference-Applied', appliedWith(prefer, ctx.state.priority ?? 'normal'));
  let job: CreatedJob;
  try {
    job = await deps.intake.create({
      model: ctx.state.model!,
      jobId,
      requestId: ctx.state.requestId,
      acceptedAt,
      input,
      bytes,
      facts,
      place: ctx.state.reservation,
      fair: ctx.state.fairPlace,
      owner: ctx.state.apiKey?.id,
      // Whose share of pending callbacks this one counts against.
      client: clientOf(ctx),
      callbackUrl,
      waits: !(prefer.respondAsync || prefer.waitSeconds === 0),
    });
  } finally {
    // The upload budget is given back: the bytes are in Redis now, or nowhere.
    ctx.state.upload?.release();
  }
  ctx.state.log.debug({ format: facts.format, width: facts.width, height: facts.height, bytes: bytes.length }, 'job queued');
  if (!job.ticket) return accepted(ctx, jobId, deps, job.callback);

  // A client that hangs up stops the wait, not the job.
  const gone = new AbortController();
  const onClose = () => {
    if (!ctx.res.writableEnded) gone.abort();
  };
  ctx.res.once('close', onClose);
  const result = await job.ticket.wait(prefer.waitSeconds * 1000, gone.signal).finally(() => ctx.res.off('close', onClose));
  if (!result) return accepted(ctx, jobId, deps, job.callback);
  if (result.status === 'completed') {
    deps.metrics.outcomes.inc({ outcome: 'completed' });
    ctx.status = 200;
    ctx.body = result;
    return;
  }
  deps.metrics.outcomes.inc({ outcome: 'failed' });
  sendProblem(ctx, new ProblemError(result.error.slug, result.error.detail));
}

/** The request's image (read, or fetched from its URL) and what inspecting it found; a refusal is counted. */
async function readImage(ctx: GatewayContext, deps: PredictDeps) {
  const { config } = deps;
  try {
    // Every line of the header: Node would join two into one "a, b" value.
    const callbackUrl = deps.callbackUrl(ctx.req.headersDistinct['callback-url']);
    const input = readPredictInput(ctx);
    const bytes = input.kind === 'url' ? await deps.fetchImage(input.url) : input.bytes;
    const facts = await inspectImage(bytes, {
      maxPixels: config.MAX_IMAGE_PIXELS,
      maxSide: config.MAX_IMAGE_SIDE,
      maxAspectRatio: config.MAX_ASPECT_RATIO,
    });
    return { input, bytes, facts, callbackUrl };
  } catch (error) {
    deps.metrics.outcomes.inc({ outcome: 'rejected' });
    throw error;
  }
}

function admit(deps: PredictDeps, modelOf: (ctx: GatewayContext) => string) {
  const { config } = deps;
  return async (ctx: GatewayContext, next: () => Promise<unknown>) => {
    // Read before admission, so a request refused there is counted under its mode too.
    const prefer = parsePrefer(ctx.get('prefer'), config.SYNC_WAIT_DEFAULT_SECONDS, config.SYNC_WAIT_MAX_SECONDS);
    const mode = prefer.respondAsync || prefer.waitSeconds === 0 ? 'async' : 'sync';
    ctx.state.predictMode = mode;
    let admitted: AdmittedPlace;
    try {
      const model = await routable(deps, modelOf(ctx), mode, config.NO_WORKER_POLICY);
      // Known to exist from here on: only now may its name become a metric label.
      ctx.state.model = model.name;
      const declared = Number(ctx.get('content-length') || NaN);
      // A URL's image is not in the body: it may be as large as an upload.
      const bytes = Number.isFinite(declared) && !ctx.is('json') ? declared : config.MAX_UPLOAD_BYTES;
      const tenant = ctx.state.tenant ?? { id: clientOf(ctx), weight: 1, maxPriority: 'normal' };
      // Asking above the tenant's maximum is not refused: the job goes at the maximum, and Preference-Applied says so.
      const priority = capPriority(prefer.priority ?? 'normal', tenant.maxPriority);
      ctx.state.priority = priority;
      admitted = await deps.intake.admit(model.name, tenant, Math.min(bytes, config.MAX_UPLOAD_BYTES), priority);
    } catch (error) {
      deps.metrics.outcomes.inc({ outcome: 'rejected' });
      throw error;
    }
    ctx.state.reservation = admitted.place;
    if (admitted.fair) ctx.state.fairPlace = admitted.fair;
    try {
      await next();
    } finally {
      admitted.place.release(); // if the handler has not already (a refused image, a failed submit)
    }
  };
}

/** The model `name`, if a request in `mode` may be queued for it; else the problem that answers it. */
async function routable(
  deps: PredictDeps,
  name: string,
  mode: PredictMode,
  policy: PredictDeps['config']['NO_WORKER_POLICY'],
): Promise<ModelStatus> {
  const model = await deps.catalogue.resolve(name);
  if (!model) {
    throw new ProblemError('not-found', `No model named ${JSON.stringify(name.slice(0, 64))}`, {
      models: deps.catalogue.known(),
    });
  }
  // A caller who would wait is told at once: its wait could only run out (and would hold a connection).
  if (!model.ready && (mode === 'sync' || policy === 'refuse')) {
    const hint = mode === 'sync' && policy === 'queue' ? ', or send Prefer: respond-async to queue the job until one does' : '';
    throw new ProblemError('no-worker', `No live worker serves the model ${model.name} now; retry later${hint}`, {
      retryAfterSeconds: 5,
      model: model.name,
    });
  }
  return model;
}

function accepted(ctx: GatewayContext, jobId: string, deps: PredictDeps, callback: CallbackState | undefined): void {
  deps.metrics.outcomes.inc({ outcome: 'accepted' });
  const location = `/v1/jobs/${jobId}`;
  ctx.status = 202;
  ctx.set('Location', location);
  ctx.set('Retry-After', '1');
  ctx.body = {
    id: jobId,
    status: 'queued',
    requestId: ctx.state.requestId,
    model: ctx.state.model,
    links: { self: location, events: `${location}/events` },
    ...(callback ? { callback } : {}),
  };
}
