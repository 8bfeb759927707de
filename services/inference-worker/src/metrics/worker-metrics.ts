import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { ModelRef } from '@conveyor/shared/contract/queue.contract';

/**
 * Prometheus metrics of one inference worker process, served by its metrics endpoint
 * (`metrics-server.ts`). They answer the on-call question "which part is slow": the gateway's own
 * request histogram says how long callers waited, these split a job into queue wait,
 * preprocessing and inference.
 *
 * Labels are bounded by construction: no job ids, request ids or worker ids (Prometheus adds the
 * scrape target as `instance`); outcomes are a closed set; the model name and version appear on one
 * info gauge only, so a promotion adds one series rather than a histogram's worth per stage. Join
 * on `instance` to split a histogram by the version a worker serves.
 */
export const JOB_OUTCOMES = ['completed', 'failed_permanent', 'failed_transient', 'not_published', 'handed_back'] as const;
export type JobOutcome = (typeof JOB_OUTCOMES)[number];

/**
 * One set of buckets for every stage, so their quantiles can be compared panel to panel. Fine
 * around the 200 ms p95 SLO (0.1, 0.15, 0.2, 0.25) so a quantile estimated there is not off by a
 * whole bucket, and fine at the bottom too: preprocessing a digit takes ~2 ms and inference ~0.2 ms.
 * The top reaches the longest synchronous wait (SYNC_WAIT_MAX_SECONDS, 30 s).
 */
export const STAGE_BUCKETS = [
  0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.5, 1, 2.5, 5, 10, 30,
] as const;

/** What the processor reports about each job; the processor knows nothing of prom-client. */
export interface JobMetrics {
  /** From the gateway accepting the job to this attempt starting (per attempt: a retry waits again). */
  queueWait(seconds: number): void;
  preprocess(seconds: number): void;
  inference(seconds: number): void;
  /** One attempt on this worker, start to finish: input fetch, preprocessing, inference, publishing. */
  processing(seconds: number): void;
  outcome(outcome: JobOutcome): void;
}

export interface WorkerMetricsSources {
  /** The model served now; undefined before the first one is loaded. */
  readonly model: () => ModelRef | undefined;
  readonly inFlight: () => number;
  readonly concurrency: number;
}

export class WorkerMetrics implements JobMetrics {
  readonly registry = new Registry();
  private readonly queueWaitSeconds = this.histogram(
    'conveyor_worker_queue_wait_seconds',
    'Time from the gateway accepting a job to a worker starting it (per attempt)',
  );
  private readonly preprocessSeconds = this.histogram(
    'conveyor_worker_preprocess_seconds',
    'Decoding and preparing one image for the model (sharp, the manifest preprocessing)',
  );
  private readonly inferenceSeconds = this.histogram('conveyor_worker_inference_seconds', 'One onnxruntime run');
  private readonly processingSeconds = this.histogram(
    'conveyor_worker_processing_seconds',
    'One attempt on a worker, start to finish: input fetch, preprocessing, inference, publishing the result',
  );
  private readonly jobs = new Counter({
    name: 'conveyor_worker_jobs_total',
    help: 'Job attempts by outcome: completed; failed_permanent (bad input, not retried); failed_transient (retried, or recorded as inference-failed on the last attempt); not_published (another attempt finished the job or holds it); handed_back (to the queue during a shutdown)',
    labelNames: ['outcome'] as const,
    registers: [this.registry],
  });

  constructor(sources: WorkerMetricsSources) {
    collectDefaultMetrics({ register: this.registry, prefix: 'conveyor_worker_' });
    // Every outcome exists from the first scrape, so rate() and ratios see a zero, not a gap.
    for (const outcome of JOB_OUTCOMES) this.jobs.inc({ outcome }, 0);
    new Gauge({
      name: 'conveyor_worker_jobs_in_flight',
      help: 'Jobs this worker is processing now',
      registers: [this.registry],
      collect() {
        this.set(sources.inFlight());
      },
    });
    new Gauge({
      name: 'conveyor_worker_concurrency',
      help: 'Jobs this worker processes at once at most (WORKER_CONCURRENCY)',
      registers: [this.registry],
    }).set(sources.concurrency);
    new Gauge({
      name: 'conveyor_worker_model_info',
      help: 'The model this worker serves (always 1; absent until a model is loaded)',
      labelNames: ['model', 'version'] as const,
      registers: [this.registry],
      collect() {
        // Only the current version: a swapped-out one must not linger as a second series.
        this.reset();
        const ref = sources.model();
        if (ref) this.set({ model: ref.name, version: ref.version }, 1);
      },
    });
  }

  queueWait(seconds: number): void {
    this.queueWaitSeconds.observe(seconds);
  }

  preprocess(seconds: number): void {
    this.preprocessSeconds.observe(seconds);
  }

  inference(seconds: number): void {
    this.inferenceSeconds.observe(seconds);
  }

  processing(seconds: number): void {
    this.processingSeconds.observe(seconds);
  }

  outcome(outcome: JobOutcome): void {
    this.jobs.inc({ outcome });
  }

  private histogram(name: string, help: string): Histogram {
    return new Histogram({ name, help, buckets: [...STAGE_BUCKETS], registers: [this.registry] });
  }
}
