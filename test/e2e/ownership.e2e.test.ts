import { randomBytes, randomUUID } from 'node:crypto';
import { expect } from 'chai';
import { redisKeys } from '@conveyor/shared/contract/redis-keys';
import { ApiKeyStore } from '../../services/gateway/src/access/api-keys.js';
import { startCallbackReceiver, type CallbackReceiver } from '../support/callback-receiver.js';
import { digitPng, heldOutDigits } from '../support/images.js';
import { predict, request, type Reply } from '../support/http.js';
import { randomPrefix, testRedis } from '../support/redis.js';
import { dumpLogsOnFailure, startGateway, startWorker, stopAll, type Gateway } from '../support/services.js';
import { until } from '../support/wait.js';

/**
 * A job belongs to the API key that made it: another key is told 404 (as for a job that does not
 * exist) on every route that reads it — its result, its event stream, its feedback, its callback
 * details — and an `admin` key may read any.
 */
describe('job ownership between API keys', function () {
  this.timeout(90_000);
  const prefix = randomPrefix('owner');
  const secret = `whsec_${randomBytes(32).toString('base64')}`;
  let gateway: Gateway;
  let worker: Awaited<ReturnType<typeof startWorker>>;
  let receiver: CallbackReceiver;
  let redis: ReturnType<typeof testRedis>;
  let image: Buffer;
  const keys: Record<'a' | 'b' | 'labeller' | 'admin', string> = { a: '', b: '', labeller: '', admin: '' };
  let jobA: string;
  let callbackUrl: string;

  const auth = (key: string) => ({ authorization: `Bearer ${key}` });
  const get = (path: string, key: string) => request(`${gateway.url}${path}`, { headers: auth(key) });
  const feedback = (key: string, jobId: string, label: string) =>
    request(`${gateway.url}/v1/feedback`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...auth(key) },
      body: JSON.stringify({ jobId, label }),
    });

  before(async () => {
    redis = testRedis();
    receiver = await startCallbackReceiver();
    [gateway, worker] = await Promise.all([
      startGateway(prefix, { API_KEYS_REQUIRED: 'true', CALLBACK_SECRET: secret, URL_ALLOW_CIDRS: '127.0.0.1/32' }),
      startWorker(prefix),
    ]);
    const store = new ApiKeyStore(redis, redisKeys(prefix).apiKeys);
    keys.a = (await store.create('a', ['predict', 'feedback'])).key;
    keys.b = (await store.create('b', ['predict', 'feedback'])).key;
    keys.labeller = (await store.create('labeller', ['feedback'])).key;
    keys.admin = (await store.create('ops', ['admin'])).key;
    const { dataset, split } = await heldOutDigits();
    image = await digitPng(dataset.samples[split.test[0]!]!.pixels);
    // The receiver's own token travels in the callback URL: only the job's owner may see it.
    callbackUrl = `${receiver.url('/ok')}?token=receiver-secret-${randomUUID()}`;
    const made = await request(`${gateway.url}/v1/predict`, {
      method: 'POST',
      headers: { prefer: 'respond-async', 'callback-url': callbackUrl, ...auth(keys.a) },
      body: (() => {
        const form = new FormData();
        form.append('file', new Blob([image]), 'digit.png');
        return form;
      })(),
    });
    expect(made.status, JSON.stringify(made.body)).to.equal(202);
    jobA = String(made.body.id);
    await until('job A done', async () => {
      const reply = await get(`/v1/jobs/${jobA}`, keys.a);
      return reply.body.status === 'completed' && reply;
    });
  });
  afterEach(function () {
    dumpLogsOnFailure(this, gateway, worker);
  });
  after(async () => {
    await stopAll(gateway, worker);
    await receiver.close();
    redis.disconnect();
  });

  /** The 404 another key gets says no more than the 404 of a job that never existed. */
  async function expectHidden(reply: Reply, path: (id: string) => string, key: string) {
    expect(reply.status, JSON.stringify(reply.body)).to.equal(404);
    expect(JSON.stringify(reply.body)).not.to.contain('receiver-secret');
    expect(JSON.stringify(reply.body)).not.to.contain('predicted');
    const unknown = randomUUID();
    const never = await (path(unknown) === '/v1/feedback' ? feedback(key, unknown, '7') : get(path(unknown), key));
    expect(never.status).to.equal(404);
    expect((reply.body as { detail?: string }).detail?.replace(jobA, '<id>')).to.equal(
      (never.body as { detail?: string }).detail?.replace(unknown, '<id>'),
    );
  }

  it('keeps the owner of a finished job as long as its result, not as long as a waiting job', async () => {
    const ttl = await redis.ttl(redisKeys(prefix).owner(jobA));
    expect(ttl).to.be.within(1, 3600); // RESULT_TTL_SECONDS (default); 25 h while waiting
    expect(await redis.get(redisKeys(prefix).owner(jobA))).to.match(/^[0-9a-f]{12}$/);
  });

  it('GET /v1/jobs/{id}: the owner and an admin see the job and its callback, another key gets 404', async () => {
    const own = await get(`/v1/jobs/${jobA}`, keys.a);
    expect(own.status).to.equal(200);
    expect((own.body.callback as { url: string }).url).to.equal(callbackUrl);
    const admin = await get(`/v1/jobs/${jobA}`, keys.admin);
    expect(admin.status).to.equal(200);
    expect((admin.body.callback as { url: string }).url).to.equal(callbackUrl);
    await expectHidden(await get(`/v1/jobs/${jobA}`, keys.b), (id) => `/v1/jobs/${id}`, keys.b);
  });

  it('GET /v1/jobs/{id}/events: another key gets 404, the owner and an admin the stream', async () => {
    await expectHidden(await get(`/v1/jobs/${jobA}/events`, keys.b), (id) => `/v1/jobs/${id}/events`, keys.b);
    for (const key of [keys.a, keys.admin]) {
      const own = await request<string>(`${gateway.url}/v1/jobs/${jobA}/events`, { headers: auth(key) });
      expect(own.status).to.equal(200);
      expect(own.body).to.contain('event: result').and.to.contain('receiver-secret');
    }
  });

  it('POST /v1/feedback: another key, even one with only the feedback scope, gets 404 and no prediction', async () => {
    await expectHidden(await feedback(keys.labeller, jobA, '7'), () => '/v1/feedback', keys.labeller);
    await expectHidden(await feedback(keys.b, jobA, '7'), () => '/v1/feedback', keys.b);
    const own = await feedback(keys.a, jobA, '7');
    expect(own.status, JSON.stringify(own.body)).to.equal(202);
  });

  it("POST /v1/feedback: an admin key may label any key's job", async () => {
    const made = await predict(gateway.url, image, { ...auth(keys.b), prefer: 'respond-async' });
    const id = String(made.body.id);
    await until('job B done', async () => (await get(`/v1/jobs/${id}`, keys.b)).body.status === 'completed');
    const admin = await feedback(keys.admin, id, '7');
    expect(admin.status, JSON.stringify(admin.body)).to.equal(202);
  });
});
