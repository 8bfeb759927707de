/**
 * Failed logins per client, counted in this process's memory.
 *
 * In memory on purpose: each gateway guards its own dashboard, so a lockout need not be shared
 * through Redis (a client spreading its guesses over N gateways gets N × the budget, which still
 * caps guessing at a few dozen per minute). `rate-limiter-flexible` is not a dependency of the
 * gateway; this is the small subset it would give us. Memory is bounded: at most `maxClients`
 * entries, the least recently failed one evicted first (a Map iterates in insertion order and an
 * entry is re-inserted on every failure), so a flood of addresses costs at most that many entries
 * (~100 bytes each).
 */
export interface LoginLimits {
  /** Failures allowed within `windowMs` before the client is locked out. */
  readonly maxFailures: number;
  readonly windowMs: number;
  readonly lockoutMs: number;
  readonly maxClients: number;
}

export const DASHBOARD_LOGIN_LIMITS: LoginLimits = {
  maxFailures: 10,
  windowMs: 60_000,
  lockoutMs: 5 * 60_000,
  maxClients: 10_000,
};

interface Entry {
  windowStart: number;
  failures: number;
  lockedUntil: number;
}

export class LoginLimiter {
  private readonly clients = new Map<string, Entry>();

  constructor(
    private readonly limits: LoginLimits = DASHBOARD_LOGIN_LIMITS,
    private readonly now: () => number = Date.now,
  ) {}

  /** Milliseconds the client must still wait, or 0 when it may try. */
  lockedFor(client: string): number {
    const entry = this.clients.get(client);
    if (!entry) return 0;
    return Math.max(0, entry.lockedUntil - this.now());
  }

  /** Counts a failure; the failure that reaches the limit starts the lockout. */
  fail(client: string): void {
    const now = this.now();
    const previous = this.clients.get(client);
    const locked = previous !== undefined && previous.lockedUntil > now;
    const entry =
      previous && (locked || now - previous.windowStart < this.limits.windowMs)
        ? previous
        : { windowStart: now, failures: 0, lockedUntil: 0 };
    if (!locked) {
      entry.failures += 1;
      if (entry.failures >= this.limits.maxFailures) entry.lockedUntil = now + this.limits.lockoutMs;
    }
    this.clients.delete(client);
    this.clients.set(client, entry);
    while (this.clients.size > this.limits.maxClients) {
      const oldest = this.clients.keys().next();
      if (oldest.done) break;
      this.clients.delete(oldest.value);
    }
  }

  /** A successful login clears the client's count (unless it is locked out: then it never got this far). */
  succeed(client: string): void {
    this.clients.delete(client);
  }

  get size(): number {
    return this.clients.size;
  }
}
