import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import type { ModelManifestInput } from '@conveyor/shared/model/manifest';
import { placeholderProfile, REFERENCE_PROFILE_FILE } from '@conveyor/shared/model/reference-profile';
import { attr, OnnxGraphBuilder } from '@conveyor/shared/onnx/graph-builder';
import { ROOT } from '../../harness/service-process.js';
import { mulberry32 } from '../../harness/seeded-random.js';

/**
 * A MobileNet-v1-class image classifier for benchmarks, written with the project's own ONNX writer
 * (nothing is downloaded): the MobileNet v1 layer plan at width multiplier 0.5 on a 3×224×224 NCHW
 * input — a 3×3 stride-2 stem, 13 depthwise-separable blocks (3×3 depthwise Conv with
 * `group` = channels, then a 1×1 pointwise Conv), ReLU6 as Clip(0, 6), GlobalAveragePool, Gemm and
 * Softmax — about 150 M multiply-adds. The weights are random but seeded, with a BatchNorm (random
 * statistics) folded into every convolution's weights and bias, as an exporter does. The folder is
 * what the worker serves: manifest (RGB, `cover` resize, ImageNet mean/std), model.onnx and a
 * placeholder reference profile so the worker's model-folder checks pass. The answers mean
 * nothing; the cost per image is the point.
 *
 *   node --conditions=conveyor-source --import tsx bench/models/build-mobilenet.ts [--out DIR] [--classes 1000]
 */
export const DEFAULT_MOBILENET_DIR = path.join(ROOT, 'data', 'bench-models', 'mobilenet-class');
/** Bump when the graph or the weights change, so folders generated before are rebuilt. */
const REVISION = 1;

export interface MobilenetOptions {
  readonly classes?: number;
  readonly seed?: number;
  /** MobileNet's width multiplier α. */
  readonly width?: number;
}

export interface MobilenetFolder {
  readonly dir: string;
  readonly version: string;
  /** Multiply-adds of one 224×224 image (convolutions and the classifier). */
  readonly macs: number;
  readonly parameters: number;
  readonly bytes: number;
}

/** [output channels at α = 1, stride] of the 13 depthwise-separable blocks of MobileNet v1. */
const BLOCKS: readonly (readonly [number, number])[] = [
  [64, 1],
  [128, 2],
  [128, 1],
  [256, 2],
  [256, 1],
  [512, 2],
  [512, 1],
  [512, 1],
  [512, 1],
  [512, 1],
  [512, 1],
  [1024, 2],
  [1024, 1],
];
const SIDE = 224;


function gaussian(uniform: () => number): () => number {
  return () => Math.sqrt(-2 * Math.log(1 - uniform())) * Math.cos(2 * Math.PI * uniform());
}

function versionOf(classes: number, seed: number, width: number): string {
  return `mnv1-${width}-c${classes}-s${seed}-r${REVISION}`;
}

export function buildMobilenet(dir: string, options: MobilenetOptions = {}): MobilenetFolder {
  const classes = options.classes ?? 1000;
  const seed = options.seed ?? 20261126;
  const width = options.width ?? 0.5;
  const normal = gaussian(mulberry32(seed));
  const uniform = mulberry32(seed + 1);
  const g = new OnnxGraphBuilder('mobilenet-class').input('input', ['N', 3, SIDE, SIDE]).output('probabilities', ['N', classes]);
  g.initializer('relu6_min', [], [0]).initializer('relu6_max', [], [6]);
  let macs = 0;
  let parameters = 0;
  let side = SIDE;
  let channels = 3;
  let tensor = 'input';
  let n = 0;

  /** Conv (+ folded BatchNorm) + ReLU6; He-initialised weights, random BN statistics folded in. */
  const conv = (out: number, kernel: number, stride: number, group: number) => {
    const fanIn = (channels / group) * kernel * kernel;
    const w = new Float32Array(out * fanIn);
    const b = new Float32Array(out);
    const std = Math.sqrt(2 / fanIn);
    for (let o = 0; o < out; o++) {
      const gamma = 0.5 + uniform();
      const beta = 0.1 * normal();
      const mean = 0.1 * normal();
      const variance = 0.5 + uniform();
      const k = gamma / Math.sqrt(variance + 1e-5);
      for (let i = 0; i < fanIn; i++) w[o * fanIn + i] = std * normal() * k;
      b[o] = beta - mean * k;
    }
    const name = `conv${n++}`;
    g.initializer(`${name}_w`, [out, channels / group, kernel, kernel], w).initializer(`${name}_b`, [out], b);
    const pad = (kernel - 1) / 2;
    g.node('Conv', [tensor, `${name}_w`, `${name}_b`], [`${name}_y`], {
      kernel_shape: attr.ints([kernel, kernel]),
      strides: attr.ints([stride, stride]),
      pads: attr.ints([pad, pad, pad, pad]),
      group: attr.int(group),
    });
    g.node('Clip', [`${name}_y`, 'relu6_min', 'relu6_max'], [`${name}_a`]);
    side = Math.floor((side + 2 * pad - kernel) / stride) + 1;
    macs += out * side * side * fanIn;
    parameters += w.length + b.length;
    channels = out;
    tensor = `${name}_a`;
  };

  const scaled = (c: number) => Math.max(8, Math.round(c * width));
  conv(scaled(32), 3, 2, 1);
  for (const [out, stride] of BLOCKS) {
    conv(channels, 3, stride, channels); // depthwise
    conv(scaled(out), 1, 1, 1); // pointwise
  }
  const fcW = new Float32Array(classes * channels);
  for (let i = 0; i < fcW.length; i++) fcW[i] = normal() * Math.sqrt(1 / channels);
  g.initializer('fc_w', [classes, channels], fcW).initializer('fc_b', [classes], new Float32Array(classes));
  g.node('GlobalAveragePool', [tensor], ['pooled'])
    .node('Flatten', ['pooled'], ['features'], { axis: attr.int(1) })
    .node('Gemm', ['features', 'fc_w', 'fc_b'], ['logits'], { transB: attr.int(1) })
    .node('Softmax', ['logits'], ['probabilities'], { axis: attr.int(1) });
  macs += classes * channels;
  parameters += fcW.length + classes;

  const version = versionOf(classes, seed, width);
  const onnx = g.encode({ docString: `MobileNet-v1-${width}-class, random weights (seed ${seed}), for benchmarks` });
  const labels = Array.from({ length: classes }, (_, i) => `class-${String(i).padStart(String(classes - 1).length, '0')}`);
  writeFolder(dir, onnx, {
    schema: 'conveyor.model/v1',
    name: 'mobilenet-class',
    version,
    description: `MobileNet-v1-${width}-class benchmark model (${(macs / 1e6).toFixed(0)} M multiply-adds at ${SIDE}×${SIDE}), random seeded weights; its answers mean nothing`,
    input: { name: 'input', layout: 'NCHW', channels: 3, height: SIDE, width: SIDE },
    output: { name: 'probabilities', kind: 'probabilities' },
    preprocess: {
      color: 'rgb',
      resize: 'cover',
      normalize: { scale: 1 / 255, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] },
    },
    labels,
    training: { generator: 'bench/models/build-mobilenet.ts', seed, widthMultiplier: width, macs, parameters },
  });
  return { dir, version, macs, parameters, bytes: onnx.length };
}

