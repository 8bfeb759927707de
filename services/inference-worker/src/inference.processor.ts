import { UnrecoverableError, WaitingError, type Job } from 'bullmq';
import type { Redis } from '@conveyor/shared/redis';
import {
  InferenceJob,
  type CompletedResult,
  type FailedResult,
  type Keys,
  type ModelName,
  type PredictionEvent,
} from '@conveyor/shared/contract/queue.contract';
import type { Logger } from '@conveyor/shared/logger';
import { preprocess } from '@conveyor/shared/model/preprocess';
import { classify } from '@conveyor/shared/model/runtime';
import { ProblemError, problemCatalogue, problemType } from '@conveyor/shared/problem';
import type { JobMetrics, JobOutcome } from './metrics/worker-metrics.js';
import type { ModelHost } from './model/model-host.js';
import type { ResultPublisher } from './result-publisher.js';

/**
 * Where a job becomes a prediction: fetch the image, preprocess it as the model's manifest says,
 * run the model, publish the result and the prediction event.
 *
 * Bad input (a ProblemError with a 4xx status) fails the job once, for good. Anything else is
 * transient and BullMQ retries it; the last attempt records the failure so callers are told.
 */
export interface ProcessorDeps {
  readonly redis: Redis;
  readonly keys: Keys;
  readonly publisher: ResultPublisher;
  /** The serving name of the model whose queue this processor takes jobs from. */
  readonly model: ModelName;
  /** That queue (its jobs' BullMQ locks are under its name). */
  readonly queue: string;
  /** The model to use for the next job (leased per job, so a swapped model takes effect at once). */
  readonly models: ModelHost;
  readonly workerId: string;
  readonly limits: { readonly maxPixels: number; readonly maxSide: number; readonly maxAspectRatio: number };
  readonly preprocessTimeoutMs: number;
  readonly topK: number;
  readonly eventEmbeddings: boolean;
  readonly log: Logger;
  readonly stats: { processed: number; failed: number };
  /** This model's metrics. */
  readonly metrics: JobMetrics;
  /** Jobs of this model being processed right now (the shutdown drain asks). */
  readonly inFlight: { count: number };
}

export type InferenceProcessor = (
  job: Job,
  token?: string,
  signal?: AbortSignal,
) => Promise<{ label: string } | { failed: string }>;

/** One attempt; it names its outcome through `report` as soon as it is known. */
type AttemptHandler = (
  job: Job,
  token: string | undefined,
  signal: AbortSignal | undefined,
  report: (outcome: JobOutcome) => void,
) => ReturnType<InferenceProcessor>;

export function createInferenceProcessor(deps: ProcessorDeps): InferenceProcessor {
  const handle = processOne(deps);
  return async (job, token, signal) => {
    deps.inFlight.count++;
    const started = performance.now();
    let outcome: JobOutcome | undefined;
    try {
      return await handle(job, token, signal, (o) => (outcome = o));
    } catch (error) {
      // Thrown before the attempt could say (Redis failing the input fetch, say): BullMQ retries it.
      outcome ??= 'failed_transient';
      throw error;
    } finally {
      deps.inFlight.count--;
      // Exactly one outcome per attempt, counted once it is over.
      deps.metrics.processing((performance.now() - started) / 1000);
      if (outcome) deps.metrics.outcome(outcome);
    }
  };
}

