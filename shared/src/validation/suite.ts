import { z } from 'zod';

/**
 * A small expectation engine in the spirit of Great Expectations: a suite is data (a list of
 * expectation types with parameters, usually a JSON file), each type has one implementation, and a
 * run produces a report for machines (JSON) and people (Markdown). Failing expectations say what
 * was expected and what was observed, with a few examples.
 */
export const ExpectationSpec = z.looseObject({ type: z.string(), description: z.string().optional() });
export type ExpectationSpec = z.infer<typeof ExpectationSpec>;

export const SuiteSpec = z.object({ name: z.string(), expectations: z.array(ExpectationSpec).min(1) });
export type SuiteSpec = z.infer<typeof SuiteSpec>;

export interface ExpectationOutcome {
  success: boolean;
  /** What was measured, e.g. `{ min: 0, max: 255 }` or `{ share: 0.002 }`. */
  observed: Record<string, unknown>;
  /** Up to a few offending rows or values. */
  examples?: unknown[];
}

export interface ExpectationResult extends ExpectationOutcome {
  type: string;
  description: string;
  params: Record<string, unknown>;
}

export interface ValidationReport {
  suite: string;
  success: boolean;
  evaluated: number;
  failed: number;
  results: ExpectationResult[];
  /** What was validated (e.g. the dataset's content hash). */
  subject: Record<string, unknown>;
}

/** Implementations by type: each validates its own parameters and returns an outcome. */
export type ExpectationImpl<C> = (context: C, params: Record<string, unknown>) => ExpectationOutcome;
export type ExpectationRegistry<C> = Readonly<
  Record<string, { describe: (params: Record<string, unknown>) => string; run: ExpectationImpl<C> }>
>;

export class ValidationError extends Error {
  override readonly name = 'ValidationError';
  constructor(readonly report: ValidationReport) {
    const failed = report.results.filter((r) => !r.success);
    super(
      `${report.suite}: ${failed.length} of ${report.evaluated} expectations failed:\n` +
        failed.map((r) => `  ✗ ${r.description} — observed ${JSON.stringify(r.observed)}`).join('\n'),
    );
  }
}

export function runSuite<C>(
  suite: SuiteSpec,
  context: C,
  registry: ExpectationRegistry<C>,
  subject: Record<string, unknown> = {},
): ValidationReport {
  const results = suite.expectations.map((spec): ExpectationResult => {
    const { type, description, ...params } = spec;
    const impl = registry[type];
    if (!impl) throw new Error(`${suite.name}: unknown expectation type ${type}`);
    let outcome: ExpectationOutcome;
    try {
      outcome = impl.run(context, params);
    } catch (error) {
      outcome = { success: false, observed: { error: (error as Error).message } };
    }
    return { type, description: description ?? impl.describe(params), params, ...outcome };
  });
  const failed = results.filter((r) => !r.success).length;
  return { suite: suite.name, success: failed === 0, evaluated: results.length, failed, results, subject };
}

export function assertValid(report: ValidationReport): void {
  if (!report.success) throw new ValidationError(report);
}

export function reportToMarkdown(report: ValidationReport): string {
  const lines = [
    `# Validation report: ${report.suite}`,
    '',
    `**${report.success ? 'PASSED' : 'FAILED'}** — ${report.evaluated - report.failed} of ${report.evaluated} expectations met.`,
    '',
    ...Object.entries(report.subject).map(([k, v]) => `- ${k}: \`${typeof v === 'string' ? v : JSON.stringify(v)}\``),
    '',
    '| | Expectation | Observed |',
    '| --- | --- | --- |',
    ...report.results.map(
      (r) =>
        `| ${r.success ? '✓' : '✗'} | ${r.description} | \`${JSON.stringify(r.observed)}\`${r.examples?.length ? ` e.g. \`${JSON.stringify(r.examples).slice(0, 200)}\`` : ''} |`,
    ),
    '',
  ];
  return lines.join('\n');
}

/** Parameter helpers for implementations: a wrong suite file fails with the expectation's name. */
export function num(params: Record<string, unknown>, key: string): number {
  const v = params[key];
  if (typeof v !== 'number' || !Number.isFinite(v)) throw new Error(`parameter ${key} must be a number`);
  return v;
}

export function str(params: Record<string, unknown>, key: string): string {
  const v = params[key];
  if (typeof v !== 'string') throw new Error(`parameter ${key} must be a string`);
  return v;
}
