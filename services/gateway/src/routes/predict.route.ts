import { randomUUID } from 'node:crypto';
import type Router from '@koa/router';
import type { CallbackState } from '@conveyor/shared/contract/api.contract';
import type { JobResult } from '@conveyor/shared/contract/jobs.contract';
import { ProblemError } from '@conveyor/shared/problem';
import type { Access } from '../access/access.middleware.js';
import type { GatewayConfig } from '../config.js';
import { clientOf } from '../http/client-identity.js';
import { bindLog, type GatewayContext, type GatewayState } from '../http/context.js';
import { idempotencyKey } from '../http/idempotency-key.js';
import type { HttpMetrics, PredictMode } from '../http/metrics.js';
import { appliedWith, parsePrefer } from '../http/prefer.js';
import { capPriority } from '../http/priority.js';
import { parseDeadline } from '../http/deadline.js';
import { checkDeadline, deadlineLimit, type DeadlineLimit } from '../jobs/deadline-admission.js';
import type { JobCanceller } from '../jobs/job-canceller.js';
import { sendProblem } from '../http/problem.middleware.js';
import type { ImageFetcher } from '../intake/fetch-image.js';
import { inspectImage, type ImageFacts } from '../intake/inspect-image.js';
import { MULTIPART_SLACK, predictBodyParser, readPredictInput, type PredictInput } from '../intake/read-input.js';
import { uploadGuard, type UploadBudget } from '../intake/upload-guard.js';
import { requestFingerprint, type IdempotencyLease, type IdempotencyStore } from '../jobs/idempotency.js';
import type { AdmittedPlace, JobIntake, Obtained } from '../jobs/job-intake.js';
import { cacheDirectives, cacheStatus, planCache, type CacheOutcome, type CachePlan } from '../jobs/result-cache.js';
import type { CachedAnswer } from '@conveyor/shared/contract/cache.contract';
import type { JobLookup } from '../jobs/job-lookup.js';
import type { Ticket } from '../jobs/result-waiter.js';
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
    | 'DEADLINE_ADMISSION'
    | 'DEADLINE_ADMISSION_SHARE'
    | 'INPUT_TTL_SECONDS'
    | 'RESULT_CACHE'
  >;
  readonly catalogue: Pick<ModelCatalogue, 'resolve' | 'known'>;
  /** Where a job comes to exist: its queue place, then the job with its reply ticket and callback. */
  readonly intake: Pick<JobIntake, 'admit' | 'obtain' | 'follow'>;
  /** Idempotency-Key records: which job a key made (jobs/idempotency.ts). */
  readonly idempotency: Pick<IdempotencyStore, 'claim'>;
  /** Where a replayed request finds the job its key made. */
  readonly lookup: Pick<JobLookup, 'find'>;
  /** A job's callback state, shown again to a replayed asynchronous request. */
  readonly callbacks: { state(jobId: string): Promise<CallbackState | undefined> };
  readonly fetchImage: ImageFetcher;
  readonly metrics: HttpMetrics;
  readonly uploadBudget: UploadBudget;
  readonly access: Access;
  /** Reads a request's Callback-Url (refused when callbacks are off). */
  readonly callbackUrl: (values: readonly string[] | undefined) => URL | undefined;
  /** Cancels the job of a synchronous caller that hung up, if it still waits. */
  readonly canceller: Pick<JobCanceller, 'abandon'>;
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
 * With an Idempotency-Key (docs/idempotency.md), the key is claimed once the body is read and
 * before a URL is fetched: a retry of the same request gets the job the key made (202 with its id,
 * or, for a caller who waits, its result), never a second job; a different request is a 422; a
 * retry while the first is still being accepted is a 409 with Retry-After. A request that fails
 * before its job exists frees the key.
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
  const key = idempotencyKey();
  router.post('/v1/predict', allowed, key, admit(deps, defaultModel), guard, parse, handler);
  router.post('/predict', allowed, key, admit(deps, defaultModel), guard, parse, handler);
  router.post('/v1/models/:name/predict', allowed, key, admit(deps, named), guard, parse, handler);
}

