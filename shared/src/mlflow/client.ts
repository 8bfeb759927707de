import { mkdir, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';

/**
 * A small typed client for MLflow's REST API (tracking server 3.x): experiments, runs, batched
 * logging, artifacts through the server's artifact proxy, registered models, model versions and
 * aliases. The npm `mlflow` package covers runs only and `mlflow-js-client` is not published.
 * Every response is validated, so a server that answers something unexpected fails loudly here.
 */
export class MlflowError extends Error {
  override readonly name: string = 'MlflowError';
  constructor(
    message: string,
    readonly status: number,
    readonly errorCode: string | undefined,
  ) {
    super(message);
  }
}

/**
 * MLflow refused the request's credentials (401: none, or a wrong user or password) or the account's
 * permission (403: e.g. a READ-only account moving an alias). Permanent: asking again with the same
 * configuration gets the same answer, so callers stop and say so instead of retrying.
 */
export class MlflowAuthError extends MlflowError {
  override readonly name = 'MlflowAuthError';
}

/** HTTP Basic credentials for a server running MLflow's basic-auth app (`mlflow server --app-name basic-auth`). */
export interface MlflowCredentials {
  readonly username: string;
  readonly password: string;
}

const Tag = z.object({ key: z.string(), value: z.string().optional().default('') });

export const RunInfo = z.object({
  run_id: z.string(),
  experiment_id: z.string(),
  run_name: z.string().optional(),
  status: z.string(),
  artifact_uri: z.string(),
  start_time: z.coerce.number().optional(),
  end_time: z.coerce.number().optional(),
  lifecycle_stage: z.string().optional(),
});
export type RunInfo = z.infer<typeof RunInfo>;

const Metric = z.object({
  key: z.string(),
  value: z.number(),
  timestamp: z.coerce.number().optional(),
  step: z.coerce.number().optional(),
});
const Param = z.object({ key: z.string(), value: z.string() });

export const Run = z.object({
  info: RunInfo,
  data: z
    .object({
      metrics: z.array(Metric).default([]),
      params: z.array(Param).default([]),
      tags: z.array(Tag).default([]),
    })
    .default({ metrics: [], params: [], tags: [] }),
});
export type Run = z.infer<typeof Run>;

export const ModelVersion = z.object({
  name: z.string(),
  version: z.string(),
  source: z.string().optional(),
  run_id: z.string().optional(),
  status: z.string().optional(),
  current_stage: z.string().optional(),
  description: z.string().optional(),
  aliases: z.array(z.string()).default([]),
  tags: z.array(Tag).default([]),
  creation_timestamp: z.coerce.number().optional(),
});
export type ModelVersion = z.infer<typeof ModelVersion>;

const RegisteredModel = z.object({
  name: z.string(),
  aliases: z.array(z.object({ alias: z.string(), version: z.string() })).default([]),
  tags: z.array(Tag).default([]),
});
export type RegisteredModel = z.infer<typeof RegisteredModel>;

const FileInfo = z.object({ path: z.string(), is_dir: z.boolean().default(false), file_size: z.coerce.number().optional() });
export type ArtifactFile = z.infer<typeof FileInfo>;

export interface MetricPoint {
  key: string;
  value: number;
  step?: number;
  timestamp?: number;
}

/** `mlflow-artifacts:/<exp>/<run>/artifacts/model` → `<exp>/<run>/artifacts/model` (the proxy's path). */
export function artifactProxyPath(uri: string): string {
  if (!uri.startsWith('mlflow-artifacts:')) {
    throw new MlflowError(
      `artifact URI ${uri} is not served by the tracking server (start it with --serve-artifacts)`,
      0,
      undefined,
    );
  }
  // mlflow-artifacts:/<path> or mlflow-artifacts://<host>/<path>
  let rest = uri.slice('mlflow-artifacts:'.length);
  if (rest.startsWith('//')) rest = rest.slice(rest.indexOf('/', 2));
  return rest.replace(/^\/+/, '').replace(/\/+$/, '');
}

/** `models:/<name>@<alias>` or `models:/<name>/<version>`. */
export function parseModelUri(uri: string): { name: string; alias?: string; version?: string } {
  const match = /^models:\/([^/@]+)(?:@([A-Za-z0-9_-]+)|\/(\d+))$/.exec(uri);
  if (!match) throw new Error(`not a model URI: ${uri} (expected models:/<name>@<alias> or models:/<name>/<version>)`);
  return { name: match[1]!, ...(match[2] ? { alias: match[2] } : {}), ...(match[3] ? { version: match[3] } : {}) };
}

export class MlflowClient {
  private readonly base: string;
  private readonly authorization: string | undefined;

  constructor(
    trackingUri: string,
    private readonly options: { timeoutMs?: number; credentials?: MlflowCredentials | undefined } = {},
  ) {
    this.base = trackingUri.replace(/\/+$/, '');
    const credentials = options.credentials;
    this.authorization = credentials
      ? `Basic ${Buffer.from(`${credentials.username}:${credentials.password}`, 'utf8').toString('base64')}`
      : undefined;
  }

  get trackingUri(): string {
    return this.base;
  }

  /**
   * One cheap read that needs an account on a server with authentication: throws MlflowAuthError
   * if the server refuses the credentials, MlflowError if it cannot be reached. For start-up checks.
   */
  async checkAccess(): Promise<void> {
    await this.get('experiments/search', { max_results: '1' });
  }

  // ── experiments ────────────────────────────────────────────────────────────────────────────

  async getExperimentByName(name: string): Promise<{ experimentId: string } | undefined> {
    const body = await this.get('experiments/get-by-name', { experiment_name: name }, [404]);
    if (!body) return undefined;
    return {
      experimentId: z.object({ experiment: z.object({ experiment_id: z.string() }) }).parse(body).experiment.experiment_id,
    };
  }

  async getOrCreateExperiment(name: string): Promise<string> {
    const existing = await this.getExperimentByName(name);
    if (existing) return existing.experimentId;
    try {
      const body = await this.post('experiments/create', { name });
      return z.object({ experiment_id: z.string() }).parse(body).experiment_id;
    } catch (error) {
      // Another process created it in between.
      if (error instanceof MlflowError && error.errorCode === 'RESOURCE_ALREADY_EXISTS')
        return (await this.getExperimentByName(name))!.experimentId;
      throw error;
    }
  }

  // ── runs ───────────────────────────────────────────────────────────────────────────────────

  async createRun(
    experimentId: string,
    runName: string,
    tags: Record<string, string> = {},
    startTime = Date.now(),
  ): Promise<RunInfo> {
    const body = await this.post('runs/create', {
      experiment_id: experimentId,
      run_name: runName,
      start_time: startTime,
      tags: Object.entries(tags).map(([key, value]) => ({ key, value })),
    });
    return z.object({ run: Run }).parse(body).run.info;
  }

  /** Logs params, metrics and tags, split into calls within the server's per-request limits. */
  async logBatch(
    runId: string,
    batch: { params?: Record<string, string | number | boolean>; metrics?: MetricPoint[]; tags?: Record<string, string> },
  ): Promise<void> {
    const now = Date.now();
    const params = Object.entries(batch.params ?? {}).map(([key, value]) => ({ key, value: String(value).slice(0, 6000) }));
    const metrics = (batch.metrics ?? []).map((m) => ({
      key: m.key,
      value: m.value,
      step: m.step ?? 0,
      timestamp: m.timestamp ?? now,
    }));
    const tags = Object.entries(batch.tags ?? {}).map(([key, value]) => ({ key, value }));
    for (let i = 0; i < params.length; i += 100)
      await this.post('runs/log-batch', { run_id: runId, params: params.slice(i, i + 100) });
    for (let i = 0; i < metrics.length; i += 1000)
      await this.post('runs/log-batch', { run_id: runId, metrics: metrics.slice(i, i + 1000) });
    for (let i = 0; i < tags.length; i += 100) await this.post('runs/log-batch', { run_id: runId, tags: tags.slice(i, i + 100) });
  }

  async finishRun(runId: string, status: 'FINISHED' | 'FAILED' | 'KILLED' = 'FINISHED'): Promise<void> {
    await this.post('runs/update', { run_id: runId, status, end_time: Date.now() });
  }

  async getRun(runId: string): Promise<Run> {
    return z.object({ run: Run }).parse(await this.get('runs/get', { run_id: runId })).run;
  }

  async searchRuns(
    experimentIds: string[],
    options: { filter?: string; orderBy?: string[]; maxResults?: number } = {},
  ): Promise<Run[]> {
    const runs: Run[] = [];
    let pageToken: string | undefined;
    do {
      const body = await this.post('runs/search', {
        experiment_ids: experimentIds,
        filter: options.filter ?? '',
        order_by: options.orderBy ?? [],
        max_results: options.maxResults ?? 1000,
        ...(pageToken ? { page_token: pageToken } : {}),
      });
      const page = z.object({ runs: z.array(Run).default([]), next_page_token: z.string().optional() }).parse(body);
      runs.push(...page.runs);
      pageToken = page.next_page_token;
    } while (pageToken && (options.maxResults === undefined || runs.length < options.maxResults));
    return runs;
  }

  // ── artifacts (through the tracking server's proxy) ───────────────────────────────────────

  async uploadArtifact(
    artifactUri: string,
    relativePath: string,
    bytes: Uint8Array,
    contentType = 'application/octet-stream',
  ): Promise<void> {
    const url = `${this.base}/api/2.0/mlflow-artifacts/artifacts/${encodePath(`${artifactProxyPath(artifactUri)}/${relativePath}`)}`;
    const response = await this.fetch(url, { method: 'PUT', body: bytes, headers: { 'content-type': contentType } });
    await this.check(response, 'PUT', url);
  }

  /** Uploads every file of a local folder under `destination` (a path inside the run's artifacts). */
  async uploadDirectory(artifactUri: string, localDir: string, destination: string): Promise<void> {
    for (const entry of await readdir(localDir, { withFileTypes: true })) {
      const local = path.join(localDir, entry.name);
      const remote = `${destination}/${entry.name}`;
      if (entry.isDirectory()) await this.uploadDirectory(artifactUri, local, remote);
      else await this.uploadArtifact(artifactUri, remote, await readFile(local));
    }
  }

  async listArtifacts(artifactUri: string): Promise<ArtifactFile[]> {
    const body = await this.request(
      'GET',
      `${this.base}/api/2.0/mlflow-artifacts/artifacts?path=${encodeURIComponent(artifactProxyPath(artifactUri))}`,
    );
    return z.object({ files: z.array(FileInfo).default([]) }).parse(body).files;
  }

  async downloadArtifact(artifactUri: string): Promise<Buffer> {
    const url = `${this.base}/api/2.0/mlflow-artifacts/artifacts/${encodePath(artifactProxyPath(artifactUri))}`;
    const response = await this.fetch(url, { method: 'GET' });
    await this.check(response, 'GET', url);
    return Buffer.from(await response.arrayBuffer());
  }

  /**
   * Downloads a folder of artifacts into `localDir` atomically (a sibling temporary folder renamed
   * into place), checking every file's size against the listing.
   */
  async downloadDirectory(artifactUri: string, localDir: string): Promise<void> {
    const staging = `${localDir}.partial-${process.pid}`;
    await rm(staging, { recursive: true, force: true });
    const fetchInto = async (uri: string, dir: string) => {
      await mkdir(dir, { recursive: true });
      for (const file of await this.listArtifacts(uri)) {
        const name = path.posix.basename(file.path);
        const child = `${uri.replace(/\/+$/, '')}/${name}`;
        if (file.is_dir) {
          await fetchInto(child, path.join(dir, name));
          continue;
        }
        const bytes = await this.downloadArtifact(child);
        if (file.file_size !== undefined && bytes.length !== file.file_size) {
          throw new MlflowError(`${child}: downloaded ${bytes.length} bytes, the server lists ${file.file_size}`, 0, undefined);
        }
        await writeFile(path.join(dir, name), bytes);
      }
    };
    await fetchInto(artifactUri, staging);
    await rm(localDir, { recursive: true, force: true });
    await mkdir(path.dirname(localDir), { recursive: true });
    await rename(staging, localDir);
    await stat(localDir);
  }

  // ── registry ───────────────────────────────────────────────────────────────────────────────

  async ensureRegisteredModel(name: string, description = ''): Promise<void> {
    try {
      await this.post('registered-models/create', { name, description });
    } catch (error) {
      if (!(error instanceof MlflowError && error.errorCode === 'RESOURCE_ALREADY_EXISTS')) throw error;
    }
  }

  async getRegisteredModel(name: string): Promise<RegisteredModel | undefined> {
    const body = await this.get('registered-models/get', { name }, [404]);
    return body ? z.object({ registered_model: RegisteredModel }).parse(body).registered_model : undefined;
  }

  /** Registers a version and waits until the server reports it READY. */
  async createModelVersion(
    name: string,
    source: string,
    runId: string,
    options: { description?: string; tags?: Record<string, string> } = {},
  ): Promise<ModelVersion> {
    const body = await this.post('model-versions/create', {
      name,
      source,
      run_id: runId,
      description: options.description ?? '',
      tags: Object.entries(options.tags ?? {}).map(([key, value]) => ({ key, value })),
    });
    let version = z.object({ model_version: ModelVersion }).parse(body).model_version;
    for (let i = 0; i < 100 && version.status === 'PENDING_REGISTRATION'; i++) {
      await new Promise((r) => setTimeout(r, 100));
      version = await this.getModelVersion(name, version.version);
    }
    if (version.status && version.status !== 'READY')
      throw new MlflowError(`model version ${name}/${version.version} is ${version.status}`, 0, undefined);
    return version;
  }

  async getModelVersion(name: string, version: string): Promise<ModelVersion> {
    return z.object({ model_version: ModelVersion }).parse(await this.get('model-versions/get', { name, version })).model_version;
  }

  async searchModelVersions(name: string): Promise<ModelVersion[]> {
    const body = await this.get('model-versions/search', {
      filter: `name='${name.replaceAll("'", "\\'")}'`,
      max_results: '1000',
    });
    const versions = z.object({ model_versions: z.array(ModelVersion).default([]) }).parse(body).model_versions;
    return versions.sort((a, b) => Number(a.version) - Number(b.version));
  }

  async getDownloadUri(name: string, version: string): Promise<string> {
    return z.object({ artifact_uri: z.string() }).parse(await this.get('model-versions/get-download-uri', { name, version }))
      .artifact_uri;
  }

  async setAlias(name: string, alias: string, version: string): Promise<void> {
    await this.post('registered-models/alias', { name, alias, version });
  }

  async deleteAlias(name: string, alias: string): Promise<void> {
    await this.request('DELETE', `${this.base}/api/2.0/mlflow/registered-models/alias`, { name, alias });
  }

  /** The version an alias points at, or undefined when the alias (or the model) does not exist. */
  async getVersionByAlias(name: string, alias: string): Promise<ModelVersion | undefined> {
    try {
      const body = await this.get('registered-models/alias', { name, alias }, [404]);
      return body ? z.object({ model_version: ModelVersion }).parse(body).model_version : undefined;
    } catch (error) {
      // A missing alias is a 400 INVALID_PARAMETER_VALUE ("alias … not found"), not a 404.
      if (error instanceof MlflowError && error.status === 400 && /not found/i.test(error.message)) return undefined;
      throw error;
    }
  }

  async setModelVersionTag(name: string, version: string, key: string, value: string): Promise<void> {
    await this.post('model-versions/set-tag', { name, version, key, value });
  }

  async updateModelVersionDescription(name: string, version: string, description: string): Promise<void> {
    await this.request('PATCH', `${this.base}/api/2.0/mlflow/model-versions/update`, { name, version, description });
  }

  /** Mirrors a promotion in the (deprecated, still displayed) stage field. */
  async transitionStage(name: string, version: string, stage: 'None' | 'Staging' | 'Production' | 'Archived'): Promise<void> {
    await this.post('model-versions/transition-stage', { name, version, stage, archive_existing_versions: false });
  }

  // ── transport ──────────────────────────────────────────────────────────────────────────────

  private get(endpoint: string, query: Record<string, string>, allow: number[] = []): Promise<unknown> {
    return this.request(
      'GET',
      `${this.base}/api/2.0/mlflow/${endpoint}?${new URLSearchParams(query).toString()}`,
      undefined,
      allow,
    );
  }

  private post(endpoint: string, body: unknown): Promise<unknown> {
    return this.request('POST', `${this.base}/api/2.0/mlflow/${endpoint}`, body);
  }

  private async request(method: string, url: string, body?: unknown, allow: number[] = []): Promise<unknown> {
    const response = await this.fetch(url, {
      method,
      ...(body === undefined ? {} : { body: JSON.stringify(body), headers: { 'content-type': 'application/json' } }),
    });
    if (allow.includes(response.status)) {
      await response.body?.cancel();
      return undefined;
    }
    await this.check(response, method, url);
    const text = await response.text();
    return text ? (JSON.parse(text) as unknown) : {};
  }

  private async fetch(
    url: string,
    init: { method: string; body?: string | Uint8Array; headers?: Record<string, string> },
  ): Promise<Response> {
    // Sent with every request, unasked: MLflow's basic-auth app answers 401 rather than
    // challenging first, and a server without it ignores the header.
    const headers = { ...init.headers, ...(this.authorization ? { authorization: this.authorization } : {}) };
    try {
      return await fetch(url, { ...init, headers, signal: AbortSignal.timeout(this.options.timeoutMs ?? 30_000) });
    } catch (error) {
      throw new MlflowError(`MLflow at ${this.base} is unreachable: ${(error as Error).message}`, 0, 'UNREACHABLE');
    }
  }

  private async check(response: Response, method: string, url: string): Promise<void> {
    if (response.ok) return;
    if (response.status === 401 || response.status === 403) throw await this.refused(response, method, url);
    const text = await response.text();
    let code: string | undefined;
    let message = text.slice(0, 500);
    try {
      const parsed = JSON.parse(text) as { error_code?: string; message?: string };
      code = parsed.error_code;
      message = parsed.message ?? message;
    } catch {
      /* not JSON */
    }
    throw new MlflowError(`${response.status} from ${url.replace(this.base, '')}: ${message}`, response.status, code);
  }

  /** The error for a 401 or 403, saying which of the configuration's parts to fix. */
  private async refused(response: Response, method: string, url: string): Promise<MlflowAuthError> {
    await response.body?.cancel();
    // The path says what was attempted; the query (artifact paths, filters) is left out.
    const what = `${response.status} to ${method} ${url.replace(this.base, '').replace(/\?.*$/, '')}`;
    const user = this.options.credentials?.username;
    if (response.status === 403) {
      return new MlflowAuthError(
        `MLflow refused user ${JSON.stringify(user ?? '(anonymous)')} this operation (${what}: permission denied): the account lacks the permission (a READ-only account cannot register versions or move aliases)`,
        403,
        'PERMISSION_DENIED',
      );
    }
    return new MlflowAuthError(
      user === undefined
        ? `MLflow refused the credentials: ${this.base} requires authentication and none are configured (${what}): set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD_FILE (or MLFLOW_TRACKING_PASSWORD)`
        : `MLflow refused the credentials of user ${JSON.stringify(user)} (${what}): wrong user name or password (MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD_FILE / MLFLOW_TRACKING_PASSWORD)`,
      401,
      'UNAUTHENTICATED',
    );
  }
}

function encodePath(p: string): string {
  return p.split('/').map(encodeURIComponent).join('/');
}
