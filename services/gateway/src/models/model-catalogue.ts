import { inferenceQueue } from '@conveyor/shared/contract/jobs.contract';
import { servedModels, type ModelAnnouncement, type WorkerHeartbeat } from '@conveyor/shared/contract/workers.contract';
import { ModelName } from '@conveyor/shared/contract/common.contract';
import type { FleetStore } from '@conveyor/shared/contract/fleet-store';
import type { ServedAs } from '@conveyor/shared/contract/cache.contract';
import type { Logger } from '@conveyor/shared/logger';

/**
 * Which models exist and which of them can answer now, as the gateway learns it from the workers:
 * a model is known once the configuration names it (DEFAULT_MODEL, MODELS) or a worker has
 * announced it (FleetStore.announcements) and served it within `retireAfterMs`, and ready while a live worker lists it in its heartbeat (which a
 * worker does only once the model is warm).
 *
 * Requests read a view kept in memory, so routing costs no Redis call: a view older than
 * `maxAgeMs` is answered from and refreshed behind the request. A view that says "unknown" or "no
 * live worker" is re-read before a request is refused on its word (a worker may have announced the
 * model a moment ago), at most every `minRefreshMs` so that a flood of requests for a model nobody
 * serves costs a few reads a second, not one per request. A view that says "ready" can be stale by
 * `maxAgeMs`, which only matters for a worker that died: its jobs wait for another, as they would
 * have anyway.
 */
export interface ModelStatus {
  readonly name: ModelName;
  readonly queue: string;
  readonly isDefault: boolean;
  /** Named by the gateway's configuration (so known even before any worker announced it). */
  readonly configured: boolean;
  /** What a worker announced about it last; absent for a configured model never served. */
  readonly announced: ModelAnnouncement | undefined;
  /** Versions served by live workers now. */
  readonly versions: readonly string[];
  /** Live workers serving it (warm). */
  readonly workers: number;
  /** Jobs those workers take at once, together. */
  readonly concurrency: number;
  /** How long one job takes on them (ms, the mean of what their heartbeats report); undefined before any measured one. */
  readonly serviceMs?: number | undefined;
  /**
   * Jobs per second they finish together while saturated (the sum of their heartbeats' measured
   * drain rates); undefined unless every one of them has measured it.
   */
  readonly jobsPerSecond?: number | undefined;
  readonly ready: boolean;
  /**
   * The one (version, answer spec) every live worker serving it announces, which keys the result
   * cache (docs/result-cache.md); undefined while none serves it, while two are live (a rolling swap)
   * or while a worker of an earlier release, which announces no spec, serves it.
   */
  readonly servedAs?: ServedAs | undefined;
  /** Live workers that were configured to serve it and refused it, with their reason. */
  readonly refused: readonly { readonly worker: string; readonly problem: string; readonly at: string }[];
}

export interface CatalogueView {
  readonly models: ReadonlyMap<ModelName, ModelStatus>;
  readonly workers: readonly WorkerHeartbeat[];
  /** When it was read (epoch ms). */
  readonly at: number;
}

export interface CatalogueOptions {
  readonly defaultModel: ModelName;
  readonly configured: readonly ModelName[];
  readonly maxAgeMs?: number;
  readonly minRefreshMs?: number;
  /**
   * A model announced once but served by no live worker for this long leaves the view (it is not
   * listed, and a request for it is a 404): a retired model must not stay "ready: false" forever.
   * Configured models never leave. Unset or 0: never.
   */
  readonly retireAfterMs?: number;
}

export class ModelCatalogue {
  private view: CatalogueView | undefined;
  private reading: Promise<CatalogueView> | undefined;
  private readonly maxAgeMs: number;
  private readonly minRefreshMs: number;

  constructor(
    private readonly fleet: FleetStore,
    private readonly options: CatalogueOptions,
    private readonly log: Logger,
  ) {
    this.maxAgeMs = options.maxAgeMs ?? 1000;
    this.minRefreshMs = options.minRefreshMs ?? 250;
  }

  /** A view read less than `maxAgeMs` ago (0: read now, or join the read under way). */
  async current(maxAgeMs = this.maxAgeMs): Promise<CatalogueView> {
    const view = this.view;
    if (view && Date.now() - view.at < maxAgeMs) return view;
    this.reading ??= this.read().finally(() => (this.reading = undefined));
    return this.reading;
  }