function processOne(deps: ProcessorDeps): AttemptHandler {
  return async (job, token, signal, report) => {
    const jobId = job.id!;
    const attempt = job.attemptsMade + 1;
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
    const log = deps.log.child({ jobId, requestId: data.requestId, attempt });
    const startedAt = Date.now();
    const clock = performance.now();
    // processedOn is when BullMQ made the job active for this attempt; acceptedAt is the gateway's clock.
    deps.metrics.queueWait(Math.max(0, (job.processedOn ?? startedAt) - data.acceptedAt) / 1000);

    // An earlier attempt may have published the result and died before BullMQ recorded it.
    const [[, done], [, bytes]] = (await deps.redis
      .pipeline()
      .exists(deps.keys.result(jobId))
      .getBuffer(deps.keys.input(jobId))
      .exec()) as [[Error | null, number], [Error | null, Buffer | null]];
    if (done) {
      log.info('already finished by an earlier attempt');
      report('not_published');
      return { label: 'duplicate' };
    }

    // The job keeps the model it started with, even if a new version is swapped in meanwhile.
    const lease = deps.models.acquire();
    const { model, ref: modelRef } = lease;
    const base = {
      id: jobId,
      requestId: data.requestId,
      acceptedAt: new Date(data.acceptedAt).toISOString(),
      attempt,
      worker: deps.workerId,
    };
    try {
      if (!bytes) throw new ProblemError('input-expired', 'The uploaded image is no longer stored; submit it again');
      await handBackIfCancelled(job, token, signal);
      // The stage alone, without the input fetch before it (timings.preprocessMs includes that).
      const preprocessStart = performance.now();
      const prepared = await preprocess({ kind: 'encoded', bytes }, model.manifest, {
        ...deps.limits,
        timeoutMs: deps.preprocessTimeoutMs,
        size: { width: data.input.width, height: data.input.height },
      });
      const preprocessedAt = performance.now();
      deps.metrics.preprocess((preprocessedAt - preprocessStart) / 1000);
      await handBackIfCancelled(job, token, signal);
      const [output] = await model.run([prepared.tensor]);
      const inferredAt = performance.now();
      deps.metrics.inference((inferredAt - preprocessedAt) / 1000);
      const prediction = classify(output!.probabilities, model.manifest.labels, deps.topK);
      const finished = Date.now();
      const timings = {
        queueMs: Math.max(0, (job.processedOn ?? startedAt) - data.acceptedAt),
        preprocessMs: ms(preprocessedAt - clock),
        inferenceMs: ms(inferredAt - preprocessedAt),
        totalMs: Math.max(0, finished - data.acceptedAt),
      };
      const input = { format: data.input.format, bytes: data.input.bytes, ...prepared.descriptors };
      const finishedAt = new Date(finished).toISOString();
      const result: CompletedResult = { ...base, status: 'completed', finishedAt, model: modelRef, prediction, timings, input };
      const event: PredictionEvent = {
        kind: 'prediction',
        version: 1,
        jobId,
        requestId: data.requestId,
        at: finishedAt,
        model: modelRef,
        prediction,
        timings,
        input,
        ...(deps.eventEmbeddings && output!.embedding
          ? { embedding: Array.from(output!.embedding, (v) => Math.round(v * 1e4) / 1e4) }
          : {}),
      };
      const outcome = await deps.publisher.publish(result, data.replyTo, event, token, data.input.bytes, deps.queue);
      if (outcome !== 'published') {
        // Frozen past the lock (GC pause, VM freeze, throttled container): another worker took over.
        log.warn({ outcome }, 'not publishing: another attempt finished this job or holds it now');
        report('not_published');
        return { label: 'duplicate' };
      }
      deps.stats.processed++;
      report('completed');
      log.info({ label: prediction.label, confidence: prediction.confidence, model: modelRef, timings }, 'prediction');
      return { label: prediction.label };
    } catch (error) {
      if (error instanceof WaitingError) {
        report('handed_back');
        throw error;
      }
      const problem = error instanceof ProblemError ? error : undefined;
      const permanent = problem?.permanent ?? false;
      const lastAttempt = attempt >= (job.opts.attempts ?? 1);
      report(permanent ? 'failed_permanent' : 'failed_transient');
      if (permanent || lastAttempt) {
        const failure = problem ?? new ProblemError('inference-failed', 'The model could not process this image');
        const result: FailedResult = {
          ...base,
          status: 'failed',
          finishedAt: new Date().toISOString(),
          model: modelRef,
          error: {
            type: problemType(failure.slug),
            title: problemCatalogue[failure.slug].title,
            status: failure.status,
            detail: failure.detail,
            slug: failure.slug,
          },
        };
        if ((await deps.publisher.publish(result, data.replyTo, undefined, token, data.input.bytes, deps.queue)) === 'published')
          deps.stats.failed++;
      }
      if (permanent) {
        log.info({ problem: problem!.slug, detail: problem!.detail }, 'rejected input');
        throw new UnrecoverableError(problem!.message);
      }
      log.warn({ err: error, lastAttempt }, 'job failed; BullMQ retries it unless this was the last attempt');
      throw error;
    } finally {
      lease.release();
    }
  };
}

function ms(value: number): number {
  return Math.round(value * 100) / 100;
}

/**
 * During a shutdown whose budget ran out, jobs not yet past their expensive step go straight
 * back to the wait list for another worker, instead of waiting for their lock to expire.
 */
async function handBackIfCancelled(job: Job, token: string | undefined, signal: AbortSignal | undefined): Promise<void> {
  if (!signal?.aborted || !token) return;
  await job.moveToWait(token);
  throw new WaitingError();
}
