import { randomUUID } from 'node:crypto';
import { expect } from 'chai';
import type { Redis } from 'ioredis';
import { redisKeys } from '@conveyor/shared/contract/redis-keys';
import { ProblemError } from '@conveyor/shared/problem';
import { keysUnder, randomPrefix, testRedis } from '../../../test/support/redis.js';
import { until } from '../../../test/support/wait.js';
import { IDEMPOTENCY_KEY_PATTERN, parseIdempotencyKey } from '../src/http/idempotency-key.js';
import { IdempotencyStore, requestFingerprint, type IdempotencyClaim } from '../src/jobs/idempotency.js';

/** The Idempotency-Key records against a real Redis: claim, confirm, release, scope, expiry. */
describe('idempotency store (real Redis)', () => {
  const prefix = randomPrefix('idem');
  const keys = redisKeys(prefix);
  let redis: Redis;
  let store: IdempotencyStore;
  const ttlSeconds = 3600;
  const leaseMs = 60_000;

  before(() => {
    redis = testRedis();
    store = new IdempotencyStore(redis, keys, { ttlSeconds, leaseMs, keysPerClient: 1000 });
  });
  after(async () => {
    const left = await keysUnder(redis, prefix);
    if (left.length > 0) await redis.del(...left);
    await redis.quit();
  });

  const claimed = (claim: IdempotencyClaim) => {
    if (claim.kind !== 'claimed') throw new Error(`expected the key to be claimed, got ${claim.kind}`);
    return claim.lease;
  };
  const only = async (client: string) => {
    const found = await keysUnder(redis, `${prefix}:idempotency:${client}`);
    expect(found).to.have.length(1);
    return found[0]!;
  };

  it('claims a free key for a lease, then names the job for the TTL once confirmed', async () => {
    const key = randomUUID();
    const job = randomUUID();
    const lease = claimed(await store.claim('key:a', key, 'print1', job));
    const record = await only('key:a');
    // The record names neither the key (hashed) nor more than the job and the fingerprint.
    expect(record).to.not.include(key);
    expect(await redis.get(record)).to.equal(`p:${job}:print1`);
    expect(await redis.pttl(record)).to.be.within(1, leaseMs);
    // While the job is being made, a retry is told to wait.
    expect(await store.claim('key:a', key, 'print1', randomUUID())).to.deep.equal({ kind: 'in-flight' });
    expect(await lease.confirm()).to.equal(true);
    expect(await redis.get(record)).to.equal(`j:${job}:print1`);
    expect(await redis.ttl(record)).to.be.within(ttlSeconds - 60, ttlSeconds);
    // Then a retry gets the job, and the record is not extended or rewritten by it.
    expect(await store.claim('key:a', key, 'print1', randomUUID())).to.deep.equal({ kind: 'replay', jobId: job });
    expect(await redis.get(record)).to.equal(`j:${job}:print1`);
    await redis.del(record);
  });

  it('answers a different request with the same key as a mismatch, before and after the job exists', async () => {
    const key = randomUUID();
    const lease = claimed(await store.claim('key:b', key, 'print1', randomUUID()));
    expect(await store.claim('key:b', key, 'print2', randomUUID())).to.deep.equal({ kind: 'mismatch' });
    await lease.confirm();
    expect(await store.claim('key:b', key, 'print2', randomUUID())).to.deep.equal({ kind: 'mismatch' });
    await redis.del(await only('key:b'));
  });

  it('frees the key on release, so the next attempt claims it', async () => {
    const key = randomUUID();
    await claimed(await store.claim('key:c', key, 'print1', randomUUID())).release();
    expect(await keysUnder(redis, `${prefix}:idempotency:key:c`)).to.deep.equal([]);
    // The next attempt may even be a different request: the key made nothing.
    const next = claimed(await store.claim('key:c', key, 'print2', randomUUID()));
    await next.release();
  });

  it('keeps keys of different clients apart', async () => {
    const key = randomUUID();
    const a = claimed(await store.claim('key:d1', key, 'print1', randomUUID()));
    const b = claimed(await store.claim('key:d2', key, 'print2', randomUUID()));
    await Promise.all([a.release(), b.release()]);
  });

  it('never lets a lapsed lease confirm or free the key that another request claimed after it', async () => {
    const key = randomUUID();
    const short = new IdempotencyStore(redis, keys, { ttlSeconds, leaseMs: 1, keysPerClient: 1000 });
    const lapsed = claimed(await short.claim('key:e', key, 'print1', randomUUID()));
    // Wait for the condition itself: the lease has lapsed when its record is gone.
    await until('the lease to lapse', async () => (await keysUnder(redis, `${prefix}:idempotency:key:e`)).length === 0);
    const job = randomUUID();
    const current = claimed(await store.claim('key:e', key, 'print1', job));
    expect(await lapsed.confirm()).to.equal(false);
    await lapsed.release();
    const record = await only('key:e');
    expect(await redis.get(record)).to.equal(`p:${job}:print1`);
    await current.release();
  });

  it("holds at most a client's share of keys, forgetting its oldest, and never another client's", async () => {
    const small = new IdempotencyStore(redis, keys, { ttlSeconds, leaseMs, keysPerClient: 3 });
    const other = claimed(await small.claim('key:quiet', 'theirs', 'print', randomUUID()));
    expect(await other.confirm()).to.equal(true);
    const jobs: string[] = [];
    for (let i = 0; i < 5; i++) {
      const job = randomUUID();
      jobs.push(job);
      expect(await claimed(await small.claim('key:busy', `k${i}`, 'print', job)).confirm()).to.equal(true);
    }
    expect(await keysUnder(redis, `${prefix}:idempotency:key:busy`)).to.have.length(3);
    expect(await redis.zcard(keys.idempotencyIndex('key:busy'))).to.equal(3);
    // The two oldest are forgotten (claimable again as new requests); the three newest still replay.
    expect((await small.claim('key:busy', 'k0', 'print', randomUUID())).kind).to.equal('claimed');
    expect(await small.claim('key:busy', 'k4', 'print', randomUUID())).to.deep.equal({ kind: 'replay', jobId: jobs[4] });
    // The quiet client's key is untouched by the busy one's churn.
    expect((await small.claim('key:quiet', 'theirs', 'print', randomUUID())).kind).to.equal('replay');
  });

  it('gives a released key its place in the share back', async () => {
    const small = new IdempotencyStore(redis, keys, { ttlSeconds, leaseMs, keysPerClient: 2 });
    await claimed(await small.claim('key:rel', 'a', 'print', randomUUID())).release();
    expect(await redis.zcard(keys.idempotencyIndex('key:rel'))).to.equal(0);
  });

  it('gives a key to exactly one of ten concurrent claims', async () => {
    const key = randomUUID();
    const claims = await Promise.all(Array.from({ length: 10 }, () => store.claim('key:f', key, 'print1', randomUUID())));
    expect(claims.filter((c) => c.kind === 'claimed')).to.have.length(1);
    expect(claims.filter((c) => c.kind === 'in-flight')).to.have.length(9);
    await claimed(claims.find((c) => c.kind === 'claimed')!).release();
  });
});

