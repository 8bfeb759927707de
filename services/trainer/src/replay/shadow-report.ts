import type { ModelName, ModelRef } from '@conveyor/shared/contract/common.contract';
import { ShadowEvent } from '@conveyor/shared/contract/shadow.contract';
import type { Redis } from '@conveyor/shared/redis';
import { evaluateReplay, type GateDecision } from '../registry/gate.js';
import type { PromotionPolicy } from '../registry/policy.js';
import { compareAnswers, type CandidateAnswer, type ComparedExample, type ReplayComparison } from './compare.js';
import { writeReplayReport, type REPORT_FILES } from './replay-report.js';

/**
 * The shadow report (docs/shadow.md): the pairs workers recorded on the shadow stream (production's
 * answer and the shadow's, per live job) become the replay's inputs — production's side the recorded
 * examples, the shadow's the candidate's answers — and the same comparison, report and gate judge
 * them. A replay asks "what would the candidate have said?" of a recorded set; shadow mode asked it
 * of live traffic as it came.
 */
export interface ShadowReportRequest {
  /** Read-only use: XREVRANGE of the stream. */
  readonly redis: Pick<Redis, 'xrevrange'>;
  readonly stream: string;
  /** The serving name whose pairs are compared. */
  readonly model: ModelName;
  /** The shadow version (its manifest version); unset: the one of the newest pair. */
  readonly shadowVersion?: string;
  /** The newest this many pairs; unset: every pair the stream still holds. */
  readonly limit?: number;
  readonly policy: PromotionPolicy;
  readonly reportDir: string;
  readonly command: string;
}

export interface ShadowReportOutcome {
  readonly shadow: ModelRef;
  /** The registered version the shadow was downloaded as, when it came from the registry. */
  readonly registry: { readonly name: string; readonly version: string } | undefined;
  readonly examples: ComparedExample[];
  readonly answers: CandidateAnswer[];
  readonly comparison: ReplayComparison;
  readonly decision: GateDecision;
  readonly report: Record<keyof typeof REPORT_FILES, string>;
}

const PAGE = 1000;

/** The model's pairs with one shadow version, oldest first, one per job (newest `limit`). */
export async function readShadowPairs(
  redis: Pick<Redis, 'xrevrange'>,
  stream: string,
  model: ModelName,
  options: { shadowVersion?: string | undefined; limit?: number | undefined } = {},
): Promise<ShadowEvent[]> {
  const pairs: ShadowEvent[] = [];
  const jobs = new Set<string>();
  let version = options.shadowVersion;
  let end = '+';
  for (;;) {
    const page = await redis.xrevrange(stream, end, '-', 'COUNT', PAGE);
    for (const [id, fields] of page) {
      end = `(${id}`;
      const at = fields.indexOf('event');
      const parsed = at >= 0 ? ShadowEvent.safeParse(safeJson(fields[at + 1])) : undefined;
      if (!parsed?.success) continue; // a malformed entry is no pair (the monitor logs them)
      const event = parsed.data;
      if (event.name !== model) continue;
      version ??= event.shadow.model.version;
      // A job is paired once; a retried job's second pair would weigh its input twice.
      if (event.shadow.model.version !== version || jobs.has(event.jobId)) continue;
      jobs.add(event.jobId);
      pairs.push(event);
      if (options.limit !== undefined && pairs.length >= options.limit) return pairs.reverse();
    }
    if (page.length < PAGE) return pairs.reverse();
  }
}

/** A pair as the comparison takes it: production's side the example, the shadow's the answer. */
export function asReplay(pairs: readonly ShadowEvent[]): { examples: ComparedExample[]; answers: CandidateAnswer[] } {
  return {
    examples: pairs.map((p) => ({ id: p.jobId, production: p.production })),
    answers: pairs.map((p) => ({
      id: p.jobId,
      status: 'completed',
      model: p.shadow.model,
      prediction: p.shadow.prediction,
      inferenceMs: p.shadow.inferenceMs,
    })),
  };
}

export async function runShadowReport(r: ShadowReportRequest): Promise<ShadowReportOutcome> {
  if (!r.policy.replay) throw new Error('the promotion policy sets no replay thresholds (a `replay` block in promotion.json)');
  const pairs = await readShadowPairs(r.redis, r.stream, r.model, { shadowVersion: r.shadowVersion, limit: r.limit });
  if (pairs.length === 0)
    throw new Error(
      `no shadow pairs of ${r.model}${r.shadowVersion ? ` with shadow ${r.shadowVersion}` : ''} on ${r.stream}: is SHADOW_VERSION set on its workers, with SHADOW_SAMPLE_RATE above 0?`,
    );
  const newest = pairs.at(-1)!;
  const { examples, answers } = asReplay(pairs);
  const comparison = compareAnswers(examples, answers);
  const production = comparison.production.map((p) => p.version).join(', ') || null;
  const decision = evaluateReplay(r.policy, newest.shadow.model.version, production, comparison);
  const report = await writeReplayReport(r.reportDir, examples, answers, comparison, decision, {
    model: r.model,
    candidate: newest.shadow.model.version,
    set: `${r.stream}: ${pairs.length} live jobs from ${pairs[0]!.at} to ${newest.at}`,
    date: new Date(),
    command: r.command,
    source: 'shadow',
  });
  return { shadow: newest.shadow.model, registry: newest.shadow.registry, examples, answers, comparison, decision, report };
}

function safeJson(text: string | undefined): unknown {
  try {
    return JSON.parse(text ?? 'null');
  } catch {
    return undefined;
  }
}
