import { z } from 'zod';

/**
 * The vocabulary every message of the contract shares: model names and references, job and
 * request ids, the image formats, a prediction, its timings and the descriptors of its input. The
 * messages themselves are by family: jobs.contract.ts (queues, job payloads, results, replies),
 * events.contract.ts (the streams: predictions, feedback, alerts), workers.contract.ts (heartbeats
 * and model announcements); their Redis keys are in redis-keys.ts. Producers and consumers import
 * these schemas and consumers validate what they receive. Messages are tagged by `kind` and carry
 * a `version`.
 *
 * Two words for a model, never mixed up (docs/glossary.md):
 * - the **serving name** (`ModelName`, fields called `name`): what a model is served under — its
 *   route, its queue, the `model` label of the metrics; chosen by the deployment;
 * - the **loaded model** (`ModelRef`, fields called `model`): the artifact behind it, its own name
 *   and version (a registry model may have another name than the one it is served under).
 */

/**
 * A model's serving name: the `{name}` of `/v1/models/{name}/predict`, the suffix of its queue, the
 * `model` label of the metrics. The same rule as a manifest's `name`. Names reach Redis keys and
 * metric labels only once a worker announced them or the configuration names them, never from a
 * request alone, so they stay a small, bounded set.
 */
export const ModelName = z
  .string()
  .regex(/^[a-z0-9][a-z0-9._-]{0,63}$/, 'a model name: lowercase letters, digits, ".", "_" and "-", at most 64, e.g. digits');
export type ModelName = z.infer<typeof ModelName>;

/** The formats Conveyor accepts (sniffed from the bytes; see model/decoders.ts for the decoders allowed to run). */
export const ImageFormat = z.enum(['jpeg', 'png', 'webp', 'gif', 'tiff', 'avif']);
export type ImageFormat = z.infer<typeof ImageFormat>;

/**
 * W3C Trace Context (https://www.w3.org/TR/trace-context/) carried with a job across the queue, so the
 * worker's spans join the trace of the request that made it. Absent when tracing is off or the
 * request was not sampled.
 */
export const TraceContext = z.object({
  traceparent: z.string().regex(/^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$/),
  tracestate: z.string().max(512).optional(),
});
export type TraceContext = z.infer<typeof TraceContext>;

export const JobId = z.uuid();
export const RequestId = z.string().min(1).max(128);

/** A loaded model: its own name and version, which need not be the serving name it is served under. */
export const ModelRef = z.object({ name: z.string(), version: z.string() });
export type ModelRef = z.infer<typeof ModelRef>;

export const Prediction = z.object({
  label: z.string(),
  index: z.number().int().min(0),
  confidence: z.number().min(0).max(1),
  top: z.array(z.object({ label: z.string(), confidence: z.number().min(0).max(1) })).min(1),
});
export type Prediction = z.infer<typeof Prediction>;

export const Timings = z.object({
  /** From acceptance by the gateway until a worker started the job. */
  queueMs: z.number().min(0),
  /** Fetching the image from Redis, decoding and preparing the tensor. */
  preprocessMs: z.number().min(0),
  /** The onnxruntime session run. */
  inferenceMs: z.number().min(0),
  /** From acceptance by the gateway until the result was stored. */
  totalMs: z.number().min(0),
});
export type Timings = z.infer<typeof Timings>;

/** What preprocessing measures of an image (see model/preprocess.ts), without the upload's own facts. */
export const ImageDescriptors = z.object({
  /** Size of the image as uploaded, after EXIF orientation. */
  width: z.number().int().positive(),
  height: z.number().int().positive(),
  /** Mean and standard deviation of the gray level (0–1) at working resolution, before inversion. */
  brightness: z.number().min(0).max(1),
  contrast: z.number().min(0).max(1),
  /** Share of pixels that are ink after normalisation (0–1). */
  inkRatio: z.number().min(0).max(1),
  /** Whether the image was inverted to light-on-dark. */
  inverted: z.boolean(),
});
export type ImageDescriptors = z.infer<typeof ImageDescriptors>;

/** Cheap facts about an input, published with every prediction for drift monitoring. */
export const InputDescriptors = z.object({
  format: ImageFormat,
  bytes: z.number().int().positive(),
  ...ImageDescriptors.shape,
});
export type InputDescriptors = z.infer<typeof InputDescriptors>;

/**
 * The serving name of a prediction event (or of a record made from one that may predate the field):
 * its own, or the loaded model's when the producer did not send it.
 */
export function servingName(record: { readonly name?: string | undefined; readonly model: { readonly name: string } }): string {
  return record.name ?? record.model.name;
}
