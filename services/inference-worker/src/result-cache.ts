import type { JobCache } from '@conveyor/shared/contract/cache.contract';
import { cacheEntryKey } from '@conveyor/shared/contract/cache.contract';
import type { CompletedResult } from '@conveyor/shared/contract/jobs.contract';
import type { ResultCacheOptions, ResultCacheStore } from '@conveyor/shared/contract/result-cache-store';
import type { Logger } from '@conveyor/shared/logger';
import { answerSpec } from '@conveyor/shared/model/answer-spec';
import type { ModelManifest } from '@conveyor/shared/model/manifest';

/**
 * The worker's side of the shared result cache (docs/result-cache.md): before a model version
 * serves (at start and at every swap) it begins a generation for it (ResultCacheStore.begin); after
 * a job's final commit it clears the job's in-flight record and, with RESULT_CACHE on, stores a
 * completed answer under the key and generation of the version that actually ran.
 */
export class WorkerResultCache {
  /** The generation begun for each manifest served (a version that could not begin one stores nothing). */
  private readonly generations = new WeakMap<ModelManifest, number>();
  private readonly specs = new WeakMap<ModelManifest, string>();

  constructor(
    private readonly store: Pick<ResultCacheStore, 'begin' | 'settle'>,
    /** Undefined with RESULT_CACHE off: records are cleared, nothing is stored. */
    private readonly options: ResultCacheOptions | undefined,
    private readonly topK: number | undefined,
    private readonly log: Logger,
  ) {}

  /** The answer spec of a manifest (what the key depends on besides the version and the image). */
  spec(manifest: ModelManifest): string {
    let spec = this.specs.get(manifest);
    if (spec === undefined) this.specs.set(manifest, (spec = answerSpec(manifest, this.topK)));
    return spec;
  }

  /** `manifest` is about to serve `model`: its answers' generation (a failure only costs its caching). */
  async begin(model: string, manifest: ModelManifest): Promise<void> {
    if (!this.options) return;
    try {
      this.generations.set(manifest, await this.store.begin(model, manifest.version, this.spec(manifest)));
    } catch (error) {
      this.log.warn(
        { err: error, model, version: manifest.version },
        'could not begin a result cache generation: this version stores no answers',
      );
    }
  }

  /** A job's final result is committed: clears its in-flight record; stores a completed answer. */
  async settle(
    model: string,
    jobId: string,
    facts: JobCache,
    completed?: { readonly result: CompletedResult; readonly manifest: ModelManifest },
  ): Promise<void> {
    const generation = completed && this.generations.get(completed.manifest);
    if (!completed || !this.options || generation === undefined) {
      await this.store.settle(model, jobId, facts.inflight);
      return;
    }
    const { result, manifest } = completed;
    await this.store.settle(model, jobId, facts.inflight, {
      entry: cacheEntryKey(model, { version: result.model.version, spec: this.spec(manifest) }, facts.image),
      generation,
      client: facts.client,
      options: this.options,
      answer: {
        kind: 'cached-answer',
        version: 1,
        model: result.model,
        prediction: result.prediction,
        input: result.input,
        worker: result.worker,
        finishedAt: result.finishedAt,
        storedAt: Date.now(),
      },
    });
  }
}