/** Reads and inspects the image, has the job made, and answers: the result, a problem, or a 202. */
async function predict(ctx: GatewayContext, deps: PredictDeps): Promise<void> {
  const { config } = deps;
  const acceptedAt = Date.now();
  const prefer = parsePrefer(ctx.get('prefer'), config.SYNC_WAIT_DEFAULT_SECONDS, config.SYNC_WAIT_MAX_SECONDS);
  // Chosen at admission, which reserved the place under it; named in answers once the job exists.
  const jobId = ctx.state.reservation?.jobId ?? randomUUID();
  const waits = !(prefer.respondAsync || prefer.waitSeconds === 0);
  const read = await readImage(ctx, deps, jobId);
  ctx.set('Preference-Applied', prefer.applied);
  if (read.kind === 'replay') {
    // Neither the bytes nor the queue place are needed: the job the key made has its own. Given back
    // now, not when a sync replay's wait ends (admission would count a job that never comes).
    ctx.state.upload?.release();
    ctx.state.reservation?.release();
    return replay(ctx, deps, read.jobId, waits, prefer.waitSeconds);
  }
  const { input, bytes, facts, callbackUrl, lease } = read;
  ctx.state.jobId = jobId;
  bindLog(ctx.state, { jobId });
  const deadline = ctx.state.deadline;
  const applied = appliedWith(prefer, ctx.state.priority ?? 'normal');
  ctx.set('Preference-Applied', deadline ? `${applied}, deadline=${deadline.seconds}` : applied);
  const plan = await cachePlan(ctx, deps, {
    bytes,
    waits,
    callback: callbackUrl !== undefined,
    lease,
    deadline: deadline !== undefined,
  });
  let obtained: Obtained;
  try {
    obtained = await deps.intake.obtain(
      {
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
        waits,
        deadline: deadline?.at,
        span: ctx.state.span,
      },
      plan,
    );
  } catch (error) {
    await freeKey(ctx, lease);
    throw error;
  } finally {
    // The upload budget is given back: the bytes are in Redis now, or nowhere.
    ctx.state.upload?.release();
  }
  if (config.RESULT_CACHE) {
    const outcome = outcomeOf(plan, obtained);
    ctx.set('Cache-Status', cacheStatus(outcome));
    const status = outcome.kind === 'bypass' && outcome.reason === 'request' ? 'request' : outcome.kind;
    deps.metrics.resultCache.inc({ model: ctx.state.model, status });
  }
  if (obtained.kind === 'hit') return answerCached(ctx, deps, obtained.answer, jobId, acceptedAt, prefer.respondAsync);
  if (obtained.kind === 'follow') return followJob(ctx, deps, obtained, prefer.waitSeconds);
  const { job, lead } = obtained;
  ctx.state.log.debug({ format: facts.format, width: facts.width, height: facts.height, bytes: bytes.length }, 'job queued');
  // Before answering: a retry that comes after this answer must find the job.
  if (lease) await keepKey(ctx, lease);
  if (!job.ticket) return accepted(ctx, jobId, deps, job.callback);
  // Nobody else may want the job of a caller that hangs up when it has no callback and no
  // Idempotency-Key (a retry with the key would find it): it is then cancelled if it still waits,
  // unless identical requests merged into it wait for it too (`lead`).
  const abandonable = !callbackUrl && !lease;
  return answerWhenDone(ctx, deps, jobId, job.ticket, prefer.waitSeconds, job.callback, abandonable, lead);
}

