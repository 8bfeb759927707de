import { copyFileSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import sharp from 'sharp';
import { createLogger } from '@conveyor/shared/logger';
import { MlflowClient } from '@conveyor/shared/mlflow/client';
import { evaluateGate } from '../../services/trainer/src/registry/gate.js';
import { PromotionPolicy } from '../../services/trainer/src/registry/policy.js';
import { recordThroughGateway } from '../../services/trainer/src/replay/replay-client.js';
import { REPORT_FILES, logReplayReport } from '../../services/trainer/src/replay/replay-report.js';
import { readReplaySet, writeReplaySet } from '../../services/trainer/src/replay/replay-set.js';
import { downloadCandidate, runReplay, type ReplayOutcome } from '../../services/trainer/src/replay/run-replay.js';
import { digitPng, heldOutDigits } from '../support/images.js';
import { labelSwappedCopy, noisyCopy } from '../support/model-variants.js';
import { sharedMlflow } from '../support/mlflow.js';
import { randomPrefix } from '../support/redis.js';
import { until } from '../support/wait.js';
import { registerFolder } from '../support/registry.js';
import { dumpLogsOnFailure, startGateway, startWorker, stopAll, type Gateway } from '../support/services.js';

/**
 * The proof of issue 23's replay: a recorded set of real digit images answered by production, then
 * four candidates of the digits model replayed through real workers on a queue of their own — the
 * same weights, a near copy (seeded weight noise), a retrained model (production's configuration
 * trained again with another seed: test/fixtures/digits-retrained), and a damaged release (labels 3
 * and 5 swapped in its manifest) — judged by the committed promotion policy.
 */
describe('replay: candidates of the digits model against production’s recorded answers', function () {
  this.timeout(300_000);
  const prefix = randomPrefix('replay');
  const policy = PromotionPolicy.parse(JSON.parse(readFileSync('services/trainer/configs/promotion.json', 'utf8')));
  const log = createLogger('replay-test', 'warn');
  let gateway: Gateway;
  let production: Awaited<ReturnType<typeof startWorker>>;
  const replayWorkers: Awaited<ReturnType<typeof startWorker>>[] = [];
  let tmp: string;
  let setDir: string;
  let labelCounts: Map<string, number>;
  const outcomes = new Map<string, { dir: string; outcome: ReplayOutcome }>();
  const predictionsOfProduction = () => production.records.filter((r) => r.msg === 'prediction').length;

  async function replay(candidateDir: string, name: string): Promise<ReplayOutcome> {
    const before = predictionsOfProduction();
    const outcome = await runReplay({
      gateway: { url: gateway.url },
      model: 'digits',
      setDir,
      candidateDir,
      workDir: path.join(tmp, `work-${name}`),
      reportDir: path.join(tmp, `report-${name}`),
      policy,
      command: `replay e2e test (${name})`,
      log,
      startWorker: async (env) => {
        const worker = await startWorker(prefix, env, `replay-${name}`);
        replayWorkers.push(worker);
        return { stop: () => stopAll(worker) };
      },
    });
    // The replay never reached production's queue or worker: every answer came from the replay
    // model, and production predicted nothing meanwhile.
    expect(outcome.comparison.candidate.map((r) => r.name)).to.deep.equal(['digits-replay']);
    expect(predictionsOfProduction()).to.equal(before);
    outcomes.set(name, { dir: candidateDir, outcome });
    return outcome;
  }

  before(async () => {
    tmp = mkdtempSync(path.join(os.tmpdir(), 'conveyor-replay-'));
    [gateway, production] = await Promise.all([startGateway(prefix), startWorker(prefix, {}, 'production')]);
    const { dataset, split } = await heldOutDigits();
    const images = await Promise.all(
      split.test.slice(0, 200).map(async (i) => ({ name: `digit-${i}.png`, bytes: await digitPng(dataset.samples[i]!.pixels) })),
    );
    setDir = path.join(tmp, 'set');
    await writeReplaySet(setDir, await recordThroughGateway({ url: gateway.url, concurrency: 2 }, 'digits', images));
    // The worker's log lines reach this process after the answers do: wait for all of them, so the
    // count each replay compares against is final.
    await until('production logged every recorded prediction', () =>
      Promise.resolve(predictionsOfProduction() >= images.length || undefined),
    );
    const examples = await readReplaySet(setDir);
    labelCounts = new Map<string, number>();
    for (const e of examples)
      labelCounts.set(e.production.prediction.label, (labelCounts.get(e.production.prediction.label) ?? 0) + 1);
  });

  afterEach(function () {
    dumpLogsOnFailure(this, gateway, production, ...replayWorkers);
  });

  after(async () => {
    await stopAll(gateway, production, ...replayWorkers);
    rmSync(tmp, { recursive: true, force: true });
  });

  it('recorded every image once, with production’s answer, version and inference time', async () => {
    const examples = await readReplaySet(setDir);
    // 200 held-out digits; identical renderings would be one example (none expected among these).
    expect(examples.length).to.be.within(190, 200);
    for (const e of examples) {
      expect(e.model).to.equal('digits');
      expect(e.production.model.name).to.equal('digits');
      expect(e.production.prediction.top).to.have.length(10);
    }
    expect([...labelCounts.keys()].sort()).to.deep.equal(['0', '1', '2', '3', '4', '5', '6', '7', '8', '9']);
  });

  it('promotes the same weights: 100 % agreement, no confidence shift, no label PSI', async () => {
    const { comparison, decision, candidate, report } = await replay('models/digits', 'same');
    expect(candidate.version).to.equal(
      (JSON.parse(readFileSync('models/digits/manifest.json', 'utf8')) as { version: string }).version,
    );
    expect(comparison.failed).to.equal(0);
    expect(comparison.top1Agreement).to.equal(1);
    expect(comparison.meanConfidenceShift).to.be.below(1e-6);
    expect(comparison.labelPsi).to.equal(0);
    // The candidate answered under its replay name, never as production.
    expect(comparison.candidate.map((r) => r.name)).to.deep.equal(['digits-replay']);
    expect(decision.passed, JSON.stringify(decision.criteria)).to.equal(true);
    const markdown = readFileSync(report.markdown, 'utf8');
    expect(markdown).to.contain('**Gate: passed.**').and.to.contain('| Top-1 agreement | 100.00 % |');
    expect(readFileSync(report.examples, 'utf8').trim().split('\n')).to.have.length(comparison.examples + 1);
    const png = await sharp(report.png).metadata();
    expect(png.format).to.equal('png');
  });

  it('promotes a near copy of the weights (seeded 2 % noise), with high agreement', async () => {
    const manifest = await noisyCopy('models/digits', path.join(tmp, 'noisy'), 0.02, 23);
    const { comparison, decision, candidate } = await replay(path.join(tmp, 'noisy'), 'noisy');
    expect(candidate.version).to.equal(manifest.version);
    expect(comparison.failed).to.equal(0);
    expect(comparison.top1Agreement).to.be.at.least(policy.replay!.minTop1Agreement);
    expect(comparison.meanConfidenceShift).to.be.above(0);
    expect(decision.passed, JSON.stringify(decision.criteria)).to.equal(true);
  });

  it('promotes a retrained model (production’s configuration, another seed), with high but not total agreement', async () => {
    const { comparison, decision, candidate } = await replay('test/fixtures/digits-retrained', 'retrained');
    expect(candidate.version).to.equal('sha-d0c3a9ccb0b4');
    expect(comparison.failed).to.equal(0);
    // Two trainings of one configuration disagree on a few hard digits, no more.
    expect(comparison.top1Agreement).to.be.below(1);
    expect(comparison.top1Agreement).to.be.at.least(policy.replay!.minTop1Agreement);
    expect(decision.passed, JSON.stringify(decision.criteria)).to.equal(true);
  });

  it('refuses a release with labels 3 and 5 swapped, with the measured figures in its reasons', async () => {
    await labelSwappedCopy('models/digits', path.join(tmp, 'swapped'), '3', '5');
    const { comparison, decision } = await replay(path.join(tmp, 'swapped'), 'swapped');
    const swapped = (labelCounts.get('3') ?? 0) + (labelCounts.get('5') ?? 0);
    // Every 3 is now called 5 and every 5 called 3; nothing else moves.
    expect(comparison.top1Agreement).to.be.closeTo(1 - swapped / comparison.examples, 1e-12);
    const three = comparison.labels.indexOf('3');
    const five = comparison.labels.indexOf('5');
    expect(comparison.confusion[three]![five]).to.equal(labelCounts.get('3'));
    expect(comparison.confusion[five]![three]).to.equal(labelCounts.get('5'));
    expect(decision.passed).to.equal(false);
    const agreement = decision.criteria.find((c) => c.id === 'replay-agreement')!;
    expect(agreement.passed).to.equal(false);
    expect(agreement.detail).to.contain(`${(comparison.top1Agreement * 100).toFixed(2)} %`);
    expect(decision.criteria.find((c) => c.id === 'replay-confidence-shift')!.passed).to.equal(false);
  });

  it('puts each report and its figures on the registered version, where the promotion gate judges them', async () => {
    // Started here, not in before(): a first start installs its venv synchronously, blocking this process.
    const client = new MlflowClient((await sharedMlflow()).url);
    const name = `digits-replay-${prefix
      .replace(/[^a-z0-9]/gi, '')
      .slice(-8)
      .toLowerCase()}`;
    const date = new Date('2026-12-06T18:00:00.000Z');
    const verdicts: Record<string, boolean> = {};
    for (const candidate of ['same', 'retrained', 'swapped']) {
      const { dir, outcome } = outcomes.get(candidate)!;
      // The registered folder carries the offline figures the gate also reads.
      if (candidate === 'swapped') copyFileSync('models/digits/evaluation.json', path.join(dir, 'evaluation.json'));
      const version = await registerFolder(client, name, dir, 'replay-tests');
      const destination = await logReplayReport(
        client,
        name,
        version.version,
        path.dirname(outcome.report.markdown),
        outcome.comparison,
        outcome.decision,
        date,
      );
      const run = await client.getRun(version.run_id!);
      const files = (await client.listArtifacts(`${run.info.artifact_uri}/${destination}`))
        .map((f) => path.basename(f.path))
        .sort();
      expect(files).to.deep.equal(Object.values(REPORT_FILES).sort());
      const decision = evaluateGate(policy, await client.getModelVersion(name, version.version), undefined);
      verdicts[candidate] = decision.passed;
      // What `make replay CANDIDATE=<version>` replays: the version's folder, as registered.
      const downloaded = await downloadCandidate(client, name, version.version, path.join(tmp, `download-${candidate}`));
      expect(downloaded.version).to.equal(outcome.candidate.version);
      if (candidate === 'swapped') {
        expect(downloaded.labels.slice(3, 6)).to.deep.equal(['5', '4', '3']);
        const refused = decision.criteria.filter((c) => !c.passed).map((c) => c.id);
        expect(refused).to.include('replay-agreement');
        expect(refused).to.not.include('accuracy-floor');
      }
    }
    expect(verdicts).to.deep.equal({ same: true, retrained: true, swapped: false });
  });
});
