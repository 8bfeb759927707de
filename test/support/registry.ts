import { readFileSync } from 'node:fs';
import path from 'node:path';
import type { MlflowClient, ModelVersion } from '@conveyor/shared/mlflow/client';
import pino from 'pino';
import { registerRun } from '../../services/trainer/src/registry/register.js';

/**
 * Registers an existing model folder (by default the committed digit model) as a new version,
 * the way the pipeline does: a run carrying the folder as its `model` artifact, then a version
 * with the figures the promotion gate reads.
 */
export async function registerFolder(
  client: MlflowClient,
  modelName: string,
  dir = 'models/digits',
  experiment = 'registry-tests',
): Promise<ModelVersion> {
  const manifest = JSON.parse(readFileSync(path.join(dir, 'manifest.json'), 'utf8')) as {
    version: string;
    metrics: { testAccuracy: number; validationAccuracy: number; testMacroF1: number };
    training: { datasetHash?: string };
  };
  const evaluation = JSON.parse(readFileSync(path.join(dir, 'evaluation.json'), 'utf8')) as {
    latency: { batch1MedianMs: number; batch1P95Ms: number; batch32PerImageMs: number };
  };
  const run = await client.createRun(await client.getOrCreateExperiment(experiment), `register-${manifest.version}`);
  await client.uploadDirectory(run.artifact_uri, dir, 'model');
  await client.finishRun(run.run_id);
  return registerRun(
    client,
    {
      modelName,
      runId: run.run_id,
      artifactUri: run.artifact_uri,
      config: 'committed',
      build: manifest.version,
      datasetHash: manifest.training.datasetHash ?? 'unknown',
      validationPassed: true,
      metrics: { ...manifest.metrics, latency: evaluation.latency },
    },
    pino({ level: 'silent' }),
  );
}
