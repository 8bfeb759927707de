import type { Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import { JobResult, type Keys } from '@conveyor/shared/contract/queue.contract';

/** The public view of a job: its stored result once finished, else its place in BullMQ. */
export type JobView =
  | { readonly kind: 'pending'; readonly status: 'queued' | 'active' }
  | { readonly kind: 'finished'; readonly result: JobResult }
  /** BullMQ failed the job without a result record (it stalled on crashing workers too often). */
  | { readonly kind: 'lost'; readonly reason: string };

export class JobLookup {
  constructor(
    private readonly queue: Queue,
    private readonly redis: Redis,
    private readonly keys: Keys,
  ) {}

  async find(id: string): Promise<JobView | undefined> {
    const stored = await this.readResult(id);
    if (stored) return { kind: 'finished', result: stored };
    const state = await this.queue.getJobState(id);
    switch (state) {
      case 'unknown':
        // Either no such job, or it finished between the two reads: its result is stored first,
        // then BullMQ removes the job. Re-read, or a poller gets a 404 for a job that just completed.
        return this.finished(id);
      case 'active':
        return { kind: 'pending', status: 'active' };
      case 'completed':
        // Completed jobs are removed right after their result is stored: re-read it.
        return this.finished(id);
      case 'failed': {
        const finished = await this.finished(id);
        if (finished) return finished;
        // Failed without a result record: the job stalled on crashing workers more than allowed.
        const job = await this.queue.getJob(id);
        return { kind: 'lost', reason: job?.failedReason ?? 'the job failed' };
      }
      case 'waiting':
      case 'prioritized':
      case 'delayed': // a retry waiting out its backoff
      case 'waiting-children':
        return { kind: 'pending', status: 'queued' };
    }
  }

  private async finished(id: string): Promise<JobView | undefined> {
    const stored = await this.readResult(id);
    return stored ? { kind: 'finished', result: stored } : undefined;
  }

  private async readResult(id: string): Promise<JobResult | undefined> {
    const raw = await this.redis.get(this.keys.result(id));
    return raw === null ? undefined : JobResult.parse(JSON.parse(raw));
  }
}
