import { readFile, writeFile, mkdir } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { reportToMarkdown, runSuite, SuiteSpec, ValidationError, type ValidationReport } from '@conveyor/shared/validation/suite';
import { tableExpectations } from '@conveyor/shared/validation/table.expectations';
import type { SourceDataset } from './ingest.js';

/** Validate: the data suite (declared in expectations/*.suite.json) over the source dataset. */
export const DEFAULT_SUITE = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../expectations/digits.suite.json');

export async function readSuite(file = DEFAULT_SUITE): Promise<SuiteSpec> {
  return SuiteSpec.parse(JSON.parse(await readFile(file, 'utf8')));
}

export function validateDataset(dataset: SourceDataset, suite: SuiteSpec): ValidationReport {
  return runSuite(suite, { rows: dataset.rows }, tableExpectations, {
    dataset: dataset.source,
    hash: dataset.hash,
    rows: dataset.rows.length,
  });
}

/** Writes validation.json and validation.md into `dir`; returns their paths. */
export async function writeValidationReport(report: ValidationReport, dir: string): Promise<{ json: string; markdown: string }> {
  await mkdir(dir, { recursive: true });
  const json = path.join(dir, 'validation.json');
  const markdown = path.join(dir, 'validation.md');
  await writeFile(json, `${JSON.stringify(report, null, 2)}\n`);
  await writeFile(markdown, reportToMarkdown(report));
  return { json, markdown };
}

/** The pipeline's gate: a failing expectation stops everything with the report's message. */
export function requireValid(report: ValidationReport): void {
  if (!report.success) throw new ValidationError(report);
}
