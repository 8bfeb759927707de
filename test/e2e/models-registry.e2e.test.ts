import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import { MlflowClient } from '@conveyor/shared/mlflow/client';
import { digitPng, heldOutDigits } from '../support/images.js';
import { predictModel, request } from '../support/http.js';
import { sharedMlflow } from '../support/mlflow.js';
import { randomPrefix } from '../support/redis.js';
import { registerFolder } from '../support/registry.js';
import { dumpLogsOnFailure, startGateway, startWorker, stopAll, type Gateway } from '../support/services.js';
import { until } from '../support/wait.js';

/**
 * Several models following the MLflow registry in one worker process: each model its own alias
 * (`models:/<name>@production`), its own watcher, its own swap.
 */
type Worker = Awaited<ReturnType<typeof startWorker>>;

interface ModelView {
  name: string;
  versions: string[];
}

describe('several models from the registry', function () {
  this.timeout(300_000);
  let seven: Buffer;

  before(async () => {
    const { dataset, split } = await heldOutDigits();
    seven = await digitPng(dataset.samples[split.test.find((i) => dataset.samples[i]!.label === 7)!]!.pixels);
  });

  describe('each model following its own registry alias (real MLflow)', () => {
    const prefix = randomPrefix('models-registry');
    const suffix = Math.random().toString(36).slice(2, 8);
    const [first, second] = [`mm-a-${suffix}`, `mm-b-${suffix}`];
    let tmp: string;
    let client: MlflowClient;
    let gateway: Gateway;
    let worker: Worker;

    before(async () => {
      tmp = mkdtempSync(path.join(os.tmpdir(), 'conveyor-models-registry-'));
      const mlflow = await sharedMlflow();
      client = new MlflowClient(mlflow.url);
      for (const name of [first, second]) {
        const version = await registerFolder(client, name);
        await client.setAlias(name, 'production', version.version);
      }
      [gateway, worker] = await Promise.all([
        startGateway(prefix),
        // Neither is the default model: each follows models:/<name>@production.
        startWorker(prefix, {
          MODELS: `${first},${second}`,
          MLFLOW_TRACKING_URI: mlflow.url,
          MODEL_CACHE_DIR: path.join(tmp, 'cache'),
          MODEL_POLL_INTERVAL_MS: '200',
        }),
      ]);
    });
    afterEach(function () {
      dumpLogsOnFailure(this, gateway, worker);
    });
    after(async () => {
      await stopAll(gateway, worker);
      rmSync(tmp, { recursive: true, force: true });
    });

    it('serves both from the registry, and swaps only the model whose alias moved', async () => {
      // The gateway learns of a new model from the worker's announcement, a moment after the worker
      // logs it is ready (its view of the catalogue is re-read at most every 250 ms).
      for (const name of [first, second]) {
        await until(
          `${name} ready at the gateway`,
          async () => (await request(`${gateway.url}/v2/models/${name}/ready`)).status === 200 || undefined,
        );
      }
      for (const name of [first, second]) {
        const reply = await predictModel(gateway.url, name, seven);
        expect(reply.status, JSON.stringify(reply.body)).to.equal(200);
        expect(reply.body.model).to.deep.equal({ name, version: '1' });
      }
      const moved = await registerFolder(client, second);
      await client.setAlias(second, 'production', moved.version);
      await until(`${second} serving version ${moved.version}`, async () => {
        const reply = await predictModel(gateway.url, second, seven);
        return (reply.body.model as { version?: string } | undefined)?.version === moved.version;
      });
      expect((await predictModel(gateway.url, first, seven)).body.model).to.deep.equal({ name: first, version: '1' });
      // The log line may trail the reply (stdout against Redis).
      await worker.waitFor((r) => r.msg === 'model swapped');
      const swaps = worker.records.filter((r) => r.msg === 'model swapped');
      expect(swaps.map((r) => r.modelName)).to.deep.equal([second]);
      const list = await request<{ models: ModelView[] }>(`${gateway.url}/v1/models`);
      const versions = Object.fromEntries(list.body.models.map((m) => [m.name, m.versions]));
      expect(versions[first]).to.deep.equal(['1']);
      await until('the heartbeat to list the new version', async () => {
        const models = (await request<{ models: ModelView[] }>(`${gateway.url}/v1/models`)).body.models;
        return models.find((m) => m.name === second)?.versions.join() === moved.version;
      });
    });
  });
});
