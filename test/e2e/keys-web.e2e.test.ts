import { readFileSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import { ConveyorClient, ConveyorProblem } from '@conveyor/client';
import { redisKeys } from '@conveyor/shared/contract/redis-keys';
import { ApiKeyStore } from '../../services/gateway/src/access/api-keys.js';
import { ROOT } from '../../harness/service-process.js';
import { launchChromium } from '../support/browser.js';
import { request } from '../support/http.js';
import { randomPrefix, testRedis } from '../support/redis.js';
import { dumpLogsOnFailure, startGateway, startWorker, stopAll, type Gateway } from '../support/services.js';
import { until } from '../support/wait.js';

/**
 * With API keys required, the new surfaces ask for one like the rest of /v1: event streams,
 * drift, callbacks (a predict request); the page itself is public and sends the key it is given.
 */
describe('API keys on the events, drift and the page', function () {
  this.timeout(120_000);
  const prefix = randomPrefix('keys-web');
  let gateway: Gateway;
  let worker: Awaited<ReturnType<typeof startWorker>>;
  let redis: ReturnType<typeof testRedis>;
  let key: string;
  const seven = readFileSync(path.join(ROOT, 'docs/examples/seven.png'));

  before(async () => {
    redis = testRedis();
    [gateway, worker] = await Promise.all([startGateway(prefix, { API_KEYS_REQUIRED: 'true' }), startWorker(prefix)]);
    key = (await new ApiKeyStore(redis, redisKeys(prefix).apiKeys).create('web', ['predict'])).key;
    await until('digits ready', async () => (await request(`${gateway.url}/v2/models/digits/ready`)).status === 200);
  });
  afterEach(function () {
    dumpLogsOnFailure(this, gateway, worker);
  });
  after(async () => {
    await stopAll(gateway, worker);
    redis.disconnect();
  });

  it('refuses events, drift and a callback request without a key; serves them with one', async () => {
    const anonymous = new ConveyorClient({ baseUrl: gateway.url });
    const refused = await anonymous
      .events('00000000-0000-4000-8000-000000000000')
      .next()
      .catch((e: unknown) => e);
    expect(refused).to.be.instanceOf(ConveyorProblem);
    expect((refused as ConveyorProblem).status).to.equal(401);
    expect((await request(`${gateway.url}/v1/drift`)).status).to.equal(401);
    const callback = await anonymous
      .predict({ bytes: seven }, { async: true, callbackUrl: 'http://127.0.0.1:9/hook' })
      .catch((e: unknown) => e);
    expect((callback as ConveyorProblem).status).to.equal(401);

    const client = new ConveyorClient({ baseUrl: gateway.url, apiKey: key });
    const outcome = await client.predict({ bytes: seven }, { async: true });
    if (outcome.kind !== 'accepted') throw new Error('expected a 202');
    let last;
    for await (const event of client.events(outcome.job.id)) last = event;
    expect(last?.event).to.equal('result');
    expect((await request(`${gateway.url}/v1/drift`, { headers: { authorization: `Bearer ${key}` } })).status).to.equal(200);
  });

  it('the page is public, and classifies with the key typed into it', async () => {
    const browser = await launchChromium();
    try {
      const page = await browser.newPage();
      await page.goto(`${gateway.url}/`);
      await page.locator('details summary').click();
      await page.getByLabel(/API key/).fill(key);
      await page.getByLabel(/API key/).dispatchEvent('change');
      await page.getByLabel('Model').locator('option[value="digits"]').waitFor({ state: 'attached' });
      await page.getByLabel('Image file').setInputFiles(path.join(ROOT, 'docs/examples/seven.png'));
      await page.getByRole('button', { name: 'Classify' }).click();
      await page.locator('#result-label').getByText('7', { exact: true }).waitFor();
    } finally {
      await browser.close();
    }
  });
});
