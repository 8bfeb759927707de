import { randomUUID } from 'node:crypto';
import type Router from '@koa/router';
import { ProblemError } from '@conveyor/shared/problem';
import type { GatewayConfig } from '../config.js';
import { clientOf } from '../http/client-identity.js';
import type { GatewayContext, GatewayState } from '../http/context.js';
import type { HttpMetrics, PredictMode } from '../http/metrics.js';
import { parsePrefer } from '../http/prefer.js';
import { sendProblem } from '../http/problem.middleware.js';
import type { ImageFetcher } from '../intake/fetch-image.js';
import { inspectImage } from '../intake/inspect-image.js';
import { MULTIPART_SLACK, predictBodyParser, readPredictInput } from '../intake/read-input.js';
import { uploadGuard, type UploadBudget } from '../intake/upload-guard.js';
import type { Access } from '../access/access.middleware.js';
import type { Admission, Reservation } from '../jobs/admission.js';
import type { FairQueue } from '../jobs/fair-queue.js';
import type { JobSubmitter } from '../jobs/job-submitter.js';
import type { ModelQueues } from '../jobs/model-queues.js';
import type { ModelCatalogue, ModelStatus } from '../models/model-catalogue.js';
import type { ResultWaiter } from '../jobs/result-waiter.js';
import type { CallbackDispatcher } from '../callbacks/callback-dispatcher.js';
import type { CallbackState } from '@conveyor/shared/contract/api.contract';

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
    | 'RESULT_TTL_SECONDS'
    | 'DEFAULT_MODEL'
    | 'NO_WORKER_POLICY'
  >;
  readonly catalogue: ModelCatalogue;
  readonly queues: ModelQueues;
  readonly admission: Admission;
  readonly fetchImage: ImageFetcher;
  readonly submitter: JobSubmitter;
  readonly waiter: ResultWaiter;
  readonly metrics: HttpMetrics;
  readonly uploadBudget: UploadBudget;
  readonly access: Access;
  /** Result callbacks (`Callback-Url`). */
  readonly callbacks: CallbackDispatcher;
  /** Fair queuing between tenants; absent (FAIR_QUEUING=false): first come, first served. */
  readonly fair?: FairQueue | undefined;
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
 */
