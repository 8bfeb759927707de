import { expect } from 'chai';
import type { ModelVersion } from '@conveyor/shared/mlflow/client';
import { evaluateGate } from '../src/registry/gate.js';
import { PromotionPolicy } from '../src/registry/policy.js';

const policy = PromotionPolicy.parse({ minTestAccuracy: 0.975, maxRegression: 0.005, maxLatencyP95Ms: 2 });
const version = (v: string, tags: Record<string, string>): ModelVersion => ({
  name: 'digits',
  version: v,
  aliases: [],
  tags: Object.entries(tags).map(([key, value]) => ({ key, value })),
});
const good = { 'validation.passed': 'true', test_accuracy: '0.985', onnx_latency_b1_p95_ms: '0.07' };

describe('promotion gate', () => {
  it('passes a validated, accurate, fast candidate with nothing in production', () => {
    const d = evaluateGate(policy, version('1', good), undefined);
    expect(d.passed).to.equal(true);
    expect(d.criteria.map((c) => c.id)).to.deep.equal(['data-validation', 'accuracy-floor', 'no-regression', 'latency-budget']);
  });

  it('refuses a candidate under the accuracy floor', () => {
    const d = evaluateGate(policy, version('2', { ...good, test_accuracy: '0.97' }), undefined);
    expect(d.passed).to.equal(false);
    expect(d.criteria.find((c) => !c.passed)?.id).to.equal('accuracy-floor');
  });

  it('refuses a regression beyond the margin, and allows one within it', () => {
    const production = version('1', { ...good, test_accuracy: '0.99' });
    const worse = evaluateGate(policy, version('2', { ...good, test_accuracy: '0.984' }), production);
    expect(worse.passed).to.equal(false);
    expect(worse.criteria.find((c) => c.id === 'no-regression')).to.include({ passed: false, value: -0.006 });
    expect(evaluateGate(policy, version('3', { ...good, test_accuracy: '0.986' }), production).passed).to.equal(true);
  });

  it('refuses a slow model and one whose data validation is not recorded as passed', () => {
    expect(evaluateGate(policy, version('4', { ...good, onnx_latency_b1_p95_ms: '3.5' }), undefined).passed).to.equal(false);
    const unvalidated = evaluateGate(policy, version('5', { test_accuracy: '0.99', onnx_latency_b1_p95_ms: '0.1' }), undefined);
    expect(unvalidated.criteria.find((c) => c.id === 'data-validation')?.passed).to.equal(false);
  });

  it('treats missing figures as failures, never as passes', () => {
    const d = evaluateGate(policy, version('6', { 'validation.passed': 'true' }), undefined);
    expect(d.criteria.filter((c) => !c.passed).map((c) => c.id)).to.deep.equal(['accuracy-floor', 'latency-budget']);
  });
});
