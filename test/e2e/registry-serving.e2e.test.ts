import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import pino from 'pino';
import { PredictionEvent } from '@conveyor/shared/contract/events.contract';
import { redisKeys } from '@conveyor/shared/contract/redis-keys';
import { MlflowClient } from '@conveyor/shared/mlflow/client';
import { PromotionPolicy } from '../../services/trainer/src/registry/policy.js';
import { promote } from '../../services/trainer/src/registry/promote.js';
import { rollback } from '../../services/trainer/src/registry/rollback.js';
import { digitPng, heldOutDigits } from '../support/images.js';
import { freePort } from '../../harness/free-port.js';
import { predict } from '../support/http.js';
import { sharedMlflow } from '../support/mlflow.js';
import { randomPrefix, testRedis } from '../support/redis.js';
import { registerFolder } from '../support/registry.js';
import { dumpLogsOnFailure, startGateway, startWorker, stopAll, type Gateway } from '../support/services.js';

/**
 * Workers serving `models:/<name>@production` follow promotions and rollbacks without a restart
 * and without a failed or dropped request, under continuous traffic.
 */
describe('serving from the registry: hot swap under traffic', function () {
  this.timeout(300_000);
  const prefix = randomPrefix('swap');
  const name = `served-${Math.random().toString(36).slice(2, 8)}`;
  let client: MlflowClient;
  let gateway: Gateway;
  let workers: Awaited<ReturnType<typeof startWorker>>[] = [];
  let cacheDir: string;
  let digits: { png: Buffer; label: string }[];
  let env: Record<string, string>;

  before(async () => {
    const mlflow = await sharedMlflow();
    client = new MlflowClient(mlflow.url);
    const first = await registerFolder(client, name);
    await client.setAlias(name, 'production', first.version);
    await client.setModelVersionTag(name, first.version, 'promotion.decision', 'promoted');
    cacheDir = mkdtempSync(path.join(os.tmpdir(), 'conveyor-model-cache-'));
    env = {
      MLFLOW_TRACKING_URI: mlflow.url,
      MODEL_URI: `models:/${name}@production`,
      MODEL_CACHE_DIR: cacheDir,
      MODEL_POLL_INTERVAL_MS: '300',
    };
    const { dataset, split } = await heldOutDigits();
    digits = await Promise.all(
      split.test
        .slice(0, 40)
        .map(async (i) => ({ png: await digitPng(dataset.samples[i]!.pixels), label: String(dataset.samples[i]!.label) })),
    );
    gateway = await startGateway(prefix);
    workers = await Promise.all([startWorker(prefix, env, 'worker-a'), startWorker(prefix, env, 'worker-b')]);
  });
  afterEach(function () {
    dumpLogsOnFailure(this, gateway, ...workers);
  });
  after(async () => {
    await stopAll(gateway, ...workers);
    rmSync(cacheDir, { recursive: true, force: true });
  });

  it('starts on the production version, downloaded and verified', async () => {
    const reply = await predict(gateway.url, digits[0]!.png);
    expect(reply.status).to.equal(200);
    expect(reply.body.model).to.deep.equal({ name, version: '1' });
    expect(workers.every((w) => w.records.some((r) => r.msg === 'serving model version'))).to.equal(true);
  });

  it('follows a promotion and a rollback with every request answered, each naming its version', async () => {
    const policy = PromotionPolicy.parse({ minTestAccuracy: 0.975, maxRegression: 0.005, maxLatencyP95Ms: 2 });
    const log = pino({ level: 'silent' });
    const second = await registerFolder(client, name);
    const results: { at: number; status: number; version: string; ms: number; correct: boolean }[] = [];
    let running = true;
    const traffic = Promise.all(
      Array.from({ length: 4 }, async (_, lane) => {
        for (let i = lane; running; i += 4) {
          const digit = digits[i % digits.length]!;
          const started = performance.now();
          const reply = await predict(gateway.url, digit.png);
          const model = reply.body.model as { version: string } | undefined;
          const prediction = reply.body.prediction as { label: string } | undefined;
          results.push({
            at: Date.now(),
            status: reply.status,
            version: model?.version ?? '?',
            ms: performance.now() - started,
            correct: prediction?.label === digit.label,
          });
        }
      }),
    );
    const waitForVersion = async (version: string) => {
      const deadline = Date.now() + 30_000;
      while (!results.slice(-8).every((r) => r.version === version) || results.length < 8) {
        if (Date.now() > deadline) throw new Error(`still not serving v${version}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    };
    await new Promise((r) => setTimeout(r, 1000));
    const promotedAt = Date.now();
    expect((await promote(client, name, policy, {}, log)).promoted).to.equal(true);
    await waitForVersion(second.version);
    const switchedAt = Date.now();
    await new Promise((r) => setTimeout(r, 1000));
    const rolledBackAt = Date.now();
    expect(await rollback(client, name, log)).to.deep.equal({ from: second.version, to: '1' });
    await waitForVersion('1');
    const backAt = Date.now();
    await new Promise((r) => setTimeout(r, 1000));
    running = false;
    await traffic;

    const failures = results.filter((r) => r.status !== 200);
    expect(failures, JSON.stringify(failures.slice(0, 3))).to.deep.equal([]);
    expect(new Set(results.map((r) => r.version))).to.deep.equal(new Set(['1', second.version]));
    expect(results.filter((r) => r.correct).length / results.length).to.be.greaterThan(0.9);
    const phase = (from: number, to: number) =>
      results
        .filter((r) => r.at >= from && r.at < to)
        .map((r) => r.ms)
        .sort((a, b) => a - b);
    const q = (xs: number[], p: number) => xs[Math.min(xs.length - 1, Math.floor(xs.length * p))] ?? NaN;
    const steady = phase(0, promotedAt);
    const swapping = [...phase(promotedAt, switchedAt), ...phase(rolledBackAt, backAt)].sort((a, b) => a - b);
    console.log(
      `      ${results.length} requests, 0 failed; steady p50 ${q(steady, 0.5).toFixed(1)} ms p99 ${q(steady, 0.99).toFixed(1)} ms; ` +
        `during the two swaps (${swapping.length} requests) p50 ${q(swapping, 0.5).toFixed(1)} ms p99 ${q(swapping, 0.99).toFixed(1)} ms; ` +
        `promotion → all workers on v${second.version} in ${switchedAt - promotedAt} ms, rollback in ${backAt - rolledBackAt} ms`,
    );
    const swapLines = workers.flatMap((w) => w.records.filter((r) => r.msg === 'model swapped'));
    expect(swapLines.length, 'each worker swapped twice').to.be.at.least(4);
  });

  it('names the serving version in the prediction events', async () => {
    const redis = testRedis();
    const entries = await redis.xrevrange(redisKeys(prefix).predictions, '+', '-', 'COUNT', 500);
    await redis.quit();
    const versions = new Set(entries.map(([, fields]) => PredictionEvent.parse(JSON.parse(fields[1]!)).model.version));
    expect([...versions].sort()).to.deep.equal(['1', '2']);
  });

  it('restarts from its verified cache without downloading again', async () => {
    await workers[0]!.stop();
    workers[0] = await startWorker(prefix, env, 'worker-a2');
    await workers[0].waitFor((r) => r.msg === 'serving model version');
    expect(workers[0].records.some((r) => r.msg === 'model version downloaded')).to.equal(false);
  });

  it('starts from its cache and keeps serving while the registry is unreachable', async () => {
    await stopAll(...workers);
    // Nothing listens on a freshly freed port: the registry is "down".
    const deadRegistry = `http://127.0.0.1:${await freePort()}`;
    const offline = await startWorker(prefix, { ...env, MLFLOW_TRACKING_URI: deadRegistry }, 'worker-offline');
    workers = [offline];
    expect(offline.records.some((r) => r.msg === 'registry unavailable; starting from the last cached version')).to.equal(true);
    await offline.waitFor((r) => r.msg === 'model check failed; still serving the current model', 10_000);
    for (const { png } of digits.slice(0, 5)) {
      const reply = await predict(gateway.url, png);
      expect(reply.status).to.equal(200);
      expect(reply.body).to.deep.include({ worker: offline.id, model: { name, version: '1' } });
    }
  });
});
