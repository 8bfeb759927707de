import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { z } from 'zod';

/** The promotion criteria, as data (configs/promotion.json) and checked by code (gate.ts). */
export const PromotionPolicy = z.object({
  /** The candidate's own data validation must have passed. */
  requireDataValidation: z.boolean().default(true),
  /** Absolute floor on held-out test accuracy. */
  minTestAccuracy: z.number().min(0).max(1),
  /** Largest allowed drop in test accuracy against the current production version. */
  maxRegression: z.number().min(0).max(1),
  /** Budget for the ONNX session alone, batch 1, 95th percentile. */
  maxLatencyP95Ms: z.number().positive(),
  /**
   * Thresholds on a replay of recorded real inputs through the candidate, compared with production's
   * recorded answers (docs/replay.md). Absent: replay figures are not judged.
   */
  replay: z
    .object({
      /** A candidate without replay figures is refused (true), or judged on its offline figures alone (false). */
      required: z.boolean().default(false),
      /** Least share of recorded inputs whose top-1 label must be production's. */
      minTop1Agreement: z.number().min(0).max(1),
      /** Largest mean absolute shift of the probability given to production's label. */
      maxMeanConfidenceShift: z.number().min(0).max(1),
      /** Largest PSI of the candidate's top-1 label distribution against production's. */
      maxLabelPsi: z.number().min(0),
      /** Largest p95 inference time of the candidate over production's recorded one; absent: not judged. */
      maxP95InferenceRatio: z.number().positive().optional(),
    })
    .optional(),
});
export type PromotionPolicy = z.infer<typeof PromotionPolicy>;

export const DEFAULT_POLICY_FILE = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../configs/promotion.json');

export async function readPolicy(file = DEFAULT_POLICY_FILE): Promise<PromotionPolicy> {
  return PromotionPolicy.parse(JSON.parse(await readFile(file, 'utf8')));
}
