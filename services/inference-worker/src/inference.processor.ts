import { UnrecoverableError, WaitingError, type Job } from 'bullmq';
import {
  InferenceJob,
  type CompletedResult,
  type ExpiredResult,
  type FailedResult,
  type InferenceJobName,
  type InferenceJobReturn,
} from '@conveyor/shared/contract/jobs.contract';
import { predictionEvent } from '@conveyor/shared/contract/events.contract';
import { TraceContext, type ModelName, type ModelRef } from '@conveyor/shared/contract/common.contract';
import type { CommitOutcome, JobStore } from '@conveyor/shared/contract/job-store';
import type { ModelManifest } from '@conveyor/shared/model/manifest';
import type { Logger } from '@conveyor/shared/logger';
import { preprocess, Workspace } from '@conveyor/shared/model/preprocess';
import { classify, topKFor } from '@conveyor/shared/model/runtime';
import { problemBody, ProblemError } from '@conveyor/shared/problem';
import { isRedisOutOfMemory } from '@conveyor/shared/redis';
import {
  contextFrom,
  failSpan,
  logIds,
  NO_SPAN,
  recordStep,
  SpanClock,
  SpanKind,
  tracingOff,
  type Span,
  type Tracer,
} from '@conveyor/shared/tracing';
import type { JobCounts } from './job-counts.js';
import type { WorkerResultCache } from './result-cache.js';
import type { JobMetrics, JobOutcome } from './metrics/worker-metrics.js';
import type { ModelHost, ModelLease } from './model/model-host.js';
import type { ShadowHook } from './shadow/shadow-lane.js';
import type { LiveRecorder } from './replay/replay-recorder.js';

/**
 * Where a job becomes a prediction: check the payload, take the image, preprocess it as the
 * model's manifest says, run the model, commit the result with its prediction event.
 *
 * Bad input (a ProblemError with a 4xx status) fails the job once, for good. Anything else is
 * transient and BullMQ retries it; the last attempt records the failure so callers are told.
 */
export interface ProcessorDeps {
  /** Takes the job's image and commits its result. */
  readonly jobs: Pick<JobStore, 'takeInput' | 'commit'>;
  /** The serving name of the model whose queue this processor takes jobs from. */
  readonly model: ModelName;
  /** That queue (its jobs' BullMQ locks are under its name). */
  readonly queue: string;
  /** The model to use for the next job (leased per job, so a swapped model takes effect at once). */
  readonly models: Pick<ModelHost, 'acquire'>;
  readonly workerId: string;
  readonly limits: { readonly maxPixels: number; readonly maxSide: number; readonly maxAspectRatio: number };
  readonly preprocessTimeoutMs: number;
  /** TOP_K: the deployment's choice for every model without its own (undefined: topKFor's default). */
  readonly topK: number | undefined;
  readonly eventEmbeddings: boolean;
  readonly log: Logger;
  /** This model's jobs: in flight now, committed so far. */
  readonly counts: Pick<JobCounts, 'started' | 'ended' | 'committedCompleted' | 'committedFailed'>;
  /** This model's metrics. */
  readonly metrics: JobMetrics;
  /** Spans of the jobs that carry a trace (absent: none). */
  readonly tracer?: Tracer | undefined;
  /**
   * The shared result cache (docs/result-cache.md): a job's final commit clears the in-flight record
   * it leads, and, with `store` (RESULT_CACHE on), a completed answer is stored under the version that ran.
   */
  readonly cache?: Pick<WorkerResultCache, 'settle'>;
  /** The model's shadow lane (SHADOW_VERSION, docs/shadow.md): offered each published answer, returns at once. */
  readonly shadow?: ShadowHook | undefined;
  /** The live replay recorder (REPLAY_SAMPLE_RATE): offered every published completed job with its image; returns at once. */
  readonly recorder?: LiveRecorder | undefined;
}

/** An inference job as BullMQ hands it over (the payload is still checked: it comes from Redis). */
export type InferenceBullJob = Job<InferenceJob, InferenceJobReturn, InferenceJobName>;

export type InferenceProcessor = (job: InferenceBullJob, token?: string, signal?: AbortSignal) => Promise<InferenceJobReturn>;

