import { ProblemError } from '@conveyor/shared/problem';

/** What the estimate is made of, all measured by the system. */
export interface QueueFigures {
  /** Jobs waiting in the model's queue now (BullMQ's wait list and prioritized set). */
  readonly waiting: number;
  /** Jobs the live workers serving the model take at once, together (their heartbeats). */
  readonly concurrency: number;
  /** How long one job of the model takes on a worker, start to commit (ms, the heartbeats' average). */
  readonly serviceMs: number | undefined;
}

/**
 * When a new job would be finished if admitted now, in ms from now: the jobs ahead of it drain at
 * `concurrency` jobs per `serviceMs`, then it takes `serviceMs` itself. Jobs already running are
 * counted as free slots (they end within one service time, which the job's own service covers on
 * average). Undefined when there is nothing to estimate from: no measured service time yet (a
 * fresh worker: admitted, as before deadlines); Infinity when no live worker serves the model.
 */
export function expectedFinishMs(figures: QueueFigures): number | undefined {
  const { waiting, concurrency, serviceMs } = figures;
  if (concurrency <= 0) return Infinity;
  if (serviceMs === undefined) return undefined;
  return (waiting / concurrency + 1) * serviceMs;
}

/**
 * Refuses a job at once (503 deadline-unmeetable with Retry-After) when the queue's expected wait
 * plus its service time already exceeds its deadline: queued, it would only expire unrun, after
 * holding a place and its bytes. Retry-After is the time for the queue to drain by the excess, at
 * least a second.
 */
export function checkDeadline(figures: QueueFigures, deadlineMs: number, model: string): void {
  const expected = expectedFinishMs(figures);
  if (expected === undefined || expected <= deadlineMs) return;
  if (expected === Infinity) {
    throw new ProblemError(
      'deadline-unmeetable',
      `No live worker serves the model ${model}: the job could not start within its deadline`,
      {
        retryAfterSeconds: 5,
        model,
      },
    );
  }
  const excessSeconds = (expected - deadlineMs) / 1000;
  throw new ProblemError(
    'deadline-unmeetable',
    `The queue of ${model} would finish this job in about ${Math.ceil(expected)} ms (${figures.waiting} jobs waiting, ${figures.concurrency} at once, ${Math.round(figures.serviceMs ?? 0)} ms each); the deadline allows ${Math.round(deadlineMs)} ms`,
    { retryAfterSeconds: Math.max(1, Math.ceil(excessSeconds)), model, expectedMs: Math.ceil(expected) },
  );
}
