import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import { writeRgbModel } from '../../test/support/models.js';
import { classify, loadModel, ModelLoadError, softmax } from '../src/model/runtime.js';

describe('model runtime', () => {
  let dir: string;
  beforeEach(() => {
    dir = writeRgbModel(path.join(mkdtempSync(path.join(os.tmpdir(), 'conveyor-runtime-')), 'rgb'));
  });
  afterEach(() => rmSync(path.dirname(dir), { recursive: true, force: true }));

  it('loads a model folder and applies a softmax to logits', async () => {
    const model = await loadModel(dir);
    const plane = 224 * 224;
    const image = new Float32Array(3 * plane);
    image.fill(1, 0, plane); // channel 0 ("red") high
    const [out] = await model.run([image]);
    expect(Array.from(out!.probabilities).reduce((a, b) => a + b, 0)).to.be.closeTo(1, 1e-5);
    expect(classify(out!.probabilities, model.manifest.labels).label).to.equal('red');
    await model.close();
  });

  it('refuses a model file whose checksum differs from the manifest', async () => {
    const file = path.join(dir, 'model.onnx');
    const bytes = readFileSync(file);
    bytes[bytes.length - 1] = (bytes[bytes.length - 1] ?? 0) ^ 0xff;
    writeFileSync(file, bytes);
    const error = await loadModel(dir).catch((e: unknown) => e);
    expect(error).to.be.instanceOf(ModelLoadError);
    expect((error as Error).message).to.match(/sha256/);
  });

  it('refuses a manifest that names an output the model does not have', async () => {
    const file = path.join(dir, 'manifest.json');
    const manifest = JSON.parse(readFileSync(file, 'utf8')) as { output: { name: string } };
    manifest.output.name = 'nope';
    writeFileSync(file, JSON.stringify(manifest));
    const error = await loadModel(dir).catch((e: unknown) => e);
    expect((error as Error).message).to.contain('"nope"');
  });

  it('refuses an invalid manifest with the offending field', async () => {
    writeFileSync(path.join(dir, 'manifest.json'), JSON.stringify({ schema: 'conveyor.model/v1', name: 'x' }));
    const error = await loadModel(dir).catch((e: unknown) => e);
    expect(error).to.be.instanceOf(ModelLoadError);
    expect((error as Error).message).to.contain('invalid manifest');
  });

  it('classifies with a top-k list sorted by confidence', () => {
    const p = softmax(Float32Array.from([0, 2, 1]));
    const c = classify(p, ['a', 'b', 'c'], 2);
    expect(c.label).to.equal('b');
    expect(c.top.map((t) => t.label)).to.deep.equal(['b', 'c']);
    expect(c.confidence).to.be.closeTo(Math.exp(2) / (1 + Math.exp(1) + Math.exp(2)), 1e-6);
  });
});
