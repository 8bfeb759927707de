import type { ModelRef, Prediction } from '@conveyor/shared/contract/common.contract';
import type { RecordedExample } from '@conveyor/shared/contract/replay.contract';
import { proportions, psi } from '@conveyor/shared/stats/psi';

/**
 * The comparison of a candidate's answers with production's recorded answers on the same inputs:
 * pure code, the figures the replay report shows and the promotion gate judges (docs/replay.md).
 */

/**
 * What the comparison needs of a recorded example: its id and production's answer. A replay passes
 * RecordedExamples; the shadow report passes the production side of recorded shadow pairs.
 */
export type ComparedExample = Pick<RecordedExample, 'id' | 'production'>;

/** The candidate's answer to one recorded example, or why it gave none. */
export type CandidateAnswer =
  | { id: string; status: 'completed'; model: ModelRef; prediction: Prediction; inferenceMs: number }
  | { id: string; status: 'failed'; reason: string };

export interface ReplayComparison {
  /** Recorded examples compared. */
  examples: number;
  /** Examples the candidate gave no answer for (counted as disagreements). */
  failed: number;
  /** Share of examples whose top-1 label is production's. */
  top1Agreement: number;
  /**
   * Mean over answered examples of |candidate's probability of production's label − production's
   * confidence|: how far the candidate moved on what production said. A label missing from the
   * candidate's `top` (a TOP_K below the class count) counts as probability 0, an upper bound.
   */
  meanConfidenceShift: number;
  /** PSI of the candidate's top-1 label distribution against production's (Jeffreys-smoothed, shared/stats/psi). */
  labelPsi: number;
  /** p95 of the candidate's inference time over p95 of production's recorded one; null without production timings. */
  p95InferenceRatio: number | null;
  candidateP95InferenceMs: number | null;
  productionP95InferenceMs: number | null;
  /** The labels of the confusion matrix, in order (rows: production, columns: candidate). */
  labels: string[];
  /** confusion[i][j]: examples production called labels[i] and the candidate labels[j]. */
  confusion: number[][];
  /** Production's and the candidate's model refs, as their answers named them. */
  production: ModelRef[];
  candidate: ModelRef[];
}

/** Nearest-rank percentile (p in 0–100) of `values`; null for none. */
export function percentile(values: readonly number[], p: number): number | null {
  if (values.length === 0) return null;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.max(1, Math.ceil((p / 100) * sorted.length));
  return sorted[rank - 1]!;
}

const byLabel = (a: string, b: string) => a.localeCompare(b, 'en', { numeric: true });

function distinctRefs(refs: readonly ModelRef[]): ModelRef[] {
  const seen = new Map<string, ModelRef>();
  for (const r of refs) seen.set(`${r.name}\u0000${r.version}`, r);
  return [...seen.values()];
}

export function compareAnswers(examples: readonly ComparedExample[], answers: readonly CandidateAnswer[]): ReplayComparison {
  if (examples.length === 0) throw new Error('a replay needs at least one recorded example');
  const answerOf = new Map(answers.map((a) => [a.id, a]));
  const labels = new Set<string>();
  for (const e of examples) labels.add(e.production.prediction.label);
  for (const a of answers) if (a.status === 'completed') labels.add(a.prediction.label);
  // A failed answer gets a column of its own, so the matrix still sums to the examples.
  const FAILED = '(no answer)';
  const order = [...labels].sort(byLabel);
  const columns =
    answers.some((a) => a.status === 'failed') || examples.some((e) => !answerOf.has(e.id)) ? [...order, FAILED] : order;
  const index = new Map(columns.map((l, i) => [l, i]));
  const confusion = columns.map(() => columns.map(() => 0));
  let agree = 0;
  let failed = 0;
  let shift = 0;
  let answered = 0;
  const productionMs: number[] = [];
  const candidateMs: number[] = [];
  const productionRefs: ModelRef[] = [];
  const candidateRefs: ModelRef[] = [];
  for (const e of examples) {
    const prod = e.production.prediction;
    productionMs.push(e.production.inferenceMs);
    productionRefs.push(e.production.model);
    const a = answerOf.get(e.id);
    const row = index.get(prod.label)!;
    if (!a || a.status === 'failed') {
      failed += 1;
      confusion[row]![index.get(FAILED)!]! += 1;
      continue;
    }
    answered += 1;
    candidateMs.push(a.inferenceMs);
    candidateRefs.push(a.model);
    if (a.prediction.label === prod.label) agree += 1;
    confusion[row]![index.get(a.prediction.label)!]! += 1;
    const onProductionLabel = a.prediction.top.find((t) => t.label === prod.label)?.confidence ?? 0;
    shift += Math.abs(onProductionLabel - prod.confidence);
  }
  // PSI over the labels both sides used; the failed column is not a label, it stays out.
  const productionCounts = order.map((l) => examples.filter((e) => e.production.prediction.label === l).length);
  const candidateCounts = order.map((l) => confusion.reduce((sum, row) => sum + row[index.get(l)!]!, 0));
  const p95Candidate = percentile(candidateMs, 95);
  const p95Production = percentile(productionMs, 95);
  return {
    examples: examples.length,
    failed,
    top1Agreement: agree / examples.length,
    meanConfidenceShift: answered === 0 ? 1 : shift / answered,
    labelPsi: psi(proportions(productionCounts), proportions(candidateCounts)),
    p95InferenceRatio:
      p95Candidate === null || p95Production === null || p95Production === 0 ? null : p95Candidate / p95Production,
    candidateP95InferenceMs: p95Candidate,
    productionP95InferenceMs: p95Production,
    labels: columns,
    confusion,
    production: distinctRefs(productionRefs),
    candidate: distinctRefs(candidateRefs),
  };
}
