import { randomUUID } from 'node:crypto';
import { expect } from 'chai';
import type { Redis } from 'ioredis';
import { cacheEntryKey, imageDigest, type CachedAnswer } from '@conveyor/shared/contract/cache.contract';
import { redisKeys } from '@conveyor/shared/contract/redis-keys';
import { ENTRY_OVERHEAD_BYTES, ResultCacheStore, type ResultCacheOptions } from '@conveyor/shared/contract/result-cache-store';
import { randomPrefix, testRedis } from '../../test/support/redis.js';

/**
 * The result cache's store against a real Redis: its Lua scripts are what keep 100 identical
 * requests to one job, a model within its byte budget and a client within its share.
 */
describe('result cache store (real Redis)', () => {
  const prefix = randomPrefix('result-cache');
  const keys = redisKeys(prefix);
  let redis: Redis;
  let store: ResultCacheStore;
  const served = { version: 'v1', spec: 'spec' };

  const answer = (label: string): CachedAnswer => ({
    kind: 'cached-answer',
    version: 1,
    model: { name: 'digits', version: 'v1' },
    prediction: { label, index: 0, confidence: 0.9, top: [{ label, confidence: 0.9 }] },
    input: { format: 'png', bytes: 100, width: 28, height: 28, brightness: 0.5, contrast: 0.2, inkRatio: 0.1, inverted: false },
    worker: 'w',
    finishedAt: new Date().toISOString(),
    storedAt: Date.now(),
  });
  const entryOf = (n: number) => cacheEntryKey('m', served, imageDigest(Buffer.from(`image ${n}`)));
  // An entry is `<generation>|<answer>`: the generations here are single digits.
  const size = JSON.stringify(answer('0')).length + 2 + ENTRY_OVERHEAD_BYTES;

  before(() => {
    redis = testRedis();
    store = new ResultCacheStore(redis, keys);
  });
  after(() => redis.quit());

  it('lets exactly one of 100 concurrent identical look-ups lead; the others follow its job', async () => {
    const entry = entryOf(-1);
    const inflight = `${entry}:ip:127.0.0.1`;
    const ids = Array.from({ length: 100 }, () => randomUUID());
    const found = await Promise.all(ids.map((id) => store.lookupOrJoin('m', entry, inflight, id, 60_000)));
    const leaders = ids.filter((_, i) => found[i]!.kind === 'lead');
    expect(leaders).to.have.length(1);
    const followed = new Set(found.flatMap((f) => (f.kind === 'follow' ? [f.jobId] : [])));
    expect([...followed]).to.deep.equal(leaders);
    // 99 wait for it: the leader hanging up must not drop it; after they all leave, it may.
    expect(await store.release('m', inflight, leaders[0]!)).to.equal(99);
    for (let i = 0; i < 99; i++) await store.leave('m', inflight, leaders[0]!);
    expect(await store.release('m', inflight, leaders[0]!)).to.equal(0);
    expect((await store.lookupOrJoin('m', entry, inflight, ids[1]!, 60_000)).kind).to.equal('lead');
  });

  it('stores an answer, clears the job’s in-flight record, and serves the answer to any look-up', async () => {
    const entry = entryOf(0);
    const inflight = `${entry}:ip:a`;
    const job = randomUUID();
    expect((await store.lookupOrJoin('m', entry, inflight, job, 60_000)).kind).to.equal('lead');
    const options: ResultCacheOptions = { ttlSeconds: 60, maxBytesPerModel: 1_000_000, entriesPerClient: 100 };
    const generation = await store.begin('m', 'v1', 'spec');
    await store.settle('m', job, inflight, { entry, answer: answer('7'), generation, client: 'ip:a', options });
    expect(await redis.exists(keys.resultCacheInflight('m', inflight))).to.equal(0);
    const found = await store.lookup('m', entry);
    expect(found.kind).to.equal('hit');
    expect(found.kind === 'hit' && found.answer.prediction.label).to.equal('7');
    expect(await store.lookupOrJoin('m', entry, `${entry}:ip:b`, randomUUID(), 60_000)).to.have.property('kind', 'hit');
  });

  it('evicts the oldest answers beyond the model’s byte budget, and a client’s oldest beyond its share', async () => {
    const model = `bound-${randomUUID().slice(0, 8)}`;
    const options: ResultCacheOptions = { ttlSeconds: 60, maxBytesPerModel: size * 3, entriesPerClient: 2 };
    const generation = await store.begin(model, 'v1', 'spec');
    const put = (n: number, client: string) =>
      store.settle(model, randomUUID(), undefined, { entry: entryOf(n), answer: answer(String(n)), generation, client, options });
    // Client a fills its share of two; its third entry pushes out its own first, not anyone else's.
    await put(1, 'ip:b');
    await put(2, 'ip:a');
    await put(3, 'ip:a');
    await put(4, 'ip:a');
    const hits = async (ns: number[]) => Promise.all(ns.map(async (n) => (await store.lookup(model, entryOf(n))).kind));
    expect(await hits([1, 2, 3, 4])).to.deep.equal(['hit', 'miss', 'hit', 'hit']);
    expect(await store.usage(model)).to.deep.equal({ entries: 3, bytes: size * 3 });
    // Beyond the model's budget: the oldest overall goes.
    await put(5, 'ip:c');
    expect(await hits([1, 3, 4, 5])).to.deep.equal(['miss', 'hit', 'hit', 'hit']);
    const usage = await store.usage(model);
    expect(usage.bytes).to.be.at.most(options.maxBytesPerModel);
    expect(usage).to.deep.equal({ entries: 3, bytes: size * 3 });
  });

  it('serves no answer stored before another version began, however the key was computed', async () => {
    const model = `swap-${randomUUID().slice(0, 8)}`;
    const options: ResultCacheOptions = { ttlSeconds: 60, maxBytesPerModel: 1_000_000, entriesPerClient: 100 };
    const v1 = await store.begin(model, 'v1', 'spec');
    // Another worker starting the same version and spec keeps the generation (no flush on scaling).
    expect(await store.begin(model, 'v1', 'spec')).to.equal(v1);
    const entry = entryOf(42);
    await store.settle(model, randomUUID(), undefined, { entry, answer: answer('7'), generation: v1, client: 'ip:a', options });
    expect((await store.lookup(model, entry)).kind).to.equal('hit');
    // v2 begins (a swap, or a rolling update): a gateway that still thinks v1 is live asks under v1's
    // key and finds nothing, before any heartbeat told it.
    const v2 = await store.begin(model, 'v2', 'spec');
    expect(v2).to.be.greaterThan(v1);
    expect((await store.lookup(model, entry)).kind).to.equal('miss');
    expect((await store.lookupOrJoin(model, entry, `${entry}:ip:a`, randomUUID(), 60_000)).kind).to.equal('lead');
    // A rollback to v1 is a new generation too: v1's old answers stay retired.
    expect(await store.begin(model, 'v1', 'spec')).to.be.greaterThan(v2);
    expect((await store.lookup(model, entry)).kind).to.equal('miss');
  });
});