/** How the request uses the result cache (jobs/result-cache.ts); nothing with RESULT_CACHE off. */
async function cachePlan(
  ctx: GatewayContext,
  deps: PredictDeps,
  request: { bytes: Buffer; waits: boolean; callback: boolean; lease: IdempotencyLease | undefined; deadline: boolean },
): Promise<CachePlan> {
  if (!deps.config.RESULT_CACHE) return {};
  // From the catalogue's view in memory: admission resolved the model a moment ago.
  const model = await deps.catalogue.resolve(ctx.state.model!);
  return planCache({
    model: ctx.state.model!,
    servedAs: model?.servedAs,
    bytes: request.bytes,
    client: clientOf(ctx),
    directives: cacheDirectives(ctx.get('cache-control') || undefined),
    waits: request.waits,
    callback: request.callback,
    idempotencyKey: request.lease !== undefined,
    deadline: request.deadline,
  });
}

function outcomeOf(plan: CachePlan, obtained: Obtained): CacheOutcome {
  if (obtained.kind === 'hit') return { kind: 'hit' };
  if (obtained.kind === 'follow') return { kind: 'collapsed' };
  return plan.bypass ? { kind: 'bypass', reason: plan.bypass } : { kind: 'miss' };
}

/**
 * A stored answer: a 200 with the result, as a job of this request would have had it, under this
 * request's own id (no job exists under it: a hit is not kept for polling, and the id of the job that
 * computed the answer is never shown). No work was done: the timings are zero but `totalMs`. `Age`
 * says how long ago the answer was stored (RFC 9111). An asynchronous caller gets the answer at
 * once too (`Prefer: respond-async` is a preference; it is not applied).
 */
function answerCached(
  ctx: GatewayContext,
  deps: PredictDeps,
  answer: CachedAnswer,
  jobId: string,
  acceptedAt: number,
  respondAsync: boolean,
): void {
  const now = Date.now();
  if (respondAsync) ctx.remove('Preference-Applied');
  ctx.set('Age', String(Math.max(0, Math.floor((now - answer.storedAt) / 1000))));
  deps.metrics.outcomes.inc({ outcome: 'completed' });
  ctx.state.log.debug({ model: answer.model }, 'answered from the result cache');
  ctx.status = 200;
  ctx.body = {
    id: jobId,
    requestId: ctx.state.requestId,
    acceptedAt: new Date(acceptedAt).toISOString(),
    finishedAt: new Date(now).toISOString(),
    attempt: 1,
    worker: answer.worker,
    status: 'completed',
    model: answer.model,
    prediction: answer.prediction,
    timings: { queueMs: 0, preprocessMs: 0, inferenceMs: 0, totalMs: Math.max(0, now - acceptedAt) },
    input: answer.input,
  } satisfies JobResult;
}

/**
 * An identical request of the same client has its job queued or running: this one waits for that
 * job (answered as that job is: its result, or a 202 naming it once the wait runs out). A caller
 * that hangs up stops counting among those who want the job; it never cancels it.
 */
async function followJob(
  ctx: GatewayContext,
  deps: PredictDeps,
  followed: Extract<Obtained, { kind: 'follow' }>,
  waitSeconds: number,
): Promise<void> {
  const { jobId, ticket } = followed;
  ctx.state.jobId = jobId;
  bindLog(ctx.state, { jobId });
  ctx.state.log.debug('waiting for the job of an identical request');
  let waiting = false;
  try {
    // The job may have finished before the ticket was registered (its reply gone): its stored result.
    const view = await deps.lookup.find(jobId);
    if (view?.kind === 'finished') return answerResult(ctx, deps, view.result);
    if (view?.kind === 'lost') return await droppedLostJob(ctx, followed);
    waiting = true;
    const { result, gone } = await waitForResult(ctx, ticket, waitSeconds);
    if (result) return answerResult(ctx, deps, result);
    if (gone) {
      await followed.leave().catch((error: unknown) => ctx.state.log.warn({ err: error }, 'could not leave an in-flight job'));
      deps.metrics.outcomes.inc({ outcome: 'accepted' });
      ctx.status = 499;
      return;
    }
    // The leader's job could not be queued after all (its record is gone): nothing to poll.
    const now = await deps.lookup.find(jobId);
    if (now?.kind === 'lost') return await droppedLostJob(ctx, followed);
    if (!now) {
      throw new ProblemError('not-ready', 'The identical request this one waited for could not be queued; retry', {
        retryAfterSeconds: 1,
      });
    }
    return accepted(ctx, jobId, deps, undefined);
  } finally {
    if (!waiting) ticket.cancel();
  }
}

