import type { ModelVersion } from '@conveyor/shared/mlflow/client';
import type { PromotionPolicy } from './policy.js';

/**
 * The promotion gate: pure code over a candidate's recorded figures (model version tags written at
 * registration) and those of the version currently in production.
 */
export interface Criterion {
  id: 'data-validation' | 'accuracy-floor' | 'no-regression' | 'latency-budget';
  passed: boolean;
  detail: string;
  value: number | string | null;
  threshold: number | string | null;
}

export interface GateDecision {
  passed: boolean;
  candidate: string;
  production: string | null;
  criteria: Criterion[];
}

export function tagsOf(version: Pick<ModelVersion, 'tags'>): Record<string, string> {
  return Object.fromEntries(version.tags.map((t) => [t.key, t.value]));
}

function figure(tags: Record<string, string>, key: string): number | null {
  const v = Number(tags[key]);
  return tags[key] === undefined || Number.isNaN(v) ? null : v;
}

export function evaluateGate(
  policy: PromotionPolicy,
  candidate: ModelVersion,
  production: ModelVersion | undefined,
): GateDecision {
  const c = tagsOf(candidate);
  const p = production ? tagsOf(production) : undefined;
  const accuracy = figure(c, 'test_accuracy');
  const latency = figure(c, 'onnx_latency_b1_p95_ms');
  const productionAccuracy = p ? figure(p, 'test_accuracy') : null;
  const criteria: Criterion[] = [
    {
      id: 'data-validation',
      passed: !policy.requireDataValidation || c['validation.passed'] === 'true',
      detail:
        c['validation.passed'] === 'true'
          ? 'the training data passed its validation suite'
          : 'no passed data validation recorded',
      value: c['validation.passed'] ?? null,
      threshold: policy.requireDataValidation ? 'true' : null,
    },
    {
      id: 'accuracy-floor',
      passed: accuracy !== null && accuracy >= policy.minTestAccuracy,
      detail: `test accuracy ${fmt(accuracy)} against a floor of ${fmt(policy.minTestAccuracy)}`,
      value: accuracy,
      threshold: policy.minTestAccuracy,
    },
    {
      id: 'no-regression',
      passed: productionAccuracy === null || (accuracy !== null && accuracy >= productionAccuracy - policy.maxRegression),
      detail:
        productionAccuracy === null
          ? 'no production version to compare with'
          : `test accuracy ${fmt(accuracy)} against production v${production!.version}'s ${fmt(productionAccuracy)} (allowed drop ${fmt(policy.maxRegression)})`,
      value: accuracy === null || productionAccuracy === null ? null : Math.round((accuracy - productionAccuracy) * 1e6) / 1e6,
      threshold: -policy.maxRegression,
    },
    {
      id: 'latency-budget',
      passed: latency !== null && latency <= policy.maxLatencyP95Ms,
      detail: `ONNX p95 latency ${latency === null ? 'unknown' : `${latency.toFixed(3)} ms`} against a budget of ${policy.maxLatencyP95Ms} ms`,
      value: latency,
      threshold: policy.maxLatencyP95Ms,
    },
  ];
  return {
    passed: criteria.every((x) => x.passed),
    candidate: candidate.version,
    production: production?.version ?? null,
    criteria,
  };
}

function fmt(v: number | null): string {
  return v === null ? 'unknown' : `${(v * 100).toFixed(2)} %`;
}
