import { Queue } from 'bullmq';
import { expect } from 'chai';
import { QUEUES } from '@conveyor/shared/contract/jobs.contract';
import { redisKeys } from '@conveyor/shared/contract/redis-keys';
import { PredictionEvent } from '@conveyor/shared/contract/events.contract';
import { ApiKeyStore } from '../../services/gateway/src/access/api-keys.js';
import { digitPng, heldOutDigits } from '../support/images.js';
import { pool, predict, type Reply } from '../support/http.js';
import { randomPrefix, testRedis, testRedisUrl } from '../support/redis.js';
import { dumpLogsOnFailure, startGateway, startWorker, stopAll, type Gateway } from '../support/services.js';
import { until } from '../support/wait.js';

/**
 * Fair queuing between tenants (API keys), with real gateways, a real Redis and real workers. The
 * order in which jobs complete is read from the predictions stream, where each commit appends its
 * event: no timing is asserted, only who was served before whom.
 */
describe('fair queuing between tenants', function () {
  this.timeout(180_000);
  let image: Buffer;
  let redis: ReturnType<typeof testRedis>;

  before(async () => {
    redis = testRedis();
    const { dataset, split } = await heldOutDigits();
    image = await digitPng(dataset.samples[split.test[0]!]!.pixels);
  });
  after(() => redis.disconnect());

  /** Job ids in the order their results were committed. */
  async function completionOrder(prefix: string): Promise<string[]> {
    const entries = await redis.xrange(redisKeys(prefix).predictions, '-', '+');
    return entries.map(([, fields]) => PredictionEvent.parse(JSON.parse(fields[1]!)).jobId);
  }

  async function submit(gateway: Gateway, key: string, count: number, concurrency = 8): Promise<string[]> {
    const ids: string[] = [];
    await pool(
      Array.from({ length: count }, (_, i) => i),
      concurrency,
      async () => {
        const reply: Reply = await predict(gateway.url, image, { authorization: `Bearer ${key}`, prefer: 'respond-async' });
        expect(reply.status, JSON.stringify(reply.body)).to.equal(202);
        ids.push(String(reply.body.id));
      },
    );
    return ids;
  }

  describe('with keys of weights 3, 2 and 1, all backlogged', () => {
    const prefix = randomPrefix('fair');
    let gateway: Gateway;
    let worker: Awaited<ReturnType<typeof startWorker>> | undefined;

    before(async () => {
      gateway = await startGateway(prefix, { API_KEYS_REQUIRED: 'true' });
    });
    afterEach(function () {
      dumpLogsOnFailure(this, gateway, worker);
    });
    after(() => stopAll(gateway, worker));

    it('completes their jobs in the shares 3:2:1 (within ±10 %) while all three wait', async () => {
      const store = new ApiKeyStore(redis, redisKeys(prefix).apiKeys);
      const tenants = await Promise.all(
        ([3, 2, 1] as const).map(async (weight) => ({ weight, ...(await store.create(`w${weight}`, ['predict'], weight)) })),
      );
      // One after the other, the heaviest first: first come, first served would finish all of
      // weight 3's jobs before any of the others'.
      const perTenant = 120;
      const owner = new Map<string, number>();
      for (const tenant of tenants) {
        for (const id of await submit(gateway, tenant.key, perTenant)) owner.set(id, tenant.weight);
      }
      worker = await startWorker(prefix);
      await until('every job done', async () => (await completionOrder(prefix)).length >= 3 * perTenant, 120_000);

      // While all three are backlogged: weight 1 gets 1/6 of a window of 180 (30 of its 120),
      // weight 3 gets 3/6 (90 of its 120), so none runs dry inside the window.
      const window = (await completionOrder(prefix)).slice(0, 180);
      const shares = [3, 2, 1].map((w) => window.filter((id) => owner.get(id) === w).length / window.length);
      const expected = [3 / 6, 2 / 6, 1 / 6];
      shares.forEach((share, i) => {
        expect(share, `share of weight ${3 - i}: ${shares.map((s) => s.toFixed(3)).join(' / ')}`).to.be.within(
          expected[i]! * 0.9,
          expected[i]! * 1.1,
        );
      });
    });
  });

  describe('a flood from one tenant', () => {
    const prefix = randomPrefix('flood');
    let gateway: Gateway;
    let worker: Awaited<ReturnType<typeof startWorker>> | undefined;
    let queue: Queue;

    before(async () => {
      gateway = await startGateway(prefix, { API_KEYS_REQUIRED: 'true' });
      queue = new Queue(QUEUES.inference, { connection: { url: testRedisUrl() }, prefix });
    });
    afterEach(function () {
      dumpLogsOnFailure(this, gateway, worker);
    });
    after(async () => {
      await stopAll(gateway, worker);
      await queue.close();
    });

    it("serves a polite tenant's jobs ahead of the flood queued before them", async () => {
      const store = new ApiKeyStore(redis, redisKeys(prefix).apiKeys);
      const flooder = await store.create('flood', ['predict']);
      const polite = await store.create('polite', ['predict']);
      const floodJobs = new Set(await submit(gateway, flooder.key, 1500, 16));
      // Phase 1: queued behind the whole flood, before any worker runs.
      const early = await submit(gateway, polite.key, 10, 1);
      worker = await startWorker(prefix);
      // Phase 2: while the workers are busy with the flood's backlog.
      await until('the workers under way', async () => (await completionOrder(prefix)).length >= 200, 60_000);
      const backlog = await queue.getJobCountByTypes('waiting', 'prioritized');
      expect(backlog, 'the flood still has a backlog when the polite jobs arrive').to.be.greaterThan(500);
      // Each late job's own arrival: the completions counted for it start just before it is sent
      // (not before the first of them: on a loaded machine sending ten takes a while, and the
      // flood's jobs completed meanwhile were never behind the later polite ones).
      const late: { id: string; from: number }[] = [];
      for (let i = 0; i < 10; i++) {
        const from = (await completionOrder(prefix)).length;
        const [id] = await submit(gateway, polite.key, 1, 1);
        late.push({ id: id!, from });
      }
      await until('every job done', async () => (await completionOrder(prefix)).length >= 1520, 120_000);

      const order = await completionOrder(prefix);
      // For each polite job: how many flood jobs (all queued before it) completed between its arrival and its completion.
      const floodAhead = (id: string, from: number) =>
        order.slice(from, order.indexOf(id)).filter((other) => floodJobs.has(other)).length;
      const earlyAhead = early.map((id) => floodAhead(id, 0));
      const lateAhead = late.map(({ id, from }) => floodAhead(id, from));
      // Each polite job waits for about as many flood jobs as polite jobs went before it (equal
      // weights alternate), plus what the workers had already taken: never for the backlog.
      const k = 10 + 2 * 8;
      expect(Math.max(...earlyAhead), `flood jobs completed before each early polite job: ${earlyAhead.join(',')}`).to.be.at.most(
        k,
      );
      expect(Math.max(...lateAhead), `flood jobs completed before each late polite job: ${lateAhead.join(',')}`).to.be.at.most(k);
    });
  });

  describe('a share of the queue per tenant', () => {
    const prefix = randomPrefix('share');
    let gateway: Gateway;

    before(async () => {
      gateway = await startGateway(prefix, { API_KEYS_REQUIRED: 'true', MAX_QUEUE_DEPTH: '20', FAIR_TENANT_SHARE: '0.5' });
    });
    afterEach(function () {
      dumpLogsOnFailure(this, gateway);
    });
    after(() => stopAll(gateway));

    it('refuses a tenant beyond its share with 429 and Retry-After, and still admits another', async () => {
      const store = new ApiKeyStore(redis, redisKeys(prefix).apiKeys);
      const greedy = await store.create('greedy', ['predict']);
      const other = await store.create('other', ['predict']);
      const replies: Reply[] = [];
      for (let i = 0; i < 12; i++) {
        replies.push(await predict(gateway.url, image, { authorization: `Bearer ${greedy.key}`, prefer: 'respond-async' }));
      }
      expect(replies.map((r) => r.status)).to.deep.equal([...Array<number>(10).fill(202), 429, 429]);
      expect(replies[10]!.headers.get('retry-after')).to.match(/^\d+$/);
      expect(replies[10]!.headers.get('content-type')).to.contain('application/problem+json');
      const polite = await predict(gateway.url, image, { authorization: `Bearer ${other.key}`, prefer: 'respond-async' });
      expect(polite.status, JSON.stringify(polite.body)).to.equal(202);
    });
  });
});
