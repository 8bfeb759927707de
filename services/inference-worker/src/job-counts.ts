/**
 * One model's jobs in this worker: how many are being processed now (the shutdown drain and the
 * in-flight gauge ask) and how many this process committed, completed or failed (the heartbeat
 * reports the sums). Only the processor changes them.
 */
export class JobCounts {
  private running = 0;
  private completedCount = 0;
  private failedCount = 0;

  get inFlight(): number {
    return this.running;
  }

  /** Jobs whose completed result this process committed. */
  get processed(): number {
    return this.completedCount;
  }

  /** Jobs whose failure this process committed (bad input, or the last attempt failing). */
  get failed(): number {
    return this.failedCount;
  }

  started(): void {
    this.running++;
  }

  ended(): void {
    this.running--;
  }

  committedCompleted(): void {
    this.completedCount++;
  }

  committedFailed(): void {
    this.failedCount++;
  }
}
