import type { Logger } from '@conveyor/shared/logger';
import { Random } from '../lib/random.js';
import { buildNetwork, type Network } from '../nn/architectures.js';
import { tf, useWasmBackend } from '../nn/backend.js';
import type { FeatureSet } from './features.js';
import type { TrainConfig } from './train-config.js';

export interface EpochMetrics {
  epoch: number;
  loss: number;
  accuracy: number;
  validationLoss: number;
  validationAccuracy: number;
  seconds: number;
}

export interface Trained {
  readonly network: Network;
  readonly history: readonly EpochMetrics[];
  /** The epoch whose weights were kept (lowest validation loss). */
  readonly bestEpoch: number;
  readonly seconds: number;
}

/** Mini-batch Adam with optional augmentation and early stopping on validation loss. */
export async function train(
  config: TrainConfig,
  data: { train: FeatureSet; validation: FeatureSet },
  shape: { side: number; classes: number },
  log: Logger,
): Promise<Trained> {
  await useWasmBackend();
  const started = performance.now();
  const rng = new Random(config.seed);
  const network = buildNetwork(config.architecture, shape.side, shape.classes, rng.fork());
  const variables = Object.values(network.params);
  const optimizer = tf.train.adam(config.learningRate);
  const n = config.limitTrain ? Math.min(config.limitTrain, data.train.n) : data.train.n;
  const order = Array.from({ length: n }, (_, i) => i);
  const history: EpochMetrics[] = [];
  let best = { loss: Infinity, epoch: 0, weights: snapshot(network) };
  let waited = 0;

  for (let epoch = 1; epoch <= config.epochs; epoch++) {
    const epochStarted = performance.now();
    const epochRng = rng.fork();
    epochRng.shuffle(order);
    let lossSum = 0;
    let correct = 0;
    for (let start = 0; start < n; start += config.batchSize) {
      const batch = order.slice(start, start + config.batchSize);
      const [loss, hits] = tf.tidy(() => {
        const x0 = gather(data.train, batch, shape.side);
        const x = config.augment ? augment(x0, config.augment, epochRng, shape.side) : x0;
        const y = tf.oneHot(
          tf.tensor1d(
            batch.map((i) => data.train.y[i]!),
            'int32',
          ),
          shape.classes,
        );
        let logits: tf.Tensor2D | undefined;
        const cost = optimizer.minimize(
          () => {
            // minimize() disposes what the loss closure creates; keep the logits for accuracy.
            logits = tf.keep(network.forward(x).logits);
            return tf.losses.softmaxCrossEntropy(y, logits);
          },
          true,
          variables,
        );
        const right = tf.sum(tf.cast(tf.equal(tf.argMax(logits!, 1), tf.argMax(y, 1)), 'int32'));
        logits!.dispose();
        return [cost!.dataSync()[0]!, right.dataSync()[0]!];
      });
      lossSum += loss * batch.length;
      correct += hits;
    }
    const validation = measure(network, data.validation, shape);
    const metrics: EpochMetrics = {
      epoch,
      loss: lossSum / n,
      accuracy: correct / n,
      validationLoss: validation.loss,
      validationAccuracy: validation.accuracy,
      seconds: (performance.now() - epochStarted) / 1000,
    };
    history.push(metrics);
    log.info(metrics, 'epoch');
    if (validation.loss < best.loss - 1e-5) {
      best = { loss: validation.loss, epoch, weights: snapshot(network) };
      waited = 0;
    } else if (++waited >= config.patience) {
      log.info({ epoch, bestEpoch: best.epoch }, 'early stop: validation loss stopped improving');
      break;
    }
  }
  restore(network, best.weights);
  optimizer.dispose();
  return { network, history, bestEpoch: best.epoch, seconds: (performance.now() - started) / 1000 };
}

/** Loss and accuracy of the current weights on a feature set, without augmentation. */
export function measure(network: Network, set: FeatureSet, shape: { side: number; classes: number }) {
  let lossSum = 0;
  let correct = 0;
  const step = 500;
  for (let start = 0; start < set.n; start += step) {
    const batch = Array.from({ length: Math.min(step, set.n - start) }, (_, i) => start + i);
    const [loss, hits] = tf.tidy(() => {
      const logits = network.forward(gather(set, batch, shape.side)).logits;
      const y = tf.oneHot(
        tf.tensor1d(
          batch.map((i) => set.y[i]!),
          'int32',
        ),
        shape.classes,
      );
      const l = tf.losses.softmaxCrossEntropy(y, logits);
      const right = tf.sum(tf.cast(tf.equal(tf.argMax(logits, 1), tf.argMax(y, 1)), 'int32'));
      return [l.dataSync()[0]!, right.dataSync()[0]!];
    });
    lossSum += loss * batch.length;
    correct += hits;
  }
  return { loss: lossSum / set.n, accuracy: correct / set.n };
}

/** The network's probabilities for a feature set (to cross-check the ONNX export). */
export function predict(network: Network, set: FeatureSet, side: number): Float32Array {
  const batch = Array.from({ length: set.n }, (_, i) => i);
  return tf.tidy(() => tf.softmax(network.forward(gather(set, batch, side)).logits).dataSync() as Float32Array);
}

function gather(set: FeatureSet, indices: readonly number[], side: number): tf.Tensor4D {
  const out = new Float32Array(indices.length * set.size);
  indices.forEach((index, i) => out.set(set.x.subarray(index * set.size, (index + 1) * set.size), i * set.size));
  // One-channel NCHW and NHWC have the same memory layout.
  return tf.tensor4d(out, [indices.length, side, side, 1]);
}

/** Random rotation about the centre and shift, as one projective transform per image. */
function augment(x: tf.Tensor4D, spec: { shift: number; rotate: number }, rng: Random, side: number): tf.Tensor4D {
  const n = x.shape[0];
  const c = (side - 1) / 2;
  const transforms = new Float32Array(n * 8);
  for (let i = 0; i < n; i++) {
    const theta = (rng.uniform(-spec.rotate, spec.rotate) * Math.PI) / 180;
    const tx = rng.uniform(-spec.shift, spec.shift);
    const ty = rng.uniform(-spec.shift, spec.shift);
    const cos = Math.cos(theta);
    const sin = Math.sin(theta);
    // Output pixel (x, y) reads input R⁻¹((x, y) − centre − shift) + centre.
    transforms.set([cos, sin, -cos * (c + tx) - sin * (c + ty) + c, -sin, cos, sin * (c + tx) - cos * (c + ty) + c, 0, 0], i * 8);
  }
  return tf.image.transform(x, tf.tensor2d(transforms, [n, 8]), 'bilinear', 'constant', 0);
}

function snapshot(network: Network): Map<string, Float32Array> {
  return new Map(Object.entries(network.params).map(([k, v]) => [k, Float32Array.from(v.dataSync() as Float32Array)]));
}

function restore(network: Network, weights: Map<string, Float32Array>): void {
  for (const [k, v] of Object.entries(network.params)) {
    tf.tidy(() => v.assign(tf.tensor(weights.get(k)!, v.shape)));
  }
}
