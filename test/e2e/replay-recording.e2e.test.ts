import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createServer, type Server, type Socket } from 'node:net';
import type { AddressInfo } from 'node:net';
import {
  DeleteObjectCommand,
  GetObjectCommand,
  ListObjectVersionsCommand,
  PutObjectCommand,
  type S3Client,
} from '@aws-sdk/client-s3';
import { expect } from 'chai';
import sharp from 'sharp';
import { RecordedExample } from '@conveyor/shared/contract/replay.contract';
import { startS3, type LocalS3 } from '../../harness/s3-server.js';
import { ROOT, type ServiceProcess } from '../../harness/service-process.js';
import { predict, type Reply } from '../support/http.js';
import { digitPng, heldOutDigits } from '../support/images.js';
import pino from 'pino';
import { redisKeys } from '@conveyor/shared/contract/redis-keys';
import { openReplayStore } from '@conveyor/shared/replay/open-replay-store';
import { RetentionSweeper } from '../../services/inference-worker/src/replay/replay-recorder.js';
import { randomPrefix, testRedis, testRedisUrl } from '../support/redis.js';
import { dumpLogsOnFailure, startGateway, startWorker, stopAll, type Gateway } from '../support/services.js';
import { until } from '../support/wait.js';

/**
 * Issue 23's live recording, end to end: real gateways and workers on the test Redis, a real
 * S3-compatible server (moto, a versioned bucket, as MLflow's), real uploads. A worker records a
 * sample of the completed jobs it answered; `make replay SET=s3://…` replays them; `make
 * replay-purge` deletes them with every version.
 */
const sha256 = (bytes: Uint8Array) => createHash('sha256').update(bytes).digest('hex');

type Worker = ServiceProcess & { id: string };

/** The worker's conveyor_replay_records_total by outcome (its metrics endpoint, as Prometheus reads it). */
async function recordCounts(worker: Worker): Promise<Record<string, number>> {
  const url = String((await worker.waitFor((r) => r.msg === 'metrics listening')).url);
  const text = await (await fetch(url)).text();
  const counts: Record<string, number> = {};
  for (const m of text.matchAll(/^conveyor_replay_records_total\{model="digits",outcome="(\w+)"\} (\d+)$/gm))
    counts[m[1]!] = Number(m[2]);
  return counts;
}

/** Every version and delete marker under `prefix`. */
async function versionsUnder(client: S3Client, bucket: string, prefix: string) {
  const reply = await client.send(new ListObjectVersionsCommand({ Bucket: bucket, Prefix: prefix }));
  return [...(reply.Versions ?? []), ...(reply.DeleteMarkers ?? [])].map((v) => ({ key: v.Key!, version: v.VersionId! }));
}

/** A project script run as `make` runs it, in a process of its own (this process keeps serving the gateway). */
function runScript(
  script: string,
  args: string[],
  env: Record<string, string>,
): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--conditions=conveyor-source', '--import', 'tsx', script, ...args], {
      cwd: ROOT,
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    child.stdout.on('data', (d: Buffer) => (output += d.toString()));
    child.stderr.on('data', (d: Buffer) => (output += d.toString()));
    child.once('error', reject);
    child.once('exit', (code) => resolve({ code, output }));
  });
}

