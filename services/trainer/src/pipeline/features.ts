import { preprocess } from '@conveyor/shared/model/preprocess';
import type { ModelManifest } from '@conveyor/shared/model/manifest';
import type { Dataset } from './ingest.js';

/**
 * Turns dataset samples into model inputs with the serving preprocessing itself
 * (`@conveyor/shared/model/preprocess`), so training, offline evaluation and serving agree.
 */
export interface FeatureSet {
  /** n × (channels·height·width) values, one image after another. */
  readonly x: Float32Array;
  readonly y: Int32Array;
  readonly n: number;
  readonly size: number;
}

export async function toFeatures(
  dataset: Dataset,
  indices: readonly number[],
  manifest: Pick<ModelManifest, 'input' | 'preprocess'>,
): Promise<FeatureSet> {
  const size = manifest.input.channels * manifest.input.height * manifest.input.width;
  const x = new Float32Array(indices.length * size);
  const y = new Int32Array(indices.length);
  const chunk = 32;
  for (let start = 0; start < indices.length; start += chunk) {
    const batch = indices.slice(start, start + chunk);
    const prepared = await Promise.all(
      batch.map((index) => {
        const sample = dataset.samples[index]!;
        return preprocess(
          { kind: 'raw', data: sample.pixels, width: dataset.side, height: dataset.side, channels: 1 },
          manifest,
          { maxPixels: dataset.side * dataset.side },
        );
      }),
    );
    prepared.forEach((p, i) => {
      x.set(p.tensor, (start + i) * size);
      y[start + i] = dataset.samples[batch[i]!]!.label;
    });
  }
  return { x, y, n: indices.length, size };
}
