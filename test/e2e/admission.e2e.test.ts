import { Queue } from 'bullmq';
import { expect } from 'chai';
import { QUEUES } from '@conveyor/shared/contract/queue.contract';
import { digitPng, heldOutDigits } from '../support/images.js';
import { predict } from '../support/http.js';
import { randomPrefix, testRedisUrl } from '../support/redis.js';
import { dumpLogsOnFailure, startGateway, stopAll, type Gateway } from '../support/services.js';

/**
 * The queue-depth bound holds under concurrent requests and across gateway instances: with no
 * worker draining the queue, exactly MAX_QUEUE_DEPTH jobs get in, the rest are told 503 + Retry-After.
 */
describe('admission', function () {
  this.timeout(60_000);
  const prefix = randomPrefix('admission');
  const limit = 50;
  let gateways: Gateway[];
  let queue: Queue;
  let image: Buffer;

  before(async () => {
    gateways = await Promise.all([0, 1].map(() => startGateway(prefix, { MAX_QUEUE_DEPTH: String(limit) })));
    queue = new Queue(QUEUES.inference, { connection: { url: testRedisUrl() }, prefix });
    const { dataset, split } = await heldOutDigits();
    image = await digitPng(dataset.samples[split.test[0]!]!.pixels);
  });
  afterEach(function () {
    dumpLogsOnFailure(this, ...gateways);
  });
  after(async () => {
    await stopAll(...gateways);
    await queue.obliterate({ force: true });
    await queue.close();
  });

  it('admits exactly MAX_QUEUE_DEPTH jobs from 150 concurrent requests to two gateways', async () => {
    const replies = await Promise.all(
      Array.from({ length: 150 }, (_, i) => predict(gateways[i % 2]!.url, image, { Prefer: 'respond-async' })),
    );
    const statuses = replies.map((r) => r.status);
    expect(statuses.filter((s) => s === 202)).to.have.length(limit);
    expect(statuses.filter((s) => s === 503)).to.have.length(150 - limit);
    const refused = replies.find((r) => r.status === 503)!;
    expect(refused.headers.get('retry-after')).to.equal('5');
    expect(refused.body).to.include({ type: '/problems/overloaded' });
    expect(await queue.getWaitingCount()).to.equal(limit);
  });

  it('gives every reservation back: once the queue drains, requests are admitted again', async () => {
    await queue.drain();
    const reply = await predict(gateways[0]!.url, image, { Prefer: 'respond-async' });
    expect(reply.status).to.equal(202);
  });
});