/** Waits for the job's result within the caller's wait: the result (or its problem), else a 202. */
async function answerWhenDone(
  ctx: GatewayContext,
  deps: PredictDeps,
  jobId: string,
  ticket: Ticket,
  waitSeconds: number,
  callback: CallbackState | undefined,
  abandonable: boolean,
  lead?: { release(): Promise<number> },
): Promise<void> {
  // A client that hangs up stops the wait; the job goes on unless `abandonable` (then it is cancelled
  // if no worker took it yet and no identical request waits for it, so it costs no worker time).
  const { result, gone } = await waitForResult(ctx, ticket, waitSeconds);
  if (!result && gone && abandonable) return abandoned(ctx, deps, jobId, lead);
  if (!result) return accepted(ctx, jobId, deps, callback);
  answerResult(ctx, deps, result);
}

/**
 * The job an identical request made was lost (BullMQ failed it without a result: it stalled on
 * crashing workers): its in-flight record is dropped, so that a retry makes a job of its own, and
 * this caller is told to retry rather than sent to poll a job that will never answer.
 */
async function droppedLostJob(ctx: GatewayContext, followed: Extract<Obtained, { kind: 'follow' }>): Promise<never> {
  await followed.drop().catch((error: unknown) => ctx.state.log.warn({ err: error }, 'could not drop the record of a lost job'));
  throw new ProblemError('not-ready', 'The identical request this one waited for lost its job; retry', { retryAfterSeconds: 1 });
}

/** Waits on `ticket` within the caller's wait, or until the caller hangs up (`gone`). */
async function waitForResult(
  ctx: GatewayContext,
  ticket: Ticket,
  waitSeconds: number,
): Promise<{ result: JobResult | undefined; gone: boolean }> {
  // A flag and the ticket's own cancel, not an AbortController: an AbortSignal and its listener per
  // waiting request cost more than the wait's other bookkeeping, and nothing else reads the signal.
  const caller = { gone: false };
  const onClose = () => {
    if (ctx.res.writableEnded || caller.gone) return;
    caller.gone = true;
    ticket.cancel();
  };
  ctx.res.once('close', onClose);
  // A caller that hung up while its job was being made closed before anyone listened.
  if (ctx.req.socket.destroyed) onClose();
  const result = caller.gone ? undefined : await ticket.wait(waitSeconds * 1000).finally(() => ctx.res.off('close', onClose));
  return { result, gone: caller.gone };
}

function answerResult(ctx: GatewayContext, deps: PredictDeps, result: JobResult): void {
  if (result.status === 'completed') {
    deps.metrics.outcomes.inc({ outcome: 'completed' });
    ctx.status = 200;
    ctx.body = result;
    return;
  }
  // Cancelled (DELETE) or expired (its deadline passed before a worker took it) answer with their problem too.
  deps.metrics.outcomes.inc({ outcome: 'failed' });
  sendProblem(ctx, new ProblemError(result.error.slug, result.error.detail));
}

/**
 * A retry of a request whose Idempotency-Key made job `jobId`: answered as that request was, from
 * the job as it is now. An asynchronous caller gets the 202 (same id, Location, callback state); a
 * caller who waits gets the stored result, or waits for it beside the first request (on the gateway
 * that made the job the reply wakes both; on another, the waiter's sweep finds the stored result).
 * Either way no job, inference or callback is added.
 */
