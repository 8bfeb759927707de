import type { Worker } from 'bullmq';
import type { Logger } from '@conveyor/shared/logger';

/**
 * Stop taking jobs and let in-flight ones finish within the budget. `worker.close()` alone waits
 * without limit; when the budget runs out, running jobs are cancelled, which makes the processor
 * hand each job back to the queue at its next checkpoint, and whatever still runs is abandoned to
 * the stalled-job check of the other workers. Nothing accepted is lost either way.
 *
 * While Redis is unreachable `worker.close()` never settles (BullMQ waits for its connections), so
 * once no job is running there is nothing left to wait for: the drain ends at once instead of
 * spending the whole budget. A job still running then keeps its chance to finish if Redis returns.
 */
export interface DrainState {
  /** Jobs the processor is working on right now. */
  inFlight(): number;
  /** Whether the worker's Redis connection is up. */
  redisReady(): boolean;
}

const POLL_MS = 100;

export async function drain(worker: Worker, budgetMs: number, log: Logger, state?: DrainState): Promise<void> {
  const closing = worker.close();
  const settled = await settlesWithin(closing, budgetMs, () => {
    if (!state || state.redisReady() || state.inFlight() > 0) return false;
    log.warn('Redis is unreachable and no job is running: not waiting for the queue to close');
    return true;
  });
  if (settled) return;
  log.warn({ budgetMs }, 'drain budget exceeded; handing in-flight jobs back to the queue');
  worker.cancelAllJobs('worker shutting down');
  if (await settlesWithin(closing, 1000)) return;
  await settlesWithin(worker.close(true), 1000);
}

/** True when `promise` settles (or `giveUp` says so, checked every POLL_MS) within `ms`. */
async function settlesWithin(promise: Promise<unknown>, ms: number, giveUp?: () => boolean): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  let poll: NodeJS.Timeout | undefined;
  const timeout = new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), ms)));
  const abandoned = new Promise<true>((resolve) => {
    if (!giveUp) return;
    poll = setInterval(() => {
      if (giveUp()) resolve(true);
    }, POLL_MS);
  });
  try {
    return await Promise.race([promise.then(() => true), timeout, abandoned]);
  } finally {
    clearTimeout(timer);
    clearInterval(poll);
  }
}
