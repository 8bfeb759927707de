import type { Queue } from 'bullmq';
import { ProblemError } from '@conveyor/shared/problem';

/**
 * Backpressure: when more jobs wait than the workers can reasonably catch up with, new work is
 * refused at once with 503 and Retry-After rather than queued to time out. The depth is read at
 * most every `refreshMs` so the check costs nothing per request.
 */
export class Admission {
  private depth = 0;
  private readAt = 0;
  private inflight: Promise<number> | undefined;

  constructor(
    private readonly queue: Queue,
    private readonly maxDepth: number,
    private readonly refreshMs = 250,
  ) {}

  async waiting(): Promise<number> {
    if (Date.now() - this.readAt < this.refreshMs) return this.depth;
    this.inflight ??= this.queue
      .getWaitingCount()
      .then((n) => {
        this.depth = n;
        this.readAt = Date.now();
        return n;
      })
      .finally(() => (this.inflight = undefined));
    return this.inflight;
  }

  async admit(): Promise<void> {
    const depth = await this.waiting();
    if (depth >= this.maxDepth) {
      throw new ProblemError('overloaded', `${depth} jobs are waiting; the limit is ${this.maxDepth}`, { retryAfterSeconds: 5 });
    }
  }
}
