import { ModelManifest } from '../../src/model/manifest.js';

/**
 * A 224×224 RGB manifest with the align-corners resize and identity normalisation, for tests of the
 * preprocessing path itself (profiles, shrink-on-load, the CPU budget): the model's values do not
 * matter there, only the pixels. `preprocess` adds manifest choices (e.g. `shrinkOnLoad`).
 */
export function rgbFrameManifest(preprocess: Record<string, unknown> = {}): ModelManifest {
  return ModelManifest.parse({
    schema: 'conveyor.model/v1',
    name: 'frame',
    version: '1',
    sha256: '0'.repeat(64),
    input: { name: 'input', layout: 'NCHW', channels: 3, height: 224, width: 224 },
    output: { name: 'probabilities', kind: 'probabilities' },
    preprocess: { color: 'rgb', resize: 'bilinear-align-corners', normalize: { mean: [0, 0, 0], std: [1, 1, 1] }, ...preprocess },
    labels: ['a', 'b'],
  });
}