describe('live replay recording: workers record a sample of real traffic to S3 (real moto, real workers)', function () {
  this.timeout(300_000);
  const suffix = Math.random().toString(36).slice(2, 8);
  const bucket = `conveyor-replay-${suffix}`;
  const LIMIT = 20;
  let s3: LocalS3;
  let client: S3Client;
  let digits: Buffer[];
  const started: (Gateway | Worker | undefined)[] = [];

  const s3Env = () => ({
    REPLAY_S3_ENDPOINT_URL: s3.endpoint,
    AWS_ACCESS_KEY_ID: s3.credentials.accessKeyId,
    AWS_SECRET_ACCESS_KEY: s3.credentials.secretAccessKey,
    AWS_REGION: s3.region,
  });

  async function system(
    name: string,
    env: Record<string, string>,
  ): Promise<{ prefix: string; gateway: Gateway; worker: Worker }> {
    const prefix = randomPrefix(`rec-${name}`);
    const [gateway, worker] = await Promise.all([
      startGateway(prefix, {}, `gateway-${name}`),
      startWorker(prefix, { METRICS_PORT: '0', ...env }, `worker-${name}`),
    ]);
    started.push(gateway, worker);
    return { prefix, gateway, worker };
  }

  before(async () => {
    s3 = await startS3({ bucket });
    client = s3.client();
    const { dataset, split } = await heldOutDigits();
    // Distinct renderings: each is one example (the id is the image's sha256).
    const images = await Promise.all(split.test.slice(0, 40).map((i) => digitPng(dataset.samples[i]!.pixels)));
    digits = [...new Map(images.map((b) => [sha256(b), b])).values()];
    expect(digits.length).to.be.at.least(LIMIT + 4);
  });

  afterEach(function () {
    dumpLogsOnFailure(this, ...started);
  });

  after(async () => {
    await stopAll(...started);
    // Undefined when the server could not start.
    await (s3 as LocalS3 | undefined)?.stop();
  });

  describe('with REPLAY_SAMPLE_RATE=1 and a daily limit of 20', () => {
    const storePrefix = `replay/${suffix}/live`;
    let sys: Awaited<ReturnType<typeof system>>;
    const answers = new Map<string, Reply>();

    before(async () => {
      sys = await system('live', {
        ...s3Env(),
        REPLAY_SAMPLE_RATE: '1',
        REPLAY_STORE: `s3://${bucket}/${storePrefix}`,
        REPLAY_DAILY_LIMIT: String(LIMIT),
      });
    });

    it('does not record inputs refused at the gateway (415) or by the worker (a failed job, 422)', async () => {
      const refused = await predict(sys.gateway.url, Buffer.from('not an image at all'));
      expect(refused.status).to.equal(415);
      const noisy = await sharp({
        create: { width: 400, height: 300, channels: 3, background: '#000', noise: { type: 'gaussian', mean: 128, sigma: 40 } },
      })
        .jpeg()
        .toBuffer();
      const truncated = await predict(sys.gateway.url, noisy.subarray(0, Math.floor(noisy.length / 2)));
      expect(truncated.status).to.equal(422);
      expect(truncated.body.jobId).to.be.a('string');
      // A completed job after them: once its recording is counted, theirs would have been too.
      const seven = digits[0]!;
      const reply = await predict(sys.gateway.url, seven);
      expect(reply.status).to.equal(200);
      answers.set(sha256(seven), reply);
      await until('the completed job recorded', async () => (await recordCounts(sys.worker)).recorded === 1);
      expect(await recordCounts(sys.worker)).to.deep.equal({ recorded: 1, dropped_busy: 0, over_daily_limit: 0, failed: 0 });
      const keys = (await versionsUnder(client, bucket, storePrefix)).map((v) => v.key);
      expect(keys.filter((k) => k.endsWith('.json'))).to.have.length(1);
      expect(keys.join(' ')).to.contain(sha256(seven));
    });

    it('records exactly min(N, limit) examples whose images and answers are what the callers sent and got', async () => {
      const rest = digits.slice(1, LIMIT + 4);
      for (const bytes of rest) {
        const reply = await predict(sys.gateway.url, bytes);
        expect(reply.status).to.equal(200);
        answers.set(sha256(bytes), reply);
      }
      const sent = rest.length + 1;
      await until('every sampled job counted', async () => {
        const c = await recordCounts(sys.worker);
        return c.recorded! + c.over_daily_limit! === sent;
      });
      expect(await recordCounts(sys.worker)).to.deep.equal({
        recorded: LIMIT,
        dropped_busy: 0,
        over_daily_limit: sent - LIMIT,
        failed: 0,
      });
      const versions = await versionsUnder(client, bucket, storePrefix);
      const jsons = versions.filter((v) => v.key.endsWith('.json'));
      expect(jsons).to.have.length(LIMIT);
      for (const { key } of jsons) {
        const text = await (await client.send(new GetObjectCommand({ Bucket: bucket, Key: key }))).Body!.transformToString();
        const example = RecordedExample.parse(JSON.parse(text));
        const day = new Date().toISOString().slice(0, 10);
        expect(key).to.equal(`${storePrefix}/digits/${example.recordedAt.slice(0, 10)}/${example.id}.json`);
        expect([day, new Date(Date.now() - 86_400_000).toISOString().slice(0, 10)]).to.include(example.recordedAt.slice(0, 10));
        const image = Buffer.from(
          await (
            await client.send(new GetObjectCommand({ Bucket: bucket, Key: key.replace(/\.json$/, `.${example.input.format}`) }))
          ).Body!.transformToByteArray(),
        );
        expect(sha256(image)).to.equal(example.id).and.to.equal(example.input.sha256);
        const reply = answers.get(example.id);
        expect(reply, `the recorded ${example.id} was sent`).to.not.equal(undefined);
        // Production's answer as the caller received it, and nothing that names the caller or the request.
        expect(example.production.prediction).to.deep.equal(reply!.body.prediction);
        expect(example.production.model).to.deep.equal(reply!.body.model);
        expect(text).to.not.contain(String(reply!.body.requestId)).and.not.contain(String(reply!.body.id));
        expect(text).to.not.contain('127.0.0.1');
      }
    });

    it('make replay SET=s3://… replays the live-recorded set through a candidate, whose own worker records nothing', async () => {
      const before = await versionsUnder(client, bucket, storePrefix);
      const run = await runScript(
        'scripts/replay.ts',
        [
          '--model',
          'digits',
          '--candidate',
          'models/digits',
          '--set',
          `s3://${bucket}/${storePrefix}`,
          '--out',
          `/tmp/conveyor-replay-live-${suffix}`,
        ],
        {
          ...s3Env(),
          GATEWAY_URL: sys.gateway.url,
          REDIS_URL: testRedisUrl(),
          REDIS_PREFIX: sys.prefix,
          LOG_LEVEL: 'info',
          // As a production environment would have them: the replay worker must turn its recording off.
          REPLAY_SAMPLE_RATE: '1',
          REPLAY_STORE: `s3://${bucket}/${storePrefix}`,
        },
      );
      // 0: the gate passed; 1: refused (the p95 time ratio can be, on a loaded machine); never 2: it ran.
      expect(run.code, run.output.slice(-3000)).to.be.oneOf([0, 1]);
      expect(run.output).to.contain('live recorded set read').and.to.contain(`"examples":${LIMIT}`);
      // The same weights as production: every recorded answer agreed with.
      expect(run.output).to.contain(`| Top-1 agreement | 100.00 % |`);
      expect(await versionsUnder(client, bucket, storePrefix)).to.deep.equal(before);
    });

    it('make replay-purge ALL=1 deletes every object version and delete marker under the model', async () => {
      // Old versions as a versioned bucket keeps them: an overwrite, and a plain delete (a marker).
      const [first, second] = (await versionsUnder(client, bucket, storePrefix)).filter((v) => v.key.endsWith('.json'));
      await client.send(new PutObjectCommand({ Bucket: bucket, Key: first!.key, Body: '{}' }));
      await client.send(new DeleteObjectCommand({ Bucket: bucket, Key: second!.key }));
      const versions = await versionsUnder(client, bucket, storePrefix);
      expect(versions.length).to.equal(2 * LIMIT + 2);
      const run = await runScript(
        'scripts/replay-purge.ts',
        ['--model', 'digits', '--all', '--store', `s3://${bucket}/${storePrefix}`],
        {
          ...s3Env(),
        },
      );
      expect(run.code, run.output.slice(-3000)).to.equal(0);
      expect(run.output).to.contain(`${2 * LIMIT + 2} objects and versions deleted`);
      expect(await versionsUnder(client, bucket, storePrefix)).to.deep.equal([]);
    });
  });

  it('records nothing with REPLAY_SAMPLE_RATE=0 (the default), even with a store set', async () => {
    const storePrefix = `replay/${suffix}/off`;
    const sys = await system('off', { ...s3Env(), REPLAY_SAMPLE_RATE: '0', REPLAY_STORE: `s3://${bucket}/${storePrefix}` });
    for (const bytes of digits.slice(0, 3)) expect((await predict(sys.gateway.url, bytes)).status).to.equal(200);
    await sys.worker.waitFor((r) => r.msg === 'prediction' && r.requestId !== undefined);
    // No recorder exists at all: no counter, no log line, nothing in the store.
    const url = String((await sys.worker.waitFor((r) => r.msg === 'metrics listening')).url);
    expect(await (await fetch(url)).text()).to.not.contain('conveyor_replay_records_total');
    expect(sys.worker.records.filter((r) => r.msg === 'recording a sample of completed jobs for replay')).to.deep.equal([]);
    expect(await versionsUnder(client, bucket, storePrefix)).to.deep.equal([]);
  });

  it('applies REPLAY_RETENTION_DAYS in one worker per round, deleting every version of the days past it', async () => {
    const storePrefix = `replay/${suffix}/retention`;
    const put = (key: string, body: string) =>
      client.send(new PutObjectCommand({ Bucket: bucket, Key: `${storePrefix}/${key}`, Body: body }));
    // An old day with an overwritten object and a plainly deleted one (a delete marker), and today.
    await put('digits/2026-10-01/a.json', '1');
    await put('digits/2026-10-01/a.json', '2');
    await put('digits/2026-10-01/b.json', '3');
    await client.send(new DeleteObjectCommand({ Bucket: bucket, Key: `${storePrefix}/digits/2026-10-01/b.json` }));
    await put('digits/2026-12-06/c.json', '4');
    const store = await openReplayStore(
      { kind: 's3', bucket, prefix: storePrefix },
      { endpoint: s3.endpoint, credentials: s3.credentials, region: s3.region },
    );
    const redis = testRedis();
    try {
      const key = redisKeys(randomPrefix('rec-retention')).replayRetention;
      const sweeper = () =>
        new RetentionSweeper({
          store,
          models: ['digits'],
          retentionDays: 30,
          redis,
          key,
          intervalMs: 3_600_000,
          log: pino({ level: 'silent' }),
        });
      const now = new Date('2026-12-06T12:00:00.000Z');
      expect(await sweeper().sweep(now)).to.equal(1);
      // Another worker in the same hour: its turn is taken.
      expect(await sweeper().sweep(now)).to.equal(undefined);
      expect(await versionsUnder(client, bucket, `${storePrefix}/digits/2026-10-01/`)).to.deep.equal([]);
      expect((await versionsUnder(client, bucket, storePrefix)).map((v) => v.key)).to.deep.equal([
        `${storePrefix}/digits/2026-12-06/c.json`,
      ]);
    } finally {
      redis.disconnect();
    }
  });

  describe('with the store unreachable', () => {
    let blackhole: Server;
    const sockets = new Set<Socket>();

    before(async () => {
      // Takes connections and never answers: every write hangs until the SDK's timeout.
      blackhole = createServer((socket) => {
        sockets.add(socket);
        socket.on('close', () => sockets.delete(socket));
      });
      await new Promise<void>((resolve) => blackhole.listen(0, '127.0.0.1', resolve));
    });

    after(async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => blackhole.close(() => resolve()));
    });

    it('answers every caller, counts the writes failed or dropped, and still stops', async () => {
      const port = (blackhole.address() as AddressInfo).port;
      const sys = await system('down', {
        ...s3Env(),
        REPLAY_S3_ENDPOINT_URL: `http://127.0.0.1:${port}`,
        REPLAY_SAMPLE_RATE: '1',
        REPLAY_STORE: `s3://${bucket}/replay/${suffix}/down`,
        REPLAY_MAX_IN_FLIGHT: '2',
      });
      const sent = digits.slice(0, 6);
      for (const bytes of sent) {
        const reply = await predict(sys.gateway.url, bytes);
        expect(reply.status).to.equal(200);
        expect(reply.body.prediction).to.be.an('object');
      }
      // Two writes hang on the store (until the SDK's timeout fails them); the samples past them are
      // dropped, not queued behind them: without the bound all six would hang, then fail.
      await until(
        'every sample failed or dropped',
        async () => {
          const n = await recordCounts(sys.worker);
          return n.failed! + n.dropped_busy! === sent.length && n.failed! >= 1 && n.dropped_busy! >= 1 && n.recorded === 0;
        },
        120_000,
      );
      await sys.worker.waitFor((r) => r.msg === 'could not record the input for replay');
      await stopAll(sys.worker);
      // Stopped within its shutdown budget although the store never answers.
      await sys.worker.waitFor((r) => r.msg === 'replay recorder closed');
    });
  });
});
