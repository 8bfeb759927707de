import { createPrivateKey } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { loadConfigOrExit, mlflowCredentials } from '@conveyor/shared/config';
import { createLogger } from '@conveyor/shared/logger';
import { MlflowAuthError, MlflowClient } from '@conveyor/shared/mlflow/client';
import { ValidationError } from '@conveyor/shared/validation/suite';
import { TrainerConfig } from './config.js';
import { readMnistSource, readSnapshot, toImages, writeSnapshot } from './pipeline/ingest.js';
import { FeatureCache, trainRun } from './pipeline/pipeline.js';
import { runAll } from './pipeline/run-all.js';
import { trackRun } from './pipeline/track.js';
import { readTrainConfig } from './pipeline/train-config.js';
import { readSuite, requireValid, validateDataset, writeValidationReport } from './pipeline/validate.js';
import { readPolicy } from './registry/policy.js';
import { promote } from './registry/promote.js';
import { registerRun } from './registry/register.js';
import { rollback } from './registry/rollback.js';

/**
 * The trainer's command line. `all` is the whole pipeline (`make train`); the other commands run
 * one step each, so the pipeline can be driven step by step:
 *
 *   ingest                       snapshot the dataset under data/datasets/<hash>
 *   validate [--snapshot dir]    run the data suite, write the report, fail on a broken dataset
 *   train --config f [--snapshot dir] [--out dir]
 *                                train, evaluate and (with MLFLOW_TRACKING_URI) track one configuration
 *   register --run-id id         register a tracked run as a new version (alias staging)
 *   all [--config f …] [--publish dir] [--card file] [--reports dir] [--no-register]
 *   promote [--version n]        apply the promotion gate; move `production` if it passes
 *   rollback                     point `production` back at the version it replaced
 */
const env = loadConfigOrExit(TrainerConfig);
const log = createLogger('trainer', env.LOG_LEVEL, { sync: true });
const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
const client = env.MLFLOW_TRACKING_URI
  ? new MlflowClient(env.MLFLOW_TRACKING_URI, { credentials: mlflowCredentials(env) })
  : undefined;
const signingKey = env.MODEL_SIGNING_KEY_FILE ? createPrivateKey(readFileSync(env.MODEL_SIGNING_KEY_FILE, 'utf8')) : undefined;

const { positionals, values } = parseArgs({
  allowPositionals: true,
  options: {
    config: { type: 'string', multiple: true },
    snapshot: { type: 'string' },
    out: { type: 'string' },
    publish: { type: 'string' },
    card: { type: 'string' },
    reports: { type: 'string' },
    'no-register': { type: 'boolean', default: false },
    'run-id': { type: 'string' },
    version: { type: 'string' },
    model: { type: 'string', default: 'digits' },
  },
});
const command = positionals[0] ?? 'all';

function needClient(): MlflowClient {
  if (!client) {
    log.error(`\`${command}\` needs MLFLOW_TRACKING_URI (make targets start a local MLflow server when it is unset)`);
    process.exit(2);
  }
  return client;
}

async function defaultConfigs(): Promise<string[]> {
  const list = JSON.parse(await readFile(path.join(root, 'configs', 'experiments.json'), 'utf8')) as string[];
  return list.map((f) => path.join(root, 'configs', f));
}

async function loadSource() {
  return values.snapshot ? readSnapshot(values.snapshot) : readMnistSource();
}

