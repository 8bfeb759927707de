import { readFileSync } from 'node:fs';
import { expect } from 'chai';
import type { ModelVersion } from '@conveyor/shared/mlflow/client';
import { REPLAY_TAGS, evaluateGate, evaluateReplay } from '../src/registry/gate.js';
import { PromotionPolicy } from '../src/registry/policy.js';
import { runReplay } from '../src/replay/run-replay.js';
import { createLogger } from '@conveyor/shared/logger';

const replay = { minTop1Agreement: 0.95, maxMeanConfidenceShift: 0.05, maxLabelPsi: 0.1, maxP95InferenceRatio: 3 };
const policy = PromotionPolicy.parse({ minTestAccuracy: 0.975, maxRegression: 0.005, maxLatencyP95Ms: 2, replay });
const good = { 'validation.passed': 'true', test_accuracy: '0.985', onnx_latency_b1_p95_ms: '0.07' };
const version = (v: string, tags: Record<string, string>): ModelVersion => ({
  name: 'digits',
  version: v,
  aliases: [],
  tags: Object.entries(tags).map(([key, value]) => ({ key, value })),
});
const figures = { examples: 200, top1Agreement: 0.99, meanConfidenceShift: 0.01, labelPsi: 0.002, p95InferenceRatio: 1.1 };
const tagged = (f: typeof figures) => ({
  [REPLAY_TAGS.examples]: String(f.examples),
  [REPLAY_TAGS.top1Agreement]: String(f.top1Agreement),
  [REPLAY_TAGS.meanConfidenceShift]: String(f.meanConfidenceShift),
  [REPLAY_TAGS.labelPsi]: String(f.labelPsi),
  [REPLAY_TAGS.p95InferenceRatio]: String(f.p95InferenceRatio),
});

describe('promotion gate: replay thresholds', () => {
  it('passes a candidate whose replay agrees with production', () => {
    const d = evaluateReplay(policy, '2', '1', figures);
    expect(d.passed).to.equal(true);
    expect(d.criteria.map((c) => c.id)).to.deep.equal([
      'replay-agreement',
      'replay-confidence-shift',
      'replay-label-psi',
      'replay-latency-ratio',
    ]);
  });

  it('refuses a candidate below the agreement floor, with the measured figure in the reason', () => {
    const d = evaluateReplay(policy, '3', '1', { ...figures, top1Agreement: 0.8, meanConfidenceShift: 0.19 });
    expect(d.passed).to.equal(false);
    const failed = d.criteria.filter((c) => !c.passed);
    expect(failed.map((c) => c.id)).to.deep.equal(['replay-agreement', 'replay-confidence-shift']);
    expect(failed[0]!.detail).to.equal(
      'top-1 agreement with production 80.00 % on 200 recorded inputs against a floor of 95.00 %',
    );
    expect(failed[1]!.detail).to.contain('0.1900');
  });

  it('refuses a label distribution that moved and a candidate much slower than production', () => {
    expect(evaluateReplay(policy, '4', '1', { ...figures, labelPsi: 0.3 }).criteria.find((c) => !c.passed)?.id).to.equal(
      'replay-label-psi',
    );
    expect(evaluateReplay(policy, '5', '1', { ...figures, p95InferenceRatio: 4 }).criteria.find((c) => !c.passed)?.id).to.equal(
      'replay-latency-ratio',
    );
  });

  it('judges the replay figures a registry version carries, beside its offline ones', () => {
    const pass = evaluateGate(policy, version('2', { ...good, ...tagged(figures) }), undefined);
    expect(pass.passed).to.equal(true);
    expect(pass.criteria.map((c) => c.id)).to.include('replay-agreement');
    const refused = evaluateGate(policy, version('3', { ...good, ...tagged({ ...figures, top1Agreement: 0.5 }) }), undefined);
    expect(refused.passed).to.equal(false);
    expect(refused.criteria.find((c) => !c.passed)?.id).to.equal('replay-agreement');
  });

  it('requires a replay only when the policy says so', () => {
    expect(evaluateGate(policy, version('6', good), undefined).passed).to.equal(true);
    const strict = PromotionPolicy.parse({ ...policy, replay: { ...replay, required: true } });
    const d = evaluateGate(strict, version('6', good), undefined);
    expect(d.passed).to.equal(false);
    expect(d.criteria.find((c) => !c.passed)?.id).to.equal('replay-recorded');
  });

  it('reads the committed promotion policy with its replay thresholds', () => {
    const committed = PromotionPolicy.parse(JSON.parse(readFileSync('services/trainer/configs/promotion.json', 'utf8')));
    expect(committed.replay).to.include({ required: false, minTop1Agreement: 0.95 });
  });

  it('will not replay under a policy without replay thresholds, and starts no worker', async () => {
    let started = 0;
    const error = await runReplay({
      gateway: { url: 'http://127.0.0.1:9' },
      model: 'digits',
      setDir: 'nowhere',
      candidateDir: 'models/digits',
      workDir: 'nowhere',
      reportDir: 'nowhere',
      policy: PromotionPolicy.parse({ minTestAccuracy: 0.975, maxRegression: 0.005, maxLatencyP95Ms: 2 }),
      command: 'test',
      log: createLogger('test', 'silent'),
      startWorker: () => {
        started += 1;
        return Promise.resolve({ stop: () => Promise.resolve() });
      },
    }).catch((e: unknown) => e);
    expect((error as Error).message).to.contain('sets no replay thresholds');
    expect(started).to.equal(0);
  });
});
