import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Queue } from 'bullmq';
import { expect } from 'chai';
import { Redis } from 'ioredis';
import { INFERENCE_JOB_OPTIONS, QUEUES } from '@conveyor/shared/contract/jobs.contract';
import { redisKeys } from '@conveyor/shared/contract/redis-keys';
import { startRedis, type LocalRedis } from '../../harness/redis-server.js';
import { heldOutDigits, scannedDigit } from '../support/images.js';
import { pollUntilDone, pool, predict, request, type Reply } from '../support/http.js';
import { keysUnder, randomPrefix, testRedis, testRedisUrl } from '../support/redis.js';
import { dumpLogsOnFailure, startGateway, startMonitor, startWorker, stopAll, type Gateway } from '../support/services.js';
import { until } from '../support/wait.js';

/** A few KB: a 280×280 JPEG scan of a held-out digit. */
async function scan(index = 1): Promise<Buffer> {
  const { dataset, split } = await heldOutDigits();
  return scannedDigit(dataset.samples[split.test[index]!]!.pixels, 10);
}

/**
 * The queued-bytes budget (MAX_QUEUED_BYTES) counts the images of the jobs that really wait. Jobs
 * that leave BullMQ without a result commit — removed by an operator (the dashboard's Empty, Clean,
 * Obliterate), failed for a contract violation — used to keep their bytes counted for ever: after
 * that, admission refused every upload to an empty queue.
 */
describe('queued bytes follow the jobs that exist', function () {
  this.timeout(90_000);
  const prefix = randomPrefix('queued-bytes');
  let gateway: Gateway;
  let worker: Awaited<ReturnType<typeof startWorker>> | undefined;
  let queue: Queue;
  let image: Buffer;

  before(async () => {
    image = await scan();
    // Room for three such images (declared lengths are reserved: multipart framing included).
    gateway = await startGateway(prefix, { MAX_QUEUED_BYTES: String(4 * (image.length + 400)) });
    queue = new Queue(QUEUES.inference, { connection: { url: testRedisUrl() }, prefix });
  });
  afterEach(function () {
    dumpLogsOnFailure(this, gateway, worker);
  });
  after(async () => {
    await stopAll(gateway, worker);
    await queue.obliterate({ force: true });
    await queue.close();
  });

  async function fillUp(): Promise<string[]> {
    const accepted: string[] = [];
    for (let i = 0; i < 8; i++) {
      const reply = await predict(gateway.url, image, { Prefer: 'respond-async' });
      if (reply.status === 202) accepted.push(String(reply.body.id));
      else expect(reply.body.detail, JSON.stringify(reply.body)).to.match(/Queued images hold \d+ bytes/);
    }
    const refused = await predict(gateway.url, image, { Prefer: 'respond-async' });
    expect(refused.status).to.equal(503);
    return accepted;
  }

  it('gives the bytes of obliterated jobs back: the next upload to the emptied queue is admitted', async () => {
    expect(await fillUp()).to.have.length.within(3, 4);
    await queue.obliterate({ force: true });
    const reply = await predict(gateway.url, image, { Prefer: 'respond-async' });
    expect(reply.status, JSON.stringify(reply.body)).to.equal(202);
  });

  it('gives the bytes of a job that failed without a result back', async () => {
    const accepted = await fillUp();
    // Every queued job (fair queuing keeps them in BullMQ's prioritized set) now breaks the
    // contract: the worker fails each for good, without a commit.
    const redis = testRedis();
    try {
      for (const job of await queue.getJobs(['waiting', 'prioritized']))
        await redis.hset(queue.toKey(job.id!), 'data', JSON.stringify({ kind: 'not-a-job' }));
    } finally {
      redis.disconnect();
    }
    worker = await startWorker(prefix);
    await until('the broken jobs failed', async () => (await queue.getFailedCount()) >= accepted.length);
    const reply = await predict(gateway.url, image, { Prefer: 'respond-async' });
    expect(reply.status, JSON.stringify(reply.body)).to.equal(202);
  });
});

/**
 * The drill, small: Redis's maxmemory set just above what it uses, a flood of asynchronous
 * uploads. What must hold: a refusal is a 503 problem+json with Retry-After (and one log line that
 * says so, not an "unhandled error" with a stack), Redis's own text never reaches an answer, and
 * every accepted job completes once memory is available again (none failed for good).
 */
