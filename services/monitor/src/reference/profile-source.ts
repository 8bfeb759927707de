import path from 'node:path';
import type { ModelRef } from '@conveyor/shared/contract/queue.contract';
import type { Logger } from '@conveyor/shared/logger';
import { MlflowAuthError, type MlflowClient } from '@conveyor/shared/mlflow/client';
import { REFERENCE_PROFILE_FILE, ReferenceProfile } from '@conveyor/shared/model/reference-profile';
import { readReferenceProfile } from '@conveyor/shared/validation/model-folder-checks';

/**
 * The reference profile of the model version that produced an event: from the MLflow registry
 * (the `reference-profile.json` in the version's model folder) or, for the local model folder's own
 * version, from that folder. Each model version is compared with its own training data, so a
 * promotion starts a fresh comparison.
 */
export class ProfileSource {
  private readonly cache = new Map<string, { profile: ReferenceProfile | undefined; at: number }>();

  constructor(
    private readonly sources: { client?: MlflowClient; localDir?: string },
    private readonly log: Logger,
  ) {}

  async get(model: ModelRef): Promise<ReferenceProfile | undefined> {
    const key = `${model.name}@${model.version}`;
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
    if (profile) this.log.info({ model }, 'reference profile loaded');
    return profile;
  }

  private async lookup(model: ModelRef): Promise<ReferenceProfile | undefined> {
    if (this.sources.localDir) {
      const local = await readReferenceProfile(path.resolve(this.sources.localDir));
      if (local && local.model.name === model.name && local.model.version === model.version) return local;
    }
    if (this.sources.client && /^\d+$/.test(model.version)) {
      const uri = await this.sources.client.getDownloadUri(model.name, model.version);
      const bytes = await this.sources.client.downloadArtifact(`${uri.replace(/\/+$/, '')}/${REFERENCE_PROFILE_FILE}`);
      return ReferenceProfile.parse(JSON.parse(bytes.toString('utf8')));
    }
    return undefined;
  }
}