/** Names the attempt's outcome as soon as it is known. */
type Report = (outcome: JobOutcome) => void;

/** One attempt at one job, as the steps below share it. */
class Attempt {
  readonly job: InferenceBullJob;
  readonly jobId: string;
  /** Delivery attempt (1 = first). */
  readonly number: number;
  readonly data: InferenceJob;
  readonly token: string | undefined;
  readonly signal: AbortSignal | undefined;
  /** When this attempt started (epoch ms), and its monotonic clock. */
  readonly startedAt: number;
  readonly clock: number;
  /** The attempt's CONSUMER span (records nothing when the job carries no trace). */
  readonly span: Span;
  readonly tracer: Tracer;
  /** Its steps' times, on one clock with it. */
  readonly spanClock: SpanClock;
  private logger: Logger | undefined;

  constructor(
    fields: Omit<Attempt, 'log'>,
    private readonly parentLog: Logger,
  ) {
    this.job = fields.job;
    this.jobId = fields.jobId;
    this.number = fields.number;
    this.data = fields.data;
    this.token = fields.token;
    this.signal = fields.signal;
    this.startedAt = fields.startedAt;
    this.clock = fields.clock;
    this.span = fields.span;
    this.tracer = fields.tracer;
    this.spanClock = fields.spanClock;
  }

  /**
   * The attempt's logger, made when a line is first written: most attempts write none below
   * LOG_LEVEL=info, and pino serializes a child's bindings when it is made.
   */
  get log(): Logger {
    return (this.logger ??= this.parentLog.child({
      jobId: this.jobId,
      requestId: this.data.requestId,
      attempt: this.number,
      ...logIds(this.span),
    }));
  }
}

const DUPLICATE: InferenceJobReturn = { label: 'duplicate' };
const CANCELLED: InferenceJobReturn = { label: 'cancelled' };
const EXPIRED: InferenceJobReturn = { label: 'expired' };

export function createInferenceProcessor(deps: ProcessorDeps): InferenceProcessor {
  // One workspace per job in flight (at most the model's concurrency), reused job after job: a job
  // allocates no fresh megabytes of typed arrays, which had cost a major GC every 7–9 jobs.
  const idle: Workspace[] = [];
  const tracer = deps.tracer ?? tracingOff().tracer;
  return async (job, token, signal) => {
    deps.counts.started();
    const started = performance.now();
    let outcome: JobOutcome | undefined;
    const workspace = idle.pop() ?? new Workspace();
    const clock = new SpanClock();
    const span = attemptSpan(tracer, deps, job, clock);
    try {
      return await processOne({ deps, job, token, signal, workspace, span, tracer, clock }, (o) => (outcome = o));
    } catch (error) {
      // Thrown before the attempt could say (Redis failing the input fetch, say): BullMQ retries it.
      outcome ??= 'failed_transient';
      if (outcome.startsWith('failed')) failSpan(span, error);
      throw error;
    } finally {
      endAttemptSpan(span, outcome, clock);
      idle.push(workspace);
      const seconds = (performance.now() - started) / 1000;
      // The service time and drain rate gateways estimate queue waits from: jobs that ran the model only.
      deps.counts.ended(outcome === 'completed' || outcome === 'cancelled' ? seconds * 1000 : undefined);
      // Exactly one outcome per attempt, counted once it is over.
      deps.metrics.processing(seconds);
      if (outcome) deps.metrics.outcome(outcome);
    }
  };
}

/** What one call of the processor works with. */
interface Call {
  readonly deps: ProcessorDeps;
  readonly job: InferenceBullJob;
  readonly token: string | undefined;
  readonly signal: AbortSignal | undefined;
  readonly workspace: Workspace;
  readonly span: Span;
  readonly tracer: Tracer;
  readonly clock: SpanClock;
}

/**
 * The attempt's span: a CONSUMER span, the child of the gateway's enqueue span the job carries
 * (OpenTelemetry's messaging conventions); a retry is a new one in the same trace. A first attempt
 * also records the job's wait in the queue, from its enqueueing to this start. Read before the
 * payload is checked (a malformed trace field is ignored, never fatal).
 */
