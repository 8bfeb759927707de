import { createHash } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from '@conveyor/shared/logger';
import { readManifest } from '@conveyor/shared/model/runtime';
import { parseModelUri, type MlflowClient } from '@conveyor/shared/mlflow/client';

/**
 * Model folders from the MLflow registry: `models:/<name>@<alias>` is resolved to a version, whose
 * artifacts are downloaded through the tracking server's proxy (sizes checked against the listing),
 * verified (the ONNX file's sha256 against its manifest) and cached under
 * `<cacheDir>/<name>/<version>`. A cached version is verified again and reused without a download.
 */
export interface ResolvedVersion {
  readonly name: string;
  readonly version: string;
}

export class RegistrySource {
  readonly name: string;
  private readonly alias: string | undefined;
  private readonly pinned: string | undefined;

  constructor(
    private readonly client: MlflowClient,
    uri: string,
    private readonly cacheDir: string,
    private readonly log: Logger,
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
    if (await this.verified(dir)) return dir;
    const uri = await this.client.getDownloadUri(version.name, version.version);
    const started = Date.now();
    await this.client.downloadDirectory(uri, dir);
    if (!(await this.verified(dir))) throw new Error(`${version.name} v${version.version}: downloaded files fail verification`);
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
      return createHash('sha256').update(bytes).digest('hex') === manifest.sha256;
    } catch {
      return false;
    }
  }
}
