import { expect } from 'chai';
import { request } from '../support/http.js';
import { randomPrefix } from '../support/redis.js';
import { dumpLogsOnFailure, startGateway, startWorker, stopAll, type Gateway } from '../support/services.js';
import { until } from '../support/wait.js';

type Models = { models: { name: string; ready: boolean; workers: number }[] };
type Ready = { models: Record<string, { ready: boolean; workers: number }> };

/**
 * A model nobody serves any more leaves the catalogue: once its last worker has been gone for
 * MODEL_RETIRE_AFTER_SECONDS, `/v1/models` and `/ready` stop listing it and a request for it is a
 * 404; a gateway whose MODELS names it keeps listing it (not ready). Real Redis, real processes:
 * the worker's heartbeats write when it last served the model, and the gateways read that.
 */
describe('model retirement (MODEL_RETIRE_AFTER_SECONDS)', function () {
  this.timeout(180_000);
  const prefix = randomPrefix('retire');
  let retiring: Gateway;
  let keeping: Gateway;
  let worker: Awaited<ReturnType<typeof startWorker>> | undefined;

  before(async () => {
    // The worker serves `digits`; neither gateway has it as its default model, so only the worker
    // (or MODELS) makes it known.
    [retiring, keeping, worker] = await Promise.all([
      startGateway(prefix, { DEFAULT_MODEL: 'other', MODEL_RETIRE_AFTER_SECONDS: '2' }),
      startGateway(prefix, { DEFAULT_MODEL: 'other', MODELS: 'digits', MODEL_RETIRE_AFTER_SECONDS: '2' }),
      startWorker(prefix),
    ]);
  });
  afterEach(function () {
    dumpLogsOnFailure(this, retiring, keeping, worker);
  });
  after(() => stopAll(retiring, keeping, worker));

  const listed = async (gateway: Gateway) => {
    const models = await request<Models>(`${gateway.url}/v1/models`);
    const ready = await request<Ready>(`${gateway.url}/ready`);
    return {
      models: models.body.models.find((m) => m.name === 'digits'),
      ready: ready.body.models.digits,
    };
  };

  it('lists a served model, then drops it once its last worker is gone long enough; MODELS keeps it', async () => {
    await until('the worker to make digits ready', async () => (await listed(retiring)).models?.ready === true);
    expect((await listed(retiring)).ready).to.deep.include({ ready: true, workers: 1 });

    await worker!.stop('SIGTERM');
    worker = undefined;
    // Gone, but not for long: still listed, not ready.
    const soon = await until('digits to be not ready', async () => {
      const seen = await listed(retiring);
      return seen.models?.ready === false ? seen : undefined;
    });
    expect(soon.models).to.deep.include({ workers: 0 });

    // Then retired: neither list names it, and predicting with it is an unknown model.
    await until('digits to leave /v1/models', async () => (await listed(retiring)).models === undefined);
    expect((await listed(retiring)).ready).to.equal(undefined);
    const refused = await request(`${retiring.url}/v1/models/digits/predict`, {
      method: 'POST',
      headers: { prefer: 'respond-async', 'content-type': 'image/png' },
      body: new Uint8Array([1, 2, 3]),
    });
    expect(refused.status).to.equal(404);

    // A gateway whose MODELS names it keeps it, not ready.
    const kept = await listed(keeping);
    expect(kept.models).to.deep.include({ ready: false, workers: 0 });
    expect(kept.ready).to.deep.include({ ready: false, workers: 0 });
  });

  it('lists it again as soon as a worker serves it again', async () => {
    worker = await startWorker(prefix);
    await until('digits to be back', async () => (await listed(retiring)).models?.ready === true);
  });
});
