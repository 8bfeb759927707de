import type { ModelManifest } from '@conveyor/shared/model/manifest';
import type { Logger } from '@conveyor/shared/logger';
import { MlflowAuthError } from '@conveyor/shared/mlflow/client';
import type { LoadOptions } from '@conveyor/shared/model/runtime';
import type { ModelHost } from './model-host.js';
import type { RegistrySource, ResolvedVersion } from './registry-source.js';
import { loadWarmModel } from './warm-up.js';

/**
 * Follows a registry alias: every `intervalMs` it asks which version the alias points at and, when
 * that changes (a promotion or a rollback), downloads, verifies, checks, loads and warms up the new version
 * before swapping it in. Any failure leaves the current model serving and is retried next time.
 * A refusal of the worker's credentials is not a failure to retry: at start-up it ends `start()`
 * (starting from the cached version would hide the misconfiguration: the worker would silently
 * never follow a promotion), and while serving it is logged once as an error, not at every poll.
 */
export class ModelWatcher {
  private timer: NodeJS.Timeout | undefined;
  private current: ResolvedVersion | undefined;
  private busy = false;
  private refusedWith: string | undefined;

  constructor(
    private readonly source: RegistrySource,
    private readonly host: ModelHost,
    private readonly options: LoadOptions & { intervalMs: number },
    private readonly log: Logger,
    /** Called with a version's manifest before it serves (the result cache's generation). */
    private readonly beforeServing: (manifest: ModelManifest) => Promise<void> = () => Promise.resolve(),
  ) {}

  /** Loads the first model: the alias's version, or the last cached one if the registry is down. */
  async start(signal?: AbortSignal): Promise<void> {
    for (let attempt = 1; !this.host.loaded; attempt++) {
      try {
        await this.load(await this.source.resolve());
      } catch (error) {
        if (error instanceof MlflowAuthError) throw error;
        const cached = await this.source.lastKnown();
        if (cached) {
          this.log.warn({ err: error, cached }, 'registry unavailable; starting from the last cached version');
          await this.load(cached);
          break;
        }
        this.log.warn({ err: error, attempt }, 'no model yet; retrying');
        if (signal?.aborted) throw error;
        await new Promise((r) => setTimeout(r, Math.min(this.options.intervalMs, 1000 * attempt)));
      }
    }
    this.timer = setInterval(() => void this.poll(), this.options.intervalMs);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }

  /** One check (also called by the timer). */
  async poll(): Promise<void> {
    if (this.busy) return;
    this.busy = true;
    try {
      const target = await this.source.resolve();
      this.refusedWith = undefined;
      if (target.version !== this.current?.version) await this.load(target);
    } catch (error) {
      if (!(error instanceof MlflowAuthError)) {
        this.log.warn({ err: error }, 'model check failed; still serving the current model');
      } else if (this.refusedWith !== error.message) {
        // Polling goes on (the account may be fixed on the server), quietly until the answer changes.
        this.refusedWith = error.message;
        this.log.error(
          { err: error, model: this.current },
          'MLflow refused the credentials; still serving the current model, not following the alias until they are accepted',
        );
      }
    } finally {
      this.busy = false;
    }
  }

  private async load(version: ResolvedVersion): Promise<void> {
    const dir = await this.source.fetch(version);
    const { model, warmUpMs } = await loadWarmModel(dir, this.options);
    this.log.info({ model: version, warmUpMs }, 'model warmed up');
    await this.source.remember(version);
    this.current = version;
    await this.beforeServing(model.manifest);
    this.host.replace(model, { name: version.name, version: version.version });
    this.log.info({ model: version, build: model.manifest.version }, 'serving model version');
  }
}
