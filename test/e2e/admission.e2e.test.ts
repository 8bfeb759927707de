import { Queue } from 'bullmq';
import { expect } from 'chai';
import { QUEUES } from '@conveyor/shared/contract/jobs.contract';
import { redisKeys } from '@conveyor/shared/contract/redis-keys';
import { digitPng, heldOutDigits, scannedDigit } from '../support/images.js';
import { predict } from '../support/http.js';
import { until } from '../support/wait.js';
import { randomPrefix, testRedis, testRedisUrl } from '../support/redis.js';
import { dumpLogsOnFailure, startGateway, startWorker, stopAll, type Gateway } from '../support/services.js';

/**
 * The queue-depth bound holds under concurrent requests and across gateway instances: with no
 * worker draining the queue, exactly MAX_QUEUE_DEPTH jobs get in, the rest are told 503 + Retry-After.
 */
describe('admission', function () {
  this.timeout(60_000);
  const prefix = randomPrefix('admission');
  const limit = 50;
  let gateways: Gateway[];
  let queue: Queue;
  let image: Buffer;

  before(async () => {
    gateways = await Promise.all(
      [0, 1].map(() =>
        startGateway(prefix, {
          MAX_QUEUE_DEPTH: String(limit),
          // 150 concurrent requests stand for 150 clients here, though they share one address.
          FAIR_TENANT_SHARE: '1',
          MAX_CONNECTIONS_PER_CLIENT: '200',
        }),
      ),
    );
    queue = new Queue(QUEUES.inference, { connection: { url: testRedisUrl() }, prefix });
    const { dataset, split } = await heldOutDigits();
    image = await digitPng(dataset.samples[split.test[0]!]!.pixels);
  });
  afterEach(function () {
    dumpLogsOnFailure(this, ...gateways);
  });
  after(async () => {
    await stopAll(...gateways);
    await queue.obliterate({ force: true });
    await queue.close();
  });

  it('admits exactly MAX_QUEUE_DEPTH jobs from 150 concurrent requests to two gateways', async () => {
    const replies = await Promise.all(
      Array.from({ length: 150 }, (_, i) => predict(gateways[i % 2]!.url, image, { Prefer: 'respond-async' })),
    );
    const statuses = replies.map((r) => r.status);
    expect(statuses.filter((s) => s === 202)).to.have.length(limit);
    expect(statuses.filter((s) => s === 503)).to.have.length(150 - limit);
    const refused = replies.find((r) => r.status === 503)!;
    expect(refused.headers.get('retry-after')).to.equal('5');
    expect(refused.body).to.include({ type: '/problems/overloaded' });
    expect(await queue.getJobCountByTypes('waiting', 'prioritized')).to.equal(limit);
  });

  it('gives every reservation back: once the queue drains, requests are admitted again', async () => {
    await queue.drain();
    const reply = await predict(gateways[0]!.url, image, { Prefer: 'respond-async' });
    expect(reply.status).to.equal(202);
  });

  describe('by bytes', () => {
    const bytesPrefix = randomPrefix('admission-bytes');
    let gateway: Gateway;
    let worker: Awaited<ReturnType<typeof startWorker>> | undefined;
    let scan: Buffer;
    before(async () => {
      const { dataset, split } = await heldOutDigits();
      scan = await scannedDigit(dataset.samples[split.test[1]!]!.pixels, 10); // a 280×280 JPEG, a few KB
      // Room for three such images (declared lengths are reserved: multipart framing included).
      gateway = await startGateway(bytesPrefix, { MAX_QUEUED_BYTES: String(4 * (scan.length + 400)) });
    });
    afterEach(function () {
      dumpLogsOnFailure(this, gateway, worker);
    });
    after(() => stopAll(gateway, worker));

    it('refuses with 503 once the queued images reach MAX_QUEUED_BYTES, and admits again as workers take them', async () => {
      const statuses: number[] = [];
      for (let i = 0; i < 8; i++) statuses.push((await predict(gateway.url, scan, { Prefer: 'respond-async' })).status);
      const accepted = statuses.filter((s) => s === 202).length;
      expect(accepted, statuses.join(',')).to.be.within(3, 4);
      const refused = await predict(gateway.url, scan, { Prefer: 'respond-async' });
      expect(refused.status).to.equal(503);
      expect(refused.body.detail).to.match(/Queued images hold \d+ bytes/);
      worker = await startWorker(bytesPrefix);
      // Admitted again once the worker has taken the queued images (it may not have the instant it is ready).
      const retried = await until('admitted again', async () => {
        const reply = await predict(gateway.url, scan);
        return reply.status === 503 && /Queued images/.test(String(reply.body.detail)) ? undefined : reply;
      });
      expect(retried.status, JSON.stringify(retried.body)).to.equal(200);
      // Every reservation is given back and every stored image taken off: once the queue is empty,
      // the count of queued bytes is zero again.
      const redis = testRedis();
      try {
        const counter = redisKeys(bytesPrefix).queuedBytes;
        await until('queued bytes back to 0', async () => (await redis.get(counter)) === '0', 10_000);
      } finally {
        redis.disconnect();
      }
    });

    it('answers 503, not 500, when Redis itself is full (maxmemory with noeviction)', async () => {
      const redis = testRedis();
      const [, before] = (await redis.config('GET', 'maxmemory')) as [string, string];
      const [, policy] = (await redis.config('GET', 'maxmemory-policy')) as [string, string];
      try {
        const used = Number(/used_memory:(\d+)/.exec(await redis.info('memory'))![1]);
        await redis.config('SET', 'maxmemory-policy', 'noeviction');
        await redis.config('SET', 'maxmemory', String(used + 256 * 1024));
        const big = await scannedDigit((await heldOutDigits()).dataset.samples[0]!.pixels, 60); // ~1680 px, a few hundred KB
        const statuses = new Set<number>();
        for (let i = 0; i < 6 && !statuses.has(503); i++) {
          // A gateway with the default byte budget: only Redis itself can refuse these.
          const reply = await predict(gateways[0]!.url, big, { Prefer: 'respond-async' });
          statuses.add(reply.status);
          if (reply.status === 503)
            expect(reply.body).to.include({ type: '/problems/overloaded', detail: 'The queue store is full; retry later' });
        }
        expect([...statuses]).to.include(503);
        expect([...statuses].filter((s) => s >= 500 && s !== 503)).to.deep.equal([]);
      } finally {
        await redis.config('SET', 'maxmemory', before);
        await redis.config('SET', 'maxmemory-policy', policy);
        redis.disconnect();
      }
    });
  });
});
