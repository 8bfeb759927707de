import {
  DeleteObjectsCommand,
  GetObjectCommand,
  ListObjectVersionsCommand,
  PutObjectCommand,
  S3Client,
  type ObjectIdentifier,
} from '@aws-sdk/client-s3';
import { ReplayStoreError, type ReplayStore, type S3Options } from './replay-store.js';

/** The replay store in S3 (replay-store.ts has the layout); loaded only when a store is in S3. */
export class S3ReplayStore implements ReplayStore {
  readonly where: string;
  private readonly client: S3Client;
  private readonly bucket: string;
  private readonly root: string;

  constructor(location: { bucket: string; prefix: string }, options: S3Options) {
    this.bucket = location.bucket;
    this.root = location.prefix === '' ? '' : `${location.prefix}/`;
    this.where = `s3://${location.bucket}/${location.prefix}`;
    process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
    const timeout = options.requestTimeoutMs ?? 10_000;
    this.client = new S3Client({
      region: options.region ?? process.env.AWS_REGION ?? process.env.AWS_DEFAULT_REGION ?? 'us-east-1',
      ...(options.endpoint ? { endpoint: options.endpoint, forcePathStyle: true } : {}),
      ...(options.credentials ? { credentials: options.credentials } : {}),
      // Two tries, not the SDK's three with backoff: a recording is a sample, worth little waiting.
      maxAttempts: 2,
      // throwOnRequestTimeout: without it this SDK only logs a warning past requestTimeout and keeps
      // waiting, and a store that accepts connections but never answers would hold a write for ever.
      requestHandler: { connectionTimeout: Math.min(timeout, 3000), requestTimeout: timeout, throwOnRequestTimeout: true },
    });
  }

  async put(key: string, body: Uint8Array, contentType: string): Promise<void> {
    await this.client.send(
      new PutObjectCommand({ Bucket: this.bucket, Key: this.root + key, Body: body, ContentType: contentType }),
    );
  }

  async get(key: string): Promise<Buffer> {
    const reply = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: this.root + key }));
    if (!reply.Body) throw new ReplayStoreError(`${this.where}/${key} has no body`);
    return Buffer.from(await reply.Body.transformToByteArray());
  }

  async list(prefix: string): Promise<string[]> {
    const keys: string[] = [];
    for await (const page of this.versions(prefix)) {
      for (const v of page.Versions ?? []) if (v.IsLatest && v.Key) keys.push(v.Key.slice(this.root.length));
    }
    return keys;
  }

  async folders(prefix: string): Promise<string[]> {
    const names = new Set<string>();
    // ListObjectVersions, not ListObjectsV2: a day whose objects were deleted plainly (only delete
    // markers and old versions left) is still there to purge.
    for await (const page of this.versions(prefix, '/')) {
      for (const p of page.CommonPrefixes ?? []) if (p.Prefix) names.add(p.Prefix.slice(this.root.length + prefix.length, -1));
    }
    return [...names].sort();
  }

  async remove(prefix: string): Promise<number> {
    // Everything first, then the deletes: deleting while paging would move the pages under us.
    const doomed: ObjectIdentifier[] = [];
    for await (const page of this.versions(prefix)) {
      for (const v of [...(page.Versions ?? []), ...(page.DeleteMarkers ?? [])])
        if (v.Key) doomed.push({ Key: v.Key, ...(v.VersionId ? { VersionId: v.VersionId } : {}) });
    }
    for (let i = 0; i < doomed.length; i += 1000) {
      const reply = await this.client.send(
        new DeleteObjectsCommand({ Bucket: this.bucket, Delete: { Objects: doomed.slice(i, i + 1000), Quiet: true } }),
      );
      const errors = reply.Errors ?? [];
      if (errors.length > 0)
        throw new ReplayStoreError(
          `${this.where}: ${errors.length} versions could not be deleted (first: ${errors[0]!.Key} ${errors[0]!.VersionId}: ${errors[0]!.Code} ${errors[0]!.Message})`,
        );
    }
    return doomed.length;
  }

  private async *versions(prefix: string, delimiter?: string) {
    let KeyMarker: string | undefined;
    let VersionIdMarker: string | undefined;
    for (;;) {
      const page = await this.client.send(
        new ListObjectVersionsCommand({
          Bucket: this.bucket,
          Prefix: this.root + prefix,
          ...(delimiter ? { Delimiter: delimiter } : {}),
          ...(KeyMarker ? { KeyMarker } : {}),
          ...(VersionIdMarker ? { VersionIdMarker } : {}),
        }),
      );
      yield page;
      if (!page.IsTruncated) return;
      KeyMarker = page.NextKeyMarker;
      VersionIdMarker = page.NextVersionIdMarker;
    }
  }
}
