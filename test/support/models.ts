import { createHash } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { ModelManifestInput } from '@conveyor/shared/model/manifest';
import { placeholderProfile, REFERENCE_PROFILE_FILE } from '@conveyor/shared/model/reference-profile';
import { attr, OnnxGraphBuilder } from '@conveyor/shared/onnx/graph-builder';

/** Purpose-built model folders for tests, generated with the project's own ONNX writer. */
function writeFolder(dir: string, onnx: Uint8Array, manifest: Omit<ModelManifestInput, 'sha256'>): string {
  mkdirSync(dir, { recursive: true });
  writeFileSync(path.join(dir, 'model.onnx'), onnx);
  const sha256 = createHash('sha256').update(onnx).digest('hex');
  writeFileSync(path.join(dir, 'manifest.json'), JSON.stringify({ ...manifest, sha256 }, null, 2));
  // Every model folder ships the profile of its training data; these synthetic models get a minimal one.
  const profile = placeholderProfile(manifest);
  writeFileSync(path.join(dir, REFERENCE_PROFILE_FILE), JSON.stringify(profile, null, 2));
  return dir;
}

/**
 * A 3-channel 224×224 NCHW colour classifier with ImageNet mean/std normalisation: global average
 * pooling per channel, then the largest channel wins. It only answers right if the worker honours
 * the manifest's colour mode, layout, resize and normalisation.
 */
export function writeRgbModel(dir: string): string {
  const onnx = new OnnxGraphBuilder('rgb-means')
    .input('pixels', ['N', 3, 224, 224])
    .output('scores', ['N', 3])
    .initializer('w', [3, 3], [10, 0, 0, 0, 10, 0, 0, 0, 10])
    .initializer('b', [3], [0, 0, 0])
    .node('GlobalAveragePool', ['pixels'], ['pooled'])
    .node('Flatten', ['pooled'], ['flat'], { axis: attr.int(1) })
    .node('Gemm', ['flat', 'w', 'b'], ['scores'])
    .encode();
  return writeFolder(dir, onnx, {
    schema: 'conveyor.model/v1',
    name: 'rgb-means',
    version: 'test-1',
    input: { name: 'pixels', layout: 'NCHW', channels: 3, height: 224, width: 224 },
    output: { name: 'scores', kind: 'logits' },
    preprocess: {
      color: 'rgb',
      resize: 'cover',
      normalize: { scale: 1 / 255, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] },
    },
    labels: ['red', 'green', 'blue'],
  });
}

/**
 * A digit-shaped model (28×28 gray, MNIST preprocessing) that burns real CPU: the hidden vector is
 * broadcast to 256 rows and pushed through `layers` 1024×1024 matrix products (about 10 ms each
 * here). Used to hold a job in flight long enough to kill or stop its worker. Batch size 1 only.
 */
export function writeSlowModel(dir: string, layers: number): string {
  const side = 1024;
  const rows = 256;
  const g = new OnnxGraphBuilder('slow').input('input', [1, 1, 28, 28]).output('probabilities', [1, 10]);
  const w0 = new Float32Array(784 * side).map((_, i) => ((i * 7919) % 13) / 1300 - 0.005);
  const w = new Float32Array(side * side).map((_, i) => ((i * 104729) % 17) / 1700 - 0.005);
  const w1 = new Float32Array(side * 10).map((_, i) => ((i * 31) % 11) / 110);
  g.initializer('w0', [784, side], w0)
    .initializer('w', [side, side], w)
    .initializer('w1', [side, 10], w1)
    .initializer('rows', [2], [rows, side], 'int64');
  g.node('Flatten', ['input'], ['flat'], { axis: attr.int(1) })
    .node('MatMul', ['flat', 'w0'], ['v'])
    .node('Expand', ['v', 'rows'], ['h0']);
  for (let i = 0; i < layers; i++) {
    g.node('MatMul', [`h${i}`, 'w'], [`m${i}`]).node('Tanh', [`m${i}`], [`h${i + 1}`]);
  }
  g.node('ReduceMean', [`h${layers}`], ['pooled'], { axes: attr.ints([0]), keepdims: attr.int(1) })
    .node('MatMul', ['pooled', 'w1'], ['logits'])
    .node('Softmax', ['logits'], ['probabilities'], { axis: attr.int(1) });
  return writeFolder(dir, g.encode(), {
    schema: 'conveyor.model/v1',
    name: 'slow-digits',
    version: `slow-${layers}`,
    input: { name: 'input', layout: 'NCHW', channels: 1, height: 28, width: 28 },
    output: { name: 'probabilities', kind: 'probabilities' },
    preprocess: {
      color: 'gray',
      resize: 'digit',
      box: 20,
      polarity: 'light-on-dark',
      normalize: { scale: 1 / 255, mean: [0], std: [1] },
    },
    labels: ['0', '1', '2', '3', '4', '5', '6', '7', '8', '9'],
  });
}
