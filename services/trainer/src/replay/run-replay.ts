import { copyFile, mkdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { ModelName } from '@conveyor/shared/contract/common.contract';
import type { RecordedExample } from '@conveyor/shared/contract/replay.contract';
import type { Logger } from '@conveyor/shared/logger';
import type { MlflowClient } from '@conveyor/shared/mlflow/client';
import { MANIFEST_FILE, type ModelManifest } from '@conveyor/shared/model/manifest';
import { readManifest } from '@conveyor/shared/model/runtime';
import { evaluateReplay, type GateDecision } from '../registry/gate.js';
import type { PromotionPolicy } from '../registry/policy.js';
import { compareAnswers, type CandidateAnswer, type ReplayComparison } from './compare.js';
import { replayThroughGateway, type GatewayTarget } from './replay-client.js';
import { ReplaySetError, readReplaySet } from './replay-set.js';
import { writeReplayReport, type REPORT_FILES, type ReplayReportMeta } from './replay-report.js';

/**
 * One replay, end to end: stage the candidate as `<model>-replay`, start a worker that serves it
 * alone (its own queue, so production's queue and workers never see a replay job), send every
 * recorded input through the gateway at low priority, compare with production's recorded answers,
 * judge with the promotion policy, write the report. How the worker is started is the caller's
 * (the CLI spawns a process; a test uses its own harness), so the same code runs in both.
 */
export const replayName = (model: ModelName): ModelName => `${model}-replay`;

export interface StartedWorker {
  stop(): Promise<void>;
}

export interface ReplayRequest {
  readonly gateway: GatewayTarget;
  readonly model: ModelName;
  readonly setDir: string;
  /** The candidate's model folder (model.onnx + manifest.json). */
  readonly candidateDir: string;
  /** Scratch folder: the candidate is staged here as `<workDir>/<model>-replay`. */
  readonly workDir: string;
  readonly reportDir: string;
  readonly policy: PromotionPolicy;
  readonly command: string;
  /** Starts a worker with this environment added (MODELS, MODELS_DIR, DEFAULT_MODEL, concurrency, REPLAY_SAMPLE_RATE=0). */
  readonly startWorker: (env: Record<string, string>) => Promise<StartedWorker>;
  readonly log: Logger;
  /** How long the replay model may take to become ready at the gateway (ms). */
  readonly readyTimeoutMs?: number;
}

export interface ReplayOutcome {
  examples: RecordedExample[];
  answers: CandidateAnswer[];
  comparison: ReplayComparison;
  decision: GateDecision;
  candidate: ModelManifest;
  report: Record<keyof typeof REPORT_FILES, string>;
}

/**
 * Copies the candidate folder under the replay serving name. The manifest's `name` becomes the
 * replay name, so its prediction events, metrics and answers are never counted as production's;
 * the ONNX file is unchanged, so its sha256 (checked at load) and version stay the candidate's.
 */
export async function stageCandidate(candidateDir: string, name: ModelName, workDir: string): Promise<ModelManifest> {
  const manifest = await readManifest(candidateDir);
  const dir = path.join(workDir, name);
  await rm(dir, { recursive: true, force: true });
  await mkdir(dir, { recursive: true });
  await copyFile(path.join(candidateDir, manifest.file), path.join(dir, manifest.file));
  await writeFile(path.join(dir, MANIFEST_FILE), JSON.stringify({ ...manifest, name }, null, 2));
  return manifest;
}

/** A registered version's model folder, downloaded into `dir` to be replayed like any folder. */
export async function downloadCandidate(
  client: MlflowClient,
  name: string,
  version: string,
  dir: string,
): Promise<ModelManifest> {
  await client.downloadDirectory(await client.getDownloadUri(name, version), dir);
  return readManifest(dir);
}

async function waitReady(gateway: GatewayTarget, name: ModelName, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (let delay = 50; ; delay = Math.min(delay * 2, 1000)) {
    const reply = await fetch(`${gateway.url}/v2/models/${name}/ready`).catch(() => undefined);
    await reply?.body?.cancel();
    if (reply?.status === 200) return;
    if (Date.now() > deadline)
      throw new Error(`the gateway at ${gateway.url} did not list ${name} as ready within ${timeoutMs} ms`);
    await sleep(delay);
  }
}

export async function runReplay(r: ReplayRequest): Promise<ReplayOutcome> {
  // Without thresholds every candidate would "pass": refuse before starting anything.
  if (!r.policy.replay) throw new Error('the promotion policy sets no replay thresholds (a `replay` block in promotion.json)');
  const examples = await readReplaySet(r.setDir);
  const foreign = examples.find((e) => e.model !== r.model);
  if (foreign) throw new ReplaySetError(`${r.setDir} holds inputs of ${foreign.model}, not ${r.model}`);
  const name = replayName(r.model);
  const candidate = await stageCandidate(r.candidateDir, name, r.workDir);
  const log = r.log.child({ model: r.model, replay: name, candidateVersion: candidate.version });
  log.info({ examples: examples.length }, 'replay starting');
  // One job at a time: a replay is background work and should take one core at most. Never
  // recording: the replay model's answers are the candidate's, not production's (docs/replay.md).
  const worker = await r.startWorker({
    MODELS: `${name}:1`,
    DEFAULT_MODEL: name,
    MODELS_DIR: r.workDir,
    REPLAY_SAMPLE_RATE: '0',
  });
  let answers: CandidateAnswer[];
  try {
    await waitReady(r.gateway, name, r.readyTimeoutMs ?? 60_000);
    answers = await replayThroughGateway(r.gateway, name, r.setDir, examples);
  } finally {
    await worker.stop();
  }
  const comparison = compareAnswers(examples, answers);
  const production = comparison.production.map((p) => p.version).join(', ') || null;
  const decision = evaluateReplay(r.policy, candidate.version, production, comparison);
  const meta: ReplayReportMeta = {
    model: r.model,
    candidate: candidate.version,
    set: r.setDir,
    date: new Date(),
    command: r.command,
  };
  const report = await writeReplayReport(r.reportDir, examples, answers, comparison, decision, meta);
  log.info(
    {
      passed: decision.passed,
      top1Agreement: comparison.top1Agreement,
      meanConfidenceShift: comparison.meanConfidenceShift,
      labelPsi: comparison.labelPsi,
      p95InferenceRatio: comparison.p95InferenceRatio,
      report: report.markdown,
    },
    'replay finished',
  );
  return { examples, answers, comparison, decision, candidate, report };
}
