import type { ModelManifest } from '@conveyor/shared/model/manifest';
import type { RedisKeys } from '@conveyor/shared/contract/redis-keys';
import type { ShadowEvent } from '@conveyor/shared/contract/shadow.contract';
import type { Logger } from '@conveyor/shared/logger';
import type { LoadedModel } from '@conveyor/shared/model/runtime';
import type { Redis } from '@conveyor/shared/redis';
import type { Registry } from 'prom-client';
import { CpuBudget } from './cpu-budget.js';
import type { ShadowPlan, ShadowSource } from './shadow-config.js';
import { ShadowLane, type ShadowHook, type ShadowInput, type ShadowModel } from './shadow-lane.js';
import { ShadowMetrics } from './shadow-metrics.js';

/**
 * The worker's shadow lanes, one per model SHADOW_VERSION names. A lane's model is loaded once its
 * production model is warm, in the background: production takes jobs meanwhile, and offers are
 * ignored until the shadow is ready. A shadow that cannot be served (missing, failing its checks or
 * signature, or answering in other labels than production) is refused with a clear log line and
 * production goes on without it: the shadow is an observer and must never cost production a job.
 */
/** What the lanes need of the worker's configuration (WorkerConfig has it all). */
export interface ShadowSettings {
  readonly shadows: readonly ShadowPlan[];
  readonly SHADOW_SAMPLE_RATE: number;
  readonly SHADOW_CPU_SHARE: number;
  readonly SHADOW_BACKLOG: number;
  readonly SHADOW_STREAM_MAXLEN: number;
  readonly MAX_IMAGE_PIXELS: number;
  readonly MAX_IMAGE_SIDE: number;
  readonly MAX_ASPECT_RATIO: number;
  readonly PREPROCESS_TIMEOUT_MS: number;
  readonly TOP_K?: number | undefined;
}

/**
 * Loads a shadow's model warm, with the checks of any served model (model/shadow-loader.ts: a
 * folder, or a registry version downloaded, verified and cached like those the worker serves).
 */
export type ShadowLoader = (
  source: ShadowSource,
  log: Logger,
) => Promise<{ readonly model: LoadedModel; readonly registry?: { readonly name: string; readonly version: string } }>;

/** How much run time a lane may spend at once after a quiet spell, in seconds of its share. */
const BURST_SECONDS = 2;

export class ShadowLanes {
  private readonly lanes = new Map<string, ShadowLane>();
  private readonly loading = new Map<string, Promise<void>>();
  private readonly metrics: ShadowMetrics | undefined;
  private closed = false;

  constructor(
    private readonly config: ShadowSettings,
    private readonly loadModel: ShadowLoader,
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
    const loaded = await this.loadModel(plan.source, log);
    const shadow: ShadowModel = {
      model: loaded.model,
      ref: refOf(loaded.model.manifest),
      ...(loaded.registry ? { registry: loaded.registry } : {}),
    };
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
