import type { KeyObject } from 'node:crypto';
import { copyFile, mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from '@conveyor/shared/logger';
import type { MlflowClient, ModelVersion } from '@conveyor/shared/mlflow/client';
import { registerRun } from '../registry/register.js';
import { readMnistSource, toImages, writeSnapshot, type SourceDataset } from './ingest.js';
import { modelCard, type CardRun } from './model-card.js';
import { FeatureCache, publishModelFolder, selectBest, trainRun, type RunResult } from './train-run.js';
import { trackRun, type TrackedRun } from './track.js';
import { readTrainConfig } from './train-config.js';
import { readSuite, requireValid, validateDataset, writeValidationReport } from './validate.js';

/**
 * `make train`: ingest → validate → (train → evaluate → track) per configuration → select →
 * register → publish the best model folder, the validation report and the model card.
 */
export interface RunAllOptions {
  readonly configFiles: readonly string[];
  /** Where snapshots and per-run folders go (data/, git-ignored). */
  readonly dataRoot: string;
  readonly source?: SourceDataset;
  readonly suiteFile?: string;
  readonly tracking?: {
    client: MlflowClient;
    experiment: string;
    signingKey?: KeyObject;
    /** Tags for every tracked run (where it ran: hostTags). */
    tags?: Readonly<Record<string, string>>;
  };
  /** Register the best run under this model name (needs tracking). */
  readonly register?: boolean;
  /** Copy the best model folder here (e.g. models/digits). */
  readonly publishTo?: string;
  /** Copy the validation report here (e.g. docs/validation). */
  readonly reportsDir?: string;
  readonly modelCardFile?: string;
  readonly log: Logger;
}

export interface RunAllResult {
  readonly runs: readonly { run: RunResult; tracked?: TrackedRun }[];
  readonly best: RunResult;
  readonly registered?: ModelVersion;
  readonly snapshotDir: string;
}

export async function runAll(options: RunAllOptions): Promise<RunAllResult> {
  const { log } = options;
  const { source, snapshotDir, report } = await ingestAndValidate(options);
  const dataset = toImages(source);
  const configs = await Promise.all(options.configFiles.map((f) => readTrainConfig(f)));
  const experimentId = options.tracking
    ? await options.tracking.client.getOrCreateExperiment(options.tracking.experiment)
    : undefined;
  const features = new FeatureCache();
  const runs: { run: RunResult; tracked?: TrackedRun }[] = [];
  for (const config of configs) {
    log.info({ config: config.name }, 'training');
    const run = await trainRun(config, dataset, report, path.join(options.dataRoot, 'runs', config.name, 'model'), log, features);
    const tracked =
      options.tracking && experimentId
        ? await trackRun(
            options.tracking.client,
            experimentId,
            run,
            dataset,
            report,
            log,
            options.tracking.signingKey,
            options.tracking.tags,
          )
        : undefined;
    runs.push({ run, ...(tracked ? { tracked } : {}) });
  }

  const best = selectBest(runs.map((r) => r.run));
  log.info(
    { config: best.config.name, validationAccuracy: best.metrics.validationAccuracy, testAccuracy: best.metrics.testAccuracy },
    'best run',
  );
  let registered: ModelVersion | undefined;
  const bestTracked = runs.find((r) => r.run === best)?.tracked;
  if (options.register && options.tracking && bestTracked) {
    registered = await registerRun(
      options.tracking.client,
      {
        modelName: best.config.model,
        runId: bestTracked.runId,
        artifactUri: bestTracked.artifactUri,
        config: best.config.name,
        build: best.version,
        datasetHash: dataset.hash,
        validationPassed: report.success,
        metrics: best.metrics,
      },
      log,
    );
  }
  if (options.publishTo) {
    await publishModelFolder(best, options.publishTo);
    log.info({ to: options.publishTo, version: best.version }, 'best model folder published');
  }
  if (options.modelCardFile) await writeModelCard(options, options.modelCardFile, runs, best, dataset, registered);
  return { runs, best, ...(registered ? { registered } : {}), snapshotDir };
}

/** The dataset snapshot, checked by the validation suite (its report written beside it); throws if it fails. */
async function ingestAndValidate(options: RunAllOptions) {
  const { log } = options;
  const source = options.source ?? readMnistSource();
  const snapshotDir = await writeSnapshot(source, path.join(options.dataRoot, 'datasets'));
  log.info({ source: source.source, rows: source.rows.length, hash: source.hash, snapshotDir }, 'ingested');
  const report = validateDataset(source, await readSuite(options.suiteFile));
  await writeValidationReport(report, snapshotDir);
  if (options.reportsDir) await writeValidationReport(report, options.reportsDir);
  requireValid(report);
  log.info({ suite: report.suite, expectations: report.evaluated }, 'data validated');
  return { source, snapshotDir, report };
}

/** The model card over every run (and the best one's evaluation beside the reports). */
async function writeModelCard(
  options: RunAllOptions,
  cardFile: string,
  runs: RunAllResult['runs'],
  best: RunResult,
  dataset: ReturnType<typeof toImages>,
  registered: ModelVersion | undefined,
): Promise<void> {
  const cardRuns: CardRun[] = runs.map((r) => ({ run: r.run, ...(r.tracked ? { runId: r.tracked.runId } : {}) }));
  await mkdir(path.dirname(cardFile), { recursive: true });
  await writeFile(
    cardFile,
    modelCard({
      runs: cardRuns,
      best,
      datasetSource: dataset.source,
      datasetHash: dataset.hash,
      ...(registered ? { registered: { name: registered.name, version: registered.version } } : {}),
      ...(options.tracking ? { trackingUri: options.tracking.client.trackingUri } : {}),
    }),
  );
  if (options.reportsDir)
    await copyFile(path.join(best.dir, 'evaluation.json'), path.join(options.reportsDir, `${best.config.name}.evaluation.json`));
}