  /** The model a request names, as fresh as it needs to be; undefined for a model nobody knows. */
  async resolve(name: string): Promise<ModelStatus | undefined> {
    // Nothing else can be a model: no Redis read for it, however many arrive.
    if (!ModelName.safeParse(name).success) return undefined;
    const view = this.view;
    const cached = view?.models.get(name);
    if (view && cached?.ready) {
      if (Date.now() - view.at > this.maxAgeMs) {
        this.current().catch((error: unknown) => this.log.debug({ err: error }, 'model catalogue refresh failed'));
      }
      return cached;
    }
    return (await this.current(view ? this.minRefreshMs : 0)).models.get(name);
  }

  /** Every model known so far, the default first (from the last view; the configured ones before any). */
  known(): ModelName[] {
    const names = this.view ? [...this.view.models.keys()] : [this.options.defaultModel, ...this.options.configured];
    return [...new Set(names)];
  }

  private async read(): Promise<CatalogueView> {
    const [workers, announced] = await Promise.all([this.fleet.liveWorkers(), this.fleet.announcements()]);
    const serving = servingOf(workers);
    const refusals = new Map<ModelName, { worker: string; problem: string; at: string }[]>();
    for (const worker of workers) {
      for (const r of worker.refused ?? []) refusals.set(r.name, [...(refusals.get(r.name) ?? []), { worker: worker.id, problem: r.problem, at: r.at }]);
    }
    const { defaultModel, configured, retireAfterMs } = this.options;
    const now = Date.now();
    for (const [name, announcement] of announced) {
      if (!retireAfterMs || serving.has(name) || name === defaultModel || configured.includes(name)) continue;
      // The last heartbeat that served it; a worker of an earlier release wrote no `seenAt`.
      const seen = Date.parse(announcement.seenAt ?? announcement.at);
      if (now - seen >= retireAfterMs) announced.delete(name);
    }
    const names = [
      ...new Set([defaultModel, ...configured, ...[...announced.keys(), ...serving.keys(), ...refusals.keys()].sort()]),
    ];
    const models = new Map<ModelName, ModelStatus>();
    for (const name of names) {
      const live = serving.get(name);
      models.set(name, {
        name,
        queue: inferenceQueue(name),
        isDefault: name === defaultModel,
        configured: name === defaultModel || configured.includes(name),
        announced: announced.get(name),
        versions: live ? [...live.versions].sort() : [],
        workers: live?.workers ?? 0,
        concurrency: live?.concurrency ?? 0,
        serviceMs: live && live.measured > 0 ? live.serviceMs / live.measured : undefined,
        jobsPerSecond: live && live.rated === live.workers ? live.rate : undefined,
        ready: (live?.workers ?? 0) > 0,
        servedAs: live ? servedAs(live.specs) : undefined,
        refused: refusals.get(name) ?? [],
      });
    }
    const view = { models, workers, at: Date.now() };
    this.view = view;
    return view;
  }
}

/** The one (version, spec) of a model's live workers, if they all announce the same. */
function servedAs(specs: ReadonlySet<string>): ServedAs | undefined {
  if (specs.size !== 1) return undefined;
  const [only] = specs;
  if (!only) return undefined;
  const [version, spec] = JSON.parse(only) as [string, string];
  return { version, spec };
}

/** What the live workers serve, per model: versions, slots, measured service and drain, answer specs. */
interface Serving {
  versions: Set<string>;
  workers: number;
  concurrency: number;
  serviceMs: number;
  measured: number;
  rate: number;
  rated: number;
  specs: Set<string>;
}

function servingOf(workers: readonly WorkerHeartbeat[]): Map<ModelName, Serving> {
  const serving = new Map<ModelName, Serving>();
  for (const worker of workers) {
    for (const served of servedModels(worker)) {
      const entry = serving.get(served.name) ?? {
        versions: new Set(),
        workers: 0,
        concurrency: 0,
        serviceMs: 0,
        measured: 0,
        rate: 0,
        rated: 0,
        specs: new Set(),
      };
      if (served.jobsPerSecond !== undefined) {
        entry.rate += served.jobsPerSecond;
        entry.rated++;
      }
      entry.versions.add(served.model.version);
      // A worker without a spec counts as a spec of its own: the cache is then not used.
      entry.specs.add(served.cacheSpec === undefined ? '' : JSON.stringify([served.model.version, served.cacheSpec]));
      entry.workers++;
      entry.concurrency += served.concurrency;
      if (served.serviceMs !== undefined) {
        entry.serviceMs += served.serviceMs;
        entry.measured++;
      }
      serving.set(served.name, entry);
    }
  }
  return serving;
}
