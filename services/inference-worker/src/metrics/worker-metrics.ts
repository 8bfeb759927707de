import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { ModelRef } from '@conveyor/shared/contract/common.contract';

/**
 * Prometheus metrics of one inference worker process, served by its metrics endpoint
 * (`metrics-server.ts`). They answer the on-call question "which part is slow": the gateway's own
 * request histogram says how long callers waited, these split a job into queue wait,
 * preprocessing and inference.
 *
 * Labels are bounded by construction: no job ids, request ids or worker ids (Prometheus adds the
 * scrape target as `instance`); outcomes are a closed set; `model` is the serving name of one of
 * the models this worker was configured with (MODELS), never a name read from a job; the version
 * appears on one info gauge only, so a promotion adds one series rather than a histogram's worth per
 * stage. Join on `instance` and `model` to split a histogram by the version a worker serves.
 */
export const JOB_OUTCOMES = [
  'completed',
  'failed_permanent',
  'failed_transient',
  'not_published',
  'handed_back',
  'expired',
  'cancelled',
] as const;
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

/** One of the models this worker serves, as the metrics see it. */
export interface ModelMetricsSource {
  /** The serving name: the `model` label. */
  readonly name: string;
  /** The version loaded now; undefined before the first one is warm. */
  readonly ref: () => ModelRef | undefined;
  readonly inFlight: () => number;
  readonly concurrency: number;
  /** Why the model was refused (its folder failed its checks); undefined while it is not. */
  readonly refused: () => string | undefined;
}

/** How often the event-loop lag histogram samples, in ms (prom-client's default is 10). */
export const EVENT_LOOP_SAMPLE_MS = 100;

export interface WorkerMetricsSources {
  readonly models: readonly ModelMetricsSource[];
}

export class WorkerMetrics {
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
    help: 'Job attempts by model and outcome: completed; failed_permanent (bad input, not retried); failed_transient (retried, or recorded as inference-failed on the last attempt); not_published (another attempt finished the job or holds it); handed_back (to the queue during a shutdown); expired (its deadline had passed: dropped before decoding, not run); cancelled (cancelled while it ran: its result discarded)',
    labelNames: ['model', 'outcome'] as const,
    registers: [this.registry],
  });
  private readonly models: ReadonlySet<string>;

  constructor(sources: WorkerMetricsSources) {
    // The event-loop lag histogram samples on a timer: at prom-client's default 10 ms it wakes an
    // idle worker 100 times a second (~3.5 ms of CPU per idle second, measured on the monitor,
    // bench/monitor-cpu.bench.ts). 100 ms still shows a stalled loop; nothing reads a finer grain.
    collectDefaultMetrics({
      register: this.registry,
      prefix: 'conveyor_worker_',
      eventLoopMonitoringPrecision: EVENT_LOOP_SAMPLE_MS,
    });
    this.models = new Set(sources.models.map((m) => m.name));
    // Every model and outcome exists from the first scrape, so rate() and ratios see a zero, not a gap.
    for (const model of this.models) {
      for (const outcome of JOB_OUTCOMES) this.jobs.inc({ model, outcome }, 0);
      for (const histogram of [this.queueWaitSeconds, this.preprocessSeconds, this.inferenceSeconds, this.processingSeconds])
        histogram.zero({ model });
    }
    new Gauge({
      name: 'conveyor_worker_jobs_in_flight',
      help: 'Jobs of each model this worker is processing now',
      labelNames: ['model'] as const,
      registers: [this.registry],
      collect() {
        for (const m of sources.models) this.set({ model: m.name }, m.inFlight());
      },
    });
    const concurrency = new Gauge({
      name: 'conveyor_worker_concurrency',
      help: 'Jobs of each model this worker processes at once at most (MODELS, else WORKER_CONCURRENCY)',
      labelNames: ['model'] as const,
      registers: [this.registry],
    });
    for (const m of sources.models) concurrency.set({ model: m.name }, m.concurrency);
    new Gauge({
      name: 'conveyor_worker_model_refused',
      help: 'Configured models this worker refused to serve because their folder failed its checks (1), the others 0; the log and GET /v1/models say why',
      labelNames: ['model'] as const,
      registers: [this.registry],
      collect() {
        for (const m of sources.models) this.set({ model: m.name }, m.refused() === undefined ? 0 : 1);
      },
    });
    new Gauge({
      name: 'conveyor_worker_model_info',
      help: 'The models this worker serves, with the version loaded (always 1; absent until the model is warm)',
      labelNames: ['model', 'version'] as const,
      registers: [this.registry],
      collect() {
        // Only the current versions: a swapped-out one must not linger as a second series.
        this.reset();
        for (const m of sources.models) {
          const ref = m.ref();
          if (ref) this.set({ model: m.name, version: ref.version }, 1);
        }
      },
    });
  }

  /** What the processor of `model` reports to; `model` must be one the worker was built with. */
  forModel(model: string): JobMetrics {
    if (!this.models.has(model)) throw new Error(`no metrics for model ${model}: not one this worker serves`);
    const labels = { model };
    return {
      queueWait: (seconds) => this.queueWaitSeconds.observe(labels, seconds),
      preprocess: (seconds) => this.preprocessSeconds.observe(labels, seconds),
      inference: (seconds) => this.inferenceSeconds.observe(labels, seconds),
      processing: (seconds) => this.processingSeconds.observe(labels, seconds),
      outcome: (outcome) => this.jobs.inc({ model, outcome }),
    };
  }

  private histogram(name: string, help: string): Histogram<'model'> {
    return new Histogram({ name, help, labelNames: ['model'] as const, buckets: [...STAGE_BUCKETS], registers: [this.registry] });
  }
}
