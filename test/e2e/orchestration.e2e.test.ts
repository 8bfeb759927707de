import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import { MlflowClient } from '@conveyor/shared/mlflow/client';
import { contentHash, readMnistSource, writeSnapshot, type SourceDataset } from '../../services/trainer/src/pipeline/ingest.js';
import { tagsOf } from '../../services/trainer/src/registry/gate.js';
import {
  deployTraining,
  readDeployment,
  runDeployment,
  startPrefectServer,
  startWorker,
  taskRunsOf,
  waitForFlowRun,
  WORK_POOL,
  type PrefectServer,
} from '../../harness/prefect-server.js';
import { freePort } from '../../harness/free-port.js';
import { startMlflow, type LocalMlflow } from '../../harness/mlflow-server.js';
import { until } from '../support/wait.js';
import { recordThroughGateway } from '../../services/trainer/src/replay/replay-client.js';
import { writeReplaySet } from '../../services/trainer/src/replay/replay-set.js';
import { digitPng, heldOutDigits } from '../support/images.js';
import { randomPrefix, testRedisUrl } from '../support/redis.js';
import { startGateway, startWorker as startConveyorWorker, stopAll, type Gateway } from '../support/services.js';

/**
 * The training pipeline as a Prefect 3 flow (orchestration/): a real Prefect server and process
 * worker, a real MLflow, the trainer's own steps as subprocesses. One server for the file (~30 s
 * to start on two cores); a tiny configuration keeps the training itself to seconds. MLflow runs
 * its basic-auth app here: every write the steps make needs the admin's account, which reaches them
 * only through the worker's environment (MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD_FILE).
 * A running Conveyor (Redis, a gateway, a production digits worker) answers the replay step: the
 * flow replays each new version over a set production answered before it may be staged.
 */
