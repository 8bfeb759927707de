import { randomUUID } from 'node:crypto';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Queue } from 'bullmq';
import { expect } from 'chai';
import type { Redis } from 'ioredis';
import pino from 'pino';
import sharp from 'sharp';
import { loadConfig } from '@conveyor/shared/config';
import { redisKeys } from '@conveyor/shared/contract/redis-keys';
import { ROOT } from '../../harness/service-process.js';
import { GatewayConfig } from '../../services/gateway/src/config.js';
import { startGateway, type GatewayService } from '../../services/gateway/src/gateway.service.js';
import { WorkerConfig } from '../../services/inference-worker/src/config.js';
import { startWorker, type WorkerService } from '../../services/inference-worker/src/worker.service.js';
import { request, uploadForm, type Reply } from '../support/http.js';
import { ResponseValidator } from '../support/openapi.js';
import { randomPrefix, testRedis, testRedisUrl } from '../support/redis.js';
import { until } from '../support/wait.js';

type LogRecord = Record<string, unknown>;

/**
 * The shared result cache end to end (docs/result-cache.md): two gateways and a worker started in
 * this process on the test Redis, RESULT_CACHE on. Inferences are counted where they cannot be
 * faked: the predictions stream (one entry per committed inference) and BullMQ's `added` events
 * (one per job made). The queue is paused where a test needs requests to arrive while a job waits.
 */
