import type { JobStore } from '@conveyor/shared/contract/job-store';
import type { JobResult } from '@conveyor/shared/contract/jobs.contract';
import type { InferenceQueue } from './model-queues.js';

/** The public view of a job: its stored result once finished, else its place in BullMQ. */
export type JobView =
  | { readonly kind: 'pending'; readonly status: 'queued' | 'active'; readonly model: string }
  | { readonly kind: 'finished'; readonly result: JobResult }
  /** BullMQ failed the job without a result record (it stalled on crashing workers too often). */
  | { readonly kind: 'lost'; readonly reason: string };

/** A model's queue, to look a job up in. */
export interface ModelQueue {
  readonly model: string;
  readonly queue: InferenceQueue;
}

/**
 * Finds a job of any model: finished jobs by their result (one key per job, whatever the model);
 * a job still in BullMQ in the queue of the model it is for, which the id alone does not say, so
 * every known model's queue is asked at once (one round trip; a deployment has a handful).
 */
export class JobLookup {
  constructor(
    /** Every known model's queue (a promise: the gateway may have to read which models exist first). */
    private readonly queues: () => Promise<readonly ModelQueue[]>,
    private readonly results: JobStore,
  ) {}

  async find(id: string): Promise<JobView | undefined> {
    const stored = await this.readResult(id);
    if (stored) return { kind: 'finished', result: stored };
    const queues = await this.queues();
    const states = await Promise.all(queues.map(({ queue }) => queue.getJobState(id)));
    const at = states.findIndex((s) => s !== 'unknown');
    // In no queue: either no such job, or it finished between the two reads (its result is stored
    // first, then BullMQ removes the job). Re-read, or a poller gets a 404 for a job that just completed.
    if (at < 0) return this.finished(id);
    const { model, queue } = queues[at]!;
    switch (states[at]!) {
      case 'unknown':
        return this.finished(id);
      case 'active':
        return { kind: 'pending', status: 'active', model };
      case 'completed':
        // Completed jobs are removed right after their result is stored: re-read it.
        return this.finished(id);
      case 'failed': {
        const finished = await this.finished(id);
        if (finished) return finished;
        // Failed without a result record: the job stalled on crashing workers more than allowed.
        const job = await queue.getJob(id);
        return { kind: 'lost', reason: job?.failedReason ?? 'the job failed' };
      }
      case 'waiting':
      case 'prioritized':
      case 'delayed': // a retry waiting out its backoff
      case 'waiting-children':
        return { kind: 'pending', status: 'queued', model };
    }
  }

  private async finished(id: string): Promise<JobView | undefined> {
    const stored = await this.readResult(id);
    return stored ? { kind: 'finished', result: stored } : undefined;
  }

  private readResult(id: string): Promise<JobResult | undefined> {
    return this.results.readResult(id);
  }
}
