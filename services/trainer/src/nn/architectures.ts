import { z } from 'zod';
import { OnnxGraphBuilder, attr } from '@conveyor/shared/onnx/graph-builder';
import type { Random } from '../lib/random.js';
import { tf } from './backend.js';
import { conv2d, dense } from './layers.js';

/**
 * The architectures the trainer can fit, each with its own ONNX export. Training runs in NHWC
 * (tfjs); the exported graphs take NCHW input, so weights are permuted on the way out.
 */
export const ArchitectureConfig = z.discriminatedUnion('kind', [
  z.object({ kind: z.literal('softmax') }),
  z.object({ kind: z.literal('mlp'), hidden: z.number().int().positive() }),
  z.object({
    kind: z.literal('cnn'),
    filters: z.tuple([z.number().int().positive(), z.number().int().positive()]),
    dense: z.number().int().positive(),
  }),
]);
export type ArchitectureConfig = z.infer<typeof ArchitectureConfig>;

export const INPUT_NAME = 'input';
export const OUTPUT_NAME = 'probabilities';
export const EMBEDDING_NAME = 'embedding';

export interface Network {
  readonly params: Readonly<Record<string, tf.Variable>>;
  /** x: [N, H, W, 1] in [0, 1]. */
  forward(x: tf.Tensor4D): { logits: tf.Tensor2D; embedding?: tf.Tensor2D };
  /** The ONNX graph of the current weights: NCHW input, softmax probabilities (and embedding). */
  exportOnnx(metadata: Record<string, string>): Uint8Array;
  readonly hasEmbedding: boolean;
}

export function buildNetwork(config: ArchitectureConfig, side: number, classes: number, rng: Random): Network {
  switch (config.kind) {
    case 'softmax':
      return softmaxRegression(side, classes, rng);
    case 'mlp':
      return mlp(side, classes, config.hidden, rng);
    case 'cnn':
      return cnn(side, classes, config.filters, config.dense, rng);
  }
}

/** tfjs registers variables by name in one global engine: keep every name unique. */
let nextId = 0;

/** He-normal weights for ReLU layers, Glorot-uniform for the output layer; zero biases. */
function heNormal(rng: Random, shape: number[], fanIn: number, name: string): tf.Variable {
  const n = shape.reduce((a, b) => a * b, 1);
  const data = new Float32Array(n);
  const std = Math.sqrt(2 / fanIn);
  for (let i = 0; i < n; i++) data[i] = rng.normal() * std;
  return tf.variable(tf.tensor(data, shape), true, `${name}_${nextId++}`);
}

function glorot(rng: Random, shape: number[], fanIn: number, fanOut: number, name: string): tf.Variable {
  const n = shape.reduce((a, b) => a * b, 1);
  const data = new Float32Array(n);
  const limit = Math.sqrt(6 / (fanIn + fanOut));
  for (let i = 0; i < n; i++) data[i] = rng.uniform(-limit, limit);
  return tf.variable(tf.tensor(data, shape), true, `${name}_${nextId++}`);
}

function zeros(shape: number[], name: string): tf.Variable {
  return tf.variable(tf.zeros(shape), true, `${name}_${nextId++}`);
}

function values(v: tf.Variable): Float32Array {
  return v.dataSync() as Float32Array;
}

function graphHead(side: number): OnnxGraphBuilder {
  return new OnnxGraphBuilder('conveyor-digits').input(INPUT_NAME, ['N', 1, side, side]);
}

function softmaxRegression(side: number, classes: number, rng: Random): Network {
  const inputs = side * side;
  const params = { w: glorot(rng, [inputs, classes], inputs, classes, 'w'), b: zeros([classes], 'b') };
  return {
    params,
    hasEmbedding: false,
    forward: (x) => ({ logits: dense(tf.reshape(x, [-1, inputs]), params.w as tf.Tensor2D, params.b as tf.Tensor1D) }),
    exportOnnx: (metadata) =>
      graphHead(side)
        .output(OUTPUT_NAME, ['N', classes])
        .initializer('w', [inputs, classes], values(params.w))
        .initializer('b', [classes], values(params.b))
        .node('Flatten', [INPUT_NAME], ['flat'], { axis: attr.int(1) })
        .node('Gemm', ['flat', 'w', 'b'], ['logits'])
        .node('Softmax', ['logits'], [OUTPUT_NAME], { axis: attr.int(1) })
        .encode({ metadata }),
  };
}

function mlp(side: number, classes: number, hidden: number, rng: Random): Network {
  const inputs = side * side;
  const params = {
    w1: heNormal(rng, [inputs, hidden], inputs, 'w1'),
    b1: zeros([hidden], 'b1'),
    w2: glorot(rng, [hidden, classes], hidden, classes, 'w2'),
    b2: zeros([classes], 'b2'),
  };
  return {
    params,
    hasEmbedding: true,
    forward: (x) => {
      const h = tf.relu(dense(tf.reshape(x, [-1, inputs]), params.w1 as tf.Tensor2D, params.b1 as tf.Tensor1D));
      return { logits: dense(h, params.w2 as tf.Tensor2D, params.b2 as tf.Tensor1D), embedding: h };
    },
    exportOnnx: (metadata) =>
      graphHead(side)
        .output(OUTPUT_NAME, ['N', classes])
        .output(EMBEDDING_NAME, ['N', hidden])
        .initializer('w1', [inputs, hidden], values(params.w1))
        .initializer('b1', [hidden], values(params.b1))
        .initializer('w2', [hidden, classes], values(params.w2))
        .initializer('b2', [classes], values(params.b2))
        .node('Flatten', [INPUT_NAME], ['flat'], { axis: attr.int(1) })
        .node('Gemm', ['flat', 'w1', 'b1'], ['h1'])
        .node('Relu', ['h1'], [EMBEDDING_NAME])
        .node('Gemm', [EMBEDDING_NAME, 'w2', 'b2'], ['logits'])
        .node('Softmax', ['logits'], [OUTPUT_NAME], { axis: attr.int(1) })
        .encode({ metadata }),
  };
}

