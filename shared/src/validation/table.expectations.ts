import { createHash } from 'node:crypto';
import { num, str, type ExpectationRegistry } from './suite.js';

/**
 * Expectations on a table of labelled images: each row has `pixels` (numbers, row-major gray
 * values as the source delivers them) and `label`. Types follow Great Expectations' names where
 * one exists.
 */
export interface ImageRow {
  readonly pixels: ArrayLike<number> | null | undefined;
  readonly label: number | null | undefined;
}

export interface ImageTable {
  readonly rows: readonly ImageRow[];
}

type Column = 'pixels' | 'label';
const column = (params: Record<string, unknown>): Column => {
  const c = str(params, 'column');
  if (c !== 'pixels' && c !== 'label') throw new Error(`unknown column ${c}`);
  return c;
};

const isNumber = (v: unknown): v is number => typeof v === 'number' && !Number.isNaN(v);

/** Every scalar of a column (pixels are flattened). */
function* values(table: ImageTable, col: Column): Generator<{ row: number; value: unknown }> {
  for (let row = 0; row < table.rows.length; row++) {
    const cell = table.rows[row]![col];
    if (col === 'pixels' && cell !== null && cell !== undefined && typeof cell === 'object') {
      for (let i = 0; i < cell.length; i++) yield { row, value: cell[i] };
    } else yield { row, value: cell };
  }
}

export const tableExpectations: ExpectationRegistry<ImageTable> = {
  expect_table_row_count_to_be_between: {
    describe: (p) => `between ${String(p.min)} and ${String(p.max)} rows`,
    run: (t, p) => ({
      success: t.rows.length >= num(p, 'min') && t.rows.length <= num(p, 'max'),
      observed: { rows: t.rows.length },
    }),
  },

  expect_table_columns_to_match_schema: {
    describe: () => 'every row has `pixels` (a numeric array) and `label` (an integer)',
    run: (t) => {
      const bad = t.rows
        .map((r, i) => ({ i, r }))
        .filter(
          ({ r }) =>
            !(r.pixels && typeof r.pixels === 'object' && 'length' in r.pixels) ||
            !(Number.isInteger(r.label) || r.label === null || r.label === undefined),
        );
      return { success: bad.length === 0, observed: { violations: bad.length }, examples: bad.slice(0, 3).map((b) => b.i) };
    },
  },

  expect_column_values_to_not_be_null: {
    describe: (p) => `\`${String(p.column)}\` has no nulls or NaNs`,
    run: (t, p) => {
      const col = column(p);
      const bad: number[] = [];
      for (const { row, value } of values(t, col)) {
        if (!isNumber(value)) {
          if (bad.at(-1) !== row) bad.push(row);
        }
      }
      return { success: bad.length === 0, observed: { rowsWithNulls: bad.length }, examples: bad.slice(0, 5) };
    },
  },

  expect_column_values_to_be_between: {
    describe: (p) => `\`${String(p.column)}\` values within [${String(p.min)}, ${String(p.max)}]`,
    run: (t, p) => {
      const col = column(p);
      const [lo, hi] = [num(p, 'min'), num(p, 'max')];
      let min = Infinity;
      let max = -Infinity;
      const bad: number[] = [];
      for (const { row, value } of values(t, col)) {
        if (!isNumber(value)) continue;
        if (value < min) min = value;
        if (value > max) max = value;
        if ((value < lo || value > hi) && bad.at(-1) !== row) bad.push(row);
      }
      return { success: bad.length === 0, observed: { min, max, rowsOutOfRange: bad.length }, examples: bad.slice(0, 5) };
    },
  },

  expect_column_values_to_be_in_set: {
    describe: (p) => `\`${String(p.column)}\` in ${JSON.stringify(p.values)}`,
    run: (t, p) => {
      const allowed = new Set(p.values as unknown[]);
      const bad = t.rows.map((r, i) => ({ i, v: r[column(p)] })).filter(({ v }) => !allowed.has(v));
      return {
        success: bad.length === 0,
        observed: { outside: bad.length },
        examples: bad.slice(0, 5).map((b) => ({ row: b.i, value: b.v })),
      };
    },
  },

  expect_column_distinct_values_to_equal_set: {
    describe: (p) => `\`${String(p.column)}\` takes every value of ${JSON.stringify(p.values)}, and no other`,
    run: (t, p) => {
      const expected = new Set((p.values as unknown[]).map(String));
      const col = column(p);
      const seen = new Set(t.rows.map((r) => (col === 'label' ? String(r.label) : 'pixels')));
      const missing = [...expected].filter((v) => !seen.has(v));
      const extra = [...seen].filter((v) => !expected.has(v));
      return { success: missing.length === 0 && extra.length === 0, observed: { missing, extra } };
    },
  },

  expect_image_dimensions_to_equal: {
    describe: (p) => `every image is ${String(p.width)}×${String(p.height)}`,
    run: (t, p) => {
      const size = num(p, 'width') * num(p, 'height');
      const lengths = new Map<number, number>();
      t.rows.forEach((r) => {
        const n = r.pixels?.length ?? 0;
        lengths.set(n, (lengths.get(n) ?? 0) + 1);
      });
      const bad = [...lengths.entries()].filter(([n]) => n !== size);
      return { success: bad.length === 0, observed: { pixelCounts: Object.fromEntries(lengths) } };
    },
  },

  expect_class_shares_to_be_between: {
    describe: (p) =>
      `every class holds between ${String(Number(p.min) * 100)} % and ${String(Number(p.max) * 100)} % of the rows`,
    run: (t, p) => {
      const counts = new Map<string, number>();
      t.rows.forEach((r) => counts.set(String(r.label), (counts.get(String(r.label)) ?? 0) + 1));
      const shares = Object.fromEntries(
        [...counts.entries()].sort().map(([k, v]) => [k, Math.round((v / t.rows.length) * 1e4) / 1e4]),
      );
      const bad = Object.entries(shares).filter(([, s]) => s < num(p, 'min') || s > num(p, 'max'));
      return { success: bad.length === 0 && counts.size > 0, observed: { shares }, examples: bad };
    },
  },

  expect_duplicate_share_to_be_at_most: {
    describe: (p) => `at most ${String(Number(p.max) * 100)} % of the images are exact duplicates`,
    run: (t, p) => {
      const seen = new Map<string, number>();
      const duplicates: [number, number][] = [];
      t.rows.forEach((r, i) => {
        if (!r.pixels) return;
        const key = createHash('sha1').update(Float32Array.from(r.pixels)).digest('hex');
        const first = seen.get(key);
        if (first === undefined) seen.set(key, i);
        else duplicates.push([first, i]);
      });
      const share = duplicates.length / Math.max(1, t.rows.length);
      return {
        success: share <= num(p, 'max'),
        observed: { duplicates: duplicates.length, share: Math.round(share * 1e5) / 1e5 },
        examples: duplicates.slice(0, 3),
      };
    },
  },

  expect_images_to_have_ink: {
    describe: (p) => `every image has at least ${String(p.minPixels)} pixels above ${String(p.threshold)}`,
    run: (t, p) => {
      const threshold = num(p, 'threshold');
      const bad = t.rows
        .map((r, i) => ({ i, ink: r.pixels ? Array.prototype.filter.call(r.pixels, (v: number) => v > threshold).length : 0 }))
        .filter(({ ink }) => ink < num(p, 'minPixels'));
      return { success: bad.length === 0, observed: { blankImages: bad.length }, examples: bad.slice(0, 5).map((b) => b.i) };
    },
  },
};
