import { expect } from 'chai';
import { inferenceQueue } from '@conveyor/shared/contract/jobs.contract';
import { digitPng, heldOutDigits } from '../support/images.js';
import { predictModel, request } from '../support/http.js';
import { randomPrefix } from '../support/redis.js';
import { dumpLogsOnFailure, startGateway, startWorker, stopAll, type Gateway } from '../support/services.js';
import { until } from '../support/wait.js';

/** The queue dashboard shows recent completed jobs (bounded), not only failed ones (issue 21). */
interface BoardQueues {
  queues: { name: string; counts: Record<string, number> }[];
}

describe('queue dashboard: recent completed jobs', function () {
  this.timeout(120_000);
  const prefix = randomPrefix('dash-done');
  const auth = { authorization: `Basic ${Buffer.from('ops:correct-horse-battery').toString('base64')}` };
  let gateway: Gateway;
  let worker: Awaited<ReturnType<typeof startWorker>>;

  before(async () => {
    [gateway, worker] = await Promise.all([
      startGateway(prefix, { DASHBOARD_USER: 'ops', DASHBOARD_PASSWORD: 'correct-horse-battery' }),
      startWorker(prefix),
    ]);
  });
  afterEach(function () {
    dumpLogsOnFailure(this, gateway, worker);
  });
  after(() => stopAll(gateway, worker));

  it('lists a completed prediction among the completed jobs', async () => {
    const { dataset, split } = await heldOutDigits();
    const reply = await predictModel(gateway.url, 'digits', await digitPng(dataset.samples[split.test[0]!]!.pixels));
    expect(reply.status).to.equal(200);
    // The answer leaves with the worker's commit; BullMQ marks the job completed just after it
    // (moveToFinished, once the processor returns): CI once read the board in between and saw 0.
    const digits = await until('the job among the completed ones', async () => {
      const api = await request<BoardQueues>(`${gateway.url}/admin/queues/api/queues`, { headers: auth });
      expect(api.status).to.equal(200);
      const queue = api.body.queues.find((q) => q.name === inferenceQueue('digits'));
      expect(queue, `queues: ${api.body.queues.map((q) => q.name).join(', ')}`).to.not.equal(undefined);
      return (queue!.counts.completed ?? 0) > 0 ? queue : undefined;
    });
    expect(digits.counts.completed).to.equal(1);
  });
});
