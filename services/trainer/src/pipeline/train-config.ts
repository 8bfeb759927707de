import { readFile } from 'node:fs/promises';
import { z } from 'zod';
import { ArchitectureConfig } from '../nn/architectures.js';

/** One training configuration (an experiment): everything a run depends on, and nothing else. */
export const TrainConfig = z.object({
  /** Short name of the configuration, e.g. `cnn-augmented`; used as the run name. */
  name: z.string().regex(/^[a-z0-9][a-z0-9-]*$/),
  description: z.string().default(''),
  /** Name of the model this configuration produces (the registered model name). */
  model: z
    .string()
    .regex(/^[a-z0-9][a-z0-9._-]*$/)
    .default('digits'),
  architecture: ArchitectureConfig,
  /** Seeds weight initialisation, batch order and augmentation. Positive: tfjs treats 0 as unseeded. */
  seed: z.number().int().positive(),
  split: z
    .object({ seed: z.number().int().positive(), train: z.number().gt(0).lt(1), validation: z.number().gt(0).lt(1) })
    .default({ seed: 20261126, train: 0.7, validation: 0.15 }),
  epochs: z.number().int().positive(),
  batchSize: z.number().int().positive(),
  learningRate: z.number().positive(),
  /** Stop after this many epochs without a lower validation loss, keeping the best weights. */
  patience: z.number().int().positive(),
  /** On-the-fly augmentation: random shifts up to ±shift pixels, rotations up to ±rotate degrees. */
  augment: z.object({ shift: z.number().min(0), rotate: z.number().min(0) }).optional(),
  /** Use only the first n training samples (quick checks and tests). */
  limitTrain: z.number().int().positive().optional(),
});
export type TrainConfig = z.infer<typeof TrainConfig>;

export async function readTrainConfig(file: string): Promise<TrainConfig> {
  const parsed = TrainConfig.safeParse(JSON.parse(await readFile(file, 'utf8')));
  if (!parsed.success) {
    throw new Error(`${file}: ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
  }
  return parsed.data;
}