/** conv 3×3 → ReLU → max-pool 2 → conv 3×3 → ReLU → max-pool 2 → dense → ReLU → dense. */
function cnn(side: number, classes: number, [f1, f2]: [number, number], hidden: number, rng: Random): Network {
  const s1 = Math.floor((side - 2) / 2);
  const s2 = Math.floor((s1 - 2) / 2);
  const flat = s2 * s2 * f2;
  const params = {
    k1: heNormal(rng, [3, 3, 1, f1], 9, 'k1'),
    c1: zeros([f1], 'c1'),
    k2: heNormal(rng, [3, 3, f1, f2], 9 * f1, 'k2'),
    c2: zeros([f2], 'c2'),
    w3: heNormal(rng, [flat, hidden], flat, 'w3'),
    b3: zeros([hidden], 'b3'),
    w4: glorot(rng, [hidden, classes], hidden, classes, 'w4'),
    b4: zeros([classes], 'b4'),
  };
  return {
    params,
    hasEmbedding: true,
    forward: (x) => {
      let h: tf.Tensor4D = tf.relu(tf.add(conv2d(x, params.k1 as tf.Tensor4D, false), params.c1));
      h = tf.maxPool(h, 2, 2, 'valid');
      h = tf.relu(tf.add(conv2d(h, params.k2 as tf.Tensor4D, true), params.c2));
      h = tf.maxPool(h, 2, 2, 'valid');
      const e = tf.relu(dense(tf.reshape(h, [-1, flat]), params.w3 as tf.Tensor2D, params.b3 as tf.Tensor1D));
      return { logits: dense(e, params.w4 as tf.Tensor2D, params.b4 as tf.Tensor1D), embedding: e };
    },
    exportOnnx: (metadata) =>
      graphHead(side)
        .output(OUTPUT_NAME, ['N', classes])
        .output(EMBEDDING_NAME, ['N', hidden])
        .initializer('k1', [f1, 1, 3, 3], toOihw(values(params.k1), 3, 3, 1, f1))
        .initializer('c1', [f1], values(params.c1))
        .initializer('k2', [f2, f1, 3, 3], toOihw(values(params.k2), 3, 3, f1, f2))
        .initializer('c2', [f2], values(params.c2))
        .initializer('w3', [flat, hidden], nhwcRowsToNchw(values(params.w3), s2, s2, f2, hidden))
        .initializer('b3', [hidden], values(params.b3))
        .initializer('w4', [hidden, classes], values(params.w4))
        .initializer('b4', [classes], values(params.b4))
        .node('Conv', [INPUT_NAME, 'k1', 'c1'], ['a1'], { kernel_shape: attr.ints([3, 3]) })
        .node('Relu', ['a1'], ['r1'])
        .node('MaxPool', ['r1'], ['p1'], { kernel_shape: attr.ints([2, 2]), strides: attr.ints([2, 2]) })
        .node('Conv', ['p1', 'k2', 'c2'], ['a2'], { kernel_shape: attr.ints([3, 3]) })
        .node('Relu', ['a2'], ['r2'])
        .node('MaxPool', ['r2'], ['p2'], { kernel_shape: attr.ints([2, 2]), strides: attr.ints([2, 2]) })
        .node('Flatten', ['p2'], ['flat'], { axis: attr.int(1) })
        .node('Gemm', ['flat', 'w3', 'b3'], ['h3'])
        .node('Relu', ['h3'], [EMBEDDING_NAME])
        .node('Gemm', [EMBEDDING_NAME, 'w4', 'b4'], ['logits'])
        .node('Softmax', ['logits'], [OUTPUT_NAME], { axis: attr.int(1) })
        .encode({ metadata }),
  };
}

/** tfjs conv kernels are [kh, kw, in, out]; ONNX wants [out, in, kh, kw]. */
export function toOihw(k: Float32Array, kh: number, kw: number, cin: number, cout: number): Float32Array {
  const out = new Float32Array(k.length);
  for (let i = 0; i < kh; i++)
    for (let j = 0; j < kw; j++)
      for (let c = 0; c < cin; c++)
        for (let o = 0; o < cout; o++) out[((o * cin + c) * kh + i) * kw + j] = k[((i * kw + j) * cin + c) * cout + o]!;
  return out;
}

/** A dense layer after an NHWC flatten reads row (h·W + w)·C + c; after an NCHW flatten, c·H·W + h·W + w. */
export function nhwcRowsToNchw(w: Float32Array, h: number, wd: number, c: number, cols: number): Float32Array {
  const out = new Float32Array(w.length);
  for (let y = 0; y < h; y++)
    for (let x = 0; x < wd; x++)
      for (let ch = 0; ch < c; ch++) {
        const from = ((y * wd + x) * c + ch) * cols;
        const to = (ch * h * wd + y * wd + x) * cols;
        out.set(w.subarray(from, from + cols), to);
      }
  return out;
}
