import { z } from 'zod';
import { ImageFormat, ModelName, ModelRef, Prediction } from './common.contract.js';

/**
 * The replay family: a recorded example is one real input with production's answer to it, kept so a
 * candidate model can be run over the same inputs and compared with production before promotion
 * (docs/replay.md). A recorded set is a folder: `examples.jsonl` (one RecordedExample per line) and
 * the images beside it, each under the name its `input.file` gives. Whoever writes a set (the
 * replay CLI's `record` today, a worker's live sample later) writes this shape and nothing else, so
 * replay reads sets without knowing where they came from.
 */
export const REPLAY_SET_FILE = 'examples.jsonl';

export const RecordedExample = z.object({
  kind: z.literal('recorded-example'),
  version: z.literal(1),
  /** Unique within its set; the image's sha256 when the set keeps one example per distinct input. */
  id: z.string().min(1).max(128),
  /** The serving name the request was made to (the production model's route and queue). */
  model: ModelName,
  recordedAt: z.iso.datetime(),
  input: z.object({
    /** The image, relative to the set's folder; only a plain file name, never a path out of it. */
    file: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$/, 'a plain file name inside the set folder'),
    format: ImageFormat,
    bytes: z.number().int().positive(),
    /** sha256 of the bytes, checked when the set is read: a set altered after recording is refused. */
    sha256: z.string().regex(/^[0-9a-f]{64}$/),
  }),
  /** Production's answer, as the caller received it. */
  production: z.object({
    model: ModelRef,
    prediction: Prediction,
    /** The onnxruntime session run for this input (Timings.inferenceMs). */
    inferenceMs: z.number().min(0),
  }),
});
export type RecordedExample = z.infer<typeof RecordedExample>;
