import { expect } from 'chai';
import * as ort from 'onnxruntime-node';
import pino from 'pino';
import { Random } from '../src/lib/random.js';
import { buildNetwork, type ArchitectureConfig } from '../src/nn/architectures.js';
import { tf, useWasmBackend } from '../src/nn/backend.js';
import { toFeatures, type FeatureSet } from '../src/pipeline/features.js';
import { loadMnist, splitDataset } from '../src/pipeline/ingest.js';
import { DIGIT_PREPROCESS } from '../src/pipeline/train-run.js';
import { predict, train } from '../src/pipeline/train.js';
import { TrainConfig } from '../src/pipeline/train-config.js';

const spec = {
  input: { name: 'input', layout: 'NCHW', channels: 1, height: 28, width: 28 },
  preprocess: DIGIT_PREPROCESS,
} as const;
const silent = pino({ level: 'silent' });

describe('training and ONNX export', function () {
  this.timeout(120_000);
  let trainSet: FeatureSet;
  let validation: FeatureSet;

  before(async () => {
    await useWasmBackend();
    const dataset = loadMnist();
    const split = splitDataset(dataset, { train: 0.7, validation: 0.15 }, 11);
    trainSet = await toFeatures(dataset, split.train.slice(0, 512), spec);
    validation = await toFeatures(dataset, split.validation.slice(0, 128), spec);
  });

  const architectures: ArchitectureConfig[] = [
    { kind: 'softmax' },
    { kind: 'mlp', hidden: 32 },
    { kind: 'cnn', filters: [4, 8], dense: 16 },
  ];
  for (const architecture of architectures) {
    it(`exports a ${architecture.kind} whose ONNX graph computes what tfjs computes`, async () => {
      const network = buildNetwork(architecture, 28, 10, new Random(3));
      const expected = predict(network, validation, 28);
      const session = await ort.InferenceSession.create(network.exportOnnx({}));
      const out = await session.run({ input: new ort.Tensor('float32', validation.x, [validation.n, 1, 28, 28]) });
      const actual = out.probabilities!.data as Float32Array;
      let maxDiff = 0;
      expected.forEach((v, i) => (maxDiff = Math.max(maxDiff, Math.abs(v - actual[i]!))));
      expect(maxDiff).to.be.lessThan(1e-5);
      expect(session.outputNames.includes('embedding')).to.equal(architecture.kind !== 'softmax');
      Object.values(network.params).forEach((v) => v.dispose());
    });
  }

  it('trains a CNN whose custom convolution gradient matches the reference gradient', () => {
    // The wasm backend lacks Conv2DBackpropFilter; compare our gradient with a numerical one.
    const network = buildNetwork({ kind: 'cnn', filters: [2, 3], dense: 4 }, 28, 10, new Random(5));
    const x = tf.tensor4d(trainSet.x.slice(0, 2 * 784), [2, 28, 28, 1]);
    const y = tf.oneHot(tf.tensor1d([trainSet.y[0]!, trainSet.y[1]!], 'int32'), 10);
    const loss = (): tf.Scalar => tf.losses.softmaxCrossEntropy(y, network.forward(x).logits);
    const k1 = network.params.k1!;
    const { grads } = tf.variableGrads(loss, [k1]);
    const analytic = Object.values(grads)[0]!.dataSync();
    const base = k1.dataSync().slice();
    const eps = 1e-2;
    for (const index of [0, 5, 13]) {
      const shifted = (delta: number) => {
        const w = base.slice();
        w[index] = w[index]! + delta;
        k1.assign(tf.tensor(w, k1.shape));
        return loss().dataSync()[0]!;
      };
      const numeric = (shifted(eps) - shifted(-eps)) / (2 * eps);
      expect(analytic[index]).to.be.closeTo(numeric, 2e-3 + Math.abs(numeric) * 0.05);
    }
    k1.assign(tf.tensor(base, k1.shape));
  });

  it('is deterministic: the same config and seed give bitwise-identical weights', async () => {
    const config = TrainConfig.parse({
      name: 'determinism',
      architecture: { kind: 'cnn', filters: [4, 8], dense: 16 },
      seed: 9,
      epochs: 2,
      batchSize: 64,
      learningRate: 0.003,
      patience: 5,
      augment: { shift: 2, rotate: 10 },
    });
    const run = async () => {
      const trained = await train(config, { train: trainSet, validation }, { side: 28, classes: 10 }, silent);
      return { onnx: Buffer.from(trained.network.exportOnnx({})), history: trained.history.map(({ seconds: _, ...m }) => m) };
    };
    const a = await run();
    const b = await run();
    expect(a.history).to.deep.equal(b.history);
    expect(a.onnx.equals(b.onnx)).to.equal(true);
    const c = await train({ ...config, seed: 10 }, { train: trainSet, validation }, { side: 28, classes: 10 }, silent);
    expect(Buffer.from(c.network.exportOnnx({})).equals(a.onnx)).to.equal(false);
    // And it learns: the loss falls, and two short epochs on 512 digits already beat chance (10 %).
    expect(a.history[1]!.loss).to.be.lessThan(a.history[0]!.loss);
    expect(a.history.at(-1)!.validationAccuracy).to.be.greaterThan(0.2);
  });
});
