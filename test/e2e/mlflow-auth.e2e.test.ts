import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import pino from 'pino';
import { MlflowAuthError, MlflowClient } from '@conveyor/shared/mlflow/client';
import { RegistrySource } from '../../services/inference-worker/src/model/registry-source.js';
import { PromotionPolicy } from '../../services/trainer/src/registry/policy.js';
import { promote } from '../../services/trainer/src/registry/promote.js';
import { startMlflow, type LocalMlflow } from '../../harness/mlflow-server.js';
import { ROOT, spawnService } from '../../harness/service-process.js';
import { randomPrefix, testRedisUrl } from '../support/redis.js';
import { registerFolder } from '../support/registry.js';
import { dumpLogsOnFailure, startWorker, stopAll } from '../support/services.js';

/**
 * "Model poisoning through MLflow": whoever can write to the registry chooses what the workers
 * serve. A real MLflow server with its basic-auth app (scripts/mlflow/basic-auth.ini, the accounts
 * made by scripts/mlflow/provision-auth.py, as in the compose image): without an account nothing
 * but /health answers, the trainer's admin account registers, promotes and rolls back, and the
 * workers' READ-only account follows `production` but cannot move it. One server for the file.
 */
describe('MLflow behind authentication (real server, basic-auth app)', function () {
  this.timeout(300_000);
  const name = `guarded-${Math.random().toString(36).slice(2, 8)}`;
  const admin = { username: 'admin', password: `admin-${Math.random().toString(36).slice(2)}-pw` };
  const reader = { username: 'reader', password: `reader-${Math.random().toString(36).slice(2)}-pw` };
  const log = pino({ level: 'silent' });
  let tmp: string;
  let mlflow: LocalMlflow;
  let stopMlflow = () => Promise.resolve();
  let api: string;
  let trainer: MlflowClient;
  let workerClient: MlflowClient;
  let production: string;
  const procs: ReturnType<typeof spawnService>[] = [];

  /** A secret file, as compose or Kubernetes would mount it (with the trailing newline editors add). */
  const secretFile = (label: string, value: string) => {
    const file = path.join(tmp, `${label}.password`);
    writeFileSync(file, `${value}\n`, { mode: 0o600 });
    return file;
  };

  before(async () => {
    tmp = mkdtempSync(path.join(os.tmpdir(), 'conveyor-mlflow-auth-'));
    mlflow = await startMlflow({ dir: path.join(tmp, 'mlflow'), quiet: true, auth: { admin, reader } });
    stopMlflow = () => mlflow.stop();
    api = `${mlflow.url}/api/2.0/mlflow`;
    trainer = new MlflowClient(mlflow.url, { credentials: admin });
    workerClient = new MlflowClient(mlflow.url, { credentials: reader });
    const first = await registerFolder(trainer, name, 'models/digits', `auth-${name}`);
    await trainer.setAlias(name, 'production', first.version);
    production = first.version;
  });
  afterEach(function () {
    dumpLogsOnFailure(this, ...procs);
  });
  after(async () => {
    await stopAll(...procs);
    await stopMlflow();
    rmSync(tmp, { recursive: true, force: true });
  });

  const post = (endpoint: string, body: unknown, credentials?: { username: string; password: string }) =>
    fetch(`${api}/${endpoint}`, {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        ...(credentials
          ? { authorization: `Basic ${Buffer.from(`${credentials.username}:${credentials.password}`).toString('base64')}` }
          : {}),
      },
      body: JSON.stringify(body),
    });

  it('refuses every registry write without credentials (401); only /health is open', async () => {
    expect((await fetch(`${mlflow.url}/health`)).status).to.equal(200);
    const run = await trainer.createRun(await trainer.getOrCreateExperiment(`auth-${name}`), 'anonymous-attempt');
    const attempts = [
      post('model-versions/create', { name, source: `${run.artifact_uri}/model`, run_id: run.run_id }),
      post('registered-models/alias', { name, alias: 'production', version: production }),
      post('registered-models/create', { name: `${name}-squat` }),
      fetch(`${api}/registered-models/alias?name=${name}&alias=production`),
    ];
    for (const response of await Promise.all(attempts)) {
      expect(response.status, response.url).to.equal(401);
      expect(response.headers.get('www-authenticate')).to.match(/^Basic/);
    }
    expect((await trainer.getVersionByAlias(name, 'production'))?.version).to.equal(production);
    expect(await trainer.searchModelVersions(name)).to.have.length(1);
  });

  it('refuses a wrong password (401), and the client names the cause instead of retrying', async () => {
    const raw = await post(
      'registered-models/alias',
      { name, alias: 'production', version: production },
      { ...admin, password: 'not-the-password' },
    );
    expect(raw.status).to.equal(401);

    const wrong = await new MlflowClient(mlflow.url, { credentials: { ...admin, password: 'not-the-password' } })
      .setAlias(name, 'production', production)
      .catch((e: unknown) => e);
    expect(wrong).to.be.instanceOf(MlflowAuthError);
    expect(wrong).to.include({ status: 401, errorCode: 'UNAUTHENTICATED' });
    expect((wrong as Error).message).to.contain('MLflow refused the credentials of user "admin"');
    expect((wrong as Error).message).to.contain('POST /api/2.0/mlflow/registered-models/alias');
    expect((wrong as Error).message).not.to.contain('not-the-password');

    const none = await new MlflowClient(mlflow.url).getVersionByAlias(name, 'production').catch((e: unknown) => e);
    expect(none).to.be.instanceOf(MlflowAuthError);
    expect((none as Error).message).to.match(
      /^MLflow refused the credentials: .* requires authentication and none are configured/,
    );
  });

  it("lets the trainer's admin account register versions, promote and roll back", async () => {
    const candidate = await registerFolder(trainer, name, 'models/digits', `auth-${name}`);
    const policy = PromotionPolicy.parse({ minTestAccuracy: 0.975, maxRegression: 0.005, maxLatencyP95Ms: 2 });
    expect((await promote(trainer, name, policy, {}, log)).promoted).to.equal(true);
    expect((await trainer.getVersionByAlias(name, 'production'))?.version).to.equal(candidate.version);

    // The trainer's command line, with its password in a secret file (MLFLOW_TRACKING_PASSWORD_FILE).
    const rollback = await trainerCli(['rollback', '--model', name], {
      MLFLOW_TRACKING_URI: mlflow.url,
      MLFLOW_TRACKING_USERNAME: admin.username,
      MLFLOW_TRACKING_PASSWORD_FILE: secretFile('trainer', admin.password),
    });
    expect(rollback.code, rollback.stderr).to.equal(0);
    expect(JSON.parse(rollback.stdout)).to.deep.equal({ from: candidate.version, to: production });
  });

  it("serves production to a worker with the READ-only account (the worker's registry source)", async () => {
    const source = new RegistrySource(workerClient, `models:/${name}@production`, path.join(tmp, 'cache-in-process'), log);
    const resolved = await source.resolve();
    expect(resolved).to.deep.equal({ name, version: production });
    const dir = await source.fetch(resolved);
    expect(path.basename(dir)).to.equal(production);

    // The worker process, configured as compose configures it (reader, password from a file).
    const worker = await startWorker(randomPrefix('auth'), {
      MLFLOW_TRACKING_URI: mlflow.url,
      MLFLOW_TRACKING_USERNAME: reader.username,
      MLFLOW_TRACKING_PASSWORD_FILE: secretFile('worker', reader.password),
      MODEL_URI: `models:/${name}@production`,
      MODEL_CACHE_DIR: path.join(tmp, 'cache-worker'),
    });
    procs.push(worker);
    const serving = await worker.waitFor((r) => r.msg === 'serving model version');
    expect(serving.model).to.deep.equal({ name, version: production });
  });

  it('refuses the READ-only account a new version or a move of production (403)', async () => {
    const run = await trainer.createRun(await trainer.getOrCreateExperiment(`auth-${name}`), 'reader-attempt');
    await trainer.uploadDirectory(run.artifact_uri, 'models/digits', 'model');
    const attempts: [string, () => Promise<unknown>][] = [
      ['set the alias', () => workerClient.setAlias(name, 'production', '2')],
      ['delete the alias', () => workerClient.deleteAlias(name, 'production')],
      ['register a version', () => workerClient.createModelVersion(name, `${run.artifact_uri}/model`, run.run_id)],
      ['tag a version', () => workerClient.setModelVersionTag(name, production, 'promotion.decision', 'promoted')],
    ];
    for (const [what, attempt] of attempts) {
      const error = await attempt().catch((e: unknown) => e);
      expect(error, what).to.be.instanceOf(MlflowAuthError);
      expect(error, what).to.include({ status: 403, errorCode: 'PERMISSION_DENIED' });
      expect((error as Error).message, what).to.contain('MLflow refused user "reader" this operation');
    }
    expect((await trainer.getVersionByAlias(name, 'production'))?.version).to.equal(production);
    expect((await trainer.searchModelVersions(name)).map((v) => v.version)).to.deep.equal(['1', '2']);
  });

  it('refuses the READ-only account any change to accounts, its own password included (403): it cannot lock the workers out', async () => {
    const send = (method: string, url: string, body: unknown, credentials: { username: string; password: string }) =>
      fetch(url, {
        method,
        headers: {
          'content-type': 'application/json',
          authorization: `Basic ${Buffer.from(`${credentials.username}:${credentials.password}`).toString('base64')}`,
        },
        body: JSON.stringify(body),
      });
    const ajax = `${mlflow.url}/ajax-api/2.0/mlflow`;
    const changed = `${reader.password}-changed`;
    const attempts: [string, () => Promise<Response>][] = [
      [
        'change its own password',
        () =>
          send(
            'PATCH',
            `${api}/users/update-password`,
            { username: reader.username, password: changed, current_password: reader.password },
            reader,
          ),
      ],
      [
        'change its own password (the UI path)',
        () =>
          send(
            'PATCH',
            `${ajax}/users/update-password`,
            { username: reader.username, password: changed, current_password: reader.password },
            reader,
          ),
      ],
      [
        'change the admin password',
        () => send('PATCH', `${api}/users/update-password`, { username: admin.username, password: changed }, reader),
      ],
      [
        'make itself an admin',
        () => send('PATCH', `${api}/users/update-admin`, { username: reader.username, is_admin: true }, reader),
      ],
      [
        'create an account',
        () => send('POST', `${api}/users/create`, { username: 'intruder', password: 'intruder-password-1' }, reader),
      ],
      ['delete the admin', () => send('DELETE', `${api}/users/delete`, { username: admin.username }, reader)],
    ];
    for (const [what, attempt] of attempts) {
      const response = await attempt();
      expect(response.status, `${what}: ${await response.text()}`).to.equal(403);
    }
    // Both accounts still work with the passwords the workers and the trainer hold.
    expect((await workerClient.getVersionByAlias(name, 'production'))?.version).to.equal(production);
    expect((await trainer.getVersionByAlias(name, 'production'))?.version).to.equal(production);
    // The admin keeps its say over accounts (provision-auth.py and operators rotate passwords through it).
    const own = await send('GET', `${api}/users/get?username=${reader.username}`, undefined, admin);
    expect(own.status).to.equal(200);
  });

  it('stops the worker, the monitor and the trainer at once when the credentials are refused (exit 77), without retrying', async () => {
    const refused = { MLFLOW_TRACKING_URI: mlflow.url, MLFLOW_TRACKING_USERNAME: reader.username };
    const wrongFile = secretFile('wrong', 'not-the-password');
    const prefix = randomPrefix('auth-refused');
    const worker = spawnService(
      'inference-worker',
      {
        ...refused,
        MLFLOW_TRACKING_PASSWORD_FILE: wrongFile,
        MODEL_URI: `models:/${name}@production`,
        MODEL_CACHE_DIR: path.join(tmp, 'cache-refused'),
        REDIS_URL: testRedisUrl(),
        REDIS_PREFIX: prefix,
      },
      { label: 'worker-refused' },
    );
    const monitor = spawnService(
      'monitor',
      {
        ...refused,
        MLFLOW_TRACKING_PASSWORD_FILE: wrongFile,
        REDIS_URL: testRedisUrl(),
        REDIS_PREFIX: prefix,
        MONITOR_PORT: '0',
      },
      { label: 'monitor-refused' },
    );
    procs.push(worker, monitor);
    const [workerCode, monitorCode, cli] = await Promise.all([
      worker.exited,
      monitor.exited,
      trainerCli(['promote', '--model', name], { ...refused, MLFLOW_TRACKING_PASSWORD: 'not-the-password' }),
    ]);
    for (const [proc, code] of [
      [worker, workerCode],
      [monitor, monitorCode],
    ] as const) {
      expect(code, proc.name).to.equal(77);
      const fatal = proc.records.find((r) => r.level === 'fatal');
      expect(fatal?.msg, proc.name).to.contain('MLflow refused the credentials of user "reader"');
    }
    expect(worker.records.filter((r) => r.msg === 'no model yet; retrying')).to.deep.equal([]);
    expect(cli.code, cli.stderr).to.equal(77);
    expect(cli.stderr).to.contain('MLflow refused the credentials of user "reader"');
  });
});

/** The trainer's command line (`make promote` and friends run it), from source. */
function trainerCli(
  args: string[],
  env: Record<string, string>,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(
    process.execPath,
    ['--conditions=conveyor-source', '--import', 'tsx', 'services/trainer/src/main.ts', ...args],
    { cwd: ROOT, env: { ...process.env, LOG_LEVEL: 'silent', ...env }, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  return new Promise((resolve) => child.on('exit', (code) => resolve({ code, stdout, stderr })));
}
