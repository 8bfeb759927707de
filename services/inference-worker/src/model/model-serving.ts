import { Worker, type Processor } from 'bullmq';
import type { Redis } from '@conveyor/shared/redis';
import type { InferenceJob, InferenceJobName, InferenceJobReturn } from '@conveyor/shared/contract/jobs.contract';
import type { ModelAnnouncement, RefusedModel, ServedModel } from '@conveyor/shared/contract/workers.contract';
import type { Logger } from '@conveyor/shared/logger';
import { answerSpec } from '@conveyor/shared/model/answer-spec';
import type { ModelManifest } from '@conveyor/shared/model/manifest';
import type { LoadOptions } from '@conveyor/shared/model/runtime';
import type { ModelPlan } from '../config.js';
import { JobCounts } from '../job-counts.js';
import type { ModelMetricsSource } from '../metrics/worker-metrics.js';
import { ModelHost } from './model-host.js';
import { ModelWatcher } from './model-watcher.js';
import type { RegistrySource } from './registry-source.js';
import { loadWarmModel } from './warm-up.js';

/**
 * One model this worker serves, from loading to shutdown: the model (from its folder, or followed
 * in the registry), warmed up first; then a BullMQ Worker on the model's own queue with the
 * model's own concurrency; and, only then, a place in the heartbeat. Models of one process are
 * independent: one still downloading does not hold back another that is ready.
 */
export interface BullOptions {
  readonly connection: Redis;
  readonly prefix: string;
  readonly lockDurationMs: number;
  readonly stalledIntervalMs: number;
}

/** A BullMQ Worker typed by the contract: its jobs' payload, return value and name. */
export type InferenceWorker = Worker<InferenceJob, InferenceJobReturn, InferenceJobName>;

/** What takes the model's jobs (inference.processor.ts, which sits above this folder and leases from `host`). */
export type JobProcessor = Processor<InferenceJob, InferenceJobReturn, InferenceJobName>;

export class ModelServing {
  readonly host: ModelHost;
  /** This model's jobs: in flight now, committed so far. */
  readonly counts: JobCounts;
  private watcher: ModelWatcher | undefined;
  private worker: InferenceWorker | undefined;
  private closed = false;
  private refusal: RefusedModel | undefined;
  private readonly stopping = new AbortController();

  /** The answer spec of the manifest served now, computed once per loaded manifest. */
  private spec: { readonly manifest: ModelManifest; readonly value: string } | undefined;

  constructor(
    readonly plan: ModelPlan,
    private readonly log: Logger,
    /** TOP_K: part of what the answers depend on (the result cache's answer spec). */
    private readonly topK?: number,
    /** Called with each model version's manifest before it serves (the result cache's generation). */
    private readonly beforeServing: (manifest: ModelManifest) => Promise<void> = () => Promise.resolve(),
  ) {
    this.host = new ModelHost(log);
    this.counts = new JobCounts(plan.concurrency);
  }

  get name(): string {
    return this.plan.name;
  }

  /** The BullMQ Worker, once it takes jobs. */
  get bullWorker(): InferenceWorker | undefined {
    return this.worker;
  }

  /** Loads and warms up the model: the registry's version when `registry` is given, else the plan's folder. */
  async load(options: LoadOptions & { intervalMs: number }, registry?: RegistrySource): Promise<void> {
    this.log.info({ dir: registry ? undefined : this.plan.dir, uri: registry ? this.plan.uri : undefined }, 'warming up model');
    if (registry) {
      this.watcher = new ModelWatcher(registry, this.host, options, this.log, this.beforeServing);
      await this.watcher.start(this.stopping.signal);
      return;
    }
    const { model, warmUpMs } = await loadWarmModel(this.plan.dir, options);
    const ref = { name: model.manifest.name, version: model.manifest.version };
    this.log.info({ model: ref, warmUpMs, onThread: model.onThread ?? false }, 'model warmed up');
    if (this.closed) {
      await model.close();
      return;
    }
    await this.beforeServing(model.manifest);
    this.host.replace(model, ref);
    this.log.info({ model: ref, dir: model.dir }, 'model loaded');
  }