try {
  switch (command) {
    case 'ingest': {
      const source = readMnistSource();
      const dir = await writeSnapshot(source, path.join(env.DATA_DIR, 'datasets'));
      log.info({ dir, hash: source.hash, rows: source.rows.length }, 'snapshot written');
      break;
    }
    case 'validate': {
      const source = await loadSource();
      const report = validateDataset(source, await readSuite());
      const files = await writeValidationReport(report, values.snapshot ?? path.join(env.DATA_DIR, 'datasets', source.hash));
      log.info({ ...files, passed: report.success }, 'validation report written');
      requireValid(report);
      break;
    }
    case 'train': {
      const configFile = values.config?.[0];
      if (!configFile) throw new Error('train needs --config <file>');
      const config = await readTrainConfig(configFile);
      const source = await loadSource();
      const report = validateDataset(source, await readSuite());
      requireValid(report);
      const dataset = toImages(source);
      const run = await trainRun(
        config,
        dataset,
        report,
        path.resolve(values.out ?? path.join(env.DATA_DIR, 'runs', config.name, 'model')),
        log,
        new FeatureCache(),
      );
      if (client) {
        const tracked = await trackRun(
          client,
          await client.getOrCreateExperiment(env.MLFLOW_EXPERIMENT),
          run,
          dataset,
          report,
          log,
          signingKey,
        );
        console.log(tracked.runId);
      }
      break;
    }
    case 'register': {
      const c = needClient();
      const runId = values['run-id'];
      if (!runId) throw new Error('register needs --run-id <id>');
      const run = await c.getRun(runId);
      const metric = (k: string) => run.data.metrics.find((m) => m.key === k)?.value ?? NaN;
      const param = (k: string) => run.data.params.find((p) => p.key === k)?.value ?? '';
      const tag = (k: string) => run.data.tags.find((t) => t.key === k)?.value ?? '';
      await registerRun(
        c,
        {
          modelName: values.model,
          runId,
          artifactUri: run.info.artifact_uri,
          config: param('config'),
          build: tag('conveyor.model_build'),
          datasetHash: param('dataset_hash'),
          validationPassed: tag('conveyor.validation') === 'passed',
          metrics: {
            testAccuracy: metric('test_accuracy'),
            validationAccuracy: metric('final_val_accuracy'),
            testMacroF1: metric('test_macro_f1'),
            latency: {
              batch1MedianMs: metric('onnx_latency_b1_p50_ms'),
              batch1P95Ms: metric('onnx_latency_b1_p95_ms'),
              batch32PerImageMs: metric('onnx_latency_b32_per_image_ms'),
            },
          },
        },
        log,
      );
      break;
    }
    case 'all': {
      const result = await runAll({
        configFiles: values.config?.length ? values.config : await defaultConfigs(),
        dataRoot: env.DATA_DIR,
        ...(client ? { tracking: { client, experiment: env.MLFLOW_EXPERIMENT, ...(signingKey ? { signingKey } : {}) } } : {}),
        register: !values['no-register'],
        ...(values.publish ? { publishTo: path.resolve(values.publish) } : {}),
        ...(values.card ? { modelCardFile: path.resolve(values.card) } : {}),
        ...(values.reports ? { reportsDir: path.resolve(values.reports) } : {}),
        log,
      });
      console.log(
        JSON.stringify(
          {
            runs: result.runs.map((r) => ({
              config: r.run.config.name,
              runId: r.tracked?.runId,
              ...r.run.metrics,
              perClassF1: undefined,
            })),
            best: result.best.config.name,
            registered: result.registered ? { name: result.registered.name, version: result.registered.version } : null,
          },
          null,
          2,
        ),
      );
      break;
    }
    case 'promote': {
      const decision = await promote(
        needClient(),
        values.model,
        await readPolicy(),
        values.version ? { version: values.version } : {},
        log,
      );
      console.log(JSON.stringify(decision, null, 2));
      if (!decision.passed) process.exitCode = 3;
      break;
    }
    case 'rollback': {
      console.log(JSON.stringify(await rollback(needClient(), values.model, log)));
      break;
    }
    default:
      throw new Error(`unknown command ${command} (ingest, validate, train, register, all, promote, rollback)`);
  }
} catch (error) {
  if (error instanceof ValidationError) {
    log.error({ failed: error.report.results.filter((r) => !r.success) }, 'data validation failed; the pipeline stops here');
    console.error(error.message);
    process.exit(4);
  }
  if (error instanceof MlflowAuthError) {
    // The account, not the data: nothing to retry. Exit 77 (EX_NOPERM), as the services do.
    log.error({ err: error }, `${command} failed: ${error.message}`);
    console.error(error.message);
    process.exit(77);
  }
  log.error({ err: error }, `${command} failed`);
  console.error(error instanceof Error ? error.message : String(error));
  process.exit(1);
}
