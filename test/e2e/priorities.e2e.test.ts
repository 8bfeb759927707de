import { Queue } from 'bullmq';
import { expect } from 'chai';
import { QUEUES } from '@conveyor/shared/contract/jobs.contract';
import { redisKeys } from '@conveyor/shared/contract/redis-keys';
import { PredictionEvent } from '@conveyor/shared/contract/events.contract';
import { ApiKeyStore } from '../../services/gateway/src/access/api-keys.js';
import { band } from '../../services/gateway/src/jobs/fair-queue.js';
import { digitPng, heldOutDigits } from '../support/images.js';
import { pool, predict, type Reply } from '../support/http.js';
import { randomPrefix, testRedis, testRedisUrl } from '../support/redis.js';
import { dumpLogsOnFailure, startGateway, startWorker, stopAll, type Gateway } from '../support/services.js';
import { until } from '../support/wait.js';

/**
 * Request priorities (`Prefer: priority=`), with real gateways, a real Redis and real workers. The
 * order in which jobs complete is read from the predictions stream, where each commit appends its
 * event: no timing is asserted, only what was served before what.
 */
describe('request priorities', function () {
  this.timeout(300_000);
  let image: Buffer;
  let redis: ReturnType<typeof testRedis>;
  /**
   * Slack for the jobs a worker already held (WORKER_CONCURRENCY 4, doubled): taken before a later
   * job arrived, they may finish after it arrived and before it completed.
   */
  const inHand = 8;

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

  /** `count` async jobs at `prefer` (e.g. `priority=low`); their ids, and the replies' Preference-Applied. */
  async function submit(
    gateway: Gateway,
    headers: Record<string, string>,
    prefer: string,
    count: number,
    concurrency = 8,
  ): Promise<{ ids: string[]; applied: Set<string | null> }> {
    const ids: string[] = [];
    const applied = new Set<string | null>();
    await pool(
      Array.from({ length: count }, (_, i) => i),
      concurrency,
      async () => {
        const reply: Reply = await predict(gateway.url, image, { ...headers, prefer: `respond-async, ${prefer}` });
        expect(reply.status, JSON.stringify(reply.body)).to.equal(202);
        ids.push(String(reply.body.id));
        applied.add(reply.headers.get('preference-applied'));
      },
    );
    return { ids, applied };
  }

  /** How many of `others` completed before `id` (from position `from` of the completion order on). */
  /**
   * Jobs of `others` a worker took while job `id` waited: between its `added` and its `active` events
   * in BullMQ's event stream, one log of the queue written in the order Redis ran its scripts. With
   * strict priorities this is exact: 0, however slow the machine (a count of completions is not: the
   * jobs a worker already holds finish in any order).
   */
  const takenWhileWaiting = async (prefix: string, id: string, others: Set<string>) => {
    const events = await redis.xrange(`${prefix}:${QUEUES.inference}:events`, '-', '+');
    let waiting = false;
    let taken = 0;
    for (const [, fields] of events) {
      const event = new Map<string, string>();
      for (let i = 0; i + 1 < fields.length; i += 2) event.set(fields[i]!, fields[i + 1]!);
      const jobId = event.get('jobId') ?? '';
      if (event.get('event') === 'added' && jobId === id) waiting = true;
      else if (event.get('event') === 'active' && jobId === id) return taken;
      else if (waiting && event.get('event') === 'active' && others.has(jobId)) taken++;
    }
    throw new Error(`job ${id} was never taken (or its events were trimmed)`);
  };
  const completedBefore = (order: string[], id: string, others: Set<string>, from = 0) => {
    const at = order.indexOf(id);
    expect(at, `job ${id} completed`).to.be.at.least(0);
    return order.slice(from, at).filter((other) => others.has(other)).length;
  };

  describe('with API keys (fair queuing on)', () => {
    // One gateway for the three tests; each queues its jobs with no worker running, then starts one,
    // waits for all its jobs, and stops it: the next test starts from an empty queue.
    const prefix = randomPrefix('prio');
    let gateway: Gateway;
    let worker: Awaited<ReturnType<typeof startWorker>> | undefined;
    let store: ApiKeyStore;
    let queue: Queue;
    const auth = (key: string) => ({ authorization: `Bearer ${key}` });
    /** This test's completions, in order (the stream holds the earlier tests' too). */
    let from = 0;
    const completions = async () => (await completionOrder(prefix)).slice(from);

    before(async () => {
      gateway = await startGateway(prefix, { API_KEYS_REQUIRED: 'true', SYNC_WAIT_MAX_SECONDS: '300' });
      store = new ApiKeyStore(redis, redisKeys(prefix).apiKeys);
      queue = new Queue(QUEUES.inference, { connection: { url: testRedisUrl() }, prefix });
    });
    beforeEach(async () => {
      from = (await completionOrder(prefix)).length;
    });
    afterEach(async function () {
      dumpLogsOnFailure(this, gateway, worker);
      await stopAll(worker);
      worker = undefined;
    });
    after(async () => {
      await stopAll(gateway);
      await queue.close();
    });

    it('serves a high-priority job before a low-priority backlog queued before it, async and sync', async () => {
      const batch = await store.create('backfill', ['predict']);
      const app = await store.create('interactive', ['predict'], 1, 'high');
      const backlog = await submit(gateway, auth(batch.key), 'priority=low', 60);
      expect([...backlog.applied]).to.deep.equal(['respond-async, priority=low']);
      const low = new Set(backlog.ids);
      // Queued last, behind the whole backlog, before any worker runs.
      const early = await submit(gateway, auth(app.key), 'priority=high', 1);
      expect([...early.applied]).to.deep.equal(['respond-async, priority=high']);
      // Then a synchronous one, also behind the whole backlog: queued while the queue is paused, so
      // the backlog is certainly still there when the worker starts (a worker drains 60 digits in a
      // fraction of a second: waiting for it to be "under way" raced it).
      await queue.pause();
      worker = await startWorker(prefix);
      const pending = predict(gateway.url, image, { ...auth(app.key), prefer: 'wait=300, priority=high' });
      await until('the sync job queued behind the backlog', async () => {
        const counts = await queue.getJobCounts('prioritized');
        return (counts.prioritized ?? 0) >= 62 || undefined;
      });
      await queue.resume();
      const sync = await pending;
      expect(sync.status, JSON.stringify(sync.body)).to.equal(200);
      expect(sync.headers.get('preference-applied')).to.equal('wait=300, priority=high');
      await until('every job done', async () => (await completions()).length >= 62, 240_000);

      const order = await completions();
      const syncId = String(sync.body.id);
      for (const [what, id] of [
        ['early', early.ids[0]!],
        ['sync', syncId],
      ] as const) {
        expect(await takenWhileWaiting(prefix, id, low), `low jobs taken while the ${what} high one waited`).to.equal(0);
        expect(completedBefore(order, id, low), `low jobs completed before the ${what} high one`).to.be.at.most(inHand);
      }
    });

    it('serves a key whose maximum is normal at normal when it asks for high (and says so)', async () => {
      const capped = await store.create('capped', ['predict']); // maximum: normal (the default)
      const allowed = await store.create('allowed', ['predict'], 1, 'high');
      // Each key first queues a normal backlog of its own: a job in its normal band goes after that
      // backlog (its own finish time), a job in the high band before it.
      const cappedBacklog = new Set((await submit(gateway, auth(capped.key), 'priority=normal', 20)).ids);
      const allowedBacklog = new Set((await submit(gateway, auth(allowed.key), 'priority=normal', 20)).ids);
      const asked = await submit(gateway, auth(capped.key), 'priority=high', 1);
      expect([...asked.applied]).to.deep.equal(['respond-async, priority=normal']);
      const served = await submit(gateway, auth(allowed.key), 'priority=high', 1);
      expect([...served.applied]).to.deep.equal(['respond-async, priority=high']);
      worker = await startWorker(prefix);
      await until('every job done', async () => (await completions()).length >= 42, 240_000);

      const order = await completions();
      expect(completedBefore(order, asked.ids[0]!, cappedBacklog), "the capped key's own backlog before its job").to.be.at.least(
        20 - inHand,
      );
      expect(
        completedBefore(order, served.ids[0]!, allowedBacklog),
        "the allowed key's own backlog before its job",
      ).to.be.at.most(inHand);
    });

    it('holds priorities across two tenants: high, then normal, then low, whoever queued first', async () => {
      const a = await store.create('a', ['predict'], 1, 'high');
      const b = await store.create('b', ['predict']);
      const aLow = new Set((await submit(gateway, auth(a.key), 'priority=low', 30)).ids);
      const bNormal = new Set((await submit(gateway, auth(b.key), 'priority=normal', 30)).ids);
      const aHigh = new Set((await submit(gateway, auth(a.key), 'priority=high', 3)).ids);
      worker = await startWorker(prefix);
      await until('every job done', async () => (await completions()).length >= 63, 240_000);

      const order = await completions();
      const lastOf = (ids: Set<string>) => Math.max(...[...ids].map((id) => order.indexOf(id)));
      const countBefore = (last: number, of: Set<string>) => order.slice(0, last).filter((id) => of.has(id)).length;
      // Fair queuing alone would alternate a and b; first come, first served would run a's low jobs first.
      expect(countBefore(lastOf(aHigh), new Set([...aLow, ...bNormal])), "others before a's last high job").to.be.at.most(inHand);
      expect(countBefore(lastOf(bNormal), aLow), "a's low jobs before b's last normal job").to.be.at.most(inHand);
    });
  });

  describe('with keys off and FAIR_QUEUING=false', () => {
    const prefix = randomPrefix('prio-fifo');
    let gateway: Gateway;
    let worker: Awaited<ReturnType<typeof startWorker>> | undefined;
    let queue: Queue;

    before(async () => {
      queue = new Queue(QUEUES.inference, { connection: { url: testRedisUrl() }, prefix });
      gateway = await startGateway(prefix, { FAIR_QUEUING: 'false' });
    });
    afterEach(function () {
      dumpLogsOnFailure(this, gateway, worker);
    });
    after(async () => {
      await stopAll(gateway, worker);
      await queue.close();
    });

    it('caps an address at normal by default, and still serves the bands in order', async () => {
      const low = await submit(gateway, {}, 'priority=low', 40);
      const asked = await submit(gateway, {}, 'priority=high', 1);
      // ADDRESS_MAX_PRIORITY is normal unless the operator raises it: an anonymous client cannot jump the queue.
      expect([...asked.applied]).to.deep.equal(['respond-async, priority=normal']);
      expect((await queue.getJob(asked.ids[0]!))?.opts.priority).to.equal(band('normal').first);
      worker = await startWorker(prefix);
      await until('every job done', async () => (await completionOrder(prefix)).length >= 41, 240_000);

      // Without fair queuing the bands alone order the queue: the normal job, queued last, goes first.
      const order = await completionOrder(prefix);
      expect(completedBefore(order, asked.ids[0]!, new Set(low.ids)), 'low jobs before the normal one').to.be.at.most(inHand);
    });
  });
});
