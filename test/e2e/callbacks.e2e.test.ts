import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import { Webhook } from 'standardwebhooks';
import { CallbackPayload, type CallbackState } from '@conveyor/shared/contract/api.contract';
import { ROOT } from '../../harness/service-process.js';
import { startCallbackReceiver, type CallbackReceiver } from '../support/callback-receiver.js';
import { request, uploadForm } from '../support/http.js';
import { randomPrefix } from '../support/redis.js';
import { dumpLogsOnFailure, startGateway, startWorker, stopAll, type Gateway } from '../support/services.js';
import { until } from '../support/wait.js';

/**
 * Result callbacks against a real receiver: signed so that the reference Standard Webhooks library
 * verifies them, retried after a 500, refused for an address image URLs may not reach either, and
 * visible on GET /v1/jobs/{id}. 127.0.0.1 is allowed the way the URL-image tests allow it.
 */
describe('callbacks for asynchronous jobs', function () {
  this.timeout(90_000);
  const prefix = randomPrefix('callbacks');
  const secret = `whsec_${randomBytes(32).toString('base64')}`;
  let gateway: Gateway;
  let worker: Awaited<ReturnType<typeof startWorker>>;
  let receiver: CallbackReceiver;
  const seven = readFileSync(path.join(ROOT, 'docs/examples/seven.png'));

  before(async () => {
    receiver = await startCallbackReceiver();
    [gateway, worker] = await Promise.all([
      startGateway(prefix, { CALLBACK_SECRET: secret, URL_ALLOW_CIDRS: '127.0.0.1/32', CALLBACK_BACKOFF_MS: '200' }),
      startWorker(prefix),
    ]);
  });
  afterEach(function () {
    dumpLogsOnFailure(this, gateway, worker);
  });
  after(async () => {
    await stopAll(gateway, worker);
    await receiver.close();
  });

  async function submit(callbackUrl: string) {
    const reply = await request<{ id: string; callback: CallbackState }>(`${gateway.url}/v1/predict`, {
      method: 'POST',
      headers: { prefer: 'respond-async', 'callback-url': callbackUrl },
      body: uploadForm(seven, 'seven.png'),
    });
    expect(reply.status, JSON.stringify(reply.body)).to.equal(202);
    expect(reply.body.callback).to.include({ url: callbackUrl, state: 'pending', attempts: 0 });
    return reply.body.id;
  }

  const callbackOf = async (id: string) =>
    (await request<{ callback?: CallbackState }>(`${gateway.url}/v1/jobs/${id}`)).body.callback;

  it('POSTs the result, signed as Standard Webhooks verify it, and shows it delivered', async () => {
    const id = await submit(receiver.url('/ok'));
    const delivery = await until('the callback', () => Promise.resolve(receiver.deliveries.find((d) => d.body.includes(id))));
    const headers = delivery.headers as Record<string, string>;
    expect(headers['webhook-id']).to.equal(`msg_${id}`);
    expect(headers['webhook-signature']).to.match(/^v1,[A-Za-z0-9+/]+=*$/);
    // The reference library verifies signature and timestamp; a different secret does not.
    const verified = new Webhook(secret).verify(delivery.body, headers);
    const payload = CallbackPayload.parse(verified);
    expect(payload.type).to.equal('job.completed');
    expect(payload.data.id).to.equal(id);
    expect(payload.data.status === 'completed' && payload.data.prediction.label).to.equal('7');
    expect(() => new Webhook(`whsec_${randomBytes(32).toString('base64')}`).verify(delivery.body, headers)).to.throw();
    expect(() => new Webhook(secret).verify(delivery.body.replace('"7"', '"1"'), headers)).to.throw();

    const state = await until('delivered state', async () => {
      const s = await callbackOf(id);
      return s?.state === 'delivered' ? s : undefined;
    });
    expect(state).to.include({ attempts: 1, lastStatus: 204 });
  });

  it('retries after a 500 with the same webhook-id, and is delivered on the second attempt', async () => {
    const id = await submit(receiver.url('/flaky'));
    const state = await until('delivered after a retry', async () => {
      const s = await callbackOf(id);
      return s?.state === 'delivered' ? s : undefined;
    });
    expect(state).to.include({ attempts: 2, lastStatus: 204 });
    const attempts = receiver.deliveries.filter((d) => d.path === '/flaky');
    expect(attempts).to.have.length(2);
    expect(new Set(attempts.map((d) => d.headers['webhook-id']))).to.have.property('size', 1);
  });

  it('does not follow a redirect: a 302 is a failed attempt, and the target never hears of it', async () => {
    const id = await submit(receiver.url('/redirect'));
    const state = await until('a judged attempt', async () => {
      const s = await callbackOf(id);
      return s && s.attempts >= 1 ? s : undefined;
    });
    expect(state).to.include({ lastStatus: 302 });
    expect(state.state).to.not.equal('delivered');
    expect(receiver.deliveries.filter((d) => d.path === '/ok' && d.body.includes(id))).to.have.length(0);
  });

  it('refuses a literal address image URLs may not reach (127.0.0.2) at the request, queueing nothing', async () => {
    const before = receiver.deliveries.length;
    const reply = await request(`${gateway.url}/v1/predict`, {
      method: 'POST',
      headers: { prefer: 'respond-async', 'callback-url': receiver.url('/ok', '127.0.0.2') },
      body: uploadForm(seven),
    });
    expect(reply.status).to.equal(422);
    expect(reply.body).to.include({ type: '/problems/url-not-allowed' });
    expect(reply.body.detail).to.match(/private, loopback, link-local/);
    expect(receiver.deliveries.length).to.equal(before);
    // A name that resolves to such an address is refused at delivery: callback-isolation.e2e.
  });

  it('refuses a callback URL that is not http(s) before queueing anything', async () => {
    const reply = await request(`${gateway.url}/v1/predict`, {
      method: 'POST',
      headers: { prefer: 'respond-async', 'callback-url': 'file:///etc/passwd' },
      body: uploadForm(seven),
    });
    expect(reply.status).to.equal(422);
    expect(reply.body).to.include({ type: '/problems/url-not-allowed' });
  });
});
