import path from 'node:path';
import type { KeyObject } from 'node:crypto';
import type { ModelManifest } from '@conveyor/shared/model/manifest';
import type { RedisKeys } from '@conveyor/shared/contract/redis-keys';
import type { ShadowEvent } from '@conveyor/shared/contract/shadow.contract';
import type { Logger } from '@conveyor/shared/logger';
import type { MlflowClient } from '@conveyor/shared/mlflow/client';
import type { Redis } from '@conveyor/shared/redis';
import type { Registry } from 'prom-client';
import type { WorkerConfig } from '../config.js';
import { RegistrySource } from '../model/registry-source.js';
import { loadWarmModel } from '../model/warm-up.js';
import { CpuBudget } from './cpu-budget.js';
import type { ShadowPlan } from './shadow-config.js';
import { ShadowLane, type ShadowHook, type ShadowInput, type ShadowModel } from './shadow-lane.js';
import { ShadowMetrics } from './shadow-metrics.js';

/**
 * The worker's shadow lanes, one per model SHADOW_VERSION names. A lane's model is loaded once its
 * production model is warm, in the background: production takes jobs meanwhile, and offers are
 * ignored until the shadow is ready. A shadow that cannot be served (missing, failing its checks or
 * signature, or answering in other labels than production) is refused with a clear log line and
 * production goes on without it: the shadow is an observer and must never cost production a job.
 */
export interface ShadowRegistry {
  readonly client: MlflowClient;
  readonly signingKey: KeyObject | undefined;
}

/** How much run time a lane may spend at once after a quiet spell, in seconds of its share. */
const BURST_SECONDS = 2;

export class ShadowLanes {
  private readonly lanes = new Map<string, ShadowLane>();
  private readonly loading = new Map<string, Promise<void>>();
  private readonly metrics: ShadowMetrics | undefined;
  private closed = false;

  constructor(
    private readonly config: WorkerConfig,
    private readonly registry: ShadowRegistry | undefined,
    private readonly redis: Redis,
    private readonly keys: Pick<RedisKeys, 'shadowStream'>,
    metricsRegistry: Registry,
    private readonly log: Logger,
  ) {
    this.metrics = config.shadows.length > 0 ? new ShadowMetrics(metricsRegistry) : undefined;
  }

  /**
   * The hook for `name`'s processor, or undefined when it has no shadow. Starts loading the shadow
   * (production's manifest: the labels the shadow must answer in).
   */
  hookFor(name: string, production: ModelManifest | undefined): ShadowHook | undefined {
    const plan = this.config.shadows.find((p) => p.model === name);
    if (!plan || !production || this.closed) return undefined;
    const log = this.log.child({ module: 'shadow', modelName: name });
    const load = this.load(plan, production, log).then(
      (lane) => {
        if (this.closed) return lane.close();
        this.lanes.set(name, lane);
        log.info(
          { shadow: lane.ref, sampleRate: this.config.SHADOW_SAMPLE_RATE, cpuShare: this.config.SHADOW_CPU_SHARE },
          'shadow ready',
        );
        return undefined;
      },
      (error: unknown) =>
        log.error(
          { err: error, shadow: plan.source },
          `shadow refused: ${error instanceof Error ? error.message : String(error)}; ${name} is served without a shadow`,
        ),
    );
    this.loading.set(name, load);
    return { offer: (input: ShadowInput) => this.lanes.get(name)?.offer(input) };
  }

  /** Settles once every shadow started has loaded or been refused. */
  async settled(): Promise<void> {
    await Promise.all(this.loading.values());
  }

  lane(name: string): ShadowLane | undefined {
    return this.lanes.get(name);
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.settled();
    await Promise.all([...this.lanes.values()].map((l) => l.close()));
    this.lanes.clear();
  }

  private async load(plan: ShadowPlan, production: ModelManifest, log: Logger): Promise<ShadowLane> {
    const options = { threads: this.config.ORT_THREADS, offThread: this.config.INFERENCE_THREAD };
    let shadow: ShadowModel;
    if (plan.source.kind === 'registry') {
      if (!this.registry) throw new Error('a registry shadow needs MLFLOW_TRACKING_URI');
      // The same download, checksum and signature checks as any served registry version.
      const source = new RegistrySource(
        this.registry.client,
        plan.source.uri,
        path.resolve(this.config.MODEL_CACHE_DIR),
        log,
        this.registry.signingKey,
      );
      const version = await source.resolve();
      const { model } = await loadWarmModel(await source.fetch(version), options);
      shadow = { model, ref: refOf(model.manifest), registry: version };
    } else {
      const { model } = await loadWarmModel(plan.source.dir, options);
      shadow = { model, ref: refOf(model.manifest) };
    }
    const mismatch = labelMismatch(production, shadow.model.manifest);
    if (mismatch) {
      await shadow.model.close();
      throw new Error(`the shadow ${shadow.ref.name} ${shadow.ref.version} ${mismatch}`);
    }
    const share = this.config.SHADOW_CPU_SHARE;
    return new ShadowLane(shadow, {
      name: plan.model,
      sampleRate: this.config.SHADOW_SAMPLE_RATE,
      backlog: this.config.SHADOW_BACKLOG,
      budget: new CpuBudget(share, share * BURST_SECONDS * 1000),
      counts: this.metrics!.forModel(plan.model),
      publish: (event) => this.publish(event),
      preprocess: {
        maxPixels: this.config.MAX_IMAGE_PIXELS,
        maxSide: this.config.MAX_IMAGE_SIDE,
        maxAspectRatio: this.config.MAX_ASPECT_RATIO,
        timeoutMs: this.config.PREPROCESS_TIMEOUT_MS,
      },
      topK: this.config.TOP_K,
      log,
    });
  }

  private publish(event: ShadowEvent): Promise<unknown> {
    return this.redis.xadd(
      this.keys.shadowStream,
      'MAXLEN',
      '~',
      this.config.SHADOW_STREAM_MAXLEN,
      '*',
      'event',
      JSON.stringify(event),
    );
  }
}

const refOf = (m: ModelManifest) => ({ name: m.name, version: m.version });

/** Why two models' answers cannot be compared label by label, or undefined when they can. */
function labelMismatch(production: ModelManifest, shadow: ModelManifest): string | undefined {
  const a = new Set(production.labels);
  const b = new Set(shadow.labels);
  if (a.size === b.size && [...a].every((l) => b.has(l))) return undefined;
  return `answers in other labels than production (${shadow.labels.length} labels, ${[...b].filter((l) => !a.has(l)).length} not production's): its answers cannot be compared`;
}
