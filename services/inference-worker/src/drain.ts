import type { Worker } from 'bullmq';
import { settlesWithin } from '@conveyor/shared/lifecycle';
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

export async function drain<D, R, N extends string>(
  worker: Worker<D, R, N>,
  budgetMs: number,
  log: Logger,
  state?: DrainState,
): Promise<void> {
  const closing = worker.close();
  let poll: NodeJS.Timeout | undefined;
  // Resolves once waiting can achieve nothing: Redis is away and no job runs.
  const pointless = new Promise<void>((resolve) => {
    if (!state) return;
    poll = setInterval(() => {
      if (state.redisReady() || state.inFlight() > 0) return;
      log.warn('Redis is unreachable and no job is running: not waiting for the queue to close');
      resolve();
    }, POLL_MS);
  });
  const settled = await settlesWithin(Promise.race([closing, pointless]), budgetMs).finally(() => clearInterval(poll));
  if (settled) return;
  log.warn({ budgetMs }, 'drain budget exceeded; handing in-flight jobs back to the queue');
  worker.cancelAllJobs('worker shutting down');
  if (await settlesWithin(closing, 1000)) return;
  await settlesWithin(worker.close(true), 1000);
}
