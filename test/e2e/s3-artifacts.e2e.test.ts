import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  GetBucketLifecycleConfigurationCommand,
  GetBucketVersioningCommand,
  GetObjectCommand,
  ListObjectsV2Command,
  ListObjectVersionsCommand,
  PutObjectCommand,
  type S3Client,
} from '@aws-sdk/client-s3';
import { expect } from 'chai';
import pino from 'pino';
import { z } from 'zod';
import { artifactProxyPath, MlflowClient, type ModelVersion } from '@conveyor/shared/mlflow/client';
import { PromotionPolicy } from '../../services/trainer/src/registry/policy.js';
import { promote } from '../../services/trainer/src/registry/promote.js';
import { rollback } from '../../services/trainer/src/registry/rollback.js';
import { startMlflow, type LocalMlflow } from '../../harness/mlflow-server.js';
import { startS3, type LocalS3 } from '../../harness/s3-server.js';
import { ROOT } from '../../harness/service-process.js';
import { predict } from '../support/http.js';
import { digitPng, heldOutDigits } from '../support/images.js';
import { randomPrefix } from '../support/redis.js';
import { registerFolder } from '../support/registry.js';
import { dumpLogsOnFailure, startGateway, startWorker, stopAll, type Gateway } from '../support/services.js';
import { until } from '../support/wait.js';

/**
 * MLflow's artifact store in a versioned S3 bucket, the cloud shape of the model loop: a real MLflow
 * server (`--artifacts-destination s3://<bucket>/<prefix> --serve-artifacts`) on a real S3-compatible
 * server (moto, started here on a free port, the bucket made and versioned by scripts/s3/serve.py as
 * compose's `s3` service does). Only MLflow holds S3 credentials (random, made by this test); the
 * trainer's client and the workers talk to MLflow alone, and a rollback serves the older version's
 * bytes from the bucket again.
 */
const sha256 = (bytes: Uint8Array) => createHash('sha256').update(bytes).digest('hex');

