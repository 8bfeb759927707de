import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { RecordedExample } from '@conveyor/shared/contract/replay.contract';
import type { MlflowClient } from '@conveyor/shared/mlflow/client';
import { confusionMatrixPng } from '../pipeline/reports.js';
import { REPLAY_TAGS, type GateDecision } from '../registry/gate.js';
import type { CandidateAnswer, ComparedExample, ReplayComparison } from './compare.js';

/**
 * The replay report: Markdown for people, CSV for tools (one row per recorded input, and the
 * confusion matrix), the confusion matrix as a PNG; and, for a registry candidate, the same files
 * on its MLflow run with the figures as tags of its version, where the promotion gate reads them.
 */
export interface ReplayReportMeta {
  model: string;
  /** The candidate: its version (or the folder it was served from). */
  candidate: string;
  set: string;
  date: Date;
  /** The command that produced the report, as it should be shown. */
  command: string;
  /** Where the candidate's answers came from: a replay through workers (default), or recorded shadow pairs. */
  source?: 'replay' | 'shadow';
}

/** An example as the report lists it: a replay's names its image file, a shadow pair has none. */
export type ReportedExample = ComparedExample & { readonly input?: Pick<RecordedExample['input'], 'file'> };

export const REPORT_FILES = {
  markdown: 'replay-report.md',
  examples: 'replay-examples.csv',
  confusion: 'replay-confusion.csv',
  png: 'replay-confusion.png',
} as const;

