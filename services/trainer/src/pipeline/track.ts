import type { KeyObject } from 'node:crypto';
import { signModelFolder } from '@conveyor/shared/model/signature';
import { execFileSync } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from '@conveyor/shared/logger';
import type { MetricPoint, MlflowClient } from '@conveyor/shared/mlflow/client';
import { reportToMarkdown, type ValidationReport } from '@conveyor/shared/validation/suite';
import type { Dataset } from './ingest.js';
import type { RunResult } from './train-run.js';
import { mlmodelYaml } from './reports.js';

/**
 * Track: one MLflow run per configuration — params (architecture, hyperparameters, seed, dataset
 * hash), metrics per epoch and final, and artifacts (the model folder with its MLmodel file, the
 * confusion matrix, the validation report, the training curve).
 */
export interface TrackedRun {
  readonly runId: string;
  readonly artifactUri: string;
  readonly experimentId: string;
}

export async function trackRun(
  client: MlflowClient,
  experimentId: string,
  run: RunResult,
  dataset: Dataset,
  validation: ValidationReport,
  log: Logger,
  /** Signs the model folder before it is uploaded (workers holding the public key refuse unsigned versions). */
  signingKey?: KeyObject,
  /** More run tags: where it ran (hostTags), which orchestrator run started it. */
  tags: Readonly<Record<string, string>> = {},
): Promise<TrackedRun> {
  const { config } = run;
  const info = await client.createRun(
    experimentId,
    config.name,
    {
      'mlflow.source.name': 'services/trainer',
      'mlflow.source.git.commit': gitCommit(),
      'conveyor.dataset_hash': dataset.hash,
      'conveyor.validation': validation.success ? 'passed' : 'failed',
      'conveyor.model_build': run.version,
      ...tags,
    },
    run.startedAt,
  );
  try {
    await client.logBatch(info.run_id, { params: runParams(run, dataset), metrics: runMetrics(run) });
    await uploadArtifacts(client, info.artifact_uri, info.run_id, run, validation, signingKey);
    await client.finishRun(info.run_id, 'FINISHED');
    log.info({ config: config.name, runId: info.run_id }, 'run tracked in MLflow');
    return { runId: info.run_id, artifactUri: info.artifact_uri, experimentId };
  } catch (error) {
    await client.finishRun(info.run_id, 'FAILED').catch(() => undefined);
    throw error;
  }
}

/** The run's parameters: the configuration, its hyperparameters, the split and the dataset. */
function runParams(run: RunResult, dataset: Dataset): Record<string, string | number | boolean> {
  const { config, metrics } = run;
  const arch = config.architecture;
  return {
    config: config.name,
    architecture: arch.kind,
    ...(arch.kind === 'mlp' ? { hidden: arch.hidden } : {}),
    ...(arch.kind === 'cnn' ? { filters: arch.filters.join('x'), dense: arch.dense } : {}),
    parameters: metrics.parameters,
    seed: config.seed,
    max_epochs: config.epochs,
    batch_size: config.batchSize,
    learning_rate: config.learningRate,
    patience: config.patience,
    augment_shift_px: config.augment?.shift ?? 0,
    augment_rotate_deg: config.augment?.rotate ?? 0,
    split_seed: config.split.seed,
    split_train: config.split.train,
    split_validation: config.split.validation,
    dataset_hash: dataset.hash,
    dataset_source: dataset.source,
    dataset_rows: dataset.samples.length,
    ...(config.limitTrain ? { limit_train: config.limitTrain } : {}),
  };
}

/** Per-epoch curves, then the final figures: accuracy, F1 per class, ONNX latency, export check. */
function runMetrics(run: RunResult): MetricPoint[] {
  const { metrics } = run;
  return [
    ...run.history.flatMap((e): MetricPoint[] => [
      { key: 'loss', value: e.loss, step: e.epoch },
      { key: 'accuracy', value: e.accuracy, step: e.epoch },
      { key: 'val_loss', value: e.validationLoss, step: e.epoch },
      { key: 'val_accuracy', value: e.validationAccuracy, step: e.epoch },
      { key: 'epoch_seconds', value: e.seconds, step: e.epoch },
    ]),
    { key: 'final_val_accuracy', value: metrics.validationAccuracy },
    { key: 'test_accuracy', value: metrics.testAccuracy },
    { key: 'test_macro_f1', value: metrics.testMacroF1 },
    ...Object.entries(metrics.perClassF1).map(([label, f1]) => ({ key: `test_f1_class_${label}`, value: f1 })),
    { key: 'onnx_latency_b1_p50_ms', value: metrics.latency.batch1MedianMs },
    { key: 'onnx_latency_b1_p95_ms', value: metrics.latency.batch1P95Ms },
    { key: 'onnx_latency_b32_per_image_ms', value: metrics.latency.batch32PerImageMs },
    { key: 'training_seconds', value: metrics.trainingSeconds },
    { key: 'best_epoch', value: metrics.bestEpoch },
    { key: 'export_max_abs_diff', value: metrics.exportMaxAbsDiff },
  ];
}

/** The model folder (with its MLmodel file, signed if a key is given) and the reports. */
async function uploadArtifacts(
  client: MlflowClient,
  artifactUri: string,
  runId: string,
  run: RunResult,
  validation: ValidationReport,
  signingKey: KeyObject | undefined,
): Promise<void> {
  await writeFile(path.join(run.dir, 'MLmodel'), mlmodelYaml({ runId, onnxFile: 'model.onnx' }));
  if (signingKey) await signModelFolder(run.dir, signingKey);
  await client.uploadDirectory(artifactUri, run.dir, 'model');
  await client.uploadArtifact(artifactUri, 'reports/confusion-matrix.png', run.confusionPng, 'image/png');
  await client.uploadArtifact(
    artifactUri,
    'reports/validation.json',
    Buffer.from(JSON.stringify(validation, null, 2)),
    'application/json',
  );
  await client.uploadArtifact(artifactUri, 'reports/validation.md', Buffer.from(reportToMarkdown(validation)), 'text/markdown');
  await client.uploadArtifact(
    artifactUri,
    'reports/history.json',
    Buffer.from(JSON.stringify(run.history, null, 2)),
    'application/json',
  );
}

function gitCommit(): string {
  try {
    return execFileSync('git', ['rev-parse', 'HEAD'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    return 'unknown';
  }
}