describe('request fingerprint', () => {
  const bytes = Buffer.from('an image');
  const upload = { kind: 'upload', bytes } as const;
  const base = requestFingerprint({ model: 'digits', input: upload });

  it('is the same for the same model, bytes and callback, whatever the filename', () => {
    expect(
      requestFingerprint({ model: 'digits', input: { kind: 'upload', bytes: Buffer.from('an image'), filename: 'a.png' } }),
    ).to.equal(base);
    expect(base).to.match(/^[A-Za-z0-9_-]{43}$/);
  });

  it('differs when the model, the bytes, the URL or the Callback-Url differs', () => {
    const url = (href: string) => ({ kind: 'url', url: new URL(href) }) as const;
    const prints = [
      base,
      requestFingerprint({ model: 'moderation', input: upload }),
      requestFingerprint({ model: 'digits', input: { kind: 'upload', bytes: Buffer.from('an imagf') } }),
      requestFingerprint({ model: 'digits', input: upload, callbackUrl: new URL('https://example.org/hook') }),
      requestFingerprint({ model: 'digits', input: url('https://example.org/a.png') }),
      requestFingerprint({ model: 'digits', input: url('https://example.org/b.png') }),
    ];
    expect(new Set(prints).size).to.equal(prints.length);
  });
});

describe('Idempotency-Key header', () => {
  const refused = (values: string[]) => {
    try {
      parseIdempotencyKey(values);
    } catch (error) {
      expect(error).to.be.instanceOf(ProblemError);
      expect((error as ProblemError).status).to.equal(400);
      return (error as ProblemError).detail;
    }
    throw new Error(`${JSON.stringify(values)} was accepted`);
  };

  it('reads an RFC 8941 string, unescaped, with parameters ignored', () => {
    expect(parseIdempotencyKey(undefined)).to.equal(undefined);
    expect(parseIdempotencyKey(['"8e03978e-40d5-43e8-bc93-6894a57f9324"'])).to.equal('8e03978e-40d5-43e8-bc93-6894a57f9324');
    expect(parseIdempotencyKey(['  "a b"  '])).to.equal('a b');
    expect(parseIdempotencyKey(['"say \\"hi\\" \\\\ bye"'])).to.equal('say "hi" \\ bye');
    expect(parseIdempotencyKey(['"k";a=1;b;c="x"'])).to.equal('k');
    expect(parseIdempotencyKey([`"${'x'.repeat(255)}"`])).to.have.length(255);
  });

  it('reads a bare key, as most clients send one, as the same key quoted', () => {
    expect(parseIdempotencyKey(['8e03978e-40d5-43e8-bc93-6894a57f9324'])).to.equal('8e03978e-40d5-43e8-bc93-6894a57f9324');
    expect(parseIdempotencyKey(['abc'])).to.equal(parseIdempotencyKey(['"abc"']));
    // What Schemathesis sent from the documented pattern, and was refused (400) before bare keys.
    expect(parseIdempotencyKey(['0'])).to.equal('0');
  });

  it('documents (OpenAPI pattern) only keys it accepts', () => {
    const plain = ['"8e03978e-40d5-43e8-bc93-6894a57f9324"', '"a b"', '"say \\"hi\\" \\\\ bye"', `"${'x'.repeat(255)}"`];
    for (const key of plain) {
      expect(IDEMPOTENCY_KEY_PATTERN.test(key), key).to.equal(true);
      expect(parseIdempotencyKey([key]), key).to.be.a('string');
    }
    for (const key of ['abc', '0']) expect(IDEMPOTENCY_KEY_PATTERN.test(key), key).to.equal(true);
    for (const key of ['a b', 'a,b', 'a;b', '""', `"${'x'.repeat(256)}"`, 'x'.repeat(256), '"é"', 'é', '"a\\nb"', '"a"b"']) {
      expect(IDEMPOTENCY_KEY_PATTERN.test(key), key).to.equal(false);
    }
  });

  it('refuses anything else with a 400 that says what is expected', () => {
    expect(refused(['a b'])).to.include('printable ASCII');
    expect(refused(['a,b'])).to.include('printable ASCII');
    expect(refused(['""'])).to.include('1–255');
    expect(refused([`"${'x'.repeat(256)}"`])).to.include('1–255');
    expect(refused(['"a"', '"b"'])).to.include('more than once');
    expect(refused(['"a", "b"'])).to.include('not a parameter');
    expect(refused(['"é"'])).to.include('printable ASCII');
    expect(refused(['"tab\there"'])).to.include('printable ASCII');
    expect(refused(['"a\\nb"'])).to.include('printable ASCII');
    expect(refused(['"unterminated'])).to.include('printable ASCII');
  });
});