function attemptSpan(tracer: Tracer, deps: ProcessorDeps, job: InferenceBullJob, clock: SpanClock): Span {
  const raw = (job.data as { trace?: unknown } | undefined)?.trace;
  // Most jobs carry none: no parse (a failed zod parse builds an error object), no span.
  if (raw === undefined) return NO_SPAN;
  const carried = TraceContext.safeParse(raw);
  if (!carried.success) return NO_SPAN;
  const parent = contextFrom(carried.data);
  const attempt = job.attemptsMade + 1;
  const common = { 'messaging.system': 'bullmq', 'messaging.destination.name': deps.queue, 'conveyor.job.id': job.id ?? '' };
  if (attempt === 1 && job.processedOn !== undefined) {
    tracer.startSpan('queue wait', { startTime: job.timestamp, attributes: common }, parent).end(job.processedOn);
  }
  return tracer.startSpan(
    `process ${deps.queue}`,
    {
      kind: SpanKind.CONSUMER,
      attributes: {
        ...common,
        'messaging.operation.type': 'process',
        'messaging.message.id': job.id ?? '',
        'conveyor.model': deps.model,
        'conveyor.attempt': attempt,
        'conveyor.worker': deps.workerId,
      },
      startTime: clock.at(),
    },
    parent,
  );
}

function endAttemptSpan(span: Span, outcome: JobOutcome | undefined, clock: SpanClock): void {
  if (!span.isRecording()) return;
  span.setAttribute('conveyor.outcome', outcome ?? 'unknown');
  span.end(clock.at());
}

async function processOne(call: Call, report: Report): Promise<InferenceJobReturn> {
  const { deps, job, token, signal, workspace, span, tracer, clock } = call;
  const data = acceptPayload(deps, job, report);
  const jobId = job.id!;
  const number = job.attemptsMade + 1;
  span.setAttribute('conveyor.input.bytes', data.input.bytes);
  const run = new Attempt(
    { job, jobId, number, data, token, signal, startedAt: Date.now(), clock: performance.now(), span, tracer, spanClock: clock },
    deps.log,
  );
  // processedOn is when BullMQ made the job active for this attempt; acceptedAt is the gateway's clock.
  deps.metrics.queueWait(queueMs(run) / 1000);

  // Before the image is even read: a job nobody waits for any more costs no decoding, no inference.
  if (data.deadline !== undefined && run.startedAt > data.deadline) return expire(deps, run, data.deadline, report);

  // An earlier attempt may have committed the result and died before BullMQ recorded it.
  const taking = performance.now();
  const taken = await deps.jobs.takeInput(jobId);
  recordStep(tracer, span, clock, 'take input', { start: taking, end: performance.now() });
  if (taken.finished) {
    run.log.info('already finished by an earlier attempt');
    report('not_published');
    return DUPLICATE;
  }

  // The job keeps the model it started with, even if a new version is swapped in meanwhile.
  const lease = deps.models.acquire();
  span.setAttribute('conveyor.model.version', lease.ref.version);
  try {
    if (!taken.bytes) throw new ProblemError('input-expired', 'The uploaded image is no longer stored; submit it again');
    const { result, embedding, tensor } = await predict(deps, run, lease, taken.bytes, workspace);
    return await commitCompleted(deps, run, result, embedding, report, lease.model.manifest, { tensor, bytes: taken.bytes });
  } catch (error) {
    return await failAttempt(deps, run, lease.ref, error, report);
  } finally {
    lease.release();
  }
}

/** The payload as the contract has it, on the queue of the model it names; else the job fails for good. */
function acceptPayload(deps: ProcessorDeps, job: InferenceBullJob, report: Report): InferenceJob {
  const jobId = job.id!;
  const parsed = InferenceJob.safeParse(job.data);
  if (!parsed.success) {
    // A payload that breaks the contract cannot succeed on retry; it is not poisoned forever either.
    deps.log.error({ jobId, issues: parsed.error.issues }, 'job payload violates the contract');
    report('failed_permanent');
    throw new UnrecoverableError(`invalid job payload: ${parsed.error.message}`);
  }
  const data = parsed.data;
  if (data.model !== undefined && data.model !== deps.model) {
    // The queue decides the model; a payload naming another was put on the wrong queue.
    deps.log.error({ jobId, model: data.model, queue: deps.queue }, 'job names another model than its queue');
    report('failed_permanent');
    throw new UnrecoverableError(`job for model ${data.model} on the queue of ${deps.model}`);
  }
  return data;
}

