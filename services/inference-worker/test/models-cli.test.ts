import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import sharp from 'sharp';
import { ModelManifest } from '@conveyor/shared/model/manifest';
import { ReferenceProfile } from '@conveyor/shared/model/reference-profile';
import { attr, OnnxGraphBuilder } from '@conveyor/shared/onnx/graph-builder';
import { loadWarmModel } from '../src/model/warm-up.js';
import { addModel, profileModel, UsageError } from '../src/models-cli/models.cli.js';
import { inspectOnnx } from '../src/models-cli/onnx-inspect.js';

/**
 * `models add` and `models profile` on models they were not written for: an NHWC logits model with
 * a dynamic batch (a Keras export), an NCHW model ending in a Softmax behind a Flatten (a PyTorch
 * export), built with the project's ONNX writer.
 */
function nhwcLogits(): Uint8Array {
  // Mean colour per channel → 3 logits (the brightest channel wins): a Keras-style NHWC graph.
  return new OnnxGraphBuilder('nhwc')
    .input('image', ['batch', 32, 48, 3])
    .output('logits', ['batch', 3])
    .node('ReduceMean', ['image'], ['logits'], { axes: attr.ints([1, 2]), keepdims: attr.int(0) })
    .encode();
}

function nchwSoftmax(): Uint8Array {
  return new OnnxGraphBuilder('nchw')
    .input('pixels', [1, 3, 64, 64])
    .output('probs', [1, 3])
    .node('GlobalAveragePool', ['pixels'], ['pooled'])
    .node('Softmax', ['pooled'], ['soft'], { axis: attr.int(1) })
    .node('Flatten', ['soft'], ['probs'], { axis: attr.int(1) })
    .encode();
}

describe('models add and models profile', function () {
  this.timeout(60_000);
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'conveyor-models-cli-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('reads layout, size, dynamic batch and logits from an NHWC graph', () => {
    const seen = inspectOnnx(nhwcLogits());
    expect(seen.input).to.include({ name: 'image', layout: 'NHWC', channels: 3, height: 32, width: 48, dynamicBatch: true });
    expect(seen.output).to.include({ name: 'logits', classes: 3, kind: 'logits' });
  });

  it('tells probabilities by a final Softmax, through a Flatten, and notes a fixed batch', () => {
    const seen = inspectOnnx(nchwSoftmax());
    expect(seen.input).to.include({ layout: 'NCHW', height: 64, width: 64, dynamicBatch: false });
    expect(seen.output).to.include({ name: 'probs', kind: 'probabilities' });
    expect(seen.notes.join(' ')).to.match(/batch axis is fixed/);
  });

  it('writes a folder the worker loads (checksum, preset, channel order, labels from a file)', async () => {
    const file = path.join(dir, 'm.onnx');
    writeFileSync(file, nhwcLogits());
    writeFileSync(path.join(dir, 'labels.txt'), 'red\ngreen\nblue\n');
    const { manifest, report } = await addModel({
      file,
      name: 'colours',
      labels: path.join(dir, 'labels.txt'),
      preset: 'imagenet',
      channelOrder: 'bgr',
      modelsDir: path.join(dir, 'models'),
    });
    const written = ModelManifest.parse(JSON.parse(readFileSync(path.join(dir, 'models/colours/manifest.json'), 'utf8')));
    expect(written).to.deep.equal(manifest);
    expect(written.labels).to.deep.equal(['red', 'green', 'blue']);
    expect(written.preprocess).to.include({ resize: 'shorter-side-crop', channelOrder: 'bgr' });
    // ImageNet's mean in the model's (BGR) order.
    expect(written.preprocess.normalize.mean).to.deep.equal([0.406, 0.456, 0.485]);
    expect(readFileSync(path.join(dir, 'models/colours/MODEL_CARD.md'), 'utf8')).to.match(/# colours/);
    expect(report.join('\n')).to.match(/NHWC.*48×32.*batch dynamic/);
    const { model } = await loadWarmModel(path.join(dir, 'models/colours'));
    await model.close();
  });

  it('refuses labels that do not match the output, and an existing folder without --force', async () => {
    const file = path.join(dir, 'm.onnx');
    writeFileSync(file, nhwcLogits());
    const base = { file, name: 'colours', modelsDir: path.join(dir, 'models') };
    const refused = await addModel({ ...base, labels: 'a,b' }).catch((e: unknown) => e);
    expect(refused).to.be.instanceOf(UsageError);
    expect((refused as Error).message).to.match(/3 classes, --labels gave 2/);
    await addModel({ ...base, labels: 'a,b,c' });
    expect(await addModel({ ...base, labels: 'a,b,c' }).catch((e: unknown) => e)).to.be.instanceOf(UsageError);
    await addModel({ ...base, labels: 'a,b,c', force: true });
  });

  it('profiles a folder of images through the serving pipeline; subfolders named after labels give an accuracy', async () => {
    const file = path.join(dir, 'm.onnx');
    writeFileSync(file, nchwSoftmax());
    await addModel({ file, name: 'colours', labels: 'red,green,blue', preset: 'unit', modelsDir: path.join(dir, 'models') });
    const images = path.join(dir, 'images');
    const colours = { red: [220, 30, 30], green: [30, 220, 30], blue: [30, 30, 220] } as const;
    for (const [label, [r, g, b]] of Object.entries(colours)) {
      mkdirSync(path.join(images, label), { recursive: true });
      for (let i = 0; i < 4; i++) {
        const png = await sharp({ create: { width: 80 + i * 10, height: 60, channels: 3, background: { r, g, b } } })
          .png()
          .toBuffer();
        writeFileSync(path.join(images, label, `${i}.png`), png);
      }
    }
    writeFileSync(path.join(images, 'not-an-image.png'), 'hello');
    const { file: written, report } = await profileModel({ name: 'colours', images, modelsDir: path.join(dir, 'models') });
    const profile = ReferenceProfile.parse(JSON.parse(readFileSync(written, 'utf8')));
    expect(profile.dataset.n).to.equal(12);
    expect(profile.predictedClass.counts).to.deep.equal([4, 4, 4]);
    expect(profile.quality?.accuracy).to.equal(1);
    expect(report.join('\n')).to.match(/skipped not-an-image.png/);
    // The worker loads the folder with its profile (the model-folder suite checks it describes this model).
    const { model } = await loadWarmModel(path.join(dir, 'models/colours'));
    await model.close();
  });
});
