import { expect } from 'chai';
import { readFileSync } from 'node:fs';
import { assertValid, reportToMarkdown, runSuite, SuiteSpec, ValidationError } from '../src/validation/suite.js';
import { tableExpectations, type ImageRow } from '../src/validation/table.expectations.js';

/** The data suite of the trainer, run against deliberately broken datasets. */
const suite = SuiteSpec.parse(JSON.parse(readFileSync('services/trainer/expectations/digits.suite.json', 'utf8')));

function healthy(n = 2000): ImageRow[] {
  return Array.from({ length: n }, (_, i) => {
    const pixels = new Float32Array(784);
    let state = (i + 1) * 2654435761;
    for (let p = 0; p < 784; p++) {
      state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
      pixels[p] = state / 4294967296; // distinct rows, values in [0, 1], plenty of ink
    }
    return { pixels, label: i % 10 };
  });
}

function failures(rows: ImageRow[]): string[] {
  return runSuite(suite, { rows }, tableExpectations)
    .results.filter((r) => !r.success)
    .map((r) => r.type);
}

describe('data validation suite', () => {
  it('passes a healthy dataset', () => {
    const report = runSuite(suite, { rows: healthy() }, tableExpectations, { hash: 'x' });
    expect(report.success, JSON.stringify(report.results.filter((r) => !r.success))).to.equal(true);
    expect(report.evaluated).to.be.at.least(6);
    expect(() => assertValid(report)).to.not.throw();
  });

  const broken: [string, (rows: ImageRow[]) => ImageRow[], string[]][] = [
    [
      'a NaN pixel',
      (r) => {
        (r[3]!.pixels as Float32Array)[10] = NaN;
        return r;
      },
      ['expect_column_values_to_not_be_null'],
    ],
    [
      'a missing label',
      (r) => r.map((row, i) => (i === 5 ? { ...row, label: null } : row)),
      [
        'expect_column_values_to_not_be_null',
        'expect_column_values_to_be_in_set',
        'expect_column_distinct_values_to_equal_set',
        'expect_class_shares_to_be_between',
      ],
    ],
    [
      'a label outside 0–9',
      (r) => r.map((row, i) => (i === 5 ? { ...row, label: 11 } : row)),
      ['expect_column_values_to_be_in_set', 'expect_column_distinct_values_to_equal_set', 'expect_class_shares_to_be_between'],
    ],
    [
      'pixels above 1',
      (r) => r.map((row, i) => (i === 8 ? { ...row, pixels: Float32Array.from(row.pixels!, (v) => v * 255) } : row)),
      ['expect_column_values_to_be_between'],
    ],
    [
      'an image of the wrong size',
      (r) => r.map((row, i) => (i === 2 ? { ...row, pixels: new Float32Array(783).fill(0.5) } : row)),
      ['expect_image_dimensions_to_equal'],
    ],
    ['a missing class', (r) => r.filter((row) => row.label !== 3), ['expect_column_distinct_values_to_equal_set']],
    [
      'a rare class',
      (r) => r.filter((row, i) => row.label !== 3 || (i % 10 === 3 && i < 400)),
      ['expect_class_shares_to_be_between'],
    ],
    ['many duplicates', (r) => r.map((row, i) => (i % 20 === 1 ? r[0]! : row)), ['expect_duplicate_share_to_be_at_most']],
    [
      'blank images',
      (r) => r.map((row, i) => (i === 9 ? { ...row, pixels: new Float32Array(784) } : row)),
      ['expect_images_to_have_ink'],
    ],
    ['too few rows', (r) => r.slice(0, 500), ['expect_table_row_count_to_be_between']],
  ];
  for (const [name, breakIt, expected] of broken) {
    it(`fails on ${name}`, () => {
      expect(failures(breakIt(healthy()))).to.deep.equal(expected);
    });
  }

  it('stops with a message naming what failed and what was observed, and reports in Markdown', () => {
    const rows = healthy();
    (rows[7]!.pixels as Float32Array)[100] = NaN;
    const report = runSuite(suite, { rows }, tableExpectations, { hash: 'abc' });
    expect(() => assertValid(report)).to.throw(
      ValidationError,
      /1 of 11 expectations failed[\s\S]*`pixels` has no nulls or NaNs — observed \{"rowsWithNulls":1\}/,
    );
    const markdown = reportToMarkdown(report);
    expect(markdown).to.contain('**FAILED**');
    expect(markdown).to.contain('| ✗ |');
    expect(markdown).to.contain('hash: `abc`');
  });

  it('refuses an expectation type it does not know', () => {
    expect(() => runSuite({ name: 's', expectations: [{ type: 'expect_magic' }] }, { rows: [] }, tableExpectations)).to.throw(
      /unknown expectation type/,
    );
  });
});