async function replay(ctx: GatewayContext, deps: PredictDeps, jobId: string, waits: boolean, waitSeconds: number): Promise<void> {
  ctx.state.jobId = jobId;
  bindLog(ctx.state, { jobId });
  ctx.set('Idempotent-Replayed', 'true');
  // Registered before the job is looked up: a result stored after the look-up still reaches it.
  const ticket = waits ? deps.intake.follow(jobId) : undefined;
  let answered = false;
  try {
    const [view, callback] = await Promise.all([deps.lookup.find(jobId), deps.callbacks.state(jobId)]);
    ctx.state.log.debug({ found: view?.kind }, 'replaying the job of an Idempotency-Key');
    if (!view) {
      throw new ProblemError(
        'idempotency-job-expired',
        `The job ${jobId} this Idempotency-Key made is finished and its result no longer kept; send the request with a new key to run it again`,
      );
    }
    if (!ticket) return accepted(ctx, jobId, deps, callback);
    if (view.kind === 'finished') return answerResult(ctx, deps, view.result);
    // Failed without a result record: what the first request's wait would have ended in; the poll says why.
    if (view.kind === 'lost') return accepted(ctx, jobId, deps, callback);
    answered = true;
    // Never abandoned: the job is the first request's, whoever else waits for it.
    return await answerWhenDone(ctx, deps, jobId, ticket, waitSeconds, callback, false);
  } finally {
    if (!answered) ticket?.cancel();
  }
}

/** The key names the job now; a failure to record that leaves the job made all the same. */
async function keepKey(ctx: GatewayContext, lease: IdempotencyLease): Promise<void> {
  try {
    if (!(await lease.confirm())) {
      ctx.state.log.warn('the Idempotency-Key was claimed again before its job was made: a retry may have made a second job');
    }
  } catch (error) {
    // The lease lapses by itself; until then retries are told to wait (409), after it they make a new job.
    ctx.state.log.warn({ err: error }, 'could not record the job of an Idempotency-Key');
  }
}

/** No job was made: the key is free again for the caller's next attempt (else its lease lapses). */
async function freeKey(ctx: GatewayContext, lease: IdempotencyLease | undefined): Promise<void> {
  await lease?.release().catch((error: unknown) => {
    ctx.state.log.warn({ err: error }, 'could not free an Idempotency-Key; it is freed when its lease lapses');
  });
}

type ReadImage =
  | {
      readonly kind: 'image';
      readonly input: PredictInput;
      readonly bytes: Buffer;
      readonly facts: ImageFacts;
      readonly callbackUrl: URL | undefined;
      /** The Idempotency-Key this request holds while its job is made. */
      readonly lease: IdempotencyLease | undefined;
    }
  | { readonly kind: 'replay'; readonly jobId: string };

/**
 * The request's image (read, or fetched from its URL) and what inspecting it found; a refusal is
 * counted. With an Idempotency-Key, the key is claimed between reading the request and fetching
 * a URL, so a retry fetches nothing; a refused image gives the key back.
 */