export function registerPredictRoute(router: Router<GatewayState>, deps: PredictDeps): void {
  const { config } = deps;
  const handler = async (ctx: GatewayContext) => {
    const acceptedAt = Date.now();
    let input;
    let bytes: Buffer;
    let facts;
    let callbackUrl: URL | undefined;
    try {
      // Every line of the header: Node would join two into one "a, b" value.
      callbackUrl = deps.callbacks.parse(ctx.req.headersDistinct['callback-url']);
      input = readPredictInput(ctx);
      bytes = input.kind === 'url' ? await deps.fetchImage(input.url) : input.bytes;
      facts = await inspectImage(bytes, {
        maxPixels: config.MAX_IMAGE_PIXELS,
        maxSide: config.MAX_IMAGE_SIDE,
        maxAspectRatio: config.MAX_ASPECT_RATIO,
      });
    } catch (error) {
      deps.metrics.outcomes.inc({ outcome: 'rejected' });
      throw error;
    }
    const prefer = parsePrefer(ctx.get('prefer'), config.SYNC_WAIT_DEFAULT_SECONDS, config.SYNC_WAIT_MAX_SECONDS);
    // Chosen at admission, which reserved the place under it; named in answers once the job exists.
    const jobId = ctx.state.reservation?.jobId ?? randomUUID();
    ctx.state.jobId = jobId;
    ctx.state.log = ctx.state.log.child({ jobId });
    ctx.set('Preference-Applied', prefer.applied);

    // Registered before the job exists, so the reply cannot arrive before anyone listens.
    const ticket = prefer.respondAsync || prefer.waitSeconds === 0 ? undefined : deps.waiter.register(jobId);
    let callback: CallbackState | undefined;
    // Whose share of pending callbacks this one counts against.
    const client = clientOf(ctx);
    let reserved = false;
    try {
      if (callbackUrl) {
        await deps.callbacks.reserve(client, jobId);
        reserved = true;
        // Scheduled first: the delivery waits for the job, so it cannot miss its end.
        callback = await deps.callbacks.schedule(jobId, callbackUrl, ctx.state.requestId, client);
      }
      await deps.submitter.submit({
        queue: ctx.state.queue!,
        model: ctx.state.model!,
        jobId,
        requestId: ctx.state.requestId,
        acceptedAt,
        input,
        bytes,
        facts,
        // A callback is promoted on the reply too, so its delivery follows the result at once.
        replyTo: ticket || callbackUrl ? deps.waiter.gatewayId : undefined,
        owner: ctx.state.apiKey?.id,
        priority: ctx.state.fairPlace?.priority,
      });
      // A large image costs its tenant more of the workers' time: its next jobs go later.
      ctx.state.fairPlace?.charge(facts.width * facts.height);
      // Queued: it counts as waiting now, and its image as queued bytes.
      ctx.state.reservation?.queued(bytes.length);
    } catch (error) {
      ticket?.cancel();
      if (reserved) await deps.callbacks.cancel(jobId, client);
      throw error;
    } finally {
      // The place reserved at admission is given back, and so is the upload budget (the bytes are
      // in Redis now, or nowhere).
      ctx.state.reservation?.release();
      ctx.state.upload?.release();
    }
    ctx.state.log.debug({ format: facts.format, width: facts.width, height: facts.height, bytes: bytes.length }, 'job queued');
    if (!ticket) return accepted(ctx, jobId, deps, callback);

    // A client that hangs up stops the wait, not the job.
    const gone = new AbortController();
    const onClose = () => {
      if (!ctx.res.writableEnded) gone.abort();
    };
    ctx.res.once('close', onClose);
    const result = await ticket.wait(prefer.waitSeconds * 1000, gone.signal).finally(() => ctx.res.off('close', onClose));
    if (!result) return accepted(ctx, jobId, deps, callback);
    if (result.status === 'completed') {
      deps.metrics.outcomes.inc({ outcome: 'completed' });
      ctx.status = 200;
      ctx.body = result;
      return;
    }
    deps.metrics.outcomes.inc({ outcome: 'failed' });
    sendProblem(ctx, new ProblemError(result.error.slug, result.error.detail));
  };
  const guard = uploadGuard(deps.uploadBudget, {
    undeclaredBytes: config.MAX_UPLOAD_BYTES + MULTIPART_SLACK,
    minBytesPerSecond: config.MIN_UPLOAD_BYTES_PER_SECOND,
    graceMs: config.UPLOAD_GRACE_MS,
  });
  const parse = predictBodyParser(config.MAX_UPLOAD_BYTES);
  const allowed = deps.access.require('predict');
  const defaultModel = () => config.DEFAULT_MODEL;
  const named = (ctx: GatewayContext) => (ctx as { params?: Record<string, string> }).params?.name ?? '';
  router.post('/v1/predict', allowed, admit(deps, config, defaultModel), guard, parse, handler);
  router.post('/predict', allowed, admit(deps, config, defaultModel), guard, parse, handler);
  router.post('/v1/models/:name/predict', allowed, admit(deps, config, named), guard, parse, handler);
}

function admit(deps: PredictDeps, config: PredictDeps['config'], modelOf: (ctx: GatewayContext) => string) {
  return async (ctx: GatewayContext, next: () => Promise<unknown>) => {
    // Read before admission, so a request refused there is counted under its mode too.
    const prefer = parsePrefer(ctx.get('prefer'), config.SYNC_WAIT_DEFAULT_SECONDS, config.SYNC_WAIT_MAX_SECONDS);
    const mode = prefer.respondAsync || prefer.waitSeconds === 0 ? 'async' : 'sync';
    ctx.state.predictMode = mode;
    let reservation: Reservation;
    try {
      const model = await routable(deps, modelOf(ctx), mode, config.NO_WORKER_POLICY);
      // Known to exist from here on: only now may its name become a metric label.
      ctx.state.model = model.name;
      ctx.state.queue = deps.queues.get(model.name);
      const declared = Number(ctx.get('content-length') || NaN);
      // A URL's image is not in the body: it may be as large as an upload.
      const bytes = Number.isFinite(declared) && !ctx.is('json') ? declared : config.MAX_UPLOAD_BYTES;
      const reserved = await deps.admission.admit(ctx.state.queue, randomUUID(), Math.min(bytes, config.MAX_UPLOAD_BYTES));
      if (deps.fair) {
        // After the reservation, which keeps the tenant's new place counted until its job is queued.
        const tenant = ctx.state.tenant ?? { id: clientOf(ctx), weight: 1 };
        ctx.state.fairPlace = await deps.fair.place(ctx.state.queue, tenant, reserved.jobId).catch((error: unknown) => {
          reserved.release();
          throw error;
        });
      }
      reservation = reserved;
    } catch (error) {
      deps.metrics.outcomes.inc({ outcome: 'rejected' });
      throw error;
    }
    ctx.state.reservation = reservation;
    try {
      await next();
    } finally {
      reservation.release(); // if the handler has not already (a refused image, a failed submit)
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

function accepted(ctx: GatewayContext, jobId: string, deps: PredictDeps, callback?: CallbackState): void {
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