describe('MLflow artifacts in a versioned S3 bucket (real MLflow, real moto)', function () {
  // Generous: MLflow alone took 55 s to answer on a shared two-core machine under load, and the
  // hook then registers, promotes and starts a gateway and a worker.
  this.timeout(300_000);
  const suffix = Math.random().toString(36).slice(2, 8);
  const name = `s3-digits-${suffix}`;
  const experiment = `s3-${suffix}`;
  const bucket = `conveyor-test-${suffix}`;
  const keyPrefix = `mlflow/${suffix}`;
  const redisPrefix = randomPrefix('s3');
  const log = pino({ level: 'silent' });
  const policy = PromotionPolicy.parse(JSON.parse(readFileSync('services/trainer/configs/promotion.json', 'utf8')));
  let tmp: string;
  let cacheDir: string;
  let s3: LocalS3 | undefined;
  let mlflow: LocalMlflow | undefined;
  let bucketClient: S3Client;
  let client: MlflowClient;
  let gateway: Gateway | undefined;
  let worker: Awaited<ReturnType<typeof startWorker>> | undefined;
  let seven: Buffer;
  let v1: ModelVersion;

  /**
   * A copy of the committed model whose ONNX file differs in its bytes, not its weights: a
   * doc_string (ModelProto field 6) appended to the protobuf, where the last occurrence wins. The
   * manifest's checksum and version and the reference profile follow, as `make train` writes them.
   */
  function modelFolder(label: string): { dir: string; sha256: string; build: string } {
    const dir = path.join(tmp, label);
    cpSync('models/digits', dir, { recursive: true });
    const doc = Buffer.from(`conveyor s3 test ${label}`);
    const onnx = Buffer.concat([readFileSync(path.join(dir, 'model.onnx')), Buffer.from([0x32, doc.length]), doc]);
    writeFileSync(path.join(dir, 'model.onnx'), onnx);
    const build = `sha-${sha256(onnx).slice(0, 12)}`;
    const edit = (file: string, change: (json: Record<string, unknown> & { model: Record<string, unknown> }) => void) => {
      const json = JSON.parse(readFileSync(path.join(dir, file), 'utf8')) as Record<string, unknown> & {
        model: Record<string, unknown>;
      };
      change(json);
      writeFileSync(path.join(dir, file), JSON.stringify(json, null, 2));
    };
    edit('manifest.json', (manifest) => Object.assign(manifest, { sha256: sha256(onnx), version: build }));
    // The model-folder suite checks that the profile was measured with this very model (name and version).
    edit('reference-profile.json', (profile) => Object.assign(profile.model, { version: build }));
    return { dir, sha256: sha256(onnx), build };
  }

  /** The bucket's keys of a registered version's model folder: `<prefix>/<experiment>/<run>/artifacts/model/…`. */
  async function modelKeys(version: ModelVersion): Promise<string[]> {
    const run = await client.getRun(version.run_id!);
    const listed = await bucketClient.send(
      new ListObjectsV2Command({ Bucket: bucket, Prefix: `${keyPrefix}/${artifactProxyPath(run.info.artifact_uri)}/model/` }),
    );
    return (listed.Contents ?? []).map((o) => o.Key!).sort();
  }

  async function object(key: string, versionId?: string): Promise<Buffer> {
    const got = await bucketClient.send(new GetObjectCommand({ Bucket: bucket, Key: key, VersionId: versionId }));
    return Buffer.from(await got.Body!.transformToByteArray());
  }

  const servedVersion = async () => {
    const reply = await predict(gateway!.url, seven);
    expect(reply.status).to.equal(200);
    return (reply.body.model as { version: string }).version;
  };

  before(async () => {
    tmp = mkdtempSync(path.join(os.tmpdir(), 'conveyor-s3-'));
    cacheDir = path.join(tmp, 'model-cache');
    const digit = heldOutDigits().then(({ dataset, split }) =>
      digitPng(dataset.samples[split.test.find((i) => dataset.samples[i]!.label === 7)!]!.pixels),
    );
    const gatewayStarted = startGateway(redisPrefix);
    // Awaited below, after S3 and MLflow: until then a failed start must not be an unhandled rejection.
    gatewayStarted.catch(() => undefined);
    s3 = await startS3({ bucket });
    bucketClient = s3.client();
    mlflow = await startMlflow({
      dir: path.join(tmp, 'mlflow'),
      quiet: true,
      artifacts: {
        destination: `s3://${bucket}/${keyPrefix}`,
        endpointUrl: s3.endpoint,
        credentials: s3.credentials,
        region: s3.region,
      },
    });
    client = new MlflowClient(mlflow.url);
    const first = modelFolder('v1');
    v1 = await registerFolder(client, name, first.dir, experiment);
    expect((await promote(client, name, policy, {}, log)).promoted).to.equal(true);
    [seven, gateway] = await Promise.all([digit, gatewayStarted]);
    worker = await startWorker(redisPrefix, {
      MLFLOW_TRACKING_URI: mlflow.url,
      MODEL_URI: `models:/${name}@production`,
      MODEL_CACHE_DIR: cacheDir,
      MODEL_POLL_INTERVAL_MS: '200',
    });
  });
  afterEach(function () {
    dumpLogsOnFailure(this, gateway, worker);
  });
  after(async () => {
    await stopAll(gateway, worker);
    await mlflow?.stop();
    await s3?.stop();
    rmSync(tmp, { recursive: true, force: true });
  });

  it('keeps the artifacts in a bucket with versioning on, and none on the server’s disk', async () => {
    const versioning = await bucketClient.send(new GetBucketVersioningCommand({ Bucket: bucket }));
    expect(versioning.Status).to.equal('Enabled');
    expect(mlflow!.artifactsDestination).to.equal(`s3://${bucket}/${keyPrefix}`);
    expect(existsSync(path.join(tmp, 'mlflow', 'artifacts'))).to.equal(false);
  });

  it('sets the lifecycle rule that expires noncurrent versions (scripts/s3/lifecycle.json) on the whole bucket', async () => {
    const wanted = JSON.parse(readFileSync(path.join(ROOT, 'scripts/s3/lifecycle.json'), 'utf8')) as {
      Rules: { NoncurrentVersionExpiration: { NoncurrentDays: number } }[];
    };
    const days = wanted.Rules[0]!.NoncurrentVersionExpiration.NoncurrentDays;
    expect(days).to.be.a('number').and.be.greaterThan(0);
    const lifecycle = await bucketClient.send(new GetBucketLifecycleConfigurationCommand({ Bucket: bucket }));
    expect(lifecycle.Rules).to.have.length(1);
    const [rule] = lifecycle.Rules!;
    expect(rule!.Status).to.equal('Enabled');
    expect(rule!.NoncurrentVersionExpiration?.NoncurrentDays).to.equal(days);
    expect(rule!.Expiration?.ExpiredObjectDeleteMarker).to.equal(true);
    expect(rule!.AbortIncompleteMultipartUpload?.DaysAfterInitiation).to.equal(7);
    // An empty prefix: every key, whatever MLflow's prefix (the tests' are random).
    expect(rule!.Filter?.Prefix ?? '').to.equal('');
  });

  it('counts signed S3 requests by AWS price class at /_conveyor/requests, and no unsigned ones', async () => {
    const Counts = z.object({ total: z.number(), by_class: z.record(z.string(), z.number()) });
    const read = async () => Counts.parse(await (await fetch(`${s3!.endpoint}/_conveyor/requests`)).json());
    const before = await read();
    const Key = `counter-probe-${suffix}/object`;
    await bucketClient.send(new PutObjectCommand({ Bucket: bucket, Key, Body: 'probe' }));
    const got = await bucketClient.send(new GetObjectCommand({ Bucket: bucket, Key }));
    expect(await got.Body!.transformToString()).to.equal('probe');
    await bucketClient.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: `counter-probe-${suffix}/` }));
    // Unsigned, like compose's health check: not an S3 request anyone is billed for here.
    expect((await fetch(`${s3!.endpoint}/${bucket}`, { method: 'HEAD' })).status).to.equal(200);
    const after = await read();
    const delta = (k: string) => (after.by_class[k] ?? 0) - (before.by_class[k] ?? 0);
    expect(after.total - before.total).to.equal(3);
    expect(delta('put_copy_post_list'), 'the PUT and the LIST').to.equal(2);
    expect(delta('get_and_other'), 'the GET').to.equal(1);
  });

  it('puts a registered version’s model folder in the bucket under the prefix, and the worker serves it', async () => {
    const keys = await modelKeys(v1);
    expect(keys.map((k) => path.posix.basename(k))).to.deep.equal([
      'MLmodel',
      'evaluation.json',
      'manifest.json',
      'model.onnx',
      'reference-profile.json',
    ]);
    for (const key of keys) expect(key.startsWith(`${keyPrefix}/`)).to.equal(true);
    const manifest = JSON.parse((await object(keys.find((k) => k.endsWith('/manifest.json'))!)).toString()) as {
      sha256: string;
    };
    expect(sha256(await object(keys.find((k) => k.endsWith('/model.onnx'))!))).to.equal(manifest.sha256);
    expect(await servedVersion()).to.equal(v1.version);
    expect(worker!.records.some((r) => r.msg === 'model version downloaded')).to.equal(true);
  });

  it('keeps the earlier object when an artifact is uploaded again at the same path', async () => {
    const run = await client.createRun(await client.getOrCreateExperiment(experiment), 'overwrite');
    const first = Buffer.from('{"note":"first upload"}');
    const second = Buffer.from('{"note":"second upload, same path"}');
    await client.uploadArtifact(run.artifact_uri, 'model/notes.json', first);
    await client.uploadArtifact(run.artifact_uri, 'model/notes.json', second);
    const key = `${keyPrefix}/${artifactProxyPath(run.artifact_uri)}/model/notes.json`;

    const listed = await bucketClient.send(new ListObjectVersionsCommand({ Bucket: bucket, Prefix: key }));
    const versions = (listed.Versions ?? []).filter((v) => v.Key === key);
    expect(versions).to.have.length(2);
    const [latest, earlier] = [versions.find((v) => v.IsLatest)!, versions.find((v) => !v.IsLatest)!];
    expect(await object(key, earlier.VersionId)).to.deep.equal(first);
    expect(await object(key, latest.VersionId)).to.deep.equal(second);
    // MLflow serves the latest; the earlier one is there to restore (README: "Artifacts in S3").
    expect(await client.downloadArtifact(`${run.artifact_uri}/model/notes.json`)).to.deep.equal(second);
  });

  it('rolls back: the worker serves the older version’s bytes, from the bucket, again', async () => {
    const second = modelFolder('v2');
    const v2 = await registerFolder(client, name, second.dir, experiment);
    expect((await promote(client, name, policy, {}, log)).promoted).to.equal(true);
    await until(`the worker serving version ${v2.version}`, async () => (await servedVersion()) === v2.version);
    const v2Onnx = await object((await modelKeys(v2)).find((k) => k.endsWith('/model.onnx'))!);
    expect(sha256(v2Onnx)).to.equal(second.sha256);

    // A log line may trail the replies (it comes through the worker's stdout, a reply through Redis).
    const servingLine = (version: string, from = 0) =>
      until(`the worker logging that it serves version ${version}`, () =>
        Promise.resolve(
          worker!.records
            .slice(from)
            .find((r) => r.msg === 'serving model version' && (r.model as { version?: string }).version === version),
        ),
      );
    await servingLine(v2.version);
    const seen = worker!.records.length;
    expect(await rollback(client, name, log)).to.deep.equal({ from: v2.version, to: v1.version });
    await until(`the worker serving version ${v1.version} again`, async () => (await servedVersion()) === v1.version);
    const serving = await servingLine(v1.version, seen);
    expect(serving.model).to.deep.equal({ name, version: v1.version });
    const v1Onnx = await object((await modelKeys(v1)).find((k) => k.endsWith('/model.onnx'))!);
    expect(serving.build).to.equal(`sha-${sha256(v1Onnx).slice(0, 12)}`);
    // What the worker loaded is the bucket's object, byte for byte (downloaded through MLflow).
    const loaded = readFileSync(path.join(cacheDir, name, v1.version, 'model.onnx'));
    expect(sha256(loaded)).to.equal(sha256(v1Onnx)).and.not.equal(second.sha256);
  });

  it('gives S3 credentials to MLflow alone, through its environment, and the repository holds none', () => {
    const environ = (pid: number | undefined) => readFileSync(`/proc/${String(pid)}/environ`, 'utf8').split('\0');
    const { accessKeyId, secretAccessKey } = s3!.credentials;
    expect(environ(mlflow!.pid)).to.include.members([
      `AWS_ACCESS_KEY_ID=${accessKeyId}`,
      `AWS_SECRET_ACCESS_KEY=${secretAccessKey}`,
      `MLFLOW_S3_ENDPOINT_URL=${s3!.endpoint}`,
    ]);
    const workerEnv = environ(worker!.child.pid).join('\n');
    for (const secret of [accessKeyId, secretAccessKey, s3!.endpoint]) expect(workerEnv).not.to.contain(secret);
    expect(workerEnv).not.to.match(/^MLFLOW_S3_ENDPOINT_URL=/m);

    // No AWS access key id (long-term AKIA…, temporary ASIA…) and no secret assigned in any file of
    // the repository, committed or not (ignored folders such as node_modules and .venv aside).
    const grep = spawnSync(
      'git',
      ['grep', '--untracked', '-nIE', String.raw`(AKIA|ASIA)[0-9A-Z]{16}|aws_secret_access_key\s*[=:]\s*['"]?[A-Za-z0-9/+]{40}`],
      { cwd: ROOT, encoding: 'utf8' },
    );
    expect(grep.status, grep.stdout || grep.stderr).to.equal(1);
  });
});
