import path from 'node:path';
import { ModelName } from '@conveyor/shared/contract/queue.contract';
import type { Logger } from '@conveyor/shared/logger';
import { MlflowAuthError, type MlflowClient } from '@conveyor/shared/mlflow/client';
import { REFERENCE_PROFILE_FILE, ReferenceProfile } from '@conveyor/shared/model/reference-profile';
import { readReferenceProfile } from '@conveyor/shared/validation/model-folder-checks';
import type { TrackedModel } from '../store/store-records.js';

/**
 * The reference profile of the model version that produced an event: from the MLflow registry
 * (the `reference-profile.json` in the version's model folder) or, for a version a local model
 * folder holds, from that folder — the default model's (`modelDir`) and one per model under
 * `modelsDir` (`<modelsDir>/<name>`, as the workers lay them out). Each model version is compared
 * with its own reference, so a promotion or a hot swap starts a fresh comparison, and one model's
 * profile is never used for another's events.
 */
export interface ProfileSources {
  readonly client?: MlflowClient;
  /** The default model's folder (MODEL_DIR). */
  readonly modelDir?: string;
  /** The folder of model folders (MODELS_DIR). */
  readonly modelsDir?: string;
}

export class ProfileSource {
  private readonly cache = new Map<string, { profile: ReferenceProfile | undefined; at: number }>();

  constructor(
    private readonly sources: ProfileSources,
    private readonly log: Logger,
  ) {}

  async get(model: TrackedModel): Promise<ReferenceProfile | undefined> {
    const key = `${model.model.name}@${model.model.version}`;
    const cached = this.cache.get(key);
    // A missing profile is looked up again after a minute (the version may be registered meanwhile).
    if (cached && (cached.profile || Date.now() - cached.at < 60_000)) return cached.profile;
    const profile = await this.lookup(model).catch((error: unknown) => {
      // Checked at start-up; a refusal now means the account changed on the server: say so plainly.
      if (error instanceof MlflowAuthError) this.log.error({ err: error, model }, error.message);
      else this.log.warn({ err: error, model }, 'could not load the reference profile');
      return undefined;
    });
    this.cache.set(key, { profile, at: Date.now() });
    if (profile) this.log.info({ model: model.model, modelName: model.name }, 'reference profile loaded');
    return profile;
  }

  /** The local folders that may hold this version's profile, the default model's first. */
  private folders(model: TrackedModel): string[] {
    const dirs = this.sources.modelDir ? [path.resolve(this.sources.modelDir)] : [];
    const { modelsDir } = this.sources;
    if (modelsDir) {
      // Names come from events: only a model name (no separators, never "." or "..") becomes a path.
      for (const name of new Set([model.name, model.model.name])) {
        if (ModelName.safeParse(name).success) dirs.push(path.resolve(modelsDir, name));
      }
    }
    return [...new Set(dirs)];
  }

  private async lookup(model: TrackedModel): Promise<ReferenceProfile | undefined> {
    for (const dir of this.folders(model)) {
      const local = await readReferenceProfile(dir);
      if (local && local.model.name === model.model.name && local.model.version === model.model.version) return local;
    }
    if (this.sources.client && /^\d+$/.test(model.model.version)) {
      const uri = await this.sources.client.getDownloadUri(model.model.name, model.model.version);
      const bytes = await this.sources.client.downloadArtifact(`${uri.replace(/\/+$/, '')}/${REFERENCE_PROFILE_FILE}`);
      return ReferenceProfile.parse(JSON.parse(bytes.toString('utf8')));
    }
    return undefined;
  }
}
