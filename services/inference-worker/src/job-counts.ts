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
  /** When the last job that ran the model ended with every slot busy (monotonic ms); undefined once a slot stood idle. */
  private lastFullEnd: number | undefined;
  /** Every slot was taken again since that end: the next such end is one interval of saturated draining. */
  private refilled = false;
  private intervalAverageMs: number | undefined;

  constructor(
    /** The model's job slots in this process (its concurrency). */
    private readonly slots = 1,
    private readonly now: () => number = () => performance.now(),
  ) {}

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
    if (this.running >= this.slots) this.refilled = true;
  }

  /**
   * A job ended. `servedMs`: it ran the model (completed, or cancelled while it ran), in that time;
   * absent for one that did not (expired unread, a duplicate, a failure), which neither counts as
   * service nor breaks a saturated stretch (its slot was refilled as quickly).
   */
  ended(servedMs?: number): void {
    if (servedMs !== undefined) {
      this.served(servedMs);
      this.sampleDrain();
    }
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

  /**
   * How many of this model's jobs this process finishes per second while every slot is busy (its
   * capacity, as deadline admission needs it): the inverse of an exponentially weighted average of
   * the intervals between consecutive ends of jobs that ran the model, counted only while all slots
   * stayed taken from one end to the next (a backlog). Undefined before two such ends. Unlike
   * `slots / serviceMs`, it includes everything a slot spends per job beyond the processor (BullMQ
   * taking and finishing the job, the event loop the slots share, CPU the process does not get): on
   * two cores shared with the gateway and the load, that estimate was twice the real drain.
   */
  get saturatedJobsPerSecond(): number | undefined {
    return this.intervalAverageMs === undefined || this.intervalAverageMs <= 0 ? undefined : 1000 / this.intervalAverageMs;
  }

  private served(ms: number): void {
    this.serviceAverageMs =
      this.serviceAverageMs === undefined ? ms : this.serviceAverageMs + SERVICE_WEIGHT * (ms - this.serviceAverageMs);
  }

  private sampleDrain(): void {
    const now = this.now();
    if (this.running < this.slots) {
      this.lastFullEnd = undefined; // a slot stood idle: not draining a backlog
      return;
    }
    if (this.lastFullEnd !== undefined && this.refilled) {
      const interval = now - this.lastFullEnd;
      this.intervalAverageMs =
        this.intervalAverageMs === undefined
          ? interval
          : this.intervalAverageMs + SERVICE_WEIGHT * (interval - this.intervalAverageMs);
    }
    this.lastFullEnd = now;
    this.refilled = false;
  }
}

/** The weight of the newest job in the service-time average (1/20: about the last 20 jobs count). */
const SERVICE_WEIGHT = 0.05;
