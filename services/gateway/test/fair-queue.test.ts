import { randomUUID } from 'node:crypto';
import { Queue } from 'bullmq';
import { expect } from 'chai';
import type { Redis } from 'ioredis';
import { redisKeys } from '@conveyor/shared/contract/redis-keys';
import { randomPrefix, testRedis, testRedisUrl } from '../../../test/support/redis.js';
import type { Tenant } from '../src/http/context.js';
import type { Priority } from '../src/http/priority.js';
import { band, BAND_SPAN, FairQueue, PriorityBands } from '../src/jobs/fair-queue.js';
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
  const a: Tenant = { id: 'key:a', weight: 1, maxPriority: 'high' };
  const b: Tenant = { id: 'key:b', weight: 2, maxPriority: 'high' };

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

  /** Places and queues one job of `tenant` at `level`; its BullMQ priority. */
  async function add(tenant: Tenant, level: Priority = 'normal', id = randomUUID()): Promise<number> {
    const { priority } = await fair.place(queue, tenant, id, level);
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
    const place = await fair.place(queue, a, id, 'normal');
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

describe('priority bands (arithmetic)', () => {
  it('puts high in the smallest numbers, then normal, then low, apart and within BullMQ’s range', () => {
    const [high, normal, low] = (['high', 'normal', 'low'] as const).map(band);
    // BullMQ pops the lowest priority; 0 means "no priority" (its plain wait list, served first).
    expect(high!.first).to.equal(1);
    expect(high!.last).to.be.below(normal!.first);
    expect(normal!.last).to.be.below(low!.first);
    expect(low!.last).to.be.at.most(2 ** 21 - 1); // BullMQ's PRIORITY_LIMIT
    for (const b of [high!, normal!, low!]) expect(b.last - b.first + 1).to.equal(BAND_SPAN);
    // The normal band is where every job went before there were request priorities.
    expect(normal!.first).to.equal(BAND_SPAN + 1);
  });
});

describe('fair queuing within priority bands (real Redis and BullMQ)', () => {
  const prefix = randomPrefix('fairbands');
  const keys = redisKeys(prefix);
  let redis: Redis;
  let queue: InferenceQueue;
  const a: Tenant = { id: 'key:a', weight: 1, maxPriority: 'high' };
  const b: Tenant = { id: 'key:b', weight: 1, maxPriority: 'high' };
  const fairWith = (maxDepth: number, tenantShare = 1) =>
    new FairQueue(redis, keys, { tenantShare, maxDepth, pixelsPerCost: 1_000_000 });
  let fair: FairQueue;

  before(() => {
    redis = testRedis();
    queue = new Queue('inference', { connection: { url: testRedisUrl() }, prefix }) as unknown as InferenceQueue;
    fair = fairWith(1000);
  });
  afterEach(() => queue.obliterate({ force: true }));
  after(async () => {
    await queue.close();
    await redis.quit();
  });

  async function add(tenant: Tenant, level: Priority, id: string = randomUUID(), on = fair): Promise<number> {
    const { priority } = await on.place(queue, tenant, id, level);
    await queue.add('predict', { kind: 'inference' } as never, { jobId: id, priority });
    return priority;
  }

  /** Job ids in the order a worker would take them (BullMQ pops the lowest score of its prioritized set). */
  const takeOrder = () => redis.zrange(queue.keys.prioritized!, 0, -1);

  it('without fair queuing, gives each job its band’s first priority', async () => {
    const bands = new PriorityBands();
    const tenant: Tenant = { id: 'ip:x', weight: 1, maxPriority: 'normal' };
    for (const level of ['high', 'normal', 'low'] as const) {
      expect((await bands.place(queue, tenant, randomUUID(), level)).priority).to.equal(band(level).first);
    }
  });

  it('gives each band its own virtual time and finish times', async () => {
    for (let i = 0; i < 5; i++) await add(a, 'normal');
    // a's normal backlog does not push its high or low jobs back: each band starts at its own head.
    expect(await add(a, 'high')).to.equal(band('high').first);
    expect(await add(a, 'low')).to.equal(band('low').first);
    expect(await add(a, 'high')).to.equal(band('high').first + 1);
    // b, new in the high band, starts at that band's head (a's first high job), not at normal's.
    expect(await add(b, 'high')).to.equal(band('high').first);
    expect(await add(a, 'normal')).to.equal(band('normal').first + 5);
  });

  it('has a worker take every higher band before any lower one, whatever the arrival order', async () => {
    const low = ['l1', 'l2'];
    const high = ['h1', 'h2'];
    // Each tenant's backlog in the lower bands is far ahead of its virtual time in the higher ones.
    for (const id of low) await add(a, 'low', id);
    for (let i = 0; i < 2; i++) await add(b, 'normal');
    for (let i = 0; i < 20; i++) await add(a, 'normal');
    await add(b, 'high', high[0]);
    await add(a, 'high', high[1]);
    const rank = (id: string) => (high.includes(id) ? 0 : low.includes(id) ? 2 : 1);
    const ranks = (await takeOrder()).map(rank);
    expect(ranks).to.have.length(26);
    expect(ranks.join('')).to.equal([...ranks].sort().join(''));
    expect(ranks.slice(0, 2)).to.deep.equal([0, 0]);
    expect(ranks.slice(-2)).to.deep.equal([2, 2]);
  });

  it('restarts a band’s virtual time when that band is found empty, while the others keep theirs', async () => {
    const highIds = [randomUUID(), randomUUID(), randomUUID()];
    for (const id of highIds) await add(a, 'high', id);
    for (let i = 0; i < 4; i++) await add(a, 'normal');
    // The workers took the high band's jobs; the normal band still has its backlog.
    for (const id of highIds) await queue.remove(id);
    expect(await add(a, 'high')).to.equal(band('high').first);
    expect(await redis.hget(keys.fairFinish('inference', 'high'), a.id)).to.equal('1');
    expect(await add(a, 'normal')).to.equal(band('normal').first + 4);
  });

  it('holds a band’s tags below its end when its virtual time runs past it', async () => {
    await add(a, 'high');
    await redis.hset(keys.fairFinish('inference', 'high'), a.id, String(BAND_SPAN + 12));
    const capped = await add(a, 'high');
    expect(capped).to.equal(band('high').last);
    expect(capped).to.be.below(band('normal').first);
  });

  it('counts a tenant’s places in every band against its one share', async () => {
    const small = fairWith(4, 0.75); // three places per tenant
    await add(a, 'high', randomUUID(), small);
    await add(a, 'normal', randomUUID(), small);
    await add(a, 'low', randomUUID(), small);
    for (const level of ['high', 'normal', 'low'] as const) {
      const refused = await small.place(queue, a, randomUUID(), level).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(refused, level).to.have.property('slug', 'rate-limited');
    }
    // Another tenant still gets its places.
    expect(await add(b, 'high', randomUUID(), small)).to.equal(band('high').first);
  });
});