  /** Starts taking jobs from the model's queue (once it is warm); false if shutting down already. */
  start(processor: JobProcessor, bull: BullOptions, onError: (error: Error) => void): boolean {
    if (this.closed || !this.host.loaded || this.worker) return false;
    this.worker = new Worker<InferenceJob, InferenceJobReturn, InferenceJobName>(this.plan.queue, processor, {
      // The models' Workers share this connection for their commands; each duplicates it for its blocking reads.
      connection: bull.connection,
      prefix: bull.prefix,
      concurrency: this.plan.concurrency,
      lockDuration: bull.lockDurationMs,
      stalledInterval: bull.stalledIntervalMs,
      // A job may be orphaned by two crashed workers before it is declared failed.
      maxStalledCount: 2,
      autorun: false,
    });
    this.worker.on('error', onError);
    this.worker.on('stalled', (jobId) => this.log.warn({ jobId }, 'took over a stalled job'));
    void this.worker.run();
    return true;
  }

  /**
   * Gives up on this model for the life of the process (its folder failed its checks): the worker
   * serves its other models, and the heartbeat, the log and a metric say why (fix the folder, restart).
   */
  refuse(error: unknown): void {
    const problem = error instanceof Error ? error.message : String(error);
    this.refusal = { name: this.plan.name, problem, at: new Date().toISOString() };
    this.log.error(
      { err: error, dir: this.plan.dir, problem },
      'model refused: its folder failed its checks; serving the others',
    );
  }

  refused(): RefusedModel | undefined {
    return this.refusal;
  }

  /** What the heartbeat lists: only a warm model that takes jobs. */
  served(): ServedModel | undefined {
    const ref = this.host.ref;
    if (!ref || !this.worker || this.closed) return undefined;
    const { serviceMs, saturatedJobsPerSecond } = this.counts;
    return {
      name: this.plan.name,
      model: ref,
      concurrency: this.plan.concurrency,
      ...(serviceMs === undefined ? {} : { serviceMs: Math.round(serviceMs * 100) / 100 }),
      ...(saturatedJobsPerSecond === undefined ? {} : { jobsPerSecond: Math.round(saturatedJobsPerSecond * 100) / 100 }),
      ...(this.cacheSpec() ? { cacheSpec: this.cacheSpec() } : {}),
    };
  }

  /** The answer spec of the model served now (the result cache's key part: gateways read it in heartbeats). */
  cacheSpec(): string | undefined {
    const manifest = this.host.manifest;
    if (!manifest) return undefined;
    if (this.spec?.manifest !== manifest) this.spec = { manifest, value: answerSpec(manifest, this.topK) };
    return this.spec.value;
  }

  announcement(): ModelAnnouncement | undefined {
    const ref = this.host.ref;
    const manifest = this.host.manifest;
    if (!ref || !manifest || !this.served()) return undefined;
    const { input, preprocess } = manifest;
    return {
      kind: 'model-announcement',
      version: 1,
      name: this.plan.name,
      model: ref,
      ...(manifest.description ? { description: manifest.description } : {}),
      input: { ...input, color: preprocess.color, resize: preprocess.resize },
      labels: manifest.labels,
      at: this.host.since ?? new Date().toISOString(),
    };
  }

  metricsSource(): ModelMetricsSource {
    return {
      name: this.plan.name,
      concurrency: this.plan.concurrency,
      ref: () => this.host.ref,
      inFlight: () => this.counts.inFlight,
      refused: () => this.refusal?.problem,
    };
  }

  /** Stops following the registry and taking jobs for good (the drain closes the BullMQ Worker). */
  stopLoading(): void {
    this.closed = true;
    this.stopping.abort();
    this.watcher?.stop();
  }

  async close(): Promise<void> {
    this.stopLoading();
    await this.host.close();
  }
}
