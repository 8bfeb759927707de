import type { ModelVersion } from '@conveyor/shared/mlflow/client';
import type { PromotionPolicy } from './policy.js';

/** The figures of a replay the gate judges (a ReplayComparison has them all). */
export interface ReplayFigures {
  examples: number;
  top1Agreement: number;
  meanConfidenceShift: number;
  labelPsi: number;
  p95InferenceRatio: number | null;
}

/** The model version tags a replay's figures are kept under in the registry. */
export const REPLAY_TAGS = {
  examples: 'replay.examples',
  top1Agreement: 'replay.top1_agreement',
  meanConfidenceShift: 'replay.mean_confidence_shift',
  labelPsi: 'replay.label_psi',
  p95InferenceRatio: 'replay.p95_inference_ratio',
} as const;

/**
 * The promotion gate: pure code over a candidate's recorded figures (model version tags written at
 * registration) and those of the version currently in production.
 */
export interface Criterion {
  id:
    | 'data-validation'
    | 'accuracy-floor'
    | 'no-regression'
    | 'latency-budget'
    | 'replay-recorded'
    | 'replay-agreement'
    | 'replay-confidence-shift'
    | 'replay-label-psi'
    | 'replay-latency-ratio';
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
    ...replayCriteria(policy, replayFiguresOf(c)),
  ];
  return {
    passed: criteria.every((x) => x.passed),
    candidate: candidate.version,
    production: production?.version ?? null,
    criteria,
  };
}

/** The replay figures a version carries (tags written by logReplayReport), or null if it was never replayed. */
export function replayFiguresOf(tags: Record<string, string>): ReplayFigures | null {
  const agreement = figure(tags, REPLAY_TAGS.top1Agreement);
  const shift = figure(tags, REPLAY_TAGS.meanConfidenceShift);
  const labelPsi = figure(tags, REPLAY_TAGS.labelPsi);
  if (agreement === null || shift === null || labelPsi === null) return null;
  return {
    examples: figure(tags, REPLAY_TAGS.examples) ?? 0,
    top1Agreement: agreement,
    meanConfidenceShift: shift,
    labelPsi,
    p95InferenceRatio: figure(tags, REPLAY_TAGS.p95InferenceRatio),
  };
}

/**
 * The replay criteria: the candidate's answers on recorded real inputs against production's. None
 * when the policy sets no replay thresholds; one failing `replay-recorded` when it requires a replay
 * and the candidate has none.
 */
export function replayCriteria(policy: PromotionPolicy, figures: ReplayFigures | null): Criterion[] {
  const t = policy.replay;
  if (!t) return [];
  if (!figures) {
    return t.required
      ? [
          {
            id: 'replay-recorded',
            passed: false,
            detail: 'no replay of recorded inputs for this candidate',
            value: null,
            threshold: 'replayed',
          },
        ]
      : [];
  }
  const on = `on ${figures.examples} recorded inputs`;
  const criteria: Criterion[] = [
    {
      id: 'replay-agreement',
      passed: figures.top1Agreement >= t.minTop1Agreement,
      detail: `top-1 agreement with production ${fmt(figures.top1Agreement)} ${on} against a floor of ${fmt(t.minTop1Agreement)}`,
      value: figures.top1Agreement,
      threshold: t.minTop1Agreement,
    },
    {
      id: 'replay-confidence-shift',
      passed: figures.meanConfidenceShift <= t.maxMeanConfidenceShift,
      detail: `mean confidence shift on production's label ${figures.meanConfidenceShift.toFixed(4)} against a limit of ${t.maxMeanConfidenceShift}`,
      value: figures.meanConfidenceShift,
      threshold: t.maxMeanConfidenceShift,
    },
    {
      id: 'replay-label-psi',
      passed: figures.labelPsi <= t.maxLabelPsi,
      detail: `PSI of the top-1 labels against production's ${figures.labelPsi.toFixed(4)} against a limit of ${t.maxLabelPsi}`,
      value: figures.labelPsi,
      threshold: t.maxLabelPsi,
    },
  ];
  if (t.maxP95InferenceRatio !== undefined) {
    const ratio = figures.p95InferenceRatio;
    criteria.push({
      id: 'replay-latency-ratio',
      // Without production timings there is nothing to compare: not held against the candidate.
      passed: ratio === null || ratio <= t.maxP95InferenceRatio,
      detail:
        ratio === null
          ? 'no recorded production inference times to compare with'
          : `p95 inference time ${ratio.toFixed(2)}× production's against a limit of ${t.maxP95InferenceRatio}×`,
      value: ratio,
      threshold: t.maxP95InferenceRatio,
    });
  }
  return criteria;
}

/** The replay gate alone, over a comparison just measured (the replay CLI's verdict before anything is tagged). */
export function evaluateReplay(
  policy: PromotionPolicy,
  candidate: string,
  production: string | null,
  figures: ReplayFigures,
): GateDecision {
  const criteria = replayCriteria(
    { ...policy, ...(policy.replay ? { replay: { ...policy.replay, required: true } } : {}) },
    figures,
  );
  return { passed: criteria.every((x) => x.passed), candidate, production, criteria };
}

function fmt(v: number | null): string {
  return v === null ? 'unknown' : `${(v * 100).toFixed(2)} %`;
}