/** The folder as built before, if its version is current; else builds it. */
export function ensureMobilenet(dir = DEFAULT_MOBILENET_DIR, options: MobilenetOptions = {}): MobilenetFolder {
  const manifestFile = path.join(dir, 'manifest.json');
  const wanted = versionOf(options.classes ?? 1000, options.seed ?? 20261126, options.width ?? 0.5);
  if (existsSync(manifestFile) && existsSync(path.join(dir, 'model.onnx'))) {
    const manifest = JSON.parse(readFileSync(manifestFile, 'utf8')) as {
      version?: string;
      training?: { macs?: number; parameters?: number };
    };
    if (manifest.version === wanted) {
      const bytes = readFileSync(path.join(dir, 'model.onnx')).length;
      return { dir, version: wanted, macs: manifest.training?.macs ?? NaN, parameters: manifest.training?.parameters ?? NaN, bytes };
    }
  }
  return buildMobilenet(dir, options);
}

function writeFolder(dir: string, onnx: Uint8Array, manifest: Omit<ModelManifestInput, 'sha256'>): void {
  mkdirSync(dir, { recursive: true });
  writeFileSync(path.join(dir, 'model.onnx'), onnx);
  const sha256 = createHash('sha256').update(onnx).digest('hex');
  writeFileSync(path.join(dir, 'manifest.json'), `${JSON.stringify({ ...manifest, sha256 }, null, 2)}\n`);
  // The worker refuses a folder without the profile of its training data. There is no training
  // data here: a flat placeholder profile (as the tests' generated models have) satisfies the check.
  const profile = placeholderProfile(manifest);
  writeFileSync(path.join(dir, REFERENCE_PROFILE_FILE), `${JSON.stringify(profile)}\n`);
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const { values } = parseArgs({
    options: {
      out: { type: 'string', default: DEFAULT_MOBILENET_DIR },
      classes: { type: 'string', default: '1000' },
      seed: { type: 'string', default: '20261126' },
      width: { type: 'string', default: '0.5' },
    },
  });
  const built = buildMobilenet(path.resolve(values.out), {
    classes: Number(values.classes),
    seed: Number(values.seed),
    width: Number(values.width),
  });
  console.log(
    `${path.relative(ROOT, built.dir) || built.dir}: ${built.version}, ${(built.macs / 1e6).toFixed(1)} M multiply-adds = ${(
      (2 * built.macs) /
      1e6
    ).toFixed(0)} MFLOPs per image, ${(built.parameters / 1e6).toFixed(2)} M parameters, ${(built.bytes / 1e6).toFixed(1)} MB`,
  );
  // Load it as the worker does (checksum, model-folder suite, warm-up run) and time a few runs.
  const { loadCheckedModel } = await import('@conveyor/shared/validation/model-folder-checks');
  const model = await loadCheckedModel(built.dir);
  const image = new Float32Array(3 * SIDE * SIDE).map((_, i) => Math.sin(i) * 2);
  const times: number[] = [];
  let top = '';
  for (let i = 0; i < 20; i++) {
    const t = performance.now();
    const [out] = await model.run([image]);
    times.push(performance.now() - t);
    const p = out!.probabilities;
    const best = p.indexOf(Math.max(...p));
    top = `${model.manifest.labels[best]} (${p[best]!.toFixed(4)}, sum ${p.reduce((s, v) => s + v, 0).toFixed(4)})`;
  }
  times.sort((a, b) => a - b);
  console.log(
    `onnxruntime-node, 1 thread: median ${times[10]!.toFixed(2)} ms per image; ${model.outputSize} outputs; top ${top}`,
  );
  await model.close();
}
