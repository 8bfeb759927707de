import { randomUUID } from 'node:crypto';
import { expect } from 'chai';
import type { Redis } from 'ioredis';
import { JobStore } from '@conveyor/shared/contract/job-store';
import { redisKeys } from '@conveyor/shared/contract/redis-keys';
import { predictionEvent } from '@conveyor/shared/contract/events.contract';
import { ReplyMessage } from '@conveyor/shared/contract/jobs.contract';
import { problemCatalogue, problemType } from '@conveyor/shared/problem';
import { randomPrefix, testRedis } from '../../test/support/redis.js';
import { completedResult } from '../../test/support/results.js';
import { until } from '../../test/support/wait.js';

/** A job's life through its one owner, against a real Redis: put, take, commit once, read, feedback once. */
describe('job store (real Redis)', () => {
  const prefix = randomPrefix('job-store');
  const keys = redisKeys(prefix);
  let redis: Redis;
  let store: JobStore;

  before(() => {
    redis = testRedis();
    store = new JobStore(redis, keys, { resultTtlSeconds: 60, predictionStreamMaxLen: 100 });
  });
  after(() => redis.quit());

  it('hands the image to the worker, commits the result once, then the image is gone', async () => {
    const id = randomUUID();
    const image = Buffer.from([0xff, 0xd8, 0x00, 0x01]);
    await store.putInput(id, image, 60);
    const taken = await store.takeInput(id);
    expect(taken.finished).to.equal(false);
    expect(taken.finished ? undefined : taken.bytes).to.deep.equal(image);

    const result = completedResult(id);
    const options = { queue: 'inference' };
    expect(await store.commit(result, options)).to.equal('published');
    expect(await store.commit({ ...result, worker: 'late' }, options)).to.equal('already-published');
    expect((await store.readResult(id))?.worker).to.equal('w');
    expect(await store.takeInput(id)).to.deep.equal({ finished: true });
    expect(await redis.exists(keys.input(id))).to.equal(0);
  });

  it('takes no image from a job that is finished, and null from one whose image expired', async () => {
    const [done, expired] = [randomUUID(), randomUUID()];
    await store.putInput(done, Buffer.from([1, 2, 3]), 60);
    await redis.set(keys.result(done), JSON.stringify(completedResult(done)));
    expect(await store.takeInput(done)).to.deep.equal({ finished: true });
    expect(await store.takeInput(expired)).to.deep.equal({ finished: false, bytes: null });
    // Every byte value survives the trip (an image is binary, not text).
    const binary = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
    await store.putInput(expired, binary, 60);
    expect(await store.takeInput(expired)).to.deep.equal({ finished: false, bytes: binary });
  });

  it('hands the image over while Redis is full (an attempt waiting to commit must still read)', async () => {
    const id = randomUUID();
    await store.putInput(id, Buffer.from([9, 8, 7]), 60);
    const policy = (await redis.config('GET', 'maxmemory-policy')) as string[];
    await redis.config('SET', 'maxmemory-policy', 'noeviction');
    await redis.config('SET', 'maxmemory', '1'); // every write that needs memory is refused
    try {
      expect(await store.takeInput(id)).to.deep.equal({ finished: false, bytes: Buffer.from([9, 8, 7]) });
    } finally {
      await redis.config('SET', 'maxmemory', '0');
      await redis.config('SET', 'maxmemory-policy', policy[1] ?? 'noeviction');
    }
  });

  it('refuses a commit from an attempt that no longer holds the lock', async () => {
    const id = randomUUID();
    await redis.set(keys.jobLock('inference', id), 'the-new-owner', 'EX', 60);
    expect(await store.commit(completedResult(id), { queue: 'inference', token: 'mine' })).to.equal('lock-lost');
    expect(await store.readResult(id)).to.equal(undefined);
  });

  it('reads many results in order, undefined for the missing', async () => {
    const [a, b] = [randomUUID(), randomUUID()];
    await store.commit(completedResult(a), { queue: 'inference' });
    const results = await store.readResults([a, b]);
    expect(results.map((r) => r?.id)).to.deep.equal([a, undefined]);
  });

  it('records feedback once per job', async () => {
    const event = {
      kind: 'feedback',
      version: 1,
      jobId: randomUUID(),
      label: '7',
      at: new Date().toISOString(),
      requestId: 'r',
    } as const;
    expect(await store.recordFeedback(event)).to.equal('recorded');
    expect(await store.recordFeedback({ ...event, label: '1' })).to.equal('duplicate');
    expect(await redis.xlen(keys.feedbackStream)).to.equal(1);
  });

  it('cannot commit a prediction event when built without a stream length (a gateway commits only cancellations)', async () => {
    const gatewaySide = new JobStore(redis, keys, { resultTtlSeconds: 60 });
    const result = completedResult(randomUUID());
    let error: unknown;
    await gatewaySide
      .commit(result, { queue: 'inference', event: predictionEvent(result, 'digits', undefined) })
      .catch((e: unknown) => (error = e));
    expect(error).to.be.instanceOf(Error);
  });

  it('keeps a cancelled result instead of the worker’s when the job was marked cancelled, and tells its waiter so', async () => {
    const id = randomUUID();
    await store.putInput(id, Buffer.from([1, 2, 3]), 60);
    await redis.hset(keys.queuedImages, id, `3 ${prefix}:inference: ${prefix}:admission:reservations`);
    await redis.incrby(keys.queuedBytes, 3);
    const before = Number(await redis.get(keys.queuedBytes));
    expect(await store.markCancelled(id, 60)).to.equal('marked');
    const subscriber = testRedis();
    const replies: string[] = [];
    await subscriber.subscribe(keys.replies('gw-cancel'));
    subscriber.on('message', (_channel: string, message: string) => replies.push(message));
    const streamBefore = await redis.xlen(keys.predictions);
    const result = completedResult(id);
    const outcome = await store.commit(result, {
      queue: 'inference',
      replyTo: 'gw-cancel',
      event: predictionEvent(result, 'digits', undefined),
    });
    expect(outcome).to.equal('cancelled');
    const kept = await store.readResult(id);
    expect(kept?.status).to.equal('cancelled');
    expect(kept?.status === 'cancelled' && kept.error.slug).to.equal('cancelled');
    expect(await redis.xlen(keys.predictions), 'prediction events').to.equal(streamBefore);
    expect(await redis.exists(keys.input(id), keys.cancelled(id)), 'image and mark left').to.equal(0);
    expect(await redis.hexists(keys.queuedImages, id)).to.equal(0);
    expect(Number(await redis.get(keys.queuedBytes))).to.equal(before - 3);
    await until('the cancelled reply', () => Promise.resolve(replies.length > 0 || undefined));
    expect(JSON.parse(replies[0]!)).to.nested.include({ 'result.status': 'cancelled' });
    await subscriber.quit();
    // A finished job cannot be marked: its result stands.
    expect(await store.markCancelled(id, 60)).to.equal('finished');
  });

  it('tells the waiting gateway with the ReplyMessage of the result it kept, byte for byte', async () => {
    const id = randomUUID();
    const subscriber = testRedis();
    const replies: string[] = [];
    await subscriber.subscribe(keys.replies('gw-reply'));
    subscriber.on('message', (_channel: string, message: string) => replies.push(message));
    const result = completedResult(id);
    expect(await store.commit(result, { queue: 'inference', replyTo: 'gw-reply' })).to.equal('published');
    await until('the reply', () => Promise.resolve(replies.length > 0 || undefined));
    const expected: ReplyMessage = { kind: 'job-finished', version: 1, result };
    expect(replies[0]).to.equal(JSON.stringify(expected));
    expect(ReplyMessage.parse(JSON.parse(replies[0]!))).to.deep.equal(expected);
    expect(await redis.get(keys.result(id))).to.equal(JSON.stringify(result));
    await subscriber.quit();
  });

  it('keeps the same cancelled result whatever job it replaces (id, attempt, model kept; one problem)', async () => {
    const [a, b] = [randomUUID(), randomUUID()];
    for (const id of [a, b]) expect(await store.markCancelled(id, 60)).to.equal('marked');
    expect(await store.commit(completedResult(a), { queue: 'inference' })).to.equal('cancelled');
    expect(await store.commit({ ...completedResult(b), attempt: 2 }, { queue: 'inference' })).to.equal('cancelled');
    const [ka, kb] = await store.readResults([a, b]);
    expect(ka).to.deep.include({ id: a, status: 'cancelled', attempt: 1, model: completedResult(a).model });
    expect(kb).to.deep.include({ id: b, status: 'cancelled', attempt: 2 });
    expect(ka?.status === 'cancelled' && ka.error).to.deep.equal({
      type: problemType('cancelled'),
      title: problemCatalogue.cancelled.title,
      status: problemCatalogue.cancelled.status,
      detail: 'The job was cancelled while a worker ran it; its result was discarded',
      slug: 'cancelled',
    });
    expect(kb?.status === 'cancelled' && kb.error).to.deep.equal(ka?.status === 'cancelled' && ka.error);
  });

  it('does not mark a job whose result is kept already', async () => {
    const id = randomUUID();
    expect(await store.commit(completedResult(id), { queue: 'inference' })).to.equal('published');
    expect(await store.markCancelled(id, 60)).to.equal('finished');
    expect(await redis.exists(keys.cancelled(id))).to.equal(0);
    expect((await store.readResult(id))?.status).to.equal('completed');
  });
});

/**
 * ioredis's auto-pipelining copies a connection's custom commands into each pipeline when it opens
 * one: a script defined lazily, on first use, is missing from a pipeline that another command opened
 * in the same tick ("pipeline[functionName] is not a function", then an uncaught error in ioredis
 * that took a gateway down). Scripts are defined when the store is built.
 */
describe('job store on an auto-pipelined connection (real Redis)', () => {
  it('commits while another command is in flight on the same connection (the first commit included)', async () => {
    const { Redis } = await import('ioredis');
    const redis = new Redis(process.env.CONVEYOR_TEST_REDIS_URL ?? '', { enableAutoPipelining: true, lazyConnect: false });
    try {
      await redis.ping();
      const keys = redisKeys(randomPrefix('job-store-pipelined'));
      const store = new JobStore(redis, keys, { resultTtlSeconds: 60, predictionStreamMaxLen: 100 });
      const id = randomUUID();
      // Same tick: the GET opens the auto-pipeline, the commit joins it.
      const [, outcome] = await Promise.all([
        redis.get(keys.result(id)),
        store.commit(completedResult(id), { queue: 'inference' }),
      ]);
      expect(outcome).to.equal('published');
    } finally {
      redis.disconnect();
    }
  });
});
