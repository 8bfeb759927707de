import type { Redis } from '@conveyor/shared/redis';
import type { JobStore } from '@conveyor/shared/contract/job-store';
import { ReplyMessage, type JobResult } from '@conveyor/shared/contract/jobs.contract';
import type { RedisKeys } from '@conveyor/shared/contract/redis-keys';
import type { Logger } from '@conveyor/shared/logger';

/**
 * Delivers finished jobs to the requests waiting for them, without missing any.
 *
 * BullMQ's QueueEvents is a trimmed stream and best-effort, so it is not used. Instead each worker
 * stores the result under its own key and publishes a reply on this gateway instance's channel; one
 * subscriber connection serves every waiter. A waiter is registered before its job is queued, so no
 * reply can arrive early. Pub/sub itself is fire-and-forget (a reconnect can drop messages), so a
 * sweep re-reads the stored results of long waiters every `sweepMs` and right after a reconnect:
 * a completion can be delayed by at most one sweep, never lost.
 *
 * A job may have several waiters on one gateway (a request and its retries with the same
 * Idempotency-Key): each is settled on its own, and one reply settles them all. A waiter for a job
 * queued by another gateway gets no reply on this channel; the sweep finds its stored result.
 */
export interface Ticket {
  /** Resolves with the result, or undefined when the wait ran out or was abandoned. */
  wait(timeoutMs: number, signal?: AbortSignal): Promise<JobResult | undefined>;
  cancel(): void;
}

interface Pending {
  readonly registeredAt: number;
  settle(result: JobResult | undefined): void;
  result?: JobResult;
}

export class ResultWaiter {
  /** The waiters of each job, in the order they came (a Set per job id: several requests may wait for one job). */
  private readonly pending = new Map<string, Set<Pending>>();
  private count = 0;
  private timer: NodeJS.Timeout | undefined;
  private sweeping = false;

  constructor(
    private readonly subscriber: Redis,
    private readonly results: JobStore,
    private readonly keys: RedisKeys,
    readonly gatewayId: string,
    private readonly log: Logger,
    private readonly sweepMs = 1000,
  ) {}

  /** Requests waiting (a job with two waiters counts twice). */
  get waiting(): number {
    return this.count;
  }

  async start(): Promise<void> {
    this.subscriber.on('message', (_channel: string, message: string) => this.onMessage(message));
    // ioredis resubscribes by itself after a reconnect; whatever was published meanwhile is re-read.
    this.subscriber.on('ready', () => void this.sweep(0));
    await this.subscriber.subscribe(this.keys.replies(this.gatewayId));
    this.timer = setInterval(() => void this.sweep(this.sweepMs), this.sweepMs);
    this.timer.unref();
  }

  register(jobId: string): Ticket {
    let resolve: (r: JobResult | undefined) => void = () => undefined;
    const settled = new Promise<JobResult | undefined>((r) => (resolve = r));
    const entry: Pending = {
      registeredAt: Date.now(),
      settle: (result) => {
        const waiters = this.pending.get(jobId);
        if (!waiters?.delete(entry)) return;
        this.count -= 1;
        if (waiters.size === 0) this.pending.delete(jobId);
        resolve(result);
      },
    };
    const waiters = this.pending.get(jobId);
    if (waiters) waiters.add(entry);
    else this.pending.set(jobId, new Set([entry]));
    this.count += 1;
    return {
      wait: async (timeoutMs, signal) => {
        const timer = setTimeout(() => entry.settle(undefined), timeoutMs);
        const abort = () => entry.settle(undefined);
        signal?.addEventListener('abort', abort, { once: true });
        try {
          return await settled;
        } finally {
          clearTimeout(timer);
          signal?.removeEventListener('abort', abort);
        }
      },
      cancel: () => entry.settle(undefined),
    };
  }

  /** Answers every waiter with "not yet" (they reply 202; the jobs go on) and unsubscribes. */
  async close(): Promise<void> {
    clearInterval(this.timer);
    for (const waiters of [...this.pending.values()]) for (const entry of [...waiters]) entry.settle(undefined);
    if (this.subscriber.status === 'ready') await this.subscriber.unsubscribe();
  }

  private onMessage(message: string): void {
    let parsed: ReplyMessage;
    try {
      const json = JSON.parse(message) as unknown;
      // A reply nobody here waits for (its wait ran out; a job with only a callback) is not
      // validated: nothing would read it. A waited-for one is, in full, before anyone gets it.
      if (!this.waitedFor(json)) return;
      parsed = ReplyMessage.parse(json);
    } catch (error) {
      this.log.warn({ err: error }, 'ignoring a malformed reply');
      return;
    }
    this.settleAll(parsed.result.id, parsed.result);
  }

  /** Whether a reply (as parsed JSON) names a job with a waiter here; one with no string id is read (and refused). */
  private waitedFor(json: unknown): boolean {
    const id = (json as { result?: { id?: unknown } } | null)?.result?.id;
    return typeof id !== 'string' || this.pending.has(id);
  }

  /** Every waiter of the job gets its result. */
  private settleAll(jobId: string, result: JobResult): void {
    const waiters = this.pending.get(jobId);
    if (waiters) for (const entry of [...waiters]) entry.settle(result);
  }

  private async sweep(minAgeMs: number): Promise<void> {
    if (this.sweeping || this.pending.size === 0 || !this.results.ready) return;
    this.sweeping = true;
    try {
      const cutoff = Date.now() - minAgeMs;
      // A job is read if any of its waiters is old enough (the first registered is the oldest).
      const ids = [...this.pending.entries()]
        .filter(([, waiters]) => [...waiters].some((p) => p.registeredAt <= cutoff))
        .map(([id]) => id);
      for (let i = 0; i < ids.length; i += 500) {
        const batch = ids.slice(i, i + 500);
        const results = await this.results.readResults(batch);
        results.forEach((result, j) => {
          if (result) this.settleAll(batch[j]!, result);
        });
      }
    } catch (error) {
      this.log.warn({ err: error }, 'result sweep failed; retrying on the next tick');
    } finally {
      this.sweeping = false;
    }
  }
}
