import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import type { Redis } from 'ioredis';
import { redisKeys } from '@conveyor/shared/contract/redis-keys';
import { ShadowEvent } from '@conveyor/shared/contract/shadow.contract';
import { MlflowClient } from '@conveyor/shared/mlflow/client';
import { PromotionPolicy } from '../../services/trainer/src/registry/policy.js';
import { runShadowReport } from '../../services/trainer/src/replay/shadow-report.js';
import { digitPng, heldOutDigits } from '../support/images.js';
import { predict, request } from '../support/http.js';
import { labelSwappedCopy } from '../support/model-variants.js';
import { sharedMlflow } from '../support/mlflow.js';
import { registerFolder } from '../support/registry.js';
import { randomPrefix, testRedis, testRedisUrl } from '../support/redis.js';
import { until } from '../support/wait.js';
import { dumpLogsOnFailure, startGateway, startMonitor, startWorker, stopAll, type Gateway } from '../support/services.js';
import type { ServiceHandle } from '../../harness/service-process.js';

/** `make shadow-report`'s command line, run to its end. */
function shadowReportCli(args: string[], env: Record<string, string>) {
  return spawnSync(process.execPath, ['--conditions=conveyor-source', '--import', 'tsx', 'scripts/shadow-report.ts', ...args], {
    env: { ...process.env, ...env },
    encoding: 'utf8',
  });
}

/**
 * Shadow mode end to end (docs/shadow.md), against real Redis, a real gateway, monitor and worker
 * processes: a worker shadows production digits with a copy whose labels 3 and 5 are swapped, at a
 * sample rate of 1; real uploads are answered by production, and the pairs it records disagree
 * exactly where production said 3 or 5. The monitor shows their agreement beside drift; the shadow
 * report turns the recorded pairs into the replay report. Shadow off publishes nothing; a shadow
 * that cannot be loaded is refused at start-up while production serves on.
 */