/**
 * The job's deadline passed before this attempt started: it is recorded `expired` (the caller is
 * told as for any finished job: the reply, the poll, the callback) and its image deleted unread.
 * Judged on this worker's clock against the gateway's: clocks apart by more than a deadline's
 * margin would expire jobs early or late (run NTP).
 */
async function expire(deps: ProcessorDeps, run: Attempt, deadline: number, report: Report): Promise<InferenceJobReturn> {
  const iso = new Date(deadline).toISOString();
  const result: ExpiredResult = {
    ...resultBase(deps, run),
    status: 'expired',
    finishedAt: new Date(run.startedAt).toISOString(),
    deadline: iso,
    error: problemBody(
      new ProblemError('deadline-exceeded', `The job's deadline (${iso}) passed before a worker started it; it was not run`),
    ),
  };
  const outcome = await commitWhenRoom(run, () => deps.jobs.commit(result, commitTarget(deps, run)));
  if (outcome === 'published' || outcome === 'cancelled') await settleCache(deps, run);
  if (outcome === 'published') {
    run.log.info({ deadline: iso, lateMs: run.startedAt - deadline }, 'expired before decoding: not run');
    report('expired');
    return EXPIRED;
  }
  if (outcome === 'cancelled') {
    report('cancelled');
    return CANCELLED;
  }
  report('not_published');
  return DUPLICATE;
}

/** Preprocess, run, classify: the completed result, and the embedding for the event when it is wanted. */
async function predict(
  deps: ProcessorDeps,
  run: Attempt,
  lease: ModelLease,
  bytes: Buffer,
  workspace: Workspace,
): Promise<{ result: CompletedResult; embedding: number[] | undefined; tensor: Float32Array }> {
  const { model, ref } = lease;
  const { data } = run;
  await handBackIfCancelled(run);
  // The stage alone, without the input fetch before it (timings.preprocessMs includes that).
  const preprocessStart = performance.now();
  const prepared = await preprocess({ kind: 'encoded', bytes }, model.manifest, {
    ...deps.limits,
    timeoutMs: deps.preprocessTimeoutMs,
    size: { width: data.input.width, height: data.input.height },
    workspace,
  });
  const preprocessedAt = performance.now();
  deps.metrics.preprocess((preprocessedAt - preprocessStart) / 1000);
  recordStep(run.tracer, run.span, run.spanClock, 'preprocess', {
    start: preprocessStart,
    end: preprocessedAt,
    attributes: {
      'conveyor.input.format': data.input.format,
      'conveyor.input.width': data.input.width,
      'conveyor.input.height': data.input.height,
    },
  });
  await handBackIfCancelled(run);
  const [output] = await model.run([prepared.tensor]);
  const inferredAt = performance.now();
  deps.metrics.inference((inferredAt - preprocessedAt) / 1000);
  recordStep(run.tracer, run.span, run.spanClock, 'inference', {
    start: preprocessedAt,
    end: inferredAt,
    attributes: { 'conveyor.model.version': ref.version },
  });
  const prediction = classify(output!.probabilities, model.manifest.labels, topKFor(model.manifest, deps.topK));
  const finished = Date.now();
  const result: CompletedResult = {
    ...resultBase(deps, run),
    status: 'completed',
    finishedAt: new Date(finished).toISOString(),
    model: ref,
    prediction,
    timings: {
      queueMs: queueMs(run),
      preprocessMs: ms(preprocessedAt - run.clock),
      inferenceMs: ms(inferredAt - preprocessedAt),
      totalMs: Math.max(0, finished - data.acceptedAt),
    },
    input: { format: data.input.format, bytes: data.input.bytes, ...prepared.descriptors },
    ...(data.deadline === undefined ? {} : { deadline: new Date(data.deadline).toISOString() }),
  };
  const embedding = deps.eventEmbeddings && output!.embedding ? rounded(output!.embedding) : undefined;
  return { result, embedding, tensor: prepared.tensor };
}

