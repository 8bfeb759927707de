import { ProblemError } from '@conveyor/shared/problem';

/** What the estimate is made of, all measured by the system. */
export interface QueueFigures {
  /** Jobs waiting in the model's queue now (BullMQ's wait list and prioritized set). */
  readonly waiting: number;
  /** Jobs the live workers serving the model take at once, together (their heartbeats). */
  readonly concurrency: number;
  /** How long one job of the model takes on a worker, start to commit (ms, the heartbeats' average). */
  readonly serviceMs: number | undefined;
  /**
   * How many of the model's jobs the live workers finish per second while their slots are all busy
   * (the sum of their measured drain rates); undefined until every one of them has measured it.
   */
  readonly jobsPerSecond?: number | undefined;
}

/**
 * Jobs per millisecond the queue drains at: the measured saturated rate when the workers have one,
 * never more than their slots allow (`concurrency` jobs per `serviceMs`), which alone is the figure
 * before any worker has been saturated.
 */
function drainPerMs({ concurrency, serviceMs, jobsPerSecond }: QueueFigures): number {
  const slots = concurrency / serviceMs!;
  return jobsPerSecond === undefined ? slots : Math.min(slots, jobsPerSecond / 1000);
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
  return waiting / drainPerMs(figures) + serviceMs;
}

/** A deadline admission checks atomically with its reservation (admission.ts, Admission.admit). */
export interface DeadlineLimit {
  /** Jobs ahead (waiting, or reserved by requests being accepted) at which the job could no longer finish in time. */
  readonly maxDepth: number;
  /** The refusal, for the depth found. */
  refuse(depth: number): never;
}

/**
 * The deadline as a bound on the queue's depth, for admission to check in the same Redis call that
 * reserves the place: requests accepted at the same moment then count each other. (Checked against
 * a depth read beforehand, hundreds of requests passed on the same figure under a 3× overload, and
 * only 44 % of the admitted met their deadline.) Undefined: nothing to estimate from (admitted).
 * Call checkDeadline with an empty queue first: it refuses what no depth can meet.
 */
export function deadlineLimit(
  figures: Omit<QueueFigures, 'waiting'>,
  deadlineMs: number,
  model: string,
): DeadlineLimit | undefined {
  const { concurrency, serviceMs } = figures;
  if (concurrency <= 0 || serviceMs === undefined) return undefined;
  // The largest `waiting` with waiting / drain + serviceMs ≤ deadlineMs, plus one.
  const maxDepth = Math.max(0, Math.floor((deadlineMs - serviceMs) * drainPerMs({ ...figures, waiting: 0 }) + 1e-9)) + 1;
  return {
    maxDepth,
    refuse: (depth) => {
      checkDeadline({ ...figures, waiting: depth }, deadlineMs, model);
      // Unreachable for depth ≥ maxDepth; a refusal all the same.
      throw new ProblemError('deadline-unmeetable', `The queue of ${model} cannot finish this job within its deadline`, {
        retryAfterSeconds: 1,
        model,
      });
    },
  };
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
    `The queue of ${model} would finish this job in about ${Math.ceil(expected)} ms (${figures.waiting} jobs waiting, ${figures.concurrency} at once, ${Math.round(figures.serviceMs ?? 0)} ms each); it is planned to finish within ${Math.round(deadlineMs)} ms of its deadline (DEADLINE_ADMISSION_SHARE)`,
    { retryAfterSeconds: Math.max(1, Math.ceil(excessSeconds)), model, expectedMs: Math.ceil(expected) },
  );
}
