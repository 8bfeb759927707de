import { cp, mkdir, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from '@conveyor/shared/logger';
import type { ModelManifestInput, PreprocessSpec } from '@conveyor/shared/model/manifest';
import { REFERENCE_PROFILE_FILE } from '@conveyor/shared/model/reference-profile';
import { loadModel } from '@conveyor/shared/model/runtime';
import type { ValidationReport } from '@conveyor/shared/validation/suite';
import { EMBEDDING_NAME, INPUT_NAME, OUTPUT_NAME } from '../nn/architectures.js';
import { evaluate, measureLatency, type Evaluation, type Latency } from './evaluate.js';
import { toFeatures, type FeatureSet } from './features.js';
import { splitDataset, type Dataset, type Split } from './ingest.js';
import { contentVersion, writeModelFolder } from './write-model-folder.js';
import { buildReferenceProfile } from './profile.js';
import { confusionMatrixPng } from './reports.js';
import { predict, train, type EpochMetrics } from './train.js';
import type { TrainConfig } from './train-config.js';

/**
 * The train → export → evaluate step for one configuration: the result is a complete model folder
 * (model.onnx, manifest.json, reference-profile.json, evaluation.json) plus the figures and charts
 * the tracking step logs. Each step of the pipeline is a plain function with typed inputs and
 * outputs; `run-all.ts` wires them together.
 */
export const DIGIT_PREPROCESS = {
  color: 'gray',
  resize: 'digit',
  box: 20,
  polarity: 'light-on-dark',
  background: [255, 255, 255],
  normalize: { scale: 1 / 255, mean: [0], std: [1] },
} as const satisfies PreprocessSpec;

export interface RunMetrics {
  validationAccuracy: number;
  testAccuracy: number;
  testMacroF1: number;
  perClassF1: Record<string, number>;
  latency: Latency;
  trainingSeconds: number;
  bestEpoch: number;
  epochs: number;
  parameters: number;
  exportMaxAbsDiff: number;
}

export interface RunResult {
  readonly config: TrainConfig;
  /** When training began (epoch ms), so the tracked run shows its real duration. */
  readonly startedAt: number;
  /** The model folder this run produced. */
  readonly dir: string;
  /** Content-derived version of the ONNX file (`sha-…`). */
  readonly version: string;
  readonly metrics: RunMetrics;
  readonly history: readonly EpochMetrics[];
  readonly test: Evaluation;
  readonly confusionPng: Buffer;
  readonly split: Split;
}

/** Features are a pure function of the data, the split and the preprocessing: computed once per pipeline. */
export class FeatureCache {
  private readonly cache = new Map<string, Promise<Record<'train' | 'validation' | 'test', FeatureSet>>>();

  get(dataset: Dataset, split: Split): Promise<Record<'train' | 'validation' | 'test', FeatureSet>> {
    const key = `${dataset.hash}:${split.seed}:${split.train.length}:${split.validation.length}`;
    let entry = this.cache.get(key);
    if (!entry) {
      const spec = { input: digitInput(dataset.side), preprocess: DIGIT_PREPROCESS } as const;
      entry = (async () => ({
        train: await toFeatures(dataset, split.train, spec),
        validation: await toFeatures(dataset, split.validation, spec),
        test: await toFeatures(dataset, split.test, spec),
      }))();
      this.cache.set(key, entry);
    }
    return entry;
  }
}

function digitInput(side: number) {
  return { name: INPUT_NAME, layout: 'NCHW', channels: 1, height: side, width: side } as const;
}

export async function trainRun(
  config: TrainConfig,
  dataset: Dataset,
  validation: ValidationReport,
  outDir: string,
  log: Logger,
  features = new FeatureCache(),
): Promise<RunResult> {
  const startedAt = Date.now();
  const split = splitDataset(dataset, config.split, config.split.seed);
  const sets = await features.get(dataset, split);
  const shape = { side: dataset.side, classes: dataset.labels.length };
  const trained = await train(config, sets, shape, log);
  const onnx = trained.network.exportOnnx({ config: config.name, dataset: dataset.hash });
  const version = contentVersion(onnx);
  const parameters = Object.values(trained.network.params).reduce((s, v) => s + v.size, 0);

  const manifest = modelManifest(config, dataset, validation, split, trained, version);
  await writeModelFolder(outDir, onnx, manifest);

  const model = await loadModel(outDir);
  try {
    const validationEval = await evaluate(model, sets.validation);
    const test = await evaluate(model, sets.test);
    const reference = predict(trained.network, sets.validation, dataset.side);
    const exportMaxAbsDiff = maxAbsDiff(reference, validationEval.probabilities);
    const latency = await measureLatency(model, sets.test);
    const profile = await buildReferenceProfile(model, dataset, split.validation);

    const metrics: RunMetrics = {
      validationAccuracy: round(validationEval.accuracy),
      testAccuracy: round(test.accuracy),
      testMacroF1: round(test.macroF1),
      perClassF1: Object.fromEntries(test.perClass.map((c) => [c.label, round(c.f1)])),
      latency,
      trainingSeconds: trained.seconds,
      bestEpoch: trained.bestEpoch,
      epochs: trained.history.length,
      parameters,
      exportMaxAbsDiff,
    };
    const manifestMetrics = {
      testAccuracy: metrics.testAccuracy,
      validationAccuracy: metrics.validationAccuracy,
      testMacroF1: metrics.testMacroF1,
    };
    const evaluation = {
      model: { name: config.model, version },
      config,
      dataset: { source: dataset.source, hash: dataset.hash },
      metrics: manifestMetrics,
      perClass: test.perClass,
      confusion: test.confusion,
      latency,
      exportMaxAbsDiff,
      parameters,
      history: trained.history,
      trainingSeconds: trained.seconds,
    };
    // Written again, complete: the manifest with its metrics, the evaluation and the drift reference beside it.
    await writeModelFolder(outDir, onnx, { ...manifest, metrics: manifestMetrics }, besideModel(evaluation, profile));
    const confusionPng = await confusionMatrixPng(
      test.confusion,
      dataset.labels,
      `${config.name}: test accuracy ${(test.accuracy * 100).toFixed(2)} %`,
    );
    log.info(
      { config: config.name, version, ...manifestMetrics, latencyMs: latency.batch1MedianMs, parameters },
      'run evaluated',
    );
    return { config, startedAt, dir: outDir, version, metrics, history: trained.history, test, confusionPng, split };
  } finally {
    await model.close();
    Object.values(trained.network.params).forEach((v) => v.dispose());
  }
}

/** The model folder's manifest (its metrics are added once the exported model is evaluated). */
function modelManifest(
  config: TrainConfig,
  dataset: Dataset,
  validation: ValidationReport,
  split: ReturnType<typeof splitDataset>,
  trained: Awaited<ReturnType<typeof train>>,
  version: string,
): Omit<ModelManifestInput, 'sha256'> {
  return {
    schema: 'conveyor.model/v1',
    name: config.model,
    version,
    description: `${config.name}: ${config.description}`.trim(),
    input: digitInput(dataset.side),
    output: { name: OUTPUT_NAME, kind: 'probabilities', ...(trained.network.hasEmbedding ? { embedding: EMBEDDING_NAME } : {}) },
    preprocess: DIGIT_PREPROCESS,
    labels: [...dataset.labels],
    training: {
      config: config.name,
      architecture: config.architecture,
      seed: config.seed,
      datasetSource: dataset.source,
      datasetHash: dataset.hash,
      validation: { suite: validation.suite, passed: validation.success },
      split: {
        ...config.split,
        sizes: { train: split.train.length, validation: split.validation.length, test: split.test.length },
      },
      bestEpoch: trained.bestEpoch,
      epochs: trained.history.length,
    },
  };
}

/** Best run: highest validation accuracy (the test split stays an unbiased final estimate), then lower latency. */
export function selectBest(results: readonly RunResult[]): RunResult {
  if (results.length === 0) throw new Error('no runs to select from');
  return [...results].sort(
    (a, b) =>
      b.metrics.validationAccuracy - a.metrics.validationAccuracy ||
      a.metrics.latency.batch1MedianMs - b.metrics.latency.batch1MedianMs,
  )[0]!;
}

/** Copies a run's model folder to its published location (e.g. models/digits), atomically. */
export async function publishModelFolder(run: RunResult, target: string): Promise<void> {
  const staging = `${target}.publish-${process.pid}`;
  await rm(staging, { recursive: true, force: true });
  await mkdir(path.dirname(target), { recursive: true });
  await cp(run.dir, staging, { recursive: true });
  await rm(target, { recursive: true, force: true });
  await rename(staging, target);
}

export async function writeJson(file: string, value: unknown): Promise<void> {
  await mkdir(path.dirname(file), { recursive: true });
  await writeFile(file, `${JSON.stringify(value, null, 2)}\n`);
}

/** The largest difference between tfjs's probabilities and the exported ONNX model's; past 1e-4 the export is refused. */
function maxAbsDiff(reference: ArrayLike<number>, exported: ArrayLike<number>): number {
  let diff = 0;
  for (let i = 0; i < reference.length; i++) diff = Math.max(diff, Math.abs(reference[i]! - exported[i]!));
  if (diff > 1e-4) throw new Error(`the ONNX export disagrees with tfjs by ${diff}`);
  return diff;
}

function besideModel(evaluation: unknown, profile: unknown): Record<string, string> {
  return {
    'evaluation.json': `${JSON.stringify(evaluation, null, 2)}\n`,
    [REFERENCE_PROFILE_FILE]: `${JSON.stringify(profile, null, 2)}\n`,
  };
}

function round(v: number): number {
  return Math.round(v * 1e6) / 1e6;
}