async function commitCompleted(
  deps: ProcessorDeps,
  run: Attempt,
  result: CompletedResult,
  embedding: number[] | undefined,
  report: Report,
  manifest: ModelManifest,
  input: { readonly tensor: Float32Array; readonly bytes: Buffer },
): Promise<InferenceJobReturn> {
  const committing = performance.now();
  const outcome = await commitWhenRoom(run, () =>
    deps.jobs.commit(result, {
      ...commitTarget(deps, run),
      event: predictionEvent(result, deps.model, embedding),
    }),
  );
  // One script: the result, the reply to a waiting gateway, the prediction event.
  recordStep(run.tracer, run.span, run.spanClock, 'commit and reply', {
    start: committing,
    end: performance.now(),
    attributes: { 'conveyor.commit.outcome': outcome, 'conveyor.reply': run.data.replyTo !== undefined },
  });
  if (outcome === 'published') await settleCache(deps, run, { result, manifest });
  if (outcome === 'cancelled') {
    await settleCache(deps, run);
    run.log.info('result discarded: the job was cancelled while it ran');
    report('cancelled');
    return CANCELLED;
  }
  if (outcome !== 'published') {
    // Frozen past the lock (GC pause, VM freeze, throttled container): another worker took over.
    run.log.warn({ outcome }, 'not publishing: another attempt finished this job or holds it now');
    report('not_published');
    return DUPLICATE;
  }
  deps.counts.committedCompleted();
  report('completed');
  deps.shadow?.offer({ result, manifest, ...input }); // after the caller's answer; synchronous, never throws
  // Only answers the caller received: sampled now, written in the background, never the job's failure.
  deps.recorder?.offer(deps.model, result, input.bytes);
  const { prediction, model, timings } = result;
  // Checked first: asking for run.log makes the attempt's logger (see processOne).
  if (deps.log.isLevelEnabled('info')) {
    run.log.info({ label: prediction.label, confidence: prediction.confidence, model, timings }, 'prediction');
  }
  return { label: prediction.label };
}

/**
 * A failed attempt: handed back (shutdown), failed for good (bad input, committed as such), or
 * retried by BullMQ, except on the last attempt, whose failure is committed so callers are told.
 * Always throws, which is how BullMQ learns which.
 */
async function failAttempt(
  deps: ProcessorDeps,
  run: Attempt,
  modelRef: ModelRef,
  error: unknown,
  report: Report,
): Promise<never> {
  if (error instanceof WaitingError) {
    report('handed_back');
    throw error;
  }
  if (error instanceof RedisFullError) {
    // Nothing is wrong with the job: it is not failed (not even on its last attempt), its image is
    // kept, and its lock lapses into BullMQ's stalled-job recovery if it cannot be handed back.
    report('failed_transient');
    run.log.warn('Redis stayed full until shutdown; the job is left for another attempt');
    throw error;
  }
  const problem = error instanceof ProblemError ? error : undefined;
  const permanent = problem?.permanent ?? false;
  const lastAttempt = run.number >= (run.job.opts.attempts ?? 1);
  report(permanent ? 'failed_permanent' : 'failed_transient');
  if (permanent || lastAttempt) {
    const failure = problem ?? new ProblemError('inference-failed', 'The model could not process this image');
    const result: FailedResult = {
      ...resultBase(deps, run),
      status: 'failed',
      finishedAt: new Date().toISOString(),
      model: modelRef,
      error: problemBody(failure),
    };
    const outcome = await commitWhenRoom(run, () => deps.jobs.commit(result, commitTarget(deps, run)));
    if (outcome === 'published') deps.counts.committedFailed();
    if (outcome === 'published' || outcome === 'cancelled') await settleCache(deps, run);
  }
  if (problem && permanent) {
    run.log.info({ problem: problem.slug, detail: problem.detail }, 'rejected input');
    throw new UnrecoverableError(problem.message);
  }
  run.log.warn({ err: error, lastAttempt }, 'job failed; BullMQ retries it unless this was the last attempt');
  throw error;
}