async function readImage(ctx: GatewayContext, deps: PredictDeps, jobId: string): Promise<ReadImage> {
  const { config } = deps;
  let lease: IdempotencyLease | undefined;
  try {
    // Every line of the header: Node would join two into one "a, b" value.
    const callbackUrl = deps.callbackUrl(ctx.req.headersDistinct['callback-url']);
    const input = readPredictInput(ctx);
    const key = ctx.state.idempotencyKey;
    if (key !== undefined) {
      const fingerprint = requestFingerprint({ model: ctx.state.model!, input, callbackUrl });
      const claim = await deps.idempotency.claim(clientOf(ctx), key, fingerprint, jobId);
      switch (claim.kind) {
        case 'replay':
          return claim;
        case 'mismatch':
          throw new ProblemError(
            'idempotency-key-reused',
            'This Idempotency-Key was used for a different request (another image, URL, model or Callback-Url); use a new key for a new request',
          );
        case 'in-flight':
          throw new ProblemError(
            'idempotency-key-in-use',
            'A request with this Idempotency-Key is still being accepted; retry shortly',
            {
              retryAfterSeconds: 1,
            },
          );
        case 'claimed':
          lease = claim.lease;
      }
    }
    const bytes = input.kind === 'url' ? await deps.fetchImage(input.url) : input.bytes;
    const facts = await inspectImage(bytes, {
      maxPixels: config.MAX_IMAGE_PIXELS,
      maxSide: config.MAX_IMAGE_SIDE,
      maxAspectRatio: config.MAX_ASPECT_RATIO,
    });
    return { kind: 'image', input, bytes, facts, callbackUrl, lease };
  } catch (error) {
    await freeKey(ctx, lease);
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
    let limit: DeadlineLimit | undefined;
    try {
      const model = await routable(deps, modelOf(ctx), mode, config.NO_WORKER_POLICY);
      // Known to exist from here on: only now may its name become a metric label.
      ctx.state.model = model.name;
      // Counted from here, the request's arrival at admission; a job cannot wait longer than its image lives.
      const seconds = parseDeadline(ctx.get('prefer'), config.INPUT_TTL_SECONDS);
      if (seconds !== undefined) {
        ctx.state.deadline = { at: Date.now() + Math.ceil(seconds * 1000), seconds };
        if (config.DEADLINE_ADMISSION) {
          const figures = { concurrency: model.concurrency, serviceMs: model.serviceMs, jobsPerSecond: model.jobsPerSecond };
          // Planned to finish within a share of the deadline: a queue held at its limit would
          // otherwise finish every admitted job at the deadline's very edge, half of them past it.
          const budgetMs = seconds * 1000 * config.DEADLINE_ADMISSION_SHARE;
          // What no depth can meet (no live worker, a deadline shorter than one job) is refused now;
          // the rest is a bound on the depth, checked with the place's reservation.
          checkDeadline({ ...figures, waiting: 0 }, budgetMs, model.name);
          limit = deadlineLimit(figures, budgetMs, model.name);
        }
      }
      const declared = Number(ctx.get('content-length') || NaN);
      // A URL's image is not in the body: it may be as large as an upload.
      const bytes = Number.isFinite(declared) && !ctx.is('json') ? declared : config.MAX_UPLOAD_BYTES;
      const tenant = ctx.state.tenant ?? { id: clientOf(ctx), weight: 1, maxPriority: 'normal' };
      // Asking above the tenant's maximum is not refused: the job goes at the maximum, and Preference-Applied says so.
      const priority = capPriority(prefer.priority ?? 'normal', tenant.maxPriority);
      ctx.state.priority = priority;
      admitted = await deps.intake.admit(
        model.name,
        tenant,
        Math.min(bytes, config.MAX_UPLOAD_BYTES),
        priority,
        limit,
        ctx.state.span,
      );
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

/** The caller hung up: its job is cancelled unless a worker has it already (nobody reads this answer). */
async function abandoned(
  ctx: GatewayContext,
  deps: PredictDeps,
  jobId: string,
  lead?: { release(): Promise<number> },
): Promise<void> {
  // Identical requests merged into the job still want it: it runs for them (unknown counts as wanted).
  const followers = lead ? await lead.release().catch(() => 1) : 0;
  if (followers > 0) {
    ctx.state.log.info({ followers }, 'the caller hung up; its job runs for the identical requests waiting for it');
    deps.metrics.outcomes.inc({ outcome: 'accepted' });
    ctx.status = 499;
    return;
  }
  const outcome = await deps.canceller.abandon(jobId, ctx.state.model!).catch((error: unknown) => {
    ctx.state.log.warn({ err: error }, 'could not cancel the job of a caller that hung up; it runs');
    return 'failed' as const;
  });
  ctx.state.log.info({ outcome }, 'the caller hung up before its result');
  deps.metrics.outcomes.inc({ outcome: outcome === 'cancelled' ? 'cancelled' : 'accepted' });
  // nginx's 499, client closed request: for the access log and the metrics, the caller never sees it.
  ctx.status = 499;
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