describe('a full Redis', function () {
  this.timeout(180_000);
  const prefix = randomPrefix('full-redis');
  let dir: string;
  let redis: LocalRedis;
  let client: Redis;
  let gateway: Gateway;
  let worker: Awaited<ReturnType<typeof startWorker>>;
  let image: Buffer;

  before(async () => {
    image = await scan(2);
    dir = mkdtempSync(path.join(os.tmpdir(), 'conveyor-full-redis-'));
    redis = await startRedis({ dir });
    client = new Redis(redis.url, { maxRetriesPerRequest: null });
    await client.config('SET', 'maxmemory-policy', 'noeviction');
    const env = { REDIS_URL: redis.url };
    [gateway, worker] = await Promise.all([startGateway(prefix, env), startWorker(prefix, env)]);
  });
  afterEach(function () {
    dumpLogsOnFailure(this, gateway, worker);
  });
  after(async () => {
    await stopAll(gateway, worker);
    client.disconnect();
    await redis.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('refuses with 503 while it is full, and completes every job it accepted once memory is back', async () => {
    const warm = await predict(gateway.url, image);
    expect(warm.status, JSON.stringify(warm.body)).to.equal(200);
    const used = Number(/used_memory:(\d+)/.exec(await client.info('memory'))![1]);
    await client.config('SET', 'maxmemory', String(used + 1_500_000));

    const replies: Reply[] = [];
    await pool(
      Array.from({ length: 600 }, () => undefined),
      16,
      async () => void replies.push(await predict(gateway.url, image, { Prefer: 'respond-async' })),
    );
    const accepted = replies.filter((r) => r.status === 202).map((r) => String(r.body.id));
    const refused = replies.filter((r) => r.status !== 202);
    expect(refused.length, 'the drill filled Redis').to.be.greaterThan(0);
    for (const reply of refused) {
      expect(reply.status, JSON.stringify(reply.body)).to.equal(503);
      expect(reply.headers.get('content-type')).to.match(/^application\/problem\+json/);
      expect(reply.headers.get('retry-after')).to.match(/^\d+$/);
      expect(JSON.stringify(reply.body)).not.to.match(/OOM|maxmemory|script/);
    }

    await client.config('SET', 'maxmemory', '0');
    for (const id of accepted) {
      const done = await pollUntilDone(gateway.url, id, 60_000);
      expect(done.status, JSON.stringify(done.body)).to.equal(200);
      expect(done.body.status, JSON.stringify(done.body)).to.equal('completed');
    }
    const unhandled = gateway.records.filter((r) => r.msg === 'unhandled error');
    expect(unhandled, JSON.stringify(unhandled[0])).to.have.length(0);
    const overloaded = gateway.records.filter((r) => r.msg === 'refused: Redis is full');
    expect(overloaded.every((r) => r.err === undefined && r.stack === undefined)).to.equal(true);
  });
});

/**
 * What a completed job leaves in Redis, by design: its result and the monitor's short record of
 * its prediction, each with a TTL (RESULT_TTL_SECONDS, PREDICTION_TTL_SECONDS: 600 s by default), and
 * nothing else under its id — its image deleted, its queued bytes given back, BullMQ's copy removed.
 * Feedback joins without the monitor's record: the gateway sends the prediction with it. This is
 * the structure docs/redis-memory.md multiplies by the rate: one more key per job, or a longer TTL,
 * changes the arithmetic there (before: a 1 h result and a 24 h monitor record per job).
 */
describe('what a completed job keeps in Redis', function () {
  this.timeout(90_000);
  const prefix = randomPrefix('per-job');
  let gateway: Gateway;
  let worker: Awaited<ReturnType<typeof startWorker>>;
  let monitor: Awaited<ReturnType<typeof startMonitor>>;
  let redis: Redis;

  before(async () => {
    [gateway, worker, monitor] = await Promise.all([startGateway(prefix), startWorker(prefix), startMonitor(prefix)]);
    redis = testRedis();
  });
  afterEach(function () {
    dumpLogsOnFailure(this, gateway, worker, monitor);
  });
  after(async () => {
    await stopAll(gateway, worker, monitor);
    redis.disconnect();
  });

  it('keeps a result and a monitor record, each with a TTL of at most 600 s, and nothing else', async () => {
    const reply = await predict(gateway.url, await scan(3));
    expect(reply.status, JSON.stringify(reply.body)).to.equal(200);
    const id = String(reply.body.id);
    const keys = redisKeys(prefix);
    const monitorRecord = `${prefix}:monitor:pred:${id}`;
    await until('the monitor counted the prediction', async () => (await redis.exists(monitorRecord)) === 1);

    // BullMQ's own record of the completed job stays for the dashboard's recent jobs, bounded in
    // number (the last 100 per queue) and age (an hour) by INFERENCE_JOB_OPTIONS.removeOnComplete,
    // and small: it holds the job's descriptors, never the image.
    const bullRecord = `${prefix}:${QUEUES.inference}:${id}`;
    const withId = (await keysUnder(redis, prefix)).filter((k) => k.includes(id) && k !== bullRecord);
    expect(withId.sort()).to.deep.equal([monitorRecord, keys.result(id)].sort());
    for (const key of withId) expect(await redis.ttl(key), key).to.be.within(1, 600);
    expect(INFERENCE_JOB_OPTIONS.removeOnComplete).to.deep.equal({ age: 3600, count: 100 });
    expect(Number(await redis.call('MEMORY', 'USAGE', bullRecord))).to.be.below(4096);
    expect(await redis.hexists(keys.queuedImages, id)).to.equal(0);
    expect(Number((await redis.get(keys.queuedBytes)) ?? 0)).to.equal(0);
    // The streams are bounded by length: BullMQ's events and the predictions (PREDICTION_STREAM_MAXLEN).
    expect(await redis.type(keys.predictions)).to.equal('stream');
  });

  it('joins feedback to the prediction once the monitor no longer keeps its record', async () => {
    const reply = await predict(gateway.url, await scan(4));
    const id = String(reply.body.id);
    const { label } = reply.body.prediction as { label: string };
    const monitorRecord = `${prefix}:monitor:pred:${id}`;
    await until('the monitor counted the prediction', async () => (await redis.exists(monitorRecord)) === 1);
    await redis.del(monitorRecord); // as if PREDICTION_TTL_SECONDS had passed
    const quality = async () => {
      const lists = (await keysUnder(redis, prefix)).filter((k) => k.startsWith(`${prefix}:monitor:quality:`));
      return lists.length === 1 ? redis.llen(lists[0]!) : 0;
    };
    const before = await quality();
    const feedback = await request(`${gateway.url}/v1/feedback`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ jobId: id, label }),
    });
    expect(feedback.status, JSON.stringify(feedback.body)).to.equal(202);
    await until('the monitor joined the feedback', async () => (await quality()) === before + 1);
  });
});
