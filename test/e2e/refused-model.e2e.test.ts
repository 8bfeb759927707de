import { cpSync, mkdtempSync, readFileSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import { ROOT } from '../../harness/service-process.js';
import { digitPng, heldOutDigits } from '../support/images.js';
import { predictModel, request } from '../support/http.js';
import { randomPrefix } from '../support/redis.js';
import { dumpLogsOnFailure, recordsWith, startGateway, startWorker, stopAll, type Gateway } from '../support/services.js';
import { until } from '../support/wait.js';

/**
 * A worker process configured with two model folders, one of which fails its checks (its manifest's
 * sha256 is not its model's): the broken one is refused and reported — in the log, on the worker's
 * metrics, on GET /v1/models — and the other is served. The good folder has no reference profile
 * (a model added with `models add`, not yet profiled): that is no reason to refuse it.
 */
interface ModelView {
  name: string;
  ready: boolean;
  refused?: { worker: string; problem: string; at: string }[];
}

describe('a model folder that fails its checks beside a good one', function () {
  this.timeout(120_000);
  const prefix = randomPrefix('refused');
  let dir: string;
  let gateway: Gateway;
  let worker: Awaited<ReturnType<typeof startWorker>>;

  before(async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'conveyor-refused-'));
    const good = path.join(dir, 'digits');
    cpSync(path.join(ROOT, 'models/digits'), good, { recursive: true });
    unlinkSync(path.join(good, 'reference-profile.json'));
    const broken = path.join(dir, 'broken');
    cpSync(path.join(ROOT, 'models/digits'), broken, { recursive: true });
    const manifest = JSON.parse(readFileSync(path.join(broken, 'manifest.json'), 'utf8')) as Record<string, unknown>;
    writeFileSync(path.join(broken, 'manifest.json'), JSON.stringify({ ...manifest, name: 'broken', sha256: 'f'.repeat(64) }));
    [gateway, worker] = await Promise.all([
      startGateway(prefix, { MODELS: 'digits,broken' }),
      startWorker(prefix, { MODELS: 'digits,broken', MODELS_DIR: dir, METRICS_PORT: '0' }),
    ]);
  });
  afterEach(function () {
    dumpLogsOnFailure(this, gateway, worker);
  });
  after(async () => {
    await stopAll(gateway, worker);
    rmSync(dir, { recursive: true, force: true });
  });

  it('logs the refusal with its reason and keeps running', () => {
    const [refusal] = recordsWith(worker, 'msg', 'model refused: its folder failed its checks; serving the others');
    expect(refusal, 'a refusal in the log').to.not.equal(undefined);
    expect(refusal!.modelName).to.equal('broken');
    expect(String(refusal!.problem)).to.match(/sha256/);
    expect(worker.child.exitCode).to.equal(null);
  });

  it('serves the good model (without a reference profile)', async () => {
    const { dataset, split } = await heldOutDigits();
    const seven = dataset.samples[split.test.find((i) => dataset.samples[i]!.label === 7)!]!.pixels;
    const reply = await predictModel(gateway.url, 'digits', await digitPng(seven));
    expect(reply.status).to.equal(200);
    expect((reply.body as { prediction: { label: string } }).prediction.label).to.equal('7');
  });

  it('says on GET /v1/models which worker refused which model, and why', async () => {
    const models = await until('the refusal on /v1/models', async () => {
      const { body } = await request<{ models: ModelView[] }>(`${gateway.url}/v1/models`);
      const broken = body.models.find((m) => m.name === 'broken');
      return broken?.refused?.length ? body.models : undefined;
    });
    const broken = models.find((m) => m.name === 'broken')!;
    expect(broken.ready).to.equal(false);
    expect(broken.refused![0]!.worker).to.equal(worker.id);
    expect(broken.refused![0]!.problem).to.match(/sha256/);
    const digits = models.find((m) => m.name === 'digits')!;
    expect(digits.ready).to.equal(true);
    expect(digits.refused).to.equal(undefined);
  });

  it('sets conveyor_worker_model_refused for the broken model only', async () => {
    const [listening] = recordsWith(worker, 'msg', 'metrics listening');
    const text = await (await fetch(String(listening!.url))).text();
    expect(text).to.match(/conveyor_worker_model_refused\{model="broken"\} 1/);
    expect(text).to.match(/conveyor_worker_model_refused\{model="digits"\} 0/);
  });
});
