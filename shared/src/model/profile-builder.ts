import { createHash } from 'node:crypto';
import { preprocess } from './preprocess.js';
import { numericProfile, type ReferenceProfile } from './reference-profile.js';
import { classify, type LoadedModel, type ModelOutput } from './runtime.js';

/**
 * A reference profile measured through the serving pipeline itself: each image's bytes decoded and
 * prepared by `preprocess()` with the model's manifest, run by the ONNX model, ranked by
 * `classify()` with its rounding, exactly as a worker does, then summarised by reference deciles
 * per feature and the predicted classes' counts. Images with a label also give the accuracy (and
 * accuracy and coverage above confidence thresholds); without labels the profile has no quality.
 * Used by `models profile` and by the moderation model's builder (scripts/models/moderation-profile.ts).
 */
export interface ProfileImage {
  readonly name: string;
  readonly bytes: Buffer;
  /** The class the image truly is, when known. */
  readonly label?: string;
}

export interface MeasuredProfile {
  readonly profile: ReferenceProfile;
  /** Predicted class → count. */
  readonly predicted: Record<string, number>;
  /** Images that could not be prepared (undecodable, too large), with the reason. */
  readonly skipped: readonly { name: string; problem: string }[];
  /** Each prepared image's predicted class, in order. */
  readonly perImage: readonly { name: string; predicted: string }[];
}

const THRESHOLDS = [0.5, 0.7, 0.9, 0.95];
const BATCH = 16;

export async function measureProfile(
  model: LoadedModel,
  images: readonly ProfileImage[],
  options: { readonly split: string; readonly hash?: string; readonly maxPixels?: number },
): Promise<MeasuredProfile> {
  const { manifest } = model;
  for (const image of images) {
    if (image.label !== undefined && !manifest.labels.includes(image.label))
      throw new Error(`${image.name}: "${image.label}" is not one of the model's labels (${manifest.labels.join(', ')})`);
  }
  const features: Record<'brightness' | 'contrast' | 'inkRatio' | 'confidence', number[]> = {
    brightness: [],
    contrast: [],
    inkRatio: [],
    confidence: [],
  };
  const predicted: number[] = [];
  const labelled: { correct: boolean; confidence: number }[] = [];
  const skipped: { name: string; problem: string }[] = [];
  const perImage: { name: string; predicted: string }[] = [];
  for (let start = 0; start < images.length; start += BATCH) {
    const batch = images.slice(start, start + BATCH);
    const prepared = await Promise.all(
      batch.map((image) =>
        preprocess({ kind: 'encoded', bytes: image.bytes }, manifest, { maxPixels: options.maxPixels ?? 40_000_000 }).catch(
          (error: unknown) => {
            skipped.push({ name: image.name, problem: error instanceof Error ? error.message : String(error) });
            return undefined;
          },
        ),
      ),
    );
    const kept = batch.flatMap((image, i) => (prepared[i] ? [{ image, prepared: prepared[i] }] : []));
    // One image per run, as a worker runs them: a model exported with a fixed batch of 1 takes no
    // other (and batching gains nothing on a CPU: FACTS).
    const outputs: ModelOutput[] = [];
    for (const k of kept) outputs.push(...(await model.run([k.prepared.tensor])));
    outputs.forEach((output, j) => {
      // What the worker publishes (classify rounds), or near-1 confidences would bin differently.
      const { index, confidence } = classify(output.probabilities, manifest.labels);
      const { image, prepared: p } = kept[j]!;
      features.brightness.push(p.descriptors.brightness);
      features.contrast.push(p.descriptors.contrast);
      features.inkRatio.push(p.descriptors.inkRatio);
      features.confidence.push(confidence);
      predicted.push(index);
      perImage.push({ name: image.name, predicted: manifest.labels[index]! });
      if (image.label !== undefined) labelled.push({ correct: manifest.labels[index] === image.label, confidence });
    });
  }
  const n = predicted.length;
  if (n === 0) throw new Error('no image could be prepared: nothing to profile');
  const hash =
    options.hash ??
    createHash('sha256')
      .update(JSON.stringify(images.map((i) => [i.name, i.label ?? null, createHash('sha256').update(i.bytes).digest('hex')])))
      .digest('hex');
  const profile = assembleProfile(manifest, { features, predicted, labelled }, { hash, split: options.split });
  const counts = Object.fromEntries(manifest.labels.map((l, c) => [l, profile.predictedClass.counts[c]!]));
  return { profile, predicted: counts, skipped, perImage };
}

/** The reference profile of what was measured: feature deciles, predicted classes, and quality when labelled. */
function assembleProfile(
  manifest: LoadedModel['manifest'],
  measured: {
    readonly features: Record<string, number[]>;
    readonly predicted: readonly number[];
    readonly labelled: readonly { correct: boolean; confidence: number }[];
  },
  dataset: { readonly hash: string; readonly split: string },
): ReferenceProfile {
  const { features, predicted, labelled } = measured;
  const n = predicted.length;
  const hash = dataset.hash;
  const accuracy = (rows: readonly { correct: boolean }[]) =>
    rows.length ? rows.filter((r) => r.correct).length / rows.length : 0;
  const profile: ReferenceProfile = {
    schema: 'conveyor.reference/v1',
    model: { name: manifest.name, version: manifest.version },
    dataset: { hash, split: dataset.split, n },
    image: { width: manifest.input.width, height: manifest.input.height, channels: manifest.input.channels },
    features: Object.fromEntries(Object.entries(features).map(([k, v]) => [k, numericProfile(v)])),
    predictedClass: {
      kind: 'categorical',
      n,
      categories: [...manifest.labels],
      counts: manifest.labels.map((_, c) => predicted.filter((p) => p === c).length),
    },
    ...(labelled.length > 0
      ? {
          quality: {
            accuracy: accuracy(labelled),
            atThreshold: THRESHOLDS.map((threshold) => {
              const above = labelled.filter((r) => r.confidence >= threshold);
              return { threshold, accuracy: accuracy(above), coverage: above.length / labelled.length };
            }),
          },
        }
      : {}),
  };
  return profile;
}
