/**
 * The CPU share a shadow may take (SHADOW_CPU_SHARE), as a token bucket of milliseconds of run
 * time: it fills at `share` ms per ms of wall time, up to `burstMs`, and each shadow run is charged
 * its measured time once it is over. A run starts only while the bucket is not in debt, so over any
 * stretch of wall time T the shadow runs for at most share · T + burstMs + one run. The clock is
 * injected: the counting is tested on a fake clock, never on wall time.
 */
export class CpuBudget {
  private tokens: number;
  private last: number;

  constructor(
    /** Share of one core, 0–1. */
    private readonly share: number,
    /** What may be spent at once after a quiet spell (ms). */
    private readonly burstMs: number,
    private readonly now: () => number = () => performance.now(),
  ) {
    if (!(share > 0) || !(burstMs >= 0)) throw new RangeError('a CPU budget needs a positive share and a burst ≥ 0');
    this.tokens = burstMs;
    this.last = now();
  }

  /** Whether a run may start now (the bucket is not in debt). */
  mayRun(): boolean {
    this.refill();
    return this.tokens > 0;
  }

  /** Charges a run's measured time (ms). */
  charge(ms: number): void {
    this.refill();
    this.tokens -= Math.max(0, ms);
  }

  /** Milliseconds of run time available now (negative: in debt). */
  get available(): number {
    this.refill();
    return this.tokens;
  }

  private refill(): void {
    const t = this.now();
    this.tokens = Math.min(this.burstMs, this.tokens + Math.max(0, t - this.last) * this.share);
    this.last = t;
  }
}