/**
 * The job's final result is committed: the in-flight record it leads is cleared (identical requests
 * arriving now make their own job or find the answer), and a completed answer is stored under the
 * key of the version that ran (result-cache.ts). After the commit, so the caller's reply never
 * waits for it; a failure costs only the entry (the record lapses after its TTL).
 */
async function settleCache(
  deps: ProcessorDeps,
  run: Attempt,
  completed?: { readonly result: CompletedResult; readonly manifest: ModelManifest },
): Promise<void> {
  const facts = run.data.cache;
  if (!facts || !deps.cache) return;
  try {
    await deps.cache.settle(deps.model, run.jobId, facts, completed);
  } catch (error) {
    run.log.warn({ err: error }, 'could not store the answer in the result cache or clear its in-flight record');
  }
}

/** A commit refused by a full Redis outlasted the attempt (the worker is shutting down). */
class RedisFullError extends Error {
  override readonly name = 'RedisFullError';
}

/** The longest wait between two tries of a commit that a full Redis refused. */
const FULL_RETRY_MAX_MS = 5000;

/**
 * Commits once Redis has room. A Redis at its maxmemory (noeviction) refuses the commit (atomically:
 * see COMMIT in job-store.ts); that is the system being full, not the job failing, so the attempt
 * waits and tries again instead of spending the job's attempts (three tries 250 ms apart used to
 * fail accepted jobs for good, with Redis's own message as their error). The image stays stored
 * until a commit succeeds. While waiting, BullMQ keeps renewing the lock if it can; if it cannot, the
 * job goes back to the queue by stalled-job recovery and this attempt's commit reports 'lock-lost'.
 * A shutdown ends the wait: the job is handed back (or left to that recovery).
 */
async function commitWhenRoom(run: Attempt, commit: () => Promise<CommitOutcome>): Promise<CommitOutcome> {
  for (let waitMs = 100, tries = 1; ; waitMs = Math.min(waitMs * 2, FULL_RETRY_MAX_MS), tries++) {
    try {
      return await commit();
    } catch (error) {
      if (!isRedisOutOfMemory(error)) throw error;
      if (tries === 1) run.log.warn('Redis is full: the result waits for room to be committed (the job is kept)');
      if (run.signal?.aborted) {
        try {
          await handBackIfCancelled(run);
        } catch (handBack) {
          if (handBack instanceof WaitingError) throw handBack;
        }
        throw new RedisFullError('Redis is full', { cause: error });
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(done, waitMs);
        run.signal?.addEventListener('abort', done, { once: true });
        function done() {
          clearTimeout(timer);
          run.signal?.removeEventListener('abort', done);
          resolve();
        }
      });
    }
  }
}

/** The fields every result of this attempt has, completed or failed. */
function resultBase(deps: ProcessorDeps, run: Attempt) {
  return {
    id: run.jobId,
    requestId: run.data.requestId,
    acceptedAt: new Date(run.data.acceptedAt).toISOString(),
    attempt: run.number,
    worker: deps.workerId,
  };
}

/** Where a commit goes and who is told: the waiting gateway, the lock held, the bytes to release. */
function commitTarget(deps: ProcessorDeps, run: Attempt) {
  return { replyTo: run.data.replyTo, token: run.token, queue: deps.queue };
}

function queueMs(run: Attempt): number {
  return Math.max(0, (run.job.processedOn ?? run.startedAt) - run.data.acceptedAt);
}

/** The embedding for the prediction event, to 4 decimals (a plain loop: Array.from's callback cost more than the rounding). */
function rounded(values: Float32Array): number[] {
  // Pushed, not written into `new Array(n)`: a holey array takes JSON.stringify's slow path.
  const out: number[] = [];
  for (let i = 0; i < values.length; i++) out.push(Math.round(values[i]! * 1e4) / 1e4);
  return out;
}

function ms(value: number): number {
  return Math.round(value * 100) / 100;
}

/**
 * During a shutdown whose budget ran out, jobs not yet past their expensive step go straight
 * back to the wait list for another worker, instead of waiting for their lock to expire.
 */
async function handBackIfCancelled({ job, token, signal }: Attempt): Promise<void> {
  if (!signal?.aborted || !token) return;
  await job.moveToWait(token);
  throw new WaitingError();
}
