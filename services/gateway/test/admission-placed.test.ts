import { randomUUID } from 'node:crypto';
import { Queue } from 'bullmq';
import { expect } from 'chai';
import type { Redis } from 'ioredis';
import { ProblemError } from '@conveyor/shared/problem';
import { redisKeys } from '@conveyor/shared/contract/redis-keys';
import { randomPrefix, testRedis, testRedisUrl } from '../../../test/support/redis.js';
import type { Tenant } from '../src/http/context.js';
import { Admission } from '../src/jobs/admission.js';
import { BAND_SPAN, FairQueue } from '../src/jobs/fair-queue.js';
import type { InferenceQueue } from '../src/jobs/model-queues.js';

/**
 * Admission's reservation and fair queuing's placement in one call to Redis (Admission.admitPlaced,
 * RESERVE_AND_PLACE), against a real Redis and BullMQ queue: the same places, priorities and
 * refusals as the two calls one after the other, and nothing left reserved by a refusal.
 */
describe('admission with fair placement in one call (real Redis and BullMQ)', () => {
  const prefix = randomPrefix('admitplaced');
  const keys = redisKeys(prefix);
  let redis: Redis;
  let queue: InferenceQueue;
  const a: Tenant = { id: 'key:a', weight: 1, maxPriority: 'high' };
  const b: Tenant = { id: 'key:b', weight: 2, maxPriority: 'high' };

  const admissionOf = (maxDepth = 100) =>
    new Admission(
      redis,
      { reserved: keys.admissionReserved, queuedImages: keys.queuedImages, queuedBytes: keys.queuedBytes, input: keys.input },
      { maxDepth, maxQueuedBytes: 1_000_000 },
    );
  const fairOf = (maxDepth = 100, tenantShare = 1) =>
    new FairQueue(redis, keys, { tenantShare, maxDepth, pixelsPerCost: 1_000_000 });

  before(() => {
    redis = testRedis();
    queue = new Queue('inference', { connection: { url: testRedisUrl() }, prefix }) as unknown as InferenceQueue;
  });
  afterEach(async () => {
    await queue.obliterate({ force: true });
    const left = await redis.keys(`${prefix}:*`);
    if (left.length > 0) await redis.del(...left);
  });
  after(async () => {
    await queue.close();
    await redis.quit();
  });

  /** Admits and places one job of `tenant` in one call, then queues it as the submitter would; its BullMQ priority. */
  async function add(admission: Admission, fair: FairQueue, tenant: Tenant, bytes = 100, id = randomUUID()): Promise<number> {
    const admitted = await admission.admitPlaced(queue, id, bytes, undefined, fair.step(queue, tenant, id, 'normal'));
    await queue.add('predict', { kind: 'inference' } as never, { jobId: id, priority: admitted.fair.priority });
    admitted.place.queued(bytes);
    return admitted.fair.priority;
  }

  const refusal = (promise: Promise<unknown>) =>
    promise.then(
      () => undefined,
      (e: unknown) => e as ProblemError,
    );

  it('gives the priorities two separate calls give: a backlogged tenant 1/w apart, a newcomer the head', async () => {
    const admission = admissionOf();
    const fair = fairOf();
    const floods = [];
    for (let i = 0; i < 4; i++) floods.push(await add(admission, fair, a));
    expect(floods).to.deep.equal([1, 2, 3, 4].map((n) => BAND_SPAN + n));
    expect([await add(admission, fair, b), await add(admission, fair, b), await add(admission, fair, b)]).to.deep.equal([
      BAND_SPAN + 1,
      BAND_SPAN + 1,
      BAND_SPAN + 2,
    ]);
  });

  it('holds the reservation and its bytes until the job is queued', async () => {
    const id = randomUUID();
    const admitted = await admissionOf().admitPlaced(queue, id, 300, undefined, fairOf().step(queue, a, id, 'normal'));
    expect(await redis.zscore(keys.admissionReserved(queue.name), id)).to.not.equal(null);
    expect(await redis.get(keys.queuedBytes)).to.equal('300');
    expect(await redis.zcard(keys.fairPlaces(queue.name, a.id))).to.equal(1);
    admitted.place.release();
    expect(await redis.get(keys.queuedBytes)).to.equal('0');
  });

  it("refuses beyond the tenant's share with 429, and leaves nothing reserved", async () => {
    const admission = admissionOf(4);
    const fair = fairOf(4, 0.25); // one place per tenant
    await add(admission, fair, a, 100);
    const id = randomUUID();
    const problem = await refusal(admission.admitPlaced(queue, id, 250, undefined, fair.step(queue, a, id, 'normal')));
    expect(problem).to.be.instanceOf(ProblemError);
    expect(problem).to.include({ slug: 'rate-limited', status: 429 });
    expect(problem?.detail).to.match(/its share of the queue \(1 of 4\)/);
    expect(await redis.zscore(keys.admissionReserved(queue.name), id)).to.equal(null);
    expect(await redis.hexists(keys.queuedImages, id)).to.equal(0);
    expect(await redis.get(keys.queuedBytes)).to.equal('100');
    // Another tenant still gets its place.
    expect(await add(admission, fair, b)).to.equal(BAND_SPAN + 1);
  });

  it("refuses a full queue with 503 before placing: the tenant's places and finish time are untouched", async () => {
    const admission = admissionOf(1);
    const fair = fairOf(1);
    await add(admission, fair, a);
    const finish = await redis.hget(keys.fairFinish(queue.name), a.id);
    const id = randomUUID();
    const problem = await refusal(admission.admitPlaced(queue, id, 100, undefined, fair.step(queue, a, id, 'normal')));
    expect(problem).to.include({ slug: 'overloaded', status: 503 });
    expect(await redis.zcard(keys.fairPlaces(queue.name, a.id))).to.equal(1);
    expect(await redis.hget(keys.fairFinish(queue.name), a.id)).to.equal(finish);
  });
});