describe('shadow mode: a label-swapped shadow of digits beside production', function () {
  this.timeout(300_000);
  const prefix = randomPrefix('shadow');
  const keys = redisKeys(prefix);
  const policy = PromotionPolicy.parse(JSON.parse(readFileSync('services/trainer/configs/promotion.json', 'utf8')));
  const UPLOADS = 60;
  const WINDOW = 40;
  let tmp: string;
  let redis: Redis;
  let gateway: Gateway;
  let monitor: ServiceHandle & { url: string };
  const workers: Awaited<ReturnType<typeof startWorker>>[] = [];
  let swappedVersion: string;
  let images: { label: number; bytes: Buffer }[];

  const shadowEvents = async (): Promise<{ id: string; event: ShadowEvent }[]> =>
    (await redis.xrange(keys.shadowStream, '-', '+')).map(([id, fields]) => ({
      id,
      event: ShadowEvent.parse(JSON.parse(fields[fields.indexOf('event') + 1]!)),
    }));
  const metricsOf = async (worker: (typeof workers)[number]) => {
    const listening = await worker.waitFor((r) => r.msg === 'metrics listening');
    return (await request<string>(String(listening.url))).body;
  };
  /** A worker process, once the gateway routes to it (it learns of it from its heartbeat). */
  const worker = async (env: Record<string, string>, label: string) => {
    const started = await startWorker(prefix, env, label);
    workers.push(started);
    await until('the gateway sees a warm digits worker', async () => {
      const ready = await fetch(`${gateway.url}/v2/models/digits/ready`);
      await ready.body?.cancel();
      return ready.status === 200 || undefined;
    });
    return started;
  };
  const upload = async (batch: readonly { bytes: Buffer }[]) => {
    const replies: { id: string; prediction: { label: string }; model: { version: string } }[] = [];
    for (const image of batch) {
      const reply = await predict(gateway.url, image.bytes);
      expect(reply.status, JSON.stringify(reply.body)).to.equal(200);
      replies.push(reply.body as unknown as (typeof replies)[number]);
    }
    return replies;
  };

  before(async () => {
    tmp = mkdtempSync(path.join(os.tmpdir(), 'conveyor-shadow-'));
    redis = testRedis();
    swappedVersion = (await labelSwappedCopy('models/digits', path.join(tmp, 'swapped'), '3', '5')).version;
    const { dataset, split } = await heldOutDigits();
    // Every class, 3s and 5s among them, in the held-out split's order.
    images = await Promise.all(
      split.test
        .slice(0, UPLOADS)
        .map(async (i) => ({ label: dataset.samples[i]!.label, bytes: await digitPng(dataset.samples[i]!.pixels) })),
    );
    [gateway, monitor] = await Promise.all([
      startGateway(prefix),
      startMonitor(prefix, { WINDOW_SIZE: String(WINDOW), MIN_WINDOW: '10' }),
    ]);
  });

  afterEach(function () {
    dumpLogsOnFailure(this, gateway, monitor, ...workers);
  });

  after(async () => {
    await stopAll(gateway, monitor, ...workers);
    await redis.quit();
    rmSync(tmp, { recursive: true, force: true });
  });

  it('answers callers with production, and records pairs that disagree exactly on the swapped labels', async () => {
    const shadowWorker = await worker(
      {
        SHADOW_VERSION: `digits=${path.join(tmp, 'swapped')}`,
        SHADOW_SAMPLE_RATE: '1',
        // The whole core and a backlog as long as the run: this test wants every pair.
        SHADOW_CPU_SHARE: '1',
        SHADOW_BACKLOG: String(UPLOADS),
        METRICS_PORT: '0',
      },
      'worker-shadow',
    );
    await shadowWorker.waitFor((r) => r.msg === 'shadow ready', 60_000);
    const production = (JSON.parse(readFileSync('models/digits/manifest.json', 'utf8')) as { version: string }).version;

    const replies = await upload(images);
    for (const reply of replies) expect(reply.model.version).to.equal(production);
    const events = await until('a shadow pair for every upload', async () => {
      const recorded = await shadowEvents();
      return recorded.length >= UPLOADS ? recorded : undefined;
    });
    expect(events).to.have.length(UPLOADS);

    const answered = new Map(replies.map((r) => [r.id, r.prediction.label]));
    const swap: Record<string, string> = { '3': '5', '5': '3' };
    let swapped = 0;
    for (const { event } of events) {
      // The pair's production side is what the caller was told.
      expect(event.production.prediction.label).to.equal(answered.get(event.jobId));
      expect(event.production.model.version).to.equal(production);
      expect(event.shadow.model.version).to.equal(swappedVersion);
      const label = event.production.prediction.label;
      expect(event.shadow.prediction.label, `job ${event.jobId}`).to.equal(swap[label] ?? label);
      if (swap[label]) swapped++;
      // Same weights, same preprocessing: the shadow's confidence in its label is production's.
      expect(event.shadow.prediction.confidence).to.be.closeTo(event.production.prediction.confidence, 1e-6);
      // Nothing of the request but the job id: no image, no request id.
      expect(JSON.stringify(event)).to.not.match(/requestId|bytes|client/);
    }
    expect(swapped, '3s and 5s among the uploads').to.be.at.least(4);

    const metrics = await metricsOf(shadowWorker);
    expect(metrics).to.contain(`conveyor_shadow_runs_total{model="digits",outcome="ran"} ${UPLOADS}`);
    expect(metrics).to.contain('conveyor_shadow_runs_total{model="digits",outcome="failed"} 0');
  });

  it('shows the agreement per window beside drift in the monitor’s view and as a Prometheus gauge', async () => {
    const events = (await shadowEvents()).map((e) => e.event);
    const agreementOf = (pairs: ShadowEvent[]) =>
      pairs.filter((p) => p.shadow.prediction.label === p.production.prediction.label).length / pairs.length;
    interface ShadowWindow {
      size: number;
      top1Agreement: number;
      meanConfidenceShift: number;
    }
    interface ShadowView {
      name: string;
      shadow: { name: string; version: string };
      pairs: number;
      lastWindow: ShadowWindow | null;
      currentWindow: ShadowWindow & { status: string };
    }
    const view = await until('the monitor counted every pair', async () => {
      const reply = await request<{ models: unknown[]; shadows?: ShadowView[] }>(`${monitor.url}/drift/digits`);
      const shadow = reply.body.shadows?.find((s) => s.shadow.version === swappedVersion);
      return shadow?.pairs === UPLOADS ? reply.body : undefined;
    });
    // Beside drift: the same answer still lists the model's drift.
    expect(view.models.length).to.be.at.least(1);
    const shadow = view.shadows!.find((s) => s.shadow.version === swappedVersion)!;
    expect(shadow.name).to.equal('digits');
    // Windows of WINDOW_SIZE pairs, as drift's: the first closed, the rest filling.
    expect(shadow.lastWindow!.size).to.equal(WINDOW);
    expect(shadow.lastWindow!.top1Agreement).to.be.closeTo(agreementOf(events.slice(0, WINDOW)), 1e-9);
    expect(shadow.currentWindow).to.include({ status: 'provisional', size: UPLOADS - WINDOW });
    expect(shadow.currentWindow.top1Agreement).to.be.closeTo(agreementOf(events.slice(WINDOW)), 1e-9);
    expect(shadow.lastWindow!.top1Agreement).to.be.below(1);
    // A swap moves the whole confidence off production's label on the swapped classes, nothing elsewhere.
    const shift = (pairs: ShadowEvent[]) =>
      pairs.reduce(
        (sum, p) =>
          sum +
          Math.abs(
            (p.shadow.prediction.top.find((t) => t.label === p.production.prediction.label)?.confidence ?? 0) -
              p.production.prediction.confidence,
          ),
        0,
      ) / pairs.length;
    expect(shadow.lastWindow!.meanConfidenceShift).to.be.closeTo(shift(events.slice(0, WINDOW)), 1e-6);

    const metrics = (await request<string>(`${monitor.url}/metrics`)).body;
    const gauge = new RegExp(`conveyor_shadow_agreement\\{model="digits",shadow_version="${swappedVersion}"\\} ([0-9.e-]+)`).exec(
      metrics,
    );
    expect(gauge, 'conveyor_shadow_agreement for the shadow').to.not.equal(null);
    expect(Number(gauge![1])).to.be.closeTo(agreementOf(events.slice(0, WINDOW)), 1e-9);
  });

  it('writes the replay report from the recorded pairs, and the gate refuses the swapped shadow', async () => {
    const events = (await shadowEvents()).map((e) => e.event);
    const outcome = await runShadowReport({
      redis,
      stream: keys.shadowStream,
      model: 'digits',
      reportDir: path.join(tmp, 'report'),
      policy,
      command: 'shadow e2e test',
    });
    expect(outcome.shadow).to.deep.equal({ name: 'digits', version: swappedVersion });
    expect(outcome.comparison.examples).to.equal(UPLOADS);
    expect(outcome.comparison.failed).to.equal(0);
    const agree = events.filter((p) => p.shadow.prediction.label === p.production.prediction.label).length;
    expect(outcome.comparison.top1Agreement).to.be.closeTo(agree / UPLOADS, 1e-9);
    expect(outcome.decision.passed).to.equal(false);
    expect(outcome.decision.criteria.find((c) => !c.passed)?.detail).to.contain('agreement');
    const markdown = readFileSync(outcome.report.markdown, 'utf8');
    expect(markdown).to.contain('**Gate: refused.**').and.to.contain(`${UPLOADS} inputs`);
    expect(readFileSync(outcome.report.examples, 'utf8').trim().split('\n')).to.have.length(UPLOADS + 1);
    const confusion = readFileSync(outcome.report.confusion, 'utf8');
    // Row 3 (production) has its pairs in column 5 (the shadow), and row 5 in column 3.
    const rows = confusion
      .trim()
      .split('\n')
      .map((l) => l.split(','));
    const col = (label: string) => rows[0]!.indexOf(label);
    const row = (label: string) => rows.find((r) => r[0] === label)!;
    expect(Number(row('3')[col('5')])).to.be.above(0);
    expect(Number(row('3')[col('3')])).to.equal(0);
    expect(readFileSync(outcome.report.png).subarray(1, 4).toString()).to.equal('PNG');
    // LIMIT: the newest pairs only.
    const limited = await runShadowReport({
      redis,
      stream: keys.shadowStream,
      model: 'digits',
      limit: 10,
      reportDir: path.join(tmp, 'report-10'),
      policy,
      command: 'shadow e2e test',
    });
    expect(limited.comparison.examples).to.equal(10);

    // The command line `make shadow-report` runs: exit 1 (the gate refused), the report printed and written.
    const cli = shadowReportCli(['--model', 'digits', '--out', path.join(tmp, 'cli')], {
      REDIS_URL: testRedisUrl(),
      REDIS_PREFIX: prefix,
      LOG_LEVEL: 'warn',
    });
    expect(cli.status, cli.stderr).to.equal(1);
    expect(cli.stdout).to.contain(`# Shadow of digits: ${swappedVersion} beside production`).and.to.contain('**Gate: refused.**');
    expect(
      readFileSync(path.join(tmp, 'cli', 'replay-examples.csv'), 'utf8')
        .trim()
        .split('\n'),
    ).to.have.length(UPLOADS + 1);
  });

  it('publishes nothing with shadow mode off (the default), and has no shadow series', async () => {
    await stopAll(...workers.splice(0));
    const before = await redis.xlen(keys.shadowStream);
    const predictionsBefore = await redis.xlen(keys.predictions);
    const off = await worker({ METRICS_PORT: '0' }, 'worker-off');
    const replies = await upload(images.slice(0, 10));
    expect(replies).to.have.length(10);
    // Every answer's prediction event is published in the same commit; the shadow would follow it.
    await until('the prediction events of the uploads', async () =>
      (await redis.xlen(keys.predictions)) >= predictionsBefore + 10 ? true : undefined,
    );
    expect(await metricsOf(off)).to.not.contain('conveyor_shadow');
    await stopAll(off); // its shutdown would wait for a shadow run in hand
    expect(await redis.xlen(keys.shadowStream)).to.equal(before);
    expect(off.records.some((r) => String(r.msg).startsWith('shadow'))).to.equal(false);
  });

  it('refuses a shadow whose model fails its checks at start-up, with the reason, and production serves on', async () => {
    await stopAll(...workers.splice(0));
    const corrupt = path.join(tmp, 'corrupt');
    await labelSwappedCopy('models/digits', corrupt, '3', '5');
    const onnx = readFileSync(path.join(corrupt, 'model.onnx'));
    onnx[onnx.length - 10] = onnx[onnx.length - 10]! ^ 0xff; // one flipped byte: the manifest's sha256 no longer matches
    writeFileSync(path.join(corrupt, 'model.onnx'), onnx);
    const other = path.join(tmp, 'other-labels');
    await labelSwappedCopy('models/digits', other, '3', '5');
    const manifest = JSON.parse(readFileSync(path.join(other, 'manifest.json'), 'utf8')) as { labels: string[] };
    manifest.labels[0] = 'zero';
    writeFileSync(path.join(other, 'manifest.json'), JSON.stringify(manifest));
    copyFileSync('models/digits/model.onnx', path.join(other, 'model.onnx'));

    const before = await redis.xlen(keys.shadowStream);
    for (const [dir, reason] of [
      [corrupt, /sha256/i],
      [other, /other labels than production/],
    ] as const) {
      const refusing = await worker({ SHADOW_VERSION: `digits=${dir}`, SHADOW_SAMPLE_RATE: '1' }, 'worker-refused');
      const refused = await refusing.waitFor((r) => String(r.msg).startsWith('shadow refused'), 60_000);
      expect(String(refused.msg)).to.match(reason).and.to.contain('digits is served without a shadow');
      const replies = await upload(images.slice(0, 5));
      expect(replies.map((r) => r.prediction.label)).to.have.length(5);
      await stopAll(...workers.splice(0));
    }
    expect(await redis.xlen(keys.shadowStream)).to.equal(before);
  });

  it('shadows a registry version, downloaded and verified, and puts the report and its figures on that version', async () => {
    await stopAll(...workers.splice(0));
    // Started here, not in before(): a first start installs its venv synchronously, blocking this process.
    const client = new MlflowClient((await sharedMlflow()).url);
    const name = `digits-shadow-${prefix
      .replace(/[^a-z0-9]/gi, '')
      .slice(-8)
      .toLowerCase()}`;
    const registeredProduction = await registerFolder(client, name, 'models/digits', 'shadow-tests');
    await client.setAlias(name, 'production', registeredProduction.version);
    // The registered folder carries the offline figures the gate also reads.
    copyFileSync('models/digits/evaluation.json', path.join(tmp, 'swapped', 'evaluation.json'));
    const candidate = await registerFolder(client, name, path.join(tmp, 'swapped'), 'shadow-tests');
    const registry = {
      MLFLOW_TRACKING_URI: (await sharedMlflow()).url,
      MODEL_URI: `models:/${name}@production`,
      MODEL_CACHE_DIR: path.join(tmp, 'model-cache'),
    };
    const shadowed = await worker(
      {
        ...registry,
        SHADOW_VERSION: `digits=${candidate.version}`,
        SHADOW_SAMPLE_RATE: '1',
        SHADOW_CPU_SHARE: '1',
        SHADOW_BACKLOG: '20',
      },
      'worker-registry-shadow',
    );
    const ready = await shadowed.waitFor((r) => r.msg === 'shadow ready', 120_000);
    expect(ready.shadow).to.deep.equal({ name: 'digits', version: swappedVersion });
    const before = (await shadowEvents()).length;
    const replies = await upload(images.slice(0, 20));
    const pairs = await until('a pair for each of the 20 uploads', async () => {
      const recorded = await shadowEvents();
      return recorded.length >= before + 20 ? recorded.slice(before).map((e) => e.event) : undefined;
    });
    expect(new Set(pairs.map((p) => p.jobId))).to.deep.equal(new Set(replies.map((r) => r.id)));
    for (const pair of pairs) expect(pair.shadow.registry).to.deep.equal({ name, version: candidate.version });

    // `make shadow-report`, with the registry: the newest pairs are the registry shadow's.
    const cli = shadowReportCli(['--model', 'digits', '--limit', '20', '--out', path.join(tmp, 'cli-registry')], {
      ...registry,
      REDIS_URL: testRedisUrl(),
      REDIS_PREFIX: prefix,
      LOG_LEVEL: 'warn',
    });
    expect(cli.status, cli.stderr).to.equal(1);
    const tags = Object.fromEntries((await client.getModelVersion(name, candidate.version)).tags.map((t) => [t.key, t.value]));
    const agree = pairs.filter((p) => p.shadow.prediction.label === p.production.prediction.label).length;
    expect(Number(tags['replay.top1_agreement'])).to.be.closeTo(agree / 20, 1e-9);
    expect(tags).to.include({ 'replay.examples': '20', 'replay.passed': 'false' });
    expect(tags['replay.report']).to.match(/replay-report\.md$/);
  });
});
