import { spawnSync } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import pino from 'pino';
import { MlflowClient } from '@conveyor/shared/mlflow/client';
import { ValidationError } from '@conveyor/shared/validation/suite';
import { readMnistSource, type SourceDataset } from '../../services/trainer/src/pipeline/ingest.js';
import { runAll } from '../../services/trainer/src/pipeline/run-all.js';
import { signatureProblem } from '@conveyor/shared/model/signature';
import { tagsOf } from '../../services/trainer/src/registry/gate.js';
import { PromotionPolicy } from '../../services/trainer/src/registry/policy.js';
import { promote } from '../../services/trainer/src/registry/promote.js';
import { rollback } from '../../services/trainer/src/registry/rollback.js';
import { ROOT } from '../../harness/service-process.js';
import { sharedMlflow } from '../support/mlflow.js';
import { registerFolder } from '../support/registry.js';

/**
 * The model lifecycle against a real MLflow server: tracked experiments, registration, the
 * promotion gate, rollback — and the data validation that stops a pipeline.
 */
const log = pino({ level: 'silent' });

describe('model lifecycle (real MLflow)', function () {
  this.timeout(300_000);
  let client: MlflowClient;
  let mlflowUrl: string;
  let tmp: string;
  let source: SourceDataset;
  const suffix = Math.random().toString(36).slice(2, 8);

  const tinyConfig = (kind: 'softmax' | 'mlp' | 'cnn', seed = 3) => {
    const architecture =
      kind === 'softmax' ? { kind } : kind === 'mlp' ? { kind, hidden: 32 } : { kind, filters: [4, 8], dense: 16 };
    const file = path.join(tmp, `tiny-${kind}-${seed}.json`);
    writeFileSync(
      file,
      JSON.stringify({
        name: `tiny-${kind}`,
        model: `tiny-${suffix}`,
        architecture,
        seed,
        epochs: 2,
        batchSize: 64,
        learningRate: 0.003,
        patience: 2,
        limitTrain: 600,
      }),
    );
    return file;
  };

  before(async () => {
    mlflowUrl = (await sharedMlflow()).url;
    client = new MlflowClient(mlflowUrl);
    tmp = mkdtempSync(path.join(os.tmpdir(), 'conveyor-lifecycle-'));
    source = readMnistSource();
  });
  after(() => rmSync(tmp, { recursive: true, force: true }));

  describe('make train (with small configurations)', () => {
    let result: Awaited<ReturnType<typeof runAll>>;
    const experiment = `pipeline-${suffix}`;
    const signing = generateKeyPairSync('ed25519');

    before(async () => {
      result = await runAll({
        configFiles: [tinyConfig('softmax'), tinyConfig('mlp'), tinyConfig('cnn')],
        dataRoot: path.join(tmp, 'data'),
        source,
        tracking: { client, experiment, signingKey: signing.privateKey },
        register: true,
        publishTo: path.join(tmp, 'published'),
        reportsDir: path.join(tmp, 'reports'),
        modelCardFile: path.join(tmp, 'MODEL_CARD.md'),
        log,
      });
    });

    it('tracks one finished run per configuration, with params, per-epoch and final metrics', async () => {
      const id = (await client.getExperimentByName(experiment))!.experimentId;
      const runs = await client.searchRuns([id]);
      expect(runs.map((r) => r.info.run_name).sort()).to.deep.equal(['tiny-cnn', 'tiny-mlp', 'tiny-softmax']);
      for (const run of runs) {
        expect(run.info.status).to.equal('FINISHED');
        const params = Object.fromEntries(run.data.params.map((p) => [p.key, p.value]));
        expect(params).to.include({ seed: '3', dataset_hash: source.hash, batch_size: '64' });
        const metrics = new Set(run.data.metrics.map((m) => m.key));
        for (const key of [
          'loss',
          'val_accuracy',
          'test_accuracy',
          'test_macro_f1',
          'test_f1_class_0',
          'onnx_latency_b1_p95_ms',
        ]) {
          expect(metrics.has(key), key).to.equal(true);
        }
        expect(run.data.tags.find((t) => t.key === 'conveyor.validation')?.value).to.equal('passed');
      }
    });

    it('logs the model folder (with MLmodel and reference profile), the confusion matrix and the validation report', async () => {
      const best = result.runs.find((r) => r.run === result.best)!.tracked!;
      const model = (await client.listArtifacts(`${best.artifactUri}/model`)).map((f) => path.posix.basename(f.path)).sort();
      expect(model).to.deep.equal([
        'MLmodel',
        'evaluation.json',
        'manifest.json',
        'model.onnx',
        'reference-profile.json',
        'signature.json',
      ]);
      // Signed by the trainer before upload: what the registry serves verifies against its public key.
      const downloaded = path.join(tmp, 'downloaded-model');
      await client.downloadDirectory(`${best.artifactUri}/model`, downloaded);
      expect(
        await signatureProblem(downloaded, signing.publicKey, { kind: 'build', build: result.best.version }, [
          'manifest.json',
          'model.onnx',
          'MLmodel',
        ]),
      ).to.equal(undefined);
      const reports = (await client.listArtifacts(`${best.artifactUri}/reports`)).map((f) => path.posix.basename(f.path)).sort();
      expect(reports).to.deep.equal(['confusion-matrix.png', 'history.json', 'validation.json', 'validation.md']);
      const png = await client.downloadArtifact(`${best.artifactUri}/reports/confusion-matrix.png`);
      expect(png.subarray(1, 4).toString()).to.equal('PNG');
      const mlmodel = (await client.downloadArtifact(`${best.artifactUri}/model/MLmodel`)).toString();
      expect(mlmodel).to.contain('onnx:').and.contain('data: model.onnx').and.contain(`run_id: ${best.runId}`);
    });

    it('registers the best run (by validation accuracy) as a version with the staging alias', async () => {
      expect(result.registered).to.not.equal(undefined);
      const staging = await client.getVersionByAlias(`tiny-${suffix}`, 'staging');
      expect(staging?.version).to.equal(result.registered!.version);
      expect(staging?.run_id).to.equal(result.runs.find((r) => r.run === result.best)!.tracked!.runId);
      const best = Math.max(...result.runs.map((r) => r.run.metrics.validationAccuracy));
      expect(result.best.metrics.validationAccuracy).to.equal(best);
      expect(tagsOf(staging!)).to.include({ 'validation.passed': 'true', config: result.best.config.name });
    });

    it('publishes the best model folder, the validation report and a model card naming every run', () => {
      expect(
        (JSON.parse(readFileSync(path.join(tmp, 'published', 'manifest.json'), 'utf8')) as { version: string }).version,
      ).to.equal(result.best.version);
      expect(readFileSync(path.join(tmp, 'reports', 'validation.md'), 'utf8')).to.contain('**PASSED**');
      const card = readFileSync(path.join(tmp, 'MODEL_CARD.md'), 'utf8');
      for (const name of ['tiny-softmax', 'tiny-mlp', 'tiny-cnn']) expect(card).to.contain(name);
      expect(card).to.contain(`## Best configuration: ${result.best.config.name}`);
      expect(card).to.contain('## Limitations');
    });

    it('reproduces the same metrics when a configuration is run again with its seed', async () => {
      const again = await runAll({
        configFiles: [tinyConfig('cnn')],
        dataRoot: path.join(tmp, 'data-again'),
        source,
        register: false,
        log,
      });
      const first = result.runs.find((r) => r.run.config.name === 'tiny-cnn')!.run;
      expect(again.best.version, 'same ONNX bytes').to.equal(first.version);
      expect(again.best.metrics.testAccuracy).to.equal(first.metrics.testAccuracy);
      expect(again.best.history.map((h) => h.validationLoss)).to.deep.equal(first.history.map((h) => h.validationLoss));
    });
  });

  it('stops the pipeline before any training or tracking when the data fails validation', async () => {
    const broken: SourceDataset = {
      ...source,
      rows: source.rows.map((r, i) => (i === 42 ? { ...r, pixels: r.pixels.map((v, j) => (j === 0 ? NaN : v)) } : r)),
    };
    const experiment = `broken-${suffix}`;
    const error = await runAll({
      configFiles: [tinyConfig('softmax')],
      dataRoot: path.join(tmp, 'data-broken'),
      source: broken,
      tracking: { client, experiment },
      register: true,
      reportsDir: path.join(tmp, 'reports-broken'),
      log,
    }).catch((e: unknown) => e);
    expect(error).to.be.instanceOf(ValidationError);
    expect((error as Error).message).to.contain('`pixels` has no nulls or NaNs');
    expect(await client.getExperimentByName(experiment)).to.equal(undefined);
    expect(readFileSync(path.join(tmp, 'reports-broken', 'validation.md'), 'utf8')).to.contain('**FAILED**');
  });

  describe('promotion and rollback', () => {
    const name = `digits-${suffix}`;
    const policy = PromotionPolicy.parse(JSON.parse(readFileSync('services/trainer/configs/promotion.json', 'utf8')));

    it('promotes a candidate that passes the gate, recording the decision and figures on the version', async () => {
      const v1 = await registerFolder(client, name);
      const decision = await promote(client, name, policy, {}, log);
      expect(decision).to.include({ passed: true, promoted: true, candidate: v1.version, production: null });
      const prod = await client.getVersionByAlias(name, 'production');
      expect(prod?.version).to.equal(v1.version);
      expect(prod?.current_stage).to.equal('Production');
      const tags = tagsOf(prod!);
      expect(tags['promotion.decision']).to.equal('promoted');
      expect(JSON.parse(tags['promotion.criteria']!)).to.have.length(4);
      expect(prod?.description).to.contain('Promotion approved').and.contain('accuracy-floor');
    });

    it('refuses a candidate that fails the gate, moves nothing, and says why (make promote exits non-zero)', async () => {
      const before = (await client.getVersionByAlias(name, 'production'))!.version;
      // A tiny model trained for the occasion: far below the accuracy floor.
      const run = await runAll({
        configFiles: [tinyConfig('softmax', 5)],
        dataRoot: path.join(tmp, 'data-weak'),
        source,
        tracking: { client, experiment: `weak-${suffix}` },
        register: false,
        log,
      });
      const tracked = run.runs[0]!.tracked!;
      const weak = await client.createModelVersion(name, `${tracked.artifactUri}/model`, tracked.runId, {
        tags: {
          'validation.passed': 'true',
          test_accuracy: String(run.best.metrics.testAccuracy),
          onnx_latency_b1_p95_ms: String(run.best.metrics.latency.batch1P95Ms),
        },
      });
      const cli = spawnSync(
        process.execPath,
        [
          '--conditions=conveyor-source',
          '--import',
          'tsx',
          'services/trainer/src/main.ts',
          'promote',
          '--model',
          name,
          '--version',
          weak.version,
        ],
        { cwd: ROOT, env: { ...process.env, MLFLOW_TRACKING_URI: mlflowUrl, LOG_LEVEL: 'silent' }, encoding: 'utf8' },
      );
      expect(cli.status, cli.stderr).to.equal(3);
      const printed = JSON.parse(cli.stdout) as {
        promoted: boolean;
        criteria: { id: string; passed: boolean; detail: string }[];
      };
      expect(printed.promoted).to.equal(false);
      expect(printed.criteria.find((c) => !c.passed)?.id).to.equal('accuracy-floor');
      expect((await client.getVersionByAlias(name, 'production'))!.version).to.equal(before);
      expect(tagsOf(await client.getModelVersion(name, weak.version))['promotion.decision']).to.equal('rejected');
    });

    it('rolls production back to the version it replaced, with one command', async () => {
      const first = (await client.getVersionByAlias(name, 'production'))!.version;
      const v3 = await registerFolder(client, name);
      expect((await promote(client, name, policy, {}, log)).promoted).to.equal(true);
      expect((await client.getVersionByAlias(name, 'production'))!.version).to.equal(v3.version);

      const cli = spawnSync(
        process.execPath,
        ['--conditions=conveyor-source', '--import', 'tsx', 'services/trainer/src/main.ts', 'rollback', '--model', name],
        {
          cwd: ROOT,
          env: { ...process.env, MLFLOW_TRACKING_URI: mlflowUrl, LOG_LEVEL: 'silent' },
          encoding: 'utf8',
        },
      );
      expect(cli.status, cli.stderr).to.equal(0);
      expect(JSON.parse(cli.stdout)).to.deep.equal({ from: v3.version, to: first });
      const prod = await client.getVersionByAlias(name, 'production');
      expect(prod?.version).to.equal(first);
      expect(prod?.current_stage).to.equal('Production');
      expect((await client.getModelVersion(name, v3.version)).current_stage).to.equal('Archived');
      // The first production version replaced nothing: there is nowhere further back to go.
      const error = await rollback(client, name, log).catch((e: unknown) => e);
      expect((error as Error).message).to.contain('nothing to roll back to');
    });
  });
});