describe('orchestration (real Prefect and MLflow)', function () {
  this.timeout(600_000);
  const suffix = Math.random().toString(36).slice(2, 8);
  const model = `orchestrated-${suffix}`;
  let tmp: string;
  let server: PrefectServer;
  // What before() started, stopped in reverse even when it failed half-way.
  const started: (() => Promise<void>)[] = [];
  let client: MlflowClient;
  let deploymentId: string;
  let source: SourceDataset;
  let mlflow: LocalMlflow;
  let passwordFile: string;
  let parameters: Record<string, unknown>;
  const admin = { username: 'admin', password: `admin-${suffix}-${Math.random().toString(36).slice(2)}` };
  const prefix = randomPrefix('orchestration');
  let gateway: Gateway;
  let conveyorEnv: Record<string, string>;
  let strictPolicy: string;

  before(async () => {
    tmp = mkdtempSync(path.join(os.tmpdir(), 'conveyor-orchestration-'));
    mlflow = await startMlflow({ dir: path.join(tmp, 'mlflow'), quiet: true, auth: { admin } });
    started.push(() => mlflow.stop());
    passwordFile = path.join(tmp, 'admin.password');
    writeFileSync(passwordFile, `${admin.password}\n`, { mode: 0o600 });
    client = new MlflowClient(mlflow.url, { credentials: admin });
    source = readMnistSource();
    // Production, and 60 held-out digits it answered: the recorded set every flow run replays.
    const production = await startConveyorWorker(prefix, {}, 'production');
    started.push(() => stopAll(production));
    gateway = await startGateway(prefix);
    started.push(() => stopAll(gateway));
    conveyorEnv = { GATEWAY_URL: gateway.url, REDIS_URL: testRedisUrl(), REDIS_PREFIX: prefix };
    const { dataset, split } = await heldOutDigits();
    const images = await Promise.all(
      split.test.slice(0, 60).map(async (i) => ({ name: `digit-${i}.png`, bytes: await digitPng(dataset.samples[i]!.pixels) })),
    );
    const replaySet = path.join(tmp, 'replay-set');
    await writeReplaySet(replaySet, await recordThroughGateway({ url: gateway.url, concurrency: 2 }, 'digits', images));
    // The committed policy (a 95 % agreement floor), and one a two-epoch model on 600 digits meets.
    strictPolicy = path.resolve('services/trainer/configs/promotion.json');
    const committed = JSON.parse(readFileSync(strictPolicy, 'utf8')) as { replay: Record<string, unknown> };
    const lenientPolicy = path.join(tmp, 'lenient-promotion.json');
    writeFileSync(
      lenientPolicy,
      JSON.stringify({
        ...committed,
        replay: {
          ...committed.replay,
          minTop1Agreement: 0.2,
          maxMeanConfidenceShift: 1,
          maxLabelPsi: 100,
          maxP95InferenceRatio: 1000,
        },
      }),
    );
    const config = path.join(tmp, 'tiny-softmax.json');
    writeFileSync(
      config,
      JSON.stringify({
        name: 'tiny-softmax',
        model,
        architecture: { kind: 'softmax' },
        seed: 3,
        epochs: 2,
        batchSize: 64,
        learningRate: 0.003,
        patience: 2,
        limitTrain: 600,
      }),
    );
    server = await startPrefectServer({ home: path.join(tmp, 'prefect'), quiet: true });
    started.push(() => server.stop());
    parameters = {
      configs: [config],
      data_dir: path.join(tmp, 'data'),
      model,
      experiment: `orchestrated-${suffix}`,
      replay_set: replaySet,
      serving_model: 'digits',
      policy: lenientPolicy,
    };
    deploymentId = deployTraining(server, { parameters });
    const worker = startWorker(server, {
      env: {
        MLFLOW_TRACKING_URI: mlflow.url,
        MLFLOW_TRACKING_USERNAME: admin.username,
        MLFLOW_TRACKING_PASSWORD_FILE: passwordFile,
        ...conveyorEnv,
      },
      quiet: true,
    });
    started.push(() => worker.stop());
  });

  after(async () => {
    for (const stop of started.reverse()) await stop();
    rmSync(tmp, { recursive: true, force: true });
  });

  it('deploys the flow on a weekly cron schedule to a process work pool', async () => {
    const deployment = await readDeployment(server, deploymentId);
    expect(deployment.name).to.equal('weekly');
    expect(deployment.work_pool_name).to.equal(WORK_POOL);
    expect(deployment.schedules.map((s) => [s.active, s.schedule.cron])).to.deep.equal([[true, '0 3 * * 1']]);
  });

  it('runs ingest → validate → train → evaluate → register → replay → stage to Completed, registering (with the account given to the worker) a version tagged with the dataset hash, the flow run and its replay figures', async () => {
    const submitted = await runDeployment(server, deploymentId);
    const run = await waitForFlowRun(server, submitted.id, 300_000);
    expect(run.state_type, run.state?.message ?? '').to.equal('COMPLETED');

    // Task runs report their states as events, which may land a moment after the flow run's.
    const tasks = await until('seven completed task runs', async () => {
      const all = await taskRunsOf(server, run.id);
      return all.length === 7 && all.every((t) => t.state_type === 'COMPLETED') && all;
    });
    expect(tasks.map((t) => t.name.replace(/-[0-9a-f]{3}$/, ''))).to.deep.equal([
      'ingest',
      'validate',
      'train[tiny-softmax]',
      'evaluate',
      'register',
      'replay',
      'stage',
    ]);

    const staging = await client.getVersionByAlias(model, 'staging');
    expect(staging, 'a version behind staging').to.not.equal(undefined);
    const tags = tagsOf(staging!);
    expect(tags).to.include({
      dataset_hash: source.hash,
      'prefect.flow_run_id': run.id,
      'prefect.flow_run_name': run.name,
      'validation.passed': 'true',
      'replay.passed': 'true',
    });
    // Replayed over the 60 recorded digits (a few identical renderings would be one example).
    expect(Number(tags['replay.examples'])).to.be.within(55, 60);
    expect(Number(tags['replay.top1_agreement'])).to.be.within(0.2, 1);
    // The MLflow run the version came from is the one the train task tracked, tagged with where it
    // ran (the worker's machine: this one here) and the flow run that started it.
    const tracked = await client.getRun(staging!.run_id!);
    expect(tracked.data.params.find((p) => p.key === 'dataset_hash')?.value).to.equal(source.hash);
    const runTags = Object.fromEntries(tracked.data.tags.map((t) => [t.key, t.value]));
    expect(runTags).to.include({
      'conveyor.host': os.hostname(),
      'conveyor.host.platform': `${process.platform}-${process.arch}`,
      'prefect.flow_run_id': run.id,
      'prefect.deployment': 'weekly',
    });
  });

  it('retries a step that failed for a transient reason (MLflow unreachable) and completes once MLflow is back, retrying nothing else', async () => {
    // A worker of its own pool whose MLflow address is a closed port: the train step trains, then
    // cannot reach MLflow (connection refused, exit 1: transient). Once Prefect has scheduled the
    // retry, the port opens onto the real MLflow, and the retry goes through.
    const gatePort = await freePort();
    const pool = `flaky-${suffix}`;
    const id = deployTraining(server, {
      pool,
      name: `retry-${suffix}`,
      parameters: { ...parameters, data_dir: path.join(tmp, 'data-retry') },
    });
    const worker = startWorker(server, {
      pool,
      env: {
        MLFLOW_TRACKING_URI: `http://127.0.0.1:${gatePort}`,
        MLFLOW_TRACKING_USERNAME: admin.username,
        MLFLOW_TRACKING_PASSWORD_FILE: passwordFile,
        ...conveyorEnv,
      },
      quiet: true,
    });
    started.push(() => worker.stop());
    const versionsBefore = (await client.searchModelVersions(model)).length;

    const submitted = await runDeployment(server, id);
    const failedOnce = await until(
      'the train task awaiting its retry',
      async () => {
        const train = (await taskRunsOf(server, submitted.id)).find((t) => t.name.startsWith('train'));
        return train?.state_name === 'AwaitingRetry' && train;
      },
      240_000,
    );
    expect(failedOnce.run_count).to.equal(1);
    const target = new URL(mlflow.url);
    const gate = net.createServer((socket) => {
      const upstream = net.connect(Number(target.port), target.hostname);
      socket.pipe(upstream).pipe(socket);
      socket.on('error', () => upstream.destroy());
      upstream.on('error', () => socket.destroy());
    });
    await new Promise<void>((resolve) => gate.listen(gatePort, '127.0.0.1', resolve));
    started.push(() => new Promise<void>((resolve) => gate.close(() => resolve())));

    const run = await waitForFlowRun(server, submitted.id, 300_000);
    expect(run.state_type, run.state?.message ?? '').to.equal('COMPLETED');
    const tasks = await until('seven completed task runs', async () => {
      const all = await taskRunsOf(server, run.id);
      return all.length === 7 && all.every((t) => t.state_type === 'COMPLETED') && all;
    });
    const runCounts = Object.fromEntries(tasks.map((t) => [t.name.replace(/-[0-9a-f]{3}$/, ''), t.run_count]));
    expect(runCounts).to.deep.equal({
      ingest: 1,
      validate: 1,
      'train[tiny-softmax]': 2,
      evaluate: 1,
      register: 1,
      replay: 1,
      stage: 1,
    });
    expect((await client.searchModelVersions(model)).length).to.equal(versionsBefore + 1);
  });

  it('leaves staging where it was when replay refuses the new version (the committed 95 % agreement floor), with the measured figures on the version and in the replay step', async () => {
    const stagedBefore = await client.getVersionByAlias(model, 'staging');
    expect(stagedBefore, 'an earlier run staged a version').to.not.equal(undefined);
    const submitted = await runDeployment(server, deploymentId, {
      data_dir: path.join(tmp, 'data-strict'),
      policy: strictPolicy,
    });
    const run = await waitForFlowRun(server, submitted.id, 300_000);
    // A refused candidate is a verdict, not a failure: the run completes without a stage step.
    expect(run.state_type, run.state?.message ?? '').to.equal('COMPLETED');
    const tasks = await until('six completed task runs', async () => {
      const all = await taskRunsOf(server, run.id);
      return all.length === 6 && all.every((t) => t.state_type === 'COMPLETED') && all;
    });
    expect(tasks.map((t) => t.name.replace(/-[0-9a-f]{3}$/, ''))).to.not.include('stage');

    const versions = await client.searchModelVersions(model);
    const fresh = versions.find((v) => tagsOf(v)['prefect.flow_run_id'] === run.id);
    expect(fresh, 'the refused version is registered').to.not.equal(undefined);
    const tags = tagsOf(fresh!);
    expect(tags['replay.passed']).to.equal('false');
    expect(Number(tags['replay.top1_agreement'])).to.be.below(0.95);
    expect((await client.getVersionByAlias(model, 'staging'))?.version).to.equal(stagedBefore!.version);
    const verdict = JSON.parse(readFileSync(path.join(tmp, 'data-strict', 'orchestration', run.id, 'replay.json'), 'utf8')) as {
      passed: boolean;
      refused: string[];
    };
    expect(verdict.passed).to.equal(false);
    expect(verdict.refused.join(' ')).to.match(/top-1 agreement with production \d+\.\d+ % on \d+ recorded inputs/);
  });

  it('fails the flow on data that fails validation, with the report in the message, no retry and no new version', async () => {
    const before = (await client.searchModelVersions(model)).length;
    const broken: SourceDataset = {
      ...source,
      rows: source.rows.map((r, i) => (i === 42 ? { ...r, pixels: r.pixels.map((v, j) => (j === 0 ? NaN : v)) } : r)),
    };
    const snapshot = await writeSnapshot({ ...broken, hash: contentHash(broken.rows) }, path.join(tmp, 'drop'));

    const submitted = await runDeployment(server, deploymentId, { source_snapshot: snapshot });
    const run = await waitForFlowRun(server, submitted.id, 180_000);
    expect(run.state_type).to.equal('FAILED');
    expect(run.state?.message).to.contain('data validation failed').and.contain('validation.md');

    const tasks = await until('the failed validation task run', async () => {
      const all = await taskRunsOf(server, run.id);
      return all.some((t) => t.name.startsWith('validate') && t.state_type === 'FAILED') && all;
    });
    const byName = Object.fromEntries(tasks.map((t) => [t.name.replace(/-[0-9a-f]{3}$/, ''), t]));
    expect(byName.ingest?.state_type).to.equal('COMPLETED');
    expect(byName.validate?.state_type).to.equal('FAILED');
    expect(byName.validate?.run_count, 'a failed validation is not retried').to.equal(1);
    expect(Object.keys(byName).some((n) => n.startsWith('train'))).to.equal(false);
    expect((await client.searchModelVersions(model)).length).to.equal(before);
  });
});
