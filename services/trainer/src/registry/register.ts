import type { Logger } from '@conveyor/shared/logger';
import type { MlflowClient, ModelVersion } from '@conveyor/shared/mlflow/client';

/**
 * Register: a run's model folder becomes a new version of the registered model, carrying the
 * figures the promotion gate needs as tags, and the `staging` alias (the stage is mirrored for
 * people who look at stages; MLflow deprecated stages in 2.9 in favour of aliases).
 */
export const ALIASES = { staging: 'staging', production: 'production' } as const;

export interface RegistrationInput {
  readonly modelName: string;
  readonly runId: string;
  readonly artifactUri: string;
  readonly config: string;
  readonly build: string;
  readonly datasetHash: string;
  readonly validationPassed: boolean;
  /** The figures the promotion gate reads (a run's RunMetrics has them, and more). */
  readonly metrics: RegisteredFigures;
  /** More tags for the version, e.g. the orchestrator's run id (they cannot replace the gate's figures). */
  readonly tags?: Readonly<Record<string, string>>;
  /**
   * Point `staging` at the new version (default). false: register only; the orchestrated flow
   * stages it after replay has judged it on recorded production inputs (stageVersion).
   */
  readonly stage?: boolean;
}

export interface RegisteredFigures {
  readonly testAccuracy: number;
  readonly validationAccuracy: number;
  readonly testMacroF1: number;
  readonly latency: { readonly batch1MedianMs: number; readonly batch1P95Ms: number };
}

export async function registerRun(client: MlflowClient, input: RegistrationInput, log: Logger): Promise<ModelVersion> {
  await client.ensureRegisteredModel(
    input.modelName,
    'Handwritten digit classifier served by Conveyor (ONNX, 28×28 gray input).',
  );
  const version = await client.createModelVersion(input.modelName, `${input.artifactUri}/model`, input.runId, {
    description: `${input.config} (${input.build}): test accuracy ${(input.metrics.testAccuracy * 100).toFixed(2)} %`,
    tags: {
      ...input.tags,
      config: input.config,
      build: input.build,
      dataset_hash: input.datasetHash,
      'validation.passed': String(input.validationPassed),
      test_accuracy: String(input.metrics.testAccuracy),
      val_accuracy: String(input.metrics.validationAccuracy),
      test_macro_f1: String(input.metrics.testMacroF1),
      onnx_latency_b1_p50_ms: String(input.metrics.latency.batch1MedianMs),
      onnx_latency_b1_p95_ms: String(input.metrics.latency.batch1P95Ms),
    },
  });
  if (input.stage === false) {
    log.info({ model: input.modelName, version: version.version, runId: input.runId }, 'registered; not staged yet');
    return version;
  }
  await stageVersion(client, input.modelName, version.version);
  log.info({ model: input.modelName, version: version.version, runId: input.runId }, 'registered; alias staging');
  return version;
}

/** `staging` (the alias, and the deprecated stage mirrored for people who look at stages) → this version. */
export async function stageVersion(client: MlflowClient, modelName: string, version: string): Promise<void> {
  await client.setAlias(modelName, ALIASES.staging, version);
  await client.transitionStage(modelName, version, 'Staging');
}
