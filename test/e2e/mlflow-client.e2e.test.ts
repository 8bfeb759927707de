import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import { artifactProxyPath, MlflowClient, MlflowError, parseModelUri } from '@conveyor/shared/mlflow/client';
import { sharedMlflow } from '../support/mlflow.js';

/** The typed REST client against a real MLflow tracking server. */
describe('MLflow REST client (real server)', function () {
  this.timeout(180_000);
  let client: MlflowClient;
  const suffix = Math.random().toString(36).slice(2, 8);

  before(async () => {
    client = new MlflowClient((await sharedMlflow()).url);
  });

  it('creates experiments once and runs with batched params, metrics and tags', async () => {
    const id = await client.getOrCreateExperiment(`client-${suffix}`);
    expect(await client.getOrCreateExperiment(`client-${suffix}`)).to.equal(id);
    const run = await client.createRun(id, 'batched', { purpose: 'test' });
    // More metric points than one log-batch call may carry, and more params than 100.
    const metrics = Array.from({ length: 1500 }, (_, step) => ({ key: 'loss', value: 1 / (step + 1), step }));
    const params = Object.fromEntries(Array.from({ length: 120 }, (_, i) => [`p${i}`, i]));
    await client.logBatch(run.run_id, { params, metrics, tags: { stage: 'unit' } });
    await client.finishRun(run.run_id);
    const fetched = await client.getRun(run.run_id);
    expect(fetched.info.status).to.equal('FINISHED');
    expect(fetched.data.params).to.have.length(120);
    expect(fetched.data.metrics.find((m) => m.key === 'loss')?.value).to.be.closeTo(1 / 1500, 1e-9);
    expect(fetched.data.tags.find((t) => t.key === 'stage')?.value).to.equal('unit');
    const found = await client.searchRuns([id], { filter: "tags.purpose = 'test'" });
    expect(found.map((r) => r.info.run_id)).to.deep.equal([run.run_id]);
  });

  it('uploads a model folder through the artifact proxy and downloads it back, byte for byte', async () => {
    const id = await client.getOrCreateExperiment(`client-${suffix}`);
    const run = await client.createRun(id, 'artifacts');
    await client.uploadDirectory(run.artifact_uri, 'models/digits', 'model');
    const listing = await client.listArtifacts(`${run.artifact_uri}/model`);
    expect(listing.map((f) => path.posix.basename(f.path)).sort()).to.include.members(['manifest.json', 'model.onnx']);
    const target = path.join(mkdtempSync(path.join(os.tmpdir(), 'conveyor-dl-')), 'model');
    await client.downloadDirectory(`${run.artifact_uri}/model`, target);
    for (const file of readdirSync('models/digits')) {
      expect(readFileSync(path.join(target, file)).equals(readFileSync(path.join('models/digits', file))), file).to.equal(true);
    }
    rmSync(path.dirname(target), { recursive: true, force: true });
  });

  it('registers versions, moves aliases, mirrors stages and records tags and descriptions', async () => {
    const id = await client.getOrCreateExperiment(`client-${suffix}`);
    const run = await client.createRun(id, 'registry');
    await client.uploadArtifact(run.artifact_uri, 'model/hello.txt', Buffer.from('hi'));
    const name = `registry-${suffix}`;
    await client.ensureRegisteredModel(name);
    await client.ensureRegisteredModel(name); // idempotent
    const v1 = await client.createModelVersion(name, `${run.artifact_uri}/model`, run.run_id, { tags: { test_accuracy: '0.9' } });
    const v2 = await client.createModelVersion(name, `${run.artifact_uri}/model`, run.run_id);
    expect([v1.version, v2.version]).to.deep.equal(['1', '2']);
    expect(v1.status).to.equal('READY');

    expect(await client.getVersionByAlias(name, 'production')).to.equal(undefined);
    await client.setAlias(name, 'production', v1.version);
    expect((await client.getVersionByAlias(name, 'production'))?.version).to.equal('1');
    await client.setAlias(name, 'production', v2.version);
    expect((await client.getVersionByAlias(name, 'production'))?.version).to.equal('2');
    await client.deleteAlias(name, 'production');
    expect(await client.getVersionByAlias(name, 'production')).to.equal(undefined);

    await client.transitionStage(name, v1.version, 'Production');
    await client.setModelVersionTag(name, v1.version, 'promotion.decision', 'promoted');
    await client.updateModelVersionDescription(name, v1.version, 'why');
    const fetched = await client.getModelVersion(name, v1.version);
    expect(fetched).to.include({ current_stage: 'Production', description: 'why' });
    expect(fetched.tags).to.deep.include({ key: 'promotion.decision', value: 'promoted' });
    expect((await client.searchModelVersions(name)).map((v) => v.version)).to.deep.equal(['1', '2']);
    expect(await client.getDownloadUri(name, v1.version)).to.match(/^mlflow-artifacts:/);
    expect(await client.getRegisteredModel(`missing-${suffix}`)).to.equal(undefined);
  });

  it('reports server errors with their MLflow error code', async () => {
    const error = await client.getModelVersion(`missing-${suffix}`, '1').catch((e: unknown) => e);
    expect(error).to.be.instanceOf(MlflowError);
    expect((error as MlflowError).errorCode).to.equal('RESOURCE_DOES_NOT_EXIST');
    const down = await new MlflowClient('http://127.0.0.1:1', { timeoutMs: 500 })
      .getExperimentByName('x')
      .catch((e: unknown) => e);
    expect((down as MlflowError).errorCode).to.equal('UNREACHABLE');
  });

  it('parses model and artifact URIs', () => {
    expect(parseModelUri('models:/digits@production')).to.deep.equal({ name: 'digits', alias: 'production' });
    expect(parseModelUri('models:/digits/3')).to.deep.equal({ name: 'digits', version: '3' });
    expect(() => parseModelUri('runs:/abc/model')).to.throw();
    expect(artifactProxyPath('mlflow-artifacts:/1/abc/artifacts/model')).to.equal('1/abc/artifacts/model');
    expect(artifactProxyPath('mlflow-artifacts://host:5000/1/abc/artifacts')).to.equal('1/abc/artifacts');
  });
});