const pct = (v: number) => `${(v * 100).toFixed(2)} %`;
const csvCell = (v: string | number | null) => {
  const s = v === null ? '' : String(v);
  return /[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
};
const csv = (rows: (string | number | null)[][]) => rows.map((r) => r.map(csvCell).join(',')).join('\n') + '\n';

export function replayMarkdown(c: ReplayComparison, decision: GateDecision, meta: ReplayReportMeta): string {
  const refs = (rs: ReplayComparison['production']) => rs.map((r) => `${r.name} ${r.version}`).join(', ') || 'none';
  const lines = [
    meta.source === 'shadow'
      ? `# Shadow of ${meta.model}: ${meta.candidate} beside production`
      : `# Replay of ${meta.model}: candidate ${meta.candidate}`,
    '',
    `${meta.date.toISOString()} · \`${meta.command}\``,
    '',
    `${meta.source === 'shadow' ? 'Recorded shadow pairs' : 'Recorded set'} \`${meta.set}\`: ${c.examples} inputs answered by production (${refs(c.production)}); candidate served as ${refs(c.candidate)}.`,
    '',
    `**Gate: ${decision.passed ? 'passed' : 'refused'}.**`,
    '',
    '| Figure | Value |',
    '|---|---|',
    `| Top-1 agreement | ${pct(c.top1Agreement)} |`,
    `| Mean confidence shift on production's label | ${c.meanConfidenceShift.toFixed(4)} |`,
    `| PSI of the top-1 labels | ${c.labelPsi.toFixed(4)} |`,
    `| p95 inference time, candidate / production | ${c.candidateP95InferenceMs?.toFixed(3) ?? '–'} ms / ${c.productionP95InferenceMs?.toFixed(3) ?? '–'} ms (×${c.p95InferenceRatio?.toFixed(2) ?? '–'}) |`,
    `| Inputs without an answer | ${c.failed} |`,
    '',
    '| Criterion | Passed | Detail |',
    '|---|---|---|',
    ...decision.criteria.map((x) => `| ${x.id} | ${x.passed ? 'yes' : '**no**'} | ${x.detail} |`),
    '',
    '## Confusion (rows: production, columns: candidate)',
    '',
    `| | ${c.labels.join(' | ')} |`,
    `|---|${c.labels.map(() => '---').join('|')}|`,
    ...c.confusion.map((row, i) => `| **${c.labels[i]}** | ${row.join(' | ')} |`),
    '',
    `![confusion](${REPORT_FILES.png})`,
    '',
  ];
  return lines.join('\n');
}

export function examplesCsv(examples: readonly ReportedExample[], answers: readonly CandidateAnswer[]): string {
  const answerOf = new Map(answers.map((a) => [a.id, a]));
  const rows: (string | number | null)[][] = [
    [
      'id',
      'file',
      'production_label',
      'production_confidence',
      'candidate_label',
      'candidate_probability_of_production_label',
      'agree',
      'production_inference_ms',
      'candidate_inference_ms',
      'failure',
    ],
  ];
  for (const e of examples) {
    const p = e.production.prediction;
    const a = answerOf.get(e.id);
    const done = a?.status === 'completed' ? a : undefined;
    rows.push([
      e.id,
      e.input?.file ?? null,
      p.label,
      p.confidence,
      done?.prediction.label ?? null,
      done ? (done.prediction.top.find((t) => t.label === p.label)?.confidence ?? 0) : null,
      done ? Number(done.prediction.label === p.label) : 0,
      e.production.inferenceMs,
      done?.inferenceMs ?? null,
      a?.status === 'failed' ? a.reason : a ? null : 'no answer',
    ]);
  }
  return csv(rows);
}

export function confusionCsv(c: ReplayComparison): string {
  return csv([['production \\ candidate', ...c.labels], ...c.confusion.map((row, i) => [c.labels[i]!, ...row])]);
}

/** Writes the report's four files into `dir`; returns their paths. */
export async function writeReplayReport(
  dir: string,
  examples: readonly ReportedExample[],
  answers: readonly CandidateAnswer[],
  comparison: ReplayComparison,
  decision: GateDecision,
  meta: ReplayReportMeta,
): Promise<Record<keyof typeof REPORT_FILES, string>> {
  await mkdir(dir, { recursive: true });
  const at = (f: string) => path.join(dir, f);
  await writeFile(at(REPORT_FILES.markdown), replayMarkdown(comparison, decision, meta));
  await writeFile(at(REPORT_FILES.examples), examplesCsv(examples, answers));
  await writeFile(at(REPORT_FILES.confusion), confusionCsv(comparison));
  const png = await confusionMatrixPng(comparison.confusion, comparison.labels, `${meta.model}: production × ${meta.candidate}`, {
    rows: 'production',
    columns: 'candidate',
  });
  await writeFile(at(REPORT_FILES.png), png);
  return {
    markdown: at(REPORT_FILES.markdown),
    examples: at(REPORT_FILES.examples),
    confusion: at(REPORT_FILES.confusion),
    png: at(REPORT_FILES.png),
  };
}

/**
 * Puts a report on a registered candidate: its files under `replay/<date>/` in the version's run,
 * its figures as tags of the version (REPLAY_TAGS), which evaluateGate then judges.
 */
export async function logReplayReport(
  client: MlflowClient,
  name: string,
  version: string,
  dir: string,
  comparison: ReplayComparison,
  decision: GateDecision,
  date: Date,
): Promise<string> {
  const mv = await client.getModelVersion(name, version);
  if (!mv.run_id) throw new Error(`${name} version ${version} has no run to keep a replay report in`);
  const run = await client.getRun(mv.run_id);
  const destination = `replay/${date.toISOString().replace(/[:.]/g, '-')}`;
  await client.uploadDirectory(run.info.artifact_uri, dir, destination);
  const tags: [string, string][] = [
    [REPLAY_TAGS.examples, String(comparison.examples)],
    [REPLAY_TAGS.top1Agreement, String(comparison.top1Agreement)],
    [REPLAY_TAGS.meanConfidenceShift, String(comparison.meanConfidenceShift)],
    [REPLAY_TAGS.labelPsi, String(comparison.labelPsi)],
    ['replay.passed', String(decision.passed)],
    ['replay.report', `${run.info.artifact_uri}/${destination}/${REPORT_FILES.markdown}`],
  ];
  if (comparison.p95InferenceRatio !== null) tags.push([REPLAY_TAGS.p95InferenceRatio, String(comparison.p95InferenceRatio)]);
  for (const [key, value] of tags) await client.setModelVersionTag(name, version, key, value);
  return destination;
}
