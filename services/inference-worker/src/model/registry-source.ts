import { createHash, type KeyObject } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from '@conveyor/shared/logger';
import { MANIFEST_FILE } from '@conveyor/shared/model/manifest';
import { REFERENCE_PROFILE_FILE } from '@conveyor/shared/model/reference-profile';
import { readManifest } from '@conveyor/shared/model/runtime';
import { signatureProblem } from '@conveyor/shared/model/signature';
import { parseModelUri, type MlflowClient } from '@conveyor/shared/mlflow/client';

/**
 * Model folders from the MLflow registry: `models:/<name>@<alias>` is resolved to a version, whose
 * artifacts are downloaded through the tracking server's proxy (sizes checked against the listing),
 * verified (the ONNX file's sha256 against its manifest, and, with a signing key configured, the
 * trainer's signature over every file: the registry alone cannot vouch for what it serves) and cached
 * under `<cacheDir>/<name>/<version>`. A cached version is verified again and reused without a download.
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
    if (await this.verified(dir)) return dir;
    const uri = await this.client.getDownloadUri(version.name, version.version);
    const started = Date.now();
    await this.client.downloadDirectory(uri, dir);
    if (!(await this.verified(dir))) {
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
      return (await this.verified(path.join(this.cacheDir, last.name, last.version))) ? last : undefined;
    } catch {
      return undefined;
    }
  }

  async remember(version: ResolvedVersion): Promise<void> {
    await mkdir(path.join(this.cacheDir, this.name), { recursive: true });
    await writeFile(path.join(this.cacheDir, this.name, 'last.json'), JSON.stringify(version));
  }

  private async verified(dir: string): Promise<boolean> {
    try {
      const manifest = await readManifest(dir);
      const bytes = await readFile(path.join(dir, manifest.file));
      if (createHash('sha256').update(bytes).digest('hex') !== manifest.sha256) return false;
      if (!this.signingKey) return true;
      const problem = await signatureProblem(dir, this.signingKey, [MANIFEST_FILE, manifest.file, REFERENCE_PROFILE_FILE]);
      if (problem) this.log.error({ dir, problem }, 'refusing a model version the trainer did not sign');
      return problem === undefined;
    } catch {
      return false;
    }
  }
}
