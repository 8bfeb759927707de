import { setTimeout as sleep } from 'node:timers/promises';
import type { ModelName } from '@conveyor/shared/contract/common.contract';
import { JobResult, type CompletedResult } from '@conveyor/shared/contract/jobs.contract';
import type { RecordedExample } from '@conveyor/shared/contract/replay.contract';
import type { CandidateAnswer } from './compare.js';
import { readExampleImage, sha256 } from './replay-set.js';

/**
 * Sends images through a gateway, the path every real request takes (admission, the job store, the
 * model's own queue, a real worker), at `Prefer: priority=low`: replay and recording are background
 * work and go behind every caller of the same tenant's band. The candidate also has a queue and
 * workers of its own (`<model>-replay`), so production's queue never holds a replay job at all.
 */
export interface GatewayTarget {
  readonly url: string;
  /** Requests in flight at once; one keeps a single replay worker busy without queueing behind it. */
  readonly concurrency?: number;
  /** Sent as `Authorization: Bearer …` when the gateway requires API keys. */
  readonly apiKey?: string;
  /**
   * At most this many requests started per second (unset: as fast as answers come). A replay shares
   * the gateway, Redis and the machine with production: pacing it keeps its share small
   * (loadtests/replay-interference.ts measures what it costs production).
   */
  readonly ratePerSecond?: number;
}

type Outcome = { ok: true; result: CompletedResult } | { ok: false; reason: string };

const TERMINAL = new Set(['completed', 'failed', 'cancelled', 'expired']);
const MAX_BUSY_RETRIES = 20;

async function predictOnce(target: GatewayTarget, model: ModelName, bytes: Uint8Array, filename: string): Promise<Outcome> {
  const auth: Record<string, string> = target.apiKey ? { authorization: `Bearer ${target.apiKey}` } : {};
  for (let attempt = 0; ; attempt++) {
    const form = new FormData();
    form.append('file', new Blob([bytes], { type: 'application/octet-stream' }), filename);
    const reply = await fetch(`${target.url}/v1/models/${model}/predict`, {
      method: 'POST',
      body: form,
      headers: { prefer: 'priority=low', ...auth },
    });
    // Busy (admission refused, no worker yet): wait as told and ask again; never counted as an answer.
    if ((reply.status === 429 || reply.status === 503) && attempt < MAX_BUSY_RETRIES) {
      await reply.body?.cancel();
      const seconds = Number(reply.headers.get('retry-after'));
      await sleep(Number.isFinite(seconds) && seconds > 0 ? Math.min(seconds, 10) * 1000 : 250 * (attempt + 1));
      continue;
    }
    let body = (await reply.json().catch(() => ({}))) as Record<string, unknown>;
    if (reply.status === 202) body = await pollJob(target, String(body.id), auth);
    else if (reply.status !== 200) {
      const problem = typeof body.type === 'string' ? body.type : typeof body.title === 'string' ? body.title : '';
      return { ok: false, reason: `${reply.status} ${problem}`.trim() };
    }
    const result = JobResult.safeParse(body);
    if (!result.success) return { ok: false, reason: `unreadable result: ${result.error.message}` };
    if (result.data.status !== 'completed') return { ok: false, reason: `${result.data.status}: ${result.data.error.title}` };
    return { ok: true, result: result.data };
  }
}

/** Polls an accepted job until it is finished (a synchronous wait the gateway cut short answers 202). */
async function pollJob(target: GatewayTarget, id: string, auth: Record<string, string>): Promise<Record<string, unknown>> {
  for (let delay = 20; ; delay = Math.min(delay * 2, 500)) {
    const reply = await fetch(`${target.url}/v1/jobs/${id}`, { headers: auth });
    const body = (await reply.json()) as Record<string, unknown>;
    if (reply.status !== 200 || TERMINAL.has(String(body.status))) return body;
    await sleep(delay);
  }
}

/**
 * Runs `task` over `items` with at most `limit` in flight, results in input order; with a rate, item
 * i starts no earlier than i / rate seconds after the first.
 */
async function inPool<T, R>(
  items: readonly T[],
  limit: number,
  task: (item: T) => Promise<R>,
  ratePerSecond?: number,
): Promise<R[]> {
  const results = new Array<R>(items.length);
  const started = performance.now();
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, async () => {
      while (next < items.length) {
        const i = next++;
        if (ratePerSecond) {
          const wait = started + (i * 1000) / ratePerSecond - performance.now();
          if (wait > 0) await sleep(wait);
        }
        results[i] = await task(items[i]!);
      }
    }),
  );
  return results;
}

/**
 * Records production's answers to `images` through the gateway: a recorded set made by a client,
 * until workers record a live sample themselves. Images production refuses are left out (bad
 * input is never recorded).
 */
export async function recordThroughGateway(
  target: GatewayTarget,
  model: ModelName,
  images: readonly { name: string; bytes: Uint8Array }[],
  now: () => Date = () => new Date(),
): Promise<{ example: RecordedExample; bytes: Uint8Array }[]> {
  const recorded = await inPool(images, target.concurrency ?? 2, async (image) => {
    const outcome = await predictOnce(target, model, image.bytes, image.name);
    if (!outcome.ok) return undefined;
    const { result } = outcome;
    const digest = sha256(image.bytes);
    const example: RecordedExample = {
      kind: 'recorded-example',
      version: 1,
      id: digest,
      model,
      recordedAt: now().toISOString(),
      input: {
        file: `${digest.slice(0, 32)}.${result.input.format}`,
        format: result.input.format,
        bytes: image.bytes.length,
        sha256: digest,
      },
      production: { model: result.model, prediction: result.prediction, inferenceMs: result.timings.inferenceMs },
    };
    return { example, bytes: image.bytes };
  });
  // One example per distinct image: the same input twice would weigh twice in every figure.
  const seen = new Set<string>();
  return recorded.filter(
    (r): r is NonNullable<typeof r> => r !== undefined && !seen.has(r.example.id) && !!seen.add(r.example.id),
  );
}

/** The candidate's answers to a recorded set, asked of `model` (the candidate's replay serving name). */
export async function replayThroughGateway(
  target: GatewayTarget,
  model: ModelName,
  dir: string,
  examples: readonly RecordedExample[],
): Promise<CandidateAnswer[]> {
  const answer = async (example: RecordedExample): Promise<CandidateAnswer> => {
    const bytes = await readExampleImage(dir, example);
    const outcome = await predictOnce(target, model, bytes, example.input.file);
    if (!outcome.ok) return { id: example.id, status: 'failed', reason: outcome.reason };
    const { result } = outcome;
    return {
      id: example.id,
      status: 'completed',
      model: result.model,
      prediction: result.prediction,
      inferenceMs: result.timings.inferenceMs,
    };
  };
  return inPool(examples, target.concurrency ?? 1, answer, target.ratePerSecond);
}
