import { existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { loadConfigOrExit, mlflowCredentials } from '@conveyor/shared/config';
import { ModelName } from '@conveyor/shared/contract/common.contract';
import { createLogger } from '@conveyor/shared/logger';
import { MlflowClient } from '@conveyor/shared/mlflow/client';
import {
  describeLocation,
  parseReplayStoreLocation,
  readRecordedExamples,
  replayS3Endpoint,
} from '@conveyor/shared/replay/replay-store';
import { openReplayStore } from '@conveyor/shared/replay/open-replay-store';
import { REPLAY_SET_FILE } from '@conveyor/shared/contract/replay.contract';
import { ROOT, spawnService } from '../harness/service-process.js';
import { TrainerConfig } from '../services/trainer/src/config.js';
import { readPolicy } from '../services/trainer/src/registry/policy.js';
import { recordThroughGateway } from '../services/trainer/src/replay/replay-client.js';
import { writeReplaySet } from '../services/trainer/src/replay/replay-set.js';
import { logReplayReport } from '../services/trainer/src/replay/replay-report.js';
import { downloadCandidate, runReplay } from '../services/trainer/src/replay/run-replay.js';

/**
 * `make replay MODEL=<name> CANDIDATE=<folder or registry version> [SET=<dir>] [OUT=<dir>]`: replays a
 * recorded set through the candidate on a running system (GATEWAY_URL, default http://localhost:8080;
 * the worker it starts joins REDIS_URL / REDIS_PREFIX, as `make run` sets them) and judges it with
 * services/trainer/configs/promotion.json. Exit 0: the gate passed; 1: it refused; 2: it could not run.
 * A registry version (MLFLOW_TRACKING_URI) is downloaded first, and the report and figures go onto it.
 * SET may also be the workers' live replay store (REPLAY_STORE: `s3://bucket/prefix`, or its folder):
 * the model's recorded examples, newest first, each input once, at most LIMIT, images checked.
 *
 * `--registered name`: the candidate's registered model when it is not the serving name (default: the
 * serving name, MODEL). `--policy file` judges with another promotion policy; `--output file` writes the verdict, the figures
 * and the report's folder as JSON (how the orchestrated flow's replay step reads them).
 *
 * `make replay-record MODEL=<name> IMAGES=<dir> [SET=<dir>]`: records production's answers to the
 * images of a folder, through the same gateway, as a set (until workers record a live sample).
 */
const { values } = parseArgs({
  options: {
    model: { type: 'string', default: 'digits' },
    candidate: { type: 'string' },
    set: { type: 'string' },
    out: { type: 'string' },
    record: { type: 'string' },
    policy: { type: 'string' },
    output: { type: 'string' },
    registered: { type: 'string' },
    limit: { type: 'string' },
    rate: { type: 'string', default: '20' },
  },
});
const env = loadConfigOrExit(TrainerConfig);
const log = createLogger('replay', env.LOG_LEVEL, { sync: true });
const model = ModelName.parse(values.model);
const registered = values.registered ?? model;
// Replay requests a second (RATE; 0: unpaced): a replay shares the gateway, Redis and the machine with
// production, and paced at 20/s with its worker at niceness 19 it cost production's p95 least
// (loadtests/replay-interference.ts, docs/replay.md).
const rate = Number(values.rate);
if (!(rate >= 0)) {
  console.error(`--rate ${values.rate}: a number of requests a second, 0 for unpaced`);
  process.exit(2);
}
const gateway = {
  ...(rate > 0 ? { ratePerSecond: rate } : {}),
  url: (process.env.GATEWAY_URL ?? 'http://localhost:8080').replace(/\/+$/, ''),
  ...(process.env.API_KEY ? { apiKey: process.env.API_KEY } : {}),
};
let setDir = path.resolve(values.set ?? path.join(env.DATA_DIR, 'replay', model));
const IMAGE = /\.(jpe?g|png|webp|gif|tiff?|avif)$/i;

if (values.record) {
  const folder = path.resolve(values.record);
  const names = (await readdir(folder)).filter((n) => IMAGE.test(n)).sort();
  const images = await Promise.all(names.map(async (name) => ({ name, bytes: await readFile(path.join(folder, name)) })));
  const recorded = await recordThroughGateway(gateway, model, images);
  await writeReplaySet(setDir, recorded);
  log.info({ set: setDir, images: images.length, recorded: recorded.length }, 'recorded set written');
  process.exit(0);
}

if (!values.candidate) {
  console.error('usage: replay --model <name> --candidate <model folder | registry version> [--set dir] [--out dir]');
  process.exit(2);
}
const workDir = mkdtempSync(path.join(os.tmpdir(), 'conveyor-replay-'));
if (values.set && isLiveStore(values.set)) {
  try {
    setDir = await materialiseLiveSet(values.set, path.join(workDir, 'live-set'));
  } catch (error) {
    // Exit 2: the replay could not run (1 would read as the gate refusing).
    log.error({ err: error, set: values.set }, 'could not read the live recorded set');
    rmSync(workDir, { recursive: true, force: true });
    process.exit(2);
  }
}
const isFolder = existsSync(values.candidate) && statSync(values.candidate).isDirectory();
const client = env.MLFLOW_TRACKING_URI
  ? new MlflowClient(env.MLFLOW_TRACKING_URI, { credentials: mlflowCredentials(env) })
  : undefined;
let candidateDir = path.resolve(values.candidate);
if (!isFolder) {
  if (!client) {
    console.error(`${values.candidate} is no folder; a registry version needs MLFLOW_TRACKING_URI`);
    process.exit(2);
  }
  candidateDir = path.join(workDir, 'candidate');
  await downloadCandidate(client, registered, values.candidate, candidateDir);
}
const date = new Date();
const reportDir = path.resolve(
  values.out ??
    path.join(
      env.DATA_DIR,
      'replay-reports',
      `${model}-${values.candidate.replace(/[^A-Za-z0-9._-]+/g, '_')}-${date.toISOString().slice(0, 10)}`,
    ),
);
const command = `make replay MODEL=${model} CANDIDATE=${values.candidate}${values.set ? ` SET=${values.set}` : ''}${values.limit ? ` LIMIT=${values.limit}` : ''}`;
try {
  const outcome = await runReplay({
    gateway,
    model,
    setDir,
    candidateDir,
    workDir,
    reportDir,
    policy: await readPolicy(values.policy),
    command,
    log,
    startWorker: async (extra) => {
      // The candidate's own worker serves the staged folder alone: the settings that would point it
      // at the registry or at production's folders are not passed on; its metrics port is any free one.
      delete process.env.MLFLOW_TRACKING_URI;
      delete process.env.MODEL_URI;
      delete process.env.MODEL_DIR;
      // LOG_LEVEL info at least: its 'worker ready' line is what says it serves.
      const worker = spawnService(
        'inference-worker',
        { ...extra, METRICS_PORT: '0', LOG_LEVEL: 'info' },
        // Niceness 19: where it shares a machine with production's workers, the kernel serves them
        // first (loadtests/replay-interference.ts measures the difference; docs/replay.md).
        { label: `${model}-replay`, nice: 19 },
      );
      try {
        await worker.waitFor((r) => r.msg === 'worker ready', 60_000);
      } catch (error) {
        await worker.stop('SIGKILL');
        throw error;
      }
      return { stop: () => worker.stop('SIGTERM').then(() => undefined) };
    },
  });
  if (!isFolder && client)
    await logReplayReport(client, registered, values.candidate, reportDir, outcome.comparison, outcome.decision, date);
  console.log(await readFile(outcome.report.markdown, 'utf8'));
  console.log(`report: ${path.relative(ROOT, reportDir) || reportDir}`);
  if (values.output) {
    const { comparison, decision } = outcome;
    await mkdir(path.dirname(path.resolve(values.output)), { recursive: true });
    const verdict = {
      model,
      candidate: values.candidate,
      passed: decision.passed,
      refused: decision.criteria.filter((c) => !c.passed).map((c) => c.detail),
      examples: comparison.examples,
      failed: comparison.failed,
      top1Agreement: comparison.top1Agreement,
      meanConfidenceShift: comparison.meanConfidenceShift,
      labelPsi: comparison.labelPsi,
      p95InferenceRatio: comparison.p95InferenceRatio,
      report: reportDir,
      markdown: outcome.report.markdown,
    };
    await writeFile(values.output, `${JSON.stringify(verdict, null, 2)}\n`);
  }
  process.exitCode = outcome.decision.passed ? 0 : 1;
} catch (error) {
  log.error({ err: error }, 'replay failed');
  process.exitCode = 2;
} finally {
  rmSync(workDir, { recursive: true, force: true });
}

/** A live store (S3, or a store folder: `<model>/<day>/…` and no examples.jsonl) rather than a set folder. */
function isLiveStore(set: string): boolean {
  if (set.startsWith('s3://')) return true;
  return !existsSync(path.join(set, REPLAY_SET_FILE)) && existsSync(path.join(set, model));
}

/** The store's examples of MODEL written as a set folder, so the replay reads it like any other. */
async function materialiseLiveSet(uri: string, dir: string): Promise<string> {
  const limit = values.limit === undefined ? undefined : Number(values.limit);
  if (limit !== undefined && !(Number.isInteger(limit) && limit > 0))
    throw new Error(`LIMIT ${values.limit} is not a positive whole number`);
  const location = parseReplayStoreLocation(uri);
  const store = await openReplayStore(location, { endpoint: replayS3Endpoint(process.env) });
  const entries = await readRecordedExamples(store, model, limit === undefined ? {} : { limit });
  if (entries.length === 0) throw new Error(`${describeLocation(location)} holds no recorded example of ${model}`);
  await writeReplaySet(dir, entries);
  log.info({ store: describeLocation(location), examples: entries.length, set: dir }, 'live recorded set read');
  return dir;
}
