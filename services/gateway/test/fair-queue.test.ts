import { randomUUID } from 'node:crypto';
import { Queue } from 'bullmq';
import { expect } from 'chai';
import type { Redis } from 'ioredis';
import { redisKeys } from '@conveyor/shared/contract/redis-keys';
import { randomPrefix, testRedis, testRedisUrl } from '../../../test/support/redis.js';
import type { Tenant } from '../src/http/context.js';
import { BAND_SPAN, FairQueue } from '../src/jobs/fair-queue.js';
import type { InferenceQueue } from '../src/jobs/model-queues.js';

/**
 * The tags fair queuing gives jobs, against a real Redis and a real BullMQ queue (no worker: the
 * jobs stay in BullMQ's prioritized set, which is where the virtual time is read from).
 */
describe('fair queue tags (real Redis and BullMQ)', () => {
  const prefix = randomPrefix('fairtags');
  const keys = redisKeys(prefix);
  let redis: Redis;
  let queue: InferenceQueue;
  let fair: FairQueue;
  const base = BAND_SPAN;
  const a: Tenant = { id: 'key:a', weight: 1 };
  const b: Tenant = { id: 'key:b', weight: 2 };

  before(() => {
    redis = testRedis();
    queue = new Queue('inference', { connection: { url: testRedisUrl() }, prefix }) as unknown as InferenceQueue;
    fair = new FairQueue(redis, keys, { tenantShare: 1, maxDepth: 1000, pixelsPerCost: 1_000_000 });
  });
  afterEach(() => queue.obliterate({ force: true }));
  after(async () => {
    await queue.close();
    await redis.quit();
  });

  /** Places and queues one job of `tenant`; its priority. */
  async function add(tenant: Tenant): Promise<number> {
    const id = randomUUID();
    const { priority } = await fair.place(queue, tenant, id);
    await queue.add('predict', { kind: 'inference' } as never, { jobId: id, priority });
    return priority;
  }

  it('gives a backlogged tenant tags 1/w apart, and a newcomer the queue head', async () => {
    const floods = [];
    for (let i = 0; i < 5; i++) floods.push(await add(a));
    expect(floods).to.deep.equal([1, 2, 3, 4, 5].map((n) => base + n));
    // b (weight 2) starts at the head's tag (V) and advances by 1/2: two jobs per unit.
    const polite = [await add(b), await add(b), await add(b)];
    expect(polite).to.deep.equal([base + 1, base + 1, base + 2]);
  });

  it('restarts virtual time when the queue is found empty', async () => {
    for (let i = 0; i < 3; i++) await add(a);
    await queue.drain();
    expect(await add(a)).to.equal(base + 1);
  });

  it('charges a large image to its tenant: its next job goes later', async () => {
    const id = randomUUID();
    const place = await fair.place(queue, a, id);
    await queue.add('predict', { kind: 'inference' } as never, { jobId: id, priority: place.priority });
    place.charge(40_000_000); // 40 Mpx at 1 Mpx per unit: 40 more units
    // (charge is fire-and-forget; the next command on the connection runs after it)
    expect(await add(a)).to.equal(base + 1 + 41);
  });

  it('holds every tag below the band cap when virtual time runs past it', async () => {
    await add(a);
    await redis.hset(keys.fairFinish('inference'), a.id, String(BAND_SPAN + 12));
    const capped = await add(a);
    expect(capped).to.equal(base + BAND_SPAN);
    expect(capped).to.be.below(2 ** 21);
  });
});