describe('shared result cache (RESULT_CACHE)', function () {
  this.timeout(180_000);
  const prefix = randomPrefix('cache');
  const keys = redisKeys(prefix);
  const records: LogRecord[] = [];
  const log = pino({ level: 'debug' }, { write: (line: string) => void records.push(JSON.parse(line) as LogRecord) });
  const seven = readFileSync(path.join(ROOT, 'docs/examples/seven.png'));
  const modelDir = mkdtempSync(path.join(os.tmpdir(), 'cache-v2-'));
  // Read once the global fixture has started Redis.
  const env = () => ({ REDIS_URL: testRedisUrl(), REDIS_PREFIX: prefix, RESULT_CACHE: 'true' });
  const workerEnv = () => ({ ...env(), HEARTBEAT_INTERVAL_MS: '300', SHUTDOWN_BUDGET_MS: '2000' });
  let worker: WorkerService;
  let v2: WorkerService | undefined;
  let a: GatewayService;
  let b: GatewayService;
  let redis: Redis;
  let queue: Queue;
  let v1Version: string;
  const at = (gateway: GatewayService) => `http://127.0.0.1:${gateway.port}`;

  before(async () => {
    redis = testRedis();
    queue = new Queue('inference', { connection: { url: testRedisUrl() }, prefix });
    worker = await startWorker(loadConfig(WorkerConfig, workerEnv()), log);
    const gatewayEnv = { ...env(), PORT: '0', HOST: '127.0.0.1', SHUTDOWN_BUDGET_MS: '2000' };
    [a, b] = await Promise.all([
      startGateway(loadConfig(GatewayConfig, gatewayEnv), log),
      startGateway(loadConfig(GatewayConfig, gatewayEnv), log),
    ]);
    await worker.ready;
    for (const gateway of [a, b]) {
      const versions = await until('the gateway sees a warm digits worker', async () => {
        const reply = await request<{ versions?: string[] }>(`${at(gateway)}/v1/models/digits`);
        return reply.body.versions?.length === 1 ? reply.body.versions : undefined;
      });
      v1Version = versions[0]!;
    }
  });

  after(async () => {
    const services = [a, b, worker, v2] as ({ stop(): Promise<unknown> } | undefined)[];
    await Promise.allSettled(services.filter((s) => s !== undefined).map((s) => s.stop()));
    await (queue as Queue | undefined)?.resume().catch(() => undefined);
    await (queue as Queue | undefined)?.obliterate({ force: true }).catch(() => undefined);
    await (queue as Queue | undefined)?.close();
    await (redis as Redis | undefined)?.quit();
    rmSync(modelDir, { recursive: true, force: true });
    // A worker restricts sharp's decoders process-wide (shared/src/model/decoders.ts).
    sharp.unblock({ operation: ['VipsForeignLoad'] });
  });

  /** The seven with one corner pixel changed: other bytes, the same digit (a new cache key each). */
  async function variant(): Promise<Buffer> {
    const { data, info } = await sharp(seven).raw().toBuffer({ resolveWithObject: true });
    const n = Math.floor(Math.random() * 1e6);
    data[0] = n % 256;
    data[1] = Math.floor(n / 256) % 256;
    data[2] = Math.floor(n / 65536) % 256;
    return sharp(data, { raw: { width: info.width, height: info.height, channels: info.channels } })
      .png()
      .toBuffer();
  }

  const send = (gateway: GatewayService, image: Buffer, headers: Record<string, string> = {}, signal?: AbortSignal) =>
    request(`${at(gateway)}/v1/predict`, { method: 'POST', body: uploadForm(image, 'seven.png'), headers, signal });
  const inferences = () => redis.xlen(keys.predictions);
  async function jobsAdded(): Promise<number> {
    const events = await redis.xrange(`${prefix}:inference:events`, '-', '+');
    return events.filter(([, fields]) => fields[1] === 'added').length;
  }
  const logged = (requestId: string, ...msgs: string[]) =>
    until(`${requestId}: "${msgs.join('" or "')}"`, () =>
      Promise.resolve(records.find((r) => r.requestId === requestId && msgs.includes(r.msg as string))),
    );
  /** What a request logs once it holds a job to wait for: its own, or an identical request's. */
  const HOLDS_A_JOB = ['job queued', 'waiting for the job of an identical request'];
  /** An image answered once (a miss), so that its answer is stored. */
  async function cached(): Promise<{ image: Buffer; reply: Reply }> {
    const image = await variant();
    const reply = await send(a, image);
    expect(reply.status, JSON.stringify(reply.body)).to.equal(200);
    expect(reply.headers.get('cache-status')).to.equal('conveyor; fwd=miss');
    return { image, reply };
  }
  const labelOf = (reply: Reply) => (reply.body.prediction as { label: string } | undefined)?.label;

  it('makes exactly one inference of 100 identical concurrent uploads (two gateways), the 99 others wait for it', async () => {
    const image = await variant();
    const [inferredBefore, addedBefore] = [await inferences(), await jobsAdded()];
    const run = randomUUID().slice(0, 8);
    const ids = Array.from({ length: 100 }, (_, i) => `merge-${run}-${i}`);
    // Held in the queue, so that the 99 arrive while the first job waits, not after it finished.
    await queue.pause();
    let answers: Reply[];
    try {
      const replies = ids.map((id, i) => send(i % 2 ? b : a, image, { 'x-request-id': id }));
      await until('all 100 requests to hold a job to wait for', () =>
        Promise.resolve(
          records.filter((r) => ids.includes(r.requestId as string) && HOLDS_A_JOB.includes(r.msg as string)).length === 100 ||
            undefined,
        ),
      );
      await queue.resume();
      answers = await Promise.all(replies);
    } finally {
      await queue.resume();
    }
    for (const reply of answers) expect(reply.status, JSON.stringify(reply.body)).to.equal(200);
    expect(new Set(answers.map(labelOf))).to.deep.equal(new Set(['7']));
    // One job; the monitor saw one prediction for the hundred answers.
    expect(await jobsAdded()).to.equal(addedBefore + 1);
    expect(await inferences()).to.equal(inferredBefore + 1);
    expect(new Set(answers.map((r) => r.body.id))).to.have.property('size', 1);
    const statuses = answers.map((r) => r.headers.get('cache-status'));
    expect(statuses.filter((s) => s === 'conveyor; fwd=miss')).to.have.length(1);
    expect(statuses.filter((s) => s === 'conveyor; fwd=miss; collapsed')).to.have.length(99);
  });

  it('answers a completed image from the cache on any gateway: Cache-Status hit, no job, no inference, no prediction event', async () => {
    const validator = new ResponseValidator((await request(`${at(a)}/openapi.json`)).body as never);
    const { image, reply: first } = await cached();
    const [inferredBefore, addedBefore] = [await inferences(), await jobsAdded()];
    for (const [gateway, headers] of [
      [a, {}],
      [b, {}],
      [b, { prefer: 'respond-async' }],
    ] as const) {
      const reply = await send(gateway, image, headers);
      expect(reply.status, JSON.stringify(reply.body)).to.equal(200);
      expect(reply.headers.get('cache-status')).to.equal('conveyor; hit');
      expect(Number(reply.headers.get('age'))).to.be.at.least(0);
      expect(reply.body).to.include({ status: 'completed' });
      expect(reply.body.model).to.deep.equal({ name: 'digits', version: v1Version });
      expect(labelOf(reply)).to.equal(labelOf(first));
      // Its own id: the job that computed the answer is not shown.
      expect(reply.body.id).to.not.equal(first.body.id);
      // As the OpenAPI document describes a predict answer; a hit's id names no job.
      validator.check('POST', '/v1/predict', reply.status, reply.headers.get('content-type'), reply.body);
      expect((await request(`${at(gateway)}/v1/jobs/${reply.body.id as string}`)).status).to.equal(404);
    }
    expect(await jobsAdded()).to.equal(addedBefore);
    expect(await inferences()).to.equal(inferredBefore);
    // Counted by what the cache did, on the gateway's metrics (the monitor counts inferences only).
    const metrics = await (await fetch(`${at(b)}/metrics`)).text();
    const hits = /^conveyor_result_cache_requests_total\{model="digits",status="hit"\} (\d+)$/m.exec(metrics);
    expect(Number(hits?.[1])).to.be.at.least(2);
  });

  it('bypasses the cache for Cache-Control: no-cache (fresh inference, stored) and no-store (not stored)', async () => {
    const seeded = await cached();
    const before = await inferences();
    const fresh = await send(a, seeded.image, { 'cache-control': 'no-cache' });
    expect(fresh.status).to.equal(200);
    expect(fresh.headers.get('cache-status')).to.equal('conveyor; fwd=request');
    expect(await inferences()).to.equal(before + 1);

    const image = await variant();
    const unstored = await send(a, image, { 'cache-control': 'no-store' });
    expect(unstored.status).to.equal(200);
    expect(unstored.headers.get('cache-status')).to.equal('conveyor; fwd=request');
    expect(await inferences()).to.equal(before + 2);
    // Nothing was stored for it: the next plain request misses and runs, the one after hits.
    const next = await send(b, image);
    expect(next.headers.get('cache-status')).to.equal('conveyor; fwd=miss');
    expect(await inferences()).to.equal(before + 3);
    const then = await send(b, image, { 'cache-control': 'max-age=60' });
    expect(then.headers.get('cache-status')).to.equal('conveyor; hit');
    expect(await inferences()).to.equal(before + 3);
  });

  it('runs the job for a merged request when the first caller hangs up, and answers it', async () => {
    const image = await variant();
    const run = randomUUID().slice(0, 8);
    const before = await inferences();
    await queue.pause();
    try {
      const gone = new AbortController();
      const leader = send(a, image, { 'x-request-id': `leader-${run}` }, gone.signal).catch((error: unknown) => error);
      await logged(`leader-${run}`, 'job queued');
      const follower = send(b, image, { 'x-request-id': `follower-${run}` });
      await logged(`follower-${run}`, ...HOLDS_A_JOB);
      gone.abort();
      await leader;
      await logged(
        `leader-${run}`,
        'the caller hung up; its job runs for the identical requests waiting for it',
        'the caller hung up before its result',
      );
      await queue.resume();
      const reply = await follower;
      expect(reply.status, JSON.stringify(reply.body)).to.equal(200);
      expect(reply.body).to.include({ status: 'completed' });
      expect(reply.headers.get('cache-status')).to.equal('conveyor; fwd=miss; collapsed');
      expect(await inferences()).to.equal(before + 1);
    } finally {
      await queue.resume();
    }
  });

  it('never serves an old version’s answer after a model swap; while two versions are live it bypasses the cache', async () => {
    const { image } = await cached();
    // The same model under another version: a copy of its folder with a new manifest version.
    cpSync(path.join(ROOT, 'models/digits'), modelDir, { recursive: true });
    const manifestFile = path.join(modelDir, 'manifest.json');
    const manifest = JSON.parse(readFileSync(manifestFile, 'utf8')) as { version: string };
    manifest.version = `cache-v2-${randomUUID().slice(0, 8)}`;
    writeFileSync(manifestFile, JSON.stringify(manifest));
    // Its reference profile names the version it was measured with (a folder check compares them).
    const profileFile = path.join(modelDir, 'reference-profile.json');
    const profile = JSON.parse(readFileSync(profileFile, 'utf8')) as { model: { version: string } };
    profile.model.version = manifest.version;
    writeFileSync(profileFile, JSON.stringify(profile));
    v2 = await startWorker(loadConfig(WorkerConfig, { ...workerEnv(), MODEL_DIR: modelDir }), log);
    await v2.ready;
    const versions = (gateway: GatewayService, n: number) =>
      until(`${at(gateway)} to see ${n} live version(s)`, async () => {
        const reply = await request<{ versions?: string[] }>(`${at(gateway)}/v1/models/digits`);
        return reply.body.versions?.length === n && (n === 2 || reply.body.versions[0] === manifest.version) ? true : undefined;
      });
    await Promise.all([versions(a, 2), versions(b, 2)]);
    // A rolling swap: the answer depends on which worker takes the job, so the cache is not read.
    const during = await send(a, await variant());
    expect(during.status).to.equal(200);
    expect(during.headers.get('cache-status')).to.equal('conveyor; fwd=bypass; detail=versions');

    await worker.stop();
    await Promise.all([versions(a, 1), versions(b, 1)]);
    const before = await inferences();
    // The image whose v1 answer is cached (its v2 answer was never stored under it).
    const after = await send(b, image);
    expect(after.status, JSON.stringify(after.body)).to.equal(200);
    expect(after.body.model).to.deep.equal({ name: 'digits', version: manifest.version });
    expect(after.headers.get('cache-status')).to.not.equal('conveyor; hit');
    expect(await inferences()).to.equal(before + 1);
    // And v2's own answer is cached from then on.
    const again = await send(a, image);
    expect(again.headers.get('cache-status')).to.equal('conveyor; hit');
    expect(again.body.model).to.deep.equal({ name: 'digits', version: manifest.version });
  });
});
