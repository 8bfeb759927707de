/**
 * One model's jobs in this worker: how many are being processed now (the shutdown drain and the
 * in-flight gauge ask) and how many this process committed, completed or failed (the heartbeat
 * reports the sums). Only the processor changes them.
 */
export class JobCounts {
  private running = 0;
  private completedCount = 0;
  private failedCount = 0;
  private serviceAverageMs: number | undefined;

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

  /**
   * The time one job of this model takes here, start to commit (ms): an exponentially weighted
   * average over the last ~20 jobs that ran the model; undefined before the first. The heartbeat
   * publishes it and gateways estimate queue waits from it (deadline admission).
   */
  get serviceMs(): number | undefined {
    return this.serviceAverageMs;
  }

  served(ms: number): void {
    this.serviceAverageMs =
      this.serviceAverageMs === undefined ? ms : this.serviceAverageMs + SERVICE_WEIGHT * (ms - this.serviceAverageMs);
  }
}

/** The weight of the newest job in the service-time average (1/20: about the last 20 jobs count). */
const SERVICE_WEIGHT = 0.05;
