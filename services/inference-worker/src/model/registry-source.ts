import { createHash, type KeyObject } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from '@conveyor/shared/logger';
import { MANIFEST_FILE } from '@conveyor/shared/model/manifest';
import { REFERENCE_PROFILE_FILE } from '@conveyor/shared/model/reference-profile';
import { readManifest } from '@conveyor/shared/model/runtime';
import { RELEASE_SIGNATURE_FILE, RELEASE_SIGNATURE_TAG, signatureProblem } from '@conveyor/shared/model/signature';
import { parseModelUri, type MlflowClient } from '@conveyor/shared/mlflow/client';

/**
 * Model folders from the MLflow registry: `models:/<name>@<alias>` is resolved to a version, whose
 * artifacts are downloaded through the tracking server's proxy (sizes checked against the listing),
 * verified (the ONNX file's sha256 against its manifest, and, with a signing key configured, the
 * trainer's release signature: the registry alone cannot vouch for what it serves) and cached under
 * `<cacheDir>/<name>/<version>`. A cached version is verified again and reused without a download.
 *
 * The release signature (shared/src/model/signature.ts) is the version's `conveyor.release_signature`
 * tag, which the trainer writes only when the promotion gate passes; it names the registered model
 * and version and lists every file. It is kept in the cached folder as `release-signature.json`.
 * A version is refused when it has none, when it names another model or version (a folder
 * registered again: an old or rejected build replayed), or when the folder holds a file it does not
 * list or a file that differs.
 */
export interface ResolvedVersion {
  readonly name: string;
  readonly version: string;
}

export class RegistrySource {
  readonly name: string;
  private readonly alias: string | undefined;
  private readonly pinned: string | undefined;
  private readonly refused = new Set<string>();

  constructor(
    private readonly client: MlflowClient,
    uri: string,
    private readonly cacheDir: string,
    private readonly log: Logger,
    /** The trainer's public key: versions it did not sign are refused. */
    private readonly signingKey?: KeyObject,
  ) {
    const parsed = parseModelUri(uri);
    this.name = parsed.name;
    this.alias = parsed.alias;
    this.pinned = parsed.version;
  }

  /** The version the URI points at right now. */
  async resolve(): Promise<ResolvedVersion> {
    if (this.pinned) return { name: this.name, version: this.pinned };
    const version = await this.client.getVersionByAlias(this.name, this.alias!);
    if (!version) throw new Error(`models:/${this.name}@${this.alias!} does not exist (yet)`);
    return { name: this.name, version: version.version };
  }

  /** The local folder of a version, downloading it if it is not cached (or fails verification). */
  async fetch(version: ResolvedVersion): Promise<string> {
    const dir = path.join(this.cacheDir, version.name, version.version);
    // A version that failed verification once is not downloaded again at every poll.
    if (this.refused.has(dir)) throw new Error(`${version.name} v${version.version} was refused: it fails verification`);
    if (await this.verified(dir, version, false)) return dir;
    const uri = await this.client.getDownloadUri(version.name, version.version);
    const started = Date.now();
    await this.client.downloadDirectory(uri, dir);
    if (this.signingKey) {
      // The release travels as a tag (one per version; artifacts may be shared between versions).
      const tags = (await this.client.getModelVersion(version.name, version.version)).tags;
      const release = tags.find((t) => t.key === RELEASE_SIGNATURE_TAG)?.value;
      if (release !== undefined) await writeFile(path.join(dir, RELEASE_SIGNATURE_FILE), release);
    }
    if (!(await this.verified(dir, version, true))) {
      this.refused.add(dir);
      throw new Error(`${version.name} v${version.version}: downloaded files fail verification`);
    }
    this.log.info({ model: version, dir, ms: Date.now() - started }, 'model version downloaded');
    await this.remember(version);
    return dir;
  }

  /** The last version fetched, to start from when the registry is unreachable. */
  async lastKnown(): Promise<ResolvedVersion | undefined> {
    try {
      const last = JSON.parse(await readFile(path.join(this.cacheDir, this.name, 'last.json'), 'utf8')) as ResolvedVersion;
      return (await this.verified(path.join(this.cacheDir, last.name, last.version), last, true)) ? last : undefined;
    } catch {
      return undefined;
    }
  }

  async remember(version: ResolvedVersion): Promise<void> {
    await mkdir(path.join(this.cacheDir, this.name), { recursive: true });
    await writeFile(path.join(this.cacheDir, this.name, 'last.json'), JSON.stringify(version));
  }

  /** `report`: log a refusal (not for a cache check before a download, which usually finds nothing). */
  private async verified(dir: string, version: ResolvedVersion, report: boolean): Promise<boolean> {
    try {
      const manifest = await readManifest(dir);
      const bytes = await readFile(path.join(dir, manifest.file));
      if (createHash('sha256').update(bytes).digest('hex') !== manifest.sha256) return false;
      if (!this.signingKey) return true;
      const problem = await signatureProblem(
        dir,
        this.signingKey,
        { kind: 'release', name: version.name, version: version.version },
        [MANIFEST_FILE, manifest.file, REFERENCE_PROFILE_FILE],
      );
      if (problem && report)
        this.log.error({ dir, model: version, problem }, 'refusing a model version the trainer did not sign');
      return problem === undefined;
    } catch {
      return false;
    }
  }
}
