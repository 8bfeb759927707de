import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { promisify } from 'node:util';
import { expect } from 'chai';
import { redisKeys } from '@conveyor/shared/contract/redis-keys';
import { ApiKeyStore } from '../../services/gateway/src/access/api-keys.js';
import { digitPng, heldOutDigits } from '../support/images.js';
import { predict, request } from '../support/http.js';
import { randomPrefix, testRedis, testRedisUrl } from '../support/redis.js';
import { dumpLogsOnFailure, startGateway, startWorker, stopAll, type Gateway } from '../support/services.js';

/** API keys with scopes, and one rate limit shared by every gateway instance. */
describe('access', function () {
  this.timeout(60_000);

  describe('API keys', () => {
    const prefix = randomPrefix('keys');
    let gateway: Gateway;
    let worker: Awaited<ReturnType<typeof startWorker>>;
    let seven: Buffer;
    let redis: ReturnType<typeof testRedis>;
    let store: ApiKeyStore;

    before(async () => {
      redis = testRedis();
      store = new ApiKeyStore(redis, redisKeys(prefix).apiKeys);
      [gateway, worker] = await Promise.all([startGateway(prefix, { API_KEYS_REQUIRED: 'true' }), startWorker(prefix)]);
      const { dataset, split } = await heldOutDigits();
      seven = await digitPng(dataset.samples[split.test.find((i) => dataset.samples[i]!.label === 7)!]!.pixels);
    });
    afterEach(function () {
      dumpLogsOnFailure(this, gateway, worker);
    });
    after(async () => {
      await stopAll(gateway, worker);
      redis.disconnect();
    });

    const feedback = (key: string, jobId: string, label: string) =>
      request(`${gateway.url}/v1/feedback`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` },
        body: JSON.stringify({ jobId, label }),
      });

    it('refuses requests without a valid key with 401 and WWW-Authenticate', async () => {
      const attempts: Record<string, string>[] = [
        {},
        { authorization: 'Bearer nonsense' },
        { authorization: `Bearer cvk_000000000000_${'a'.repeat(43)}` },
      ];
      for (const headers of attempts) {
        const reply = await predict(gateway.url, seven, headers);
        expect(reply.status).to.equal(401);
        expect(reply.body).to.include({ type: '/problems/unauthorized' });
        expect(reply.headers.get('www-authenticate')).to.match(/^Bearer/);
      }
    });

    it('creates keys with `make api-key` (stored as hashes) and enforces their scopes', async () => {
      const { stdout } = await promisify(execFile)(
        process.execPath,
        [
          '--conditions=conveyor-source',
          '--import',
          'tsx',
          'services/gateway/src/api-key.ts',
          '--name',
          'app',
          '--scopes',
          'predict',
          '--weight',
          '3',
        ],
        { env: { ...process.env, REDIS_URL: testRedisUrl(), REDIS_PREFIX: prefix } },
      );
      const predictKey = stdout.trim();
      expect(predictKey).to.match(/^cvk_[0-9a-f]{12}_/);
      const stored = await redis.hgetall(redisKeys(prefix).apiKeys);
      // The secret is everything after `cvk_<id>_`: base64url, so it may hold (or start with) a `_` itself.
      expect(JSON.stringify(stored)).not.to.contain(predictKey.slice('cvk_'.length + 12 + 1));
      // Its weight in fair queuing (docs/fairness.md) is stored with it.
      expect((await store.list()).find((k) => k.name === 'app')).to.include({ weight: 3 });

      const done = await predict(gateway.url, seven, { authorization: `Bearer ${predictKey}` });
      expect(done.status).to.equal(200);
      expect(
        (await request(`${gateway.url}/v1/jobs/${done.body.id as string}`, { headers: { 'x-api-key': predictKey } })).status,
      ).to.equal(200);
      const refused = await feedback(predictKey, done.body.id as string, '7');
      expect(refused.status).to.equal(403);
      expect(refused.body).to.include({ type: '/problems/forbidden' });

      // Feedback is for the key's own jobs (ownership.e2e.test.ts): a feedback-only key cannot label
      // another key's job, a key with both scopes labels its own.
      const { key: feedbackKey } = await store.create('labeller', ['feedback']);
      expect((await feedback(feedbackKey, done.body.id as string, '7')).status).to.equal(404);
      expect((await predict(gateway.url, seven, { authorization: `Bearer ${feedbackKey}` })).status).to.equal(403);
      const { key: bothKey } = await store.create('app-and-labels', ['predict', 'feedback']);
      const own = await predict(gateway.url, seven, { authorization: `Bearer ${bothKey}` });
      expect((await feedback(bothKey, own.body.id as string, '7')).status).to.equal(202);
    });

    it('stops accepting a revoked key', async () => {
      const { id, key } = await store.create('temporary', ['predict']);
      expect((await predict(gateway.url, seven, { authorization: `Bearer ${key}` })).status).to.equal(200);
      await store.revoke(id);
      expect((await predict(gateway.url, seven, { authorization: `Bearer ${key}` })).status).to.equal(401);
    });
  });

  describe('rate limit', () => {
    const prefix = randomPrefix('rate');
    let gateways: Gateway[];
    before(async () => {
      gateways = await Promise.all(
        [0, 1].map(() => startGateway(prefix, { RATE_LIMIT_REQUESTS: '5', RATE_LIMIT_WINDOW_SECONDS: '60' })),
      );
    });
    afterEach(function () {
      dumpLogsOnFailure(this, ...gateways);
    });
    after(() => stopAll(...gateways));

    it('is one limit for every gateway instance: 429 with Retry-After and RateLimit headers past it', async () => {
      const replies = [];
      for (let i = 0; i < 8; i++) replies.push(await request(`${gateways[i % 2]!.url}/v1/jobs/${randomUUID()}`));
      expect(replies.map((r) => r.status)).to.deep.equal([404, 404, 404, 404, 404, 429, 429, 429]);
      const limited = replies[5]!;
      expect(limited.body).to.include({ type: '/problems/rate-limited' });
      expect(Number(limited.headers.get('retry-after'))).to.be.within(1, 60);
      expect(limited.headers.get('ratelimit-policy')).to.equal('5;w=60');
      expect(limited.headers.get('ratelimit')).to.match(/^limit=5, remaining=0, reset=\d+$/);
      expect(replies[0]!.headers.get('ratelimit')).to.match(/^limit=5, remaining=4, reset=\d+$/);
    });
  });
});
