import type { JobStore } from '@conveyor/shared/contract/job-store';
import { LEGACY_QUEUE_MODEL, type CancelledResult, type JobResult } from '@conveyor/shared/contract/jobs.contract';
import type { ResultCacheStore } from '@conveyor/shared/contract/result-cache-store';
import { problemBody, ProblemError } from '@conveyor/shared/problem';
import type { ModelQueue } from './job-lookup.js';
import type { InferenceQueue } from './model-queues.js';

/** How a cancellation ended. */
export type Cancellation =
  /** The job waited: it is cancelled now (or was before); `result` is what is kept. */
  | { readonly kind: 'cancelled'; readonly result: JobResult }
  /** A worker runs it: it goes on, and its commit keeps a cancelled result instead of its own. */
  | { readonly kind: 'cancelling'; readonly model: string }
  /** It finished before the cancellation (a result other than a cancellation is kept). */
  | { readonly kind: 'finished'; readonly result: JobResult }
  | { readonly kind: 'unknown' };

/** What a sync caller's hang-up did to its job. */
export type Abandonment = 'cancelled' | 'running' | 'finished' | 'unknown';

export interface CancellerOptions {
  /** Names the gateway in the `worker` field of the results it records (`gateway:<id>`). */
  readonly gatewayId: string;
  /** How long a cancel mark is kept at most: as long as a job can wait and its result be read. */
  readonly markTtlSeconds: number;
  /** Clears the in-flight record a cancelled job led (identical requests then make their own job). */
  readonly cache?: Pick<ResultCacheStore, 'settle'> | undefined;
}

/**
 * Cancels jobs (`DELETE /v1/jobs/{id}`, a synchronous caller gone). A waiting job is given its final
 * state at once: a cancelled result committed through JobStore.commit (with no lock token and no
 * prediction event), which also deletes its image, gives its queued bytes back (it removes the job's
 * field in the queued images: admission.ts's rule, so they are given back exactly once, whoever
 * else, the reconciliation included, reaches the job), and publishes the reply a waiting request
 * and the job's callback delivery wake on; the job is then removed from BullMQ, which gives its
 * place in the queue (and in fair queuing, which prunes places whose job has left) back.
 *
 * Committed before the removal: a worker that takes the job in between finds a result kept
 * (JobStore.takeInput) and does not run it; a worker that took it just before runs it, and its
 * commit finds the result kept and discards its own. Either way the job ends cancelled, once.
 *
 * A running job is not interrupted (the model call cannot be stopped half-way): it is marked
 * (JobStore.markCancelled), and its commit keeps a cancelled result in place of the worker's. The
 * mark is set only while no result is kept (one Lua call), so a job that finished first answers
 * 'finished' and its result stands.
 */
export class JobCanceller {
  constructor(
    /** Every known model's queue (the id alone does not say whose it is). */
    private readonly queues: () => Promise<readonly ModelQueue[]>,
    private readonly store: Pick<JobStore, 'markCancelled' | 'unmarkCancelled' | 'commit' | 'readResult'>,
    private readonly options: CancellerOptions,
  ) {}

  /** Cancels the job `id` wherever it is (DELETE): idempotent, a second call answers the same. */
  async cancel(id: string): Promise<Cancellation> {
    if ((await this.store.markCancelled(id, this.options.markTtlSeconds)) === 'finished') return this.settled(id);
    const found = await this.locate(id);
    if (!found) {
      // Not in any queue: no such job, or it finished between the two reads.
      const result = await this.store.readResult(id);
      if (result) return settledAs(result);
      await this.store.unmarkCancelled(id);
      return { kind: 'unknown' };
    }
    if (found.state === 'active') return { kind: 'cancelling', model: found.model };
    if (found.state === 'completed' || found.state === 'failed') return this.settled(id);
    const result = await this.cancelWaiting(id, found.queue);
    return result ? settledAs(result) : { kind: 'unknown' };
  }

  /**
   * A synchronous caller hung up: its job is cancelled if it still waits (no worker took it). A job
   * already running is left alone and not marked: it costs nothing more to keep its result.
   */
  async abandon(id: string, model: string): Promise<Abandonment> {
    const queue = (await this.queues()).find((q) => q.model === model)?.queue;
    if (!queue) return 'unknown';
    const state = await queue.getJobState(id);
    if (!WAITING.has(state)) return state === 'active' ? 'running' : state === 'unknown' ? 'unknown' : 'finished';
    const result = await this.cancelWaiting(id, queue);
    return result?.status === 'cancelled' ? 'cancelled' : result ? 'finished' : 'unknown';
  }

  /** Records the cancelled result of a job that waits, then takes the job out of its queue. */
  private async cancelWaiting(id: string, queue: InferenceQueue): Promise<JobResult | undefined> {
    const job = await queue.getJob(id);
    if (!job) return this.store.readResult(id);
    const now = new Date().toISOString();
    const cancelled: CancelledResult = {
      id,
      requestId: job.data.requestId,
      acceptedAt: new Date(job.data.acceptedAt).toISOString(),
      finishedAt: now,
      attempt: 0,
      worker: `gateway:${this.options.gatewayId}`,
      status: 'cancelled',
      error: problemBody(new ProblemError('cancelled', 'The job was cancelled before a worker started it')),
    };
    // The reply goes to the gateway the job names: its waiting request, its callback's delivery.
    const outcome = await this.store.commit(cancelled, { replyTo: job.data.replyTo, queue: queue.name });
    const inflight = job.data.cache?.inflight;
    if (outcome === 'published' && inflight) {
      await this.options.cache?.settle(job.data.model ?? LEGACY_QUEUE_MODEL, id, inflight).catch(() => undefined);
    }
    // Locked (a worker took it meanwhile): it finds the result kept and stops. Either way, done.
    await queue.remove(id).catch(() => 0);
    return outcome === 'published' ? cancelled : this.store.readResult(id);
  }

  private async settled(id: string): Promise<Cancellation> {
    const result = await this.store.readResult(id);
    return result ? settledAs(result) : { kind: 'unknown' };
  }

  private async locate(id: string) {
    const queues = await this.queues();
    const states = await Promise.all(queues.map(({ queue }) => queue.getJobState(id)));
    const at = states.findIndex((s) => s !== 'unknown');
    if (at < 0) return undefined;
    return { ...queues[at]!, state: states[at]! };
  }
}

/** BullMQ states of a job no worker holds yet (a retry waiting out its backoff included). */
const WAITING = new Set<string>(['waiting', 'prioritized', 'delayed', 'waiting-children']);

function settledAs(result: JobResult): Cancellation {
  return result.status === 'cancelled' ? { kind: 'cancelled', result } : { kind: 'finished', result };
}
