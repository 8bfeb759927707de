import type { Worker } from 'bullmq';
import type { Logger } from '@conveyor/shared/logger';

/**
 * Stop taking jobs and let in-flight ones finish within the budget. `worker.close()` alone waits
 * without limit; when the budget runs out, running jobs are cancelled, which makes the processor
 * hand each job back to the queue at its next checkpoint, and whatever still runs is abandoned to
 * the stalled-job check of the other workers. Nothing accepted is lost either way.
 */
export async function drain(worker: Worker, budgetMs: number, log: Logger): Promise<void> {
  const closing = worker.close();
  if (await settlesWithin(closing, budgetMs)) return;
  log.warn({ budgetMs }, 'drain budget exceeded; handing in-flight jobs back to the queue');
  worker.cancelAllJobs('worker shutting down');
  if (await settlesWithin(closing, 1000)) return;
  await worker.close(true);
}

async function settlesWithin(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), ms)));
  try {
    return await Promise.race([promise.then(() => true), timeout]);
  } finally {
    clearTimeout(timer);
  }
}
