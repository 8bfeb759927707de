import type { KeyObject } from 'node:crypto';
import path from 'node:path';
import { ModelName } from '@conveyor/shared/contract/common.contract';
import type { Logger } from '@conveyor/shared/logger';
import { MlflowAuthError, type MlflowClient } from '@conveyor/shared/mlflow/client';
import { REFERENCE_PROFILE_FILE, ReferenceProfile } from '@conveyor/shared/model/reference-profile';
import { RELEASE_SIGNATURE_TAG, sha256, verifyStatement } from '@conveyor/shared/model/signature';
import { readReferenceProfile } from '@conveyor/shared/validation/model-folder-checks';
import type { TrackedModel } from '../store/store-records.js';

/**
 * The reference profile of the model version that produced an event: from the MLflow registry
 * (the `reference-profile.json` in the version's model folder) or, for a version a local model
 * folder holds, from that folder — the default model's (`modelDir`) and one per model under
 * `modelsDir` (`<modelsDir>/<name>`, as the workers lay them out). Each model version is compared
 * with its own reference, so a promotion or a hot swap starts a fresh comparison, and one model's
 * profile is never used for another's events.
 *
 * With the trainer's public key, a profile from the registry is used only if the version's release
 * signature (shared/src/model/signature.ts: the tag the trainer writes when the gate passes, naming
 * this model and version) lists `reference-profile.json` with the SHA-256 of the bytes downloaded —
 * the same statement the workers check before they serve the version. Otherwise whoever can write
 * to the registry could swap a version's profile and make the monitor call real drift "stable" (or
 * raise false alarms). A refusal is logged and counted (conveyor_monitor_reference_profiles_refused_total).
 * Local folders are trusted as the workers trust them: the operator put them there.
 */
export interface ProfileSources {
  readonly client?: MlflowClient;
  /** The default model's folder (MODEL_DIR). */
  readonly modelDir?: string;
  /** The folder of model folders (MODELS_DIR). */
  readonly modelsDir?: string;
  /** The trainer's public key (MODEL_SIGNING_PUBLIC_KEY_FILE): registry profiles must be in a release signature. */
  readonly signingKey?: KeyObject;
}

/** A registry profile the release signature does not vouch for. */
export class ProfileRefused extends Error {}

export class ProfileSource {
  private readonly cache = new Map<string, { profile: ReferenceProfile | undefined; at: number }>();
  /** Profiles refused since start (the metric reads it). */
  readonly stats = { refused: 0 };

  constructor(
    private readonly sources: ProfileSources,
    private readonly log: Logger,
  ) {}

  async get(tracked: TrackedModel): Promise<ReferenceProfile | undefined> {
    const key = `${tracked.model.name}@${tracked.model.version}`;
    const cached = this.cache.get(key);
    // A missing profile is looked up again after a minute (the version may be registered meanwhile).
    if (cached && (cached.profile || Date.now() - cached.at < 60_000)) return cached.profile;
    const profile = await this.lookup(tracked).catch((error: unknown) => {
      // Checked at start-up; a refusal now means the account changed on the server: say so plainly.
      if (error instanceof MlflowAuthError) this.log.error({ err: error, model: tracked }, error.message);
      else if (error instanceof ProfileRefused) {
        this.stats.refused++;
        this.log.error(
          { model: tracked.model, modelName: tracked.name, problem: error.message },
          'refusing a reference profile the trainer did not sign',
        );
      } else this.log.warn({ err: error, model: tracked }, 'could not load the reference profile');
      return undefined;
    });
    this.cache.set(key, { profile, at: Date.now() });
    if (profile) this.log.info({ model: tracked.model, modelName: tracked.name }, 'reference profile loaded');
    return profile;
  }

  /** The local folders that may hold this version's profile, the default model's first. */
  private folders(tracked: TrackedModel): string[] {
    const dirs = this.sources.modelDir ? [path.resolve(this.sources.modelDir)] : [];
    const { modelsDir } = this.sources;
    if (modelsDir) {
      // Names come from events: only a model name (no separators, never "." or "..") becomes a path.
      for (const name of new Set([tracked.name, tracked.model.name])) {
        if (ModelName.safeParse(name).success) dirs.push(path.resolve(modelsDir, name));
      }
    }
    return [...new Set(dirs)];
  }

  private async lookup(tracked: TrackedModel): Promise<ReferenceProfile | undefined> {
    for (const dir of this.folders(tracked)) {
      const local = await readReferenceProfile(dir);
      if (local && local.model.name === tracked.model.name && local.model.version === tracked.model.version) return local;
    }
    if (this.sources.client && /^\d+$/.test(tracked.model.version)) {
      const { client, signingKey } = this.sources;
      const { name, version } = tracked.model;
      const signed = signingKey ? await this.signedDigest(client, signingKey, name, version) : undefined;
      const uri = await client.getDownloadUri(name, version);
      const bytes = await client.downloadArtifact(`${uri.replace(/\/+$/, '')}/${REFERENCE_PROFILE_FILE}`);
      if (signed !== undefined && sha256(bytes) !== signed)
        throw new ProfileRefused(`${REFERENCE_PROFILE_FILE} differs from the one the release signature lists`);
      return ReferenceProfile.parse(JSON.parse(bytes.toString('utf8')));
    }
    return undefined;
  }

  /** The profile's SHA-256 in the version's release signature; refused if there is none or it does not verify. */
  private async signedDigest(client: MlflowClient, key: KeyObject, name: string, version: string): Promise<string> {
    const tags = (await client.getModelVersion(name, version)).tags;
    const statement = tags.find((t) => t.key === RELEASE_SIGNATURE_TAG)?.value;
    if (statement === undefined)
      throw new ProfileRefused(`${name} v${version} has no release signature (the trainer never released it)`);
    const verdict = verifyStatement(statement, key, { kind: 'release', name, version });
    if (verdict.problem !== undefined) throw new ProfileRefused(verdict.problem);
    const digest = verdict.files[REFERENCE_PROFILE_FILE];
    if (digest === undefined) throw new ProfileRefused(`${REFERENCE_PROFILE_FILE} is not covered by the release signature`);
    return digest;
  }
}
