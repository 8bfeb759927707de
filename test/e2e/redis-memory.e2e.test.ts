import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Queue } from 'bullmq';
import { expect } from 'chai';
import { Redis } from 'ioredis';
import { QUEUES } from '@conveyor/shared/contract/queue.contract';
import { startRedis, type LocalRedis } from '../../scripts/lib/redis-server.js';
import { heldOutDigits, scannedDigit } from '../support/images.js';
import { pollUntilDone, pool, predict, type Reply } from '../support/http.js';
import { randomPrefix, testRedis, testRedisUrl } from '../support/redis.js';
import { dumpLogsOnFailure, startGateway, startWorker, stopAll, type Gateway } from '../support/services.js';
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
    // Every waiting job now breaks the contract: the worker fails each for good, without a commit.
    const redis = testRedis();
    try {
      for (const job of await queue.getJobs(['waiting']))
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
