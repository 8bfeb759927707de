import path from 'node:path';
import type { Logger } from '@conveyor/shared/logger';
import type { ModelManifestInput, PreprocessSpec } from '@conveyor/shared/model/manifest';
import { loadModel } from '@conveyor/shared/model/runtime';
import { EMBEDDING_NAME, INPUT_NAME, OUTPUT_NAME } from '../nn/architectures.js';
import { evaluate, measureLatency, type Evaluation, type Latency } from './evaluate.js';
import { toFeatures, type FeatureSet } from './features.js';
import { loadMnist, splitDataset, type Dataset, type Split } from './ingest.js';
import { contentVersion, writeModelFolder } from './model-folder.js';
import { predict, train, type Trained } from './train.js';
import type { TrainConfig } from './train-config.js';

/**
 * ingest → features → train → export → evaluate → write the model folder. Each step is a plain
 * function with typed inputs and outputs; this module only wires them together.
 */
export const DIGIT_PREPROCESS = {
  color: 'gray',
  resize: 'digit',
  box: 20,
  polarity: 'light-on-dark',
  background: [255, 255, 255],
  normalize: { scale: 1 / 255, mean: [0], std: [1] },
} as const satisfies PreprocessSpec;

export interface PipelineResult {
  readonly dataset: Dataset;
  readonly split: Split;
  readonly trained: Trained;
  readonly test: Evaluation;
  readonly validation: Evaluation;
  readonly latency: Latency;
  /** Largest difference between tfjs and the exported ONNX graph on the validation set. */
  readonly exportMaxAbsDiff: number;
  readonly dir: string;
  readonly version: string;
}

export async function runPipeline(config: TrainConfig, outDir: string, log: Logger): Promise<PipelineResult> {
  const dataset = loadMnist();
  const split = splitDataset(dataset, config.split, config.split.seed);
  log.info(
    {
      source: dataset.source,
      samples: dataset.samples.length,
      hash: dataset.hash,
      train: split.train.length,
      validation: split.validation.length,
      test: split.test.length,
    },
    'ingested',
  );

  const spec = {
    input: { name: INPUT_NAME, layout: 'NCHW', channels: 1, height: dataset.side, width: dataset.side },
    preprocess: DIGIT_PREPROCESS,
  } as const;
  const features: Record<'train' | 'validation' | 'test', FeatureSet> = {
    train: await toFeatures(dataset, split.train, spec),
    validation: await toFeatures(dataset, split.validation, spec),
    test: await toFeatures(dataset, split.test, spec),
  };
  log.info('features prepared with the serving preprocessing');

  const shape = { side: dataset.side, classes: dataset.labels.length };
  const trained = await train(config, features, shape, log);
  const onnx = trained.network.exportOnnx({ config: config.name, dataset: dataset.hash });
  const version = contentVersion(onnx);

  const manifest: Omit<ModelManifestInput, 'sha256'> = {
    schema: 'conveyor.model/v1',
    name: config.model,
    version,
    description: `${config.name}: ${config.description}`.trim(),
    input: spec.input,
    output: { name: OUTPUT_NAME, kind: 'probabilities', ...(trained.network.hasEmbedding ? { embedding: EMBEDDING_NAME } : {}) },
    preprocess: DIGIT_PREPROCESS,
    labels: [...dataset.labels],
    training: {
      config: config.name,
      architecture: config.architecture,
      seed: config.seed,
      datasetSource: dataset.source,
      datasetHash: dataset.hash,
      split: {
        ...config.split,
        sizes: { train: split.train.length, validation: split.validation.length, test: split.test.length },
      },
      bestEpoch: trained.bestEpoch,
      epochs: trained.history.length,
    },
  };
  await writeModelFolder(outDir, onnx, manifest);

  const model = await loadModel(outDir);
  try {
    const validation = await evaluate(model, features.validation);
    const test = await evaluate(model, features.test);
    const reference = predict(trained.network, features.validation, dataset.side);
    let exportMaxAbsDiff = 0;
    reference.forEach((p, i) => (exportMaxAbsDiff = Math.max(exportMaxAbsDiff, Math.abs(p - validation.probabilities[i]!))));
    if (exportMaxAbsDiff > 1e-4) throw new Error(`the ONNX export disagrees with tfjs by ${exportMaxAbsDiff}`);
    const latency = await measureLatency(model, features.test);

    const metrics = {
      testAccuracy: round(test.accuracy),
      validationAccuracy: round(validation.accuracy),
      testMacroF1: round(test.macroF1),
    };
    const report = {
      model: { name: config.model, version },
      config,
      dataset: { source: dataset.source, hash: dataset.hash },
      metrics,
      perClass: test.perClass,
      confusion: test.confusion,
      latency,
      exportMaxAbsDiff,
      history: trained.history,
      trainingSeconds: trained.seconds,
    };
    await writeModelFolder(outDir, onnx, { ...manifest, metrics }, { 'evaluation.json': `${JSON.stringify(report, null, 2)}\n` });
    log.info({ dir: path.relative(process.cwd(), outDir), version, ...metrics, latency, exportMaxAbsDiff }, 'model written');
    return { dataset, split, trained, test, validation, latency, exportMaxAbsDiff, dir: outDir, version };
  } finally {
    await model.close();
  }
}

function round(v: number): number {
  return Math.round(v * 1e6) / 1e6;
}
