import { createHash } from 'node:crypto';
import { mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { ModelName } from '../contract/common.contract.js';
import { RecordedExample } from '../contract/replay.contract.js';

/**
 * The live replay store (docs/replay.md, "Recording"): where workers put their sampled inputs and
 * where `make replay SET=…` and `make replay-purge` read and delete them. One module for the writer
 * (the worker's recorder) and the readers (the replay CLI), so the layout is written down once:
 *
 *     <prefix>/<model>/<YYYY-MM-DD>/<sha256>.<format>   the image, exactly as the caller sent it
 *     <prefix>/<model>/<YYYY-MM-DD>/<sha256>.json       its RecordedExample (input.file names the image)
 *
 * The day (UTC, of production's answer) is the unit of retention: a purge removes whole days. The
 * image is written before its JSON, so a reader that finds the JSON finds the image.
 */
export class ReplayStoreError extends Error {
  override name = 'ReplayStoreError';
}

/** Where a store is: an S3 bucket and key prefix, or a local folder (for `make run` without S3). */
export type ReplayStoreLocation =
  { readonly kind: 's3'; readonly bucket: string; readonly prefix: string } | { readonly kind: 'folder'; readonly dir: string };

// One bounded run and an optional tail: no nested repetition to backtrack over.
// eslint-disable-next-line security/detect-unsafe-regex
const S3_URI = /^s3:\/\/([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:\/(.*))?$/;

/** `s3://bucket[/prefix]` or a folder path; any other scheme is refused (a typo must not become a folder named `gs:`). */
export function parseReplayStoreLocation(uri: string): ReplayStoreLocation {
  if (uri.startsWith('s3://')) {
    const match = S3_URI.exec(uri);
    if (!match)
      throw new ReplayStoreError(`${uri} is not s3://<bucket>[/<prefix>] (bucket: 3-63 lowercase letters, digits, dots, dashes)`);
    const prefix = (match[2] ?? '').replace(/^\/+|\/+$/g, '');
    if (prefix.split('/').some((part) => part === '.' || part === '..'))
      throw new ReplayStoreError(`${uri}: the prefix may not hold . or .. parts`);
    return { kind: 's3', bucket: match[1]!, prefix };
  }
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(uri))
    throw new ReplayStoreError(`${uri}: a replay store is s3://<bucket>/<prefix> or a local folder`);
  return { kind: 'folder', dir: path.resolve(uri) };
}

export const describeLocation = (l: ReplayStoreLocation): string => (l.kind === 's3' ? `s3://${l.bucket}/${l.prefix}` : l.dir);

/**
 * The S3 endpoint for a store outside AWS (moto, MinIO): REPLAY_S3_ENDPOINT_URL, else the SDK's own
 * standard variables, else MLflow's (the bucket MLflow uses is the natural home of the recordings).
 */
export function replayS3Endpoint(env: Readonly<Record<string, string | undefined>>): string | undefined {
  for (const key of ['REPLAY_S3_ENDPOINT_URL', 'AWS_ENDPOINT_URL_S3', 'AWS_ENDPOINT_URL', 'MLFLOW_S3_ENDPOINT_URL']) {
    const value = env[key]?.trim();
    if (value) return value;
  }
  return undefined;
}

/** The few operations recording, reading and purging need; keys are relative to the store's root. */
export interface ReplayStore {
  readonly where: string;
  put(key: string, body: Uint8Array, contentType: string): Promise<void>;
  get(key: string): Promise<Buffer>;
  /** Every key under `prefix` (a folder, ending in `/`). */
  list(prefix: string): Promise<string[]>;
  /** The names of the folders right under `prefix` (`''`: the root), including folders left only as old versions. */
  folders(prefix: string): Promise<string[]>;
  /** Deletes everything under `prefix` for good (in a versioned bucket: every version and delete marker); how many objects. */
  remove(prefix: string): Promise<number>;
}

export interface S3Options {
  readonly endpoint?: string | undefined;
  /** Default: AWS_REGION / AWS_DEFAULT_REGION, else us-east-1. */
  readonly region?: string | undefined;
  /** Default: the SDK's standard chain (AWS_ACCESS_KEY_ID…, profiles, instance roles). */
  readonly credentials?: { accessKeyId: string; secretAccessKey: string } | undefined;
  /** Per request; a store that does not answer must not hold a recording (and its bytes) for long. */
  readonly requestTimeoutMs?: number;
}

/** A store in a local folder: the same layout, for `make run` without S3. */
export class FolderReplayStore implements ReplayStore {
  constructor(readonly where: string) {}

  async put(key: string, body: Uint8Array): Promise<void> {
    const file = this.file(key);
    await mkdir(path.dirname(file), { recursive: true });
    // Written aside and renamed: a reader never sees half a file.
    const partial = `${file}.${process.pid}.partial`;
    await writeFile(partial, body);
    await rename(partial, file);
  }

  get(key: string): Promise<Buffer> {
    return readFile(this.file(key));
  }

  async list(prefix: string): Promise<string[]> {
    const entries = await readdir(this.file(prefix), { recursive: true, withFileTypes: true }).catch(missing);
    return entries
      .filter((e) => e.isFile() && !e.name.endsWith('.partial'))
      .map((e) => path.relative(this.where, path.join(e.parentPath, e.name)).split(path.sep).join('/'));
  }

  async folders(prefix: string): Promise<string[]> {
    const entries = await readdir(this.file(prefix), { withFileTypes: true }).catch(missing);
    return entries
      .filter((e) => e.isDirectory())
      .map((e) => e.name)
      .sort();
  }

  async remove(prefix: string): Promise<number> {
    const count = (await this.list(prefix)).length;
    await rm(this.file(prefix), { recursive: true, force: true });
    return count;
  }

  private file(key: string): string {
    const file = path.resolve(this.where, key);
    if (file !== this.where && !file.startsWith(this.where + path.sep))
      throw new ReplayStoreError(`${key} is outside the store ${this.where}`);
    return file;
  }
}

function missing(error: unknown): never[] {
  if ((error as NodeJS.ErrnoException).code === 'ENOENT') return [];
  throw error;
}

export const sha256Hex = (bytes: Uint8Array): string => createHash('sha256').update(bytes).digest('hex');

/** The UTC day of an ISO time: a day folder's name. */
export const dayOf = (time: string | Date): string =>
  (typeof time === 'string' ? new Date(time) : time).toISOString().slice(0, 10);

const DAY = /^\d{4}-\d{2}-\d{2}$/;

/** Where one example goes: its day folder, and the image's plain file name (the example's input.file). */
export function exampleKeys(example: Pick<RecordedExample, 'model' | 'recordedAt' | 'input'>) {
  const folder = `${example.model}/${dayOf(example.recordedAt)}/`;
  return { image: folder + example.input.file, json: `${folder}${example.input.sha256}.json` };
}

/** The image's file name in the store and in a materialised set: its sha256 and format. */
export const imageFileName = (sha256: string, format: string): string => `${sha256}.${format}`;

/** Writes one example: the image first, then its JSON, so the JSON never names a missing image. */
export async function writeRecordedExample(store: ReplayStore, example: RecordedExample, bytes: Uint8Array): Promise<void> {
  const checked = RecordedExample.parse(example);
  const keys = exampleKeys(checked);
  await store.put(keys.image, bytes, `image/${checked.input.format}`);
  await store.put(keys.json, Buffer.from(JSON.stringify(checked) + '\n'), 'application/json');
}

/**
 * A model's recorded examples, newest first, each id once (the newest recording of an input wins),
 * at most `limit`, with their images checked against the size and sha256 recorded with them: an
 * altered store is refused, not replayed.
 */
export async function readRecordedExamples(
  store: ReplayStore,
  model: ModelName,
  options: { limit?: number } = {},
): Promise<{ example: RecordedExample; bytes: Buffer }[]> {
  const limit = options.limit ?? Number.POSITIVE_INFINITY;
  const chosen = new Map<string, RecordedExample>();
  const days = (await store.folders(`${model}/`))
    .filter((d) => DAY.test(d))
    .sort()
    .reverse();
  for (const day of days) {
    if (chosen.size >= limit) break;
    const keys = (await store.list(`${model}/${day}/`)).filter((k) => k.endsWith('.json'));
    const examples = await mapBounded(keys, READS_AT_ONCE, async (key) => {
      const text = (await store.get(key)).toString('utf8');
      let json: unknown;
      try {
        json = JSON.parse(text);
      } catch {
        throw new ReplayStoreError(`${store.where}/${key} is not JSON`);
      }
      const parsed = RecordedExample.safeParse(json);
      if (!parsed.success) throw new ReplayStoreError(`${store.where}/${key} is not a recorded example: ${parsed.error.message}`);
      if (parsed.data.model !== model) throw new ReplayStoreError(`${store.where}/${key} holds an input of ${parsed.data.model}`);
      return parsed.data;
    });
    examples.sort((a, b) => b.recordedAt.localeCompare(a.recordedAt));
    for (const e of examples) {
      if (chosen.size >= limit) break;
      if (!chosen.has(e.id)) chosen.set(e.id, e);
    }
  }
  return mapBounded([...chosen.values()], READS_AT_ONCE, async (example) => {
    const key = exampleKeys(example).image;
    const bytes = await store.get(key);
    if (bytes.length !== example.input.bytes || sha256Hex(bytes) !== example.input.sha256)
      throw new ReplayStoreError(`${store.where}/${key} is not the image recorded for example ${example.id}`);
    return { example, bytes };
  });
}

/** Reads at once: a day holds up to REPLAY_DAILY_LIMIT examples, not a thousand requests at a time. */
const READS_AT_ONCE = 16;

/** `fn` over `items`, at most `limit` at a time, results in order. */
async function mapBounded<T, R>(items: readonly T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const results = new Array<R>(items.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(limit, items.length) }, async () => {
      while (next < items.length) {
        const i = next++;
        results[i] = await fn(items[i]!);
      }
    }),
  );
  return results;
}

export interface PurgedDay {
  readonly model: string;
  readonly day: string;
  readonly objects: number;
}

/**
 * Deletes recorded days for good: of `models` (all the store holds when undefined), every day before
 * `before` (YYYY-MM-DD, exclusive), or every day when `before` is undefined.
 */
export async function purgeRecordedDays(
  store: ReplayStore,
  options: { models?: readonly string[] | undefined; before?: string | undefined },
): Promise<PurgedDay[]> {
  if (options.before !== undefined && !DAY.test(options.before))
    throw new ReplayStoreError(`${options.before} is not a day (YYYY-MM-DD)`);
  const models = options.models ?? (await store.folders(''));
  const purged: PurgedDay[] = [];
  for (const model of models) {
    for (const day of await store.folders(`${model}/`)) {
      if (options.before !== undefined && !(DAY.test(day) && day < options.before)) continue;
      purged.push({ model, day, objects: await store.remove(`${model}/${day}/`) });
    }
  }
  return purged;
}

/** The first day kept by a retention of `days` days, counted back from `now` (UTC). */
export function retentionCutoff(days: number, now: Date = new Date()): string {
  return dayOf(new Date(now.getTime() - days * 86_400_000));
}
