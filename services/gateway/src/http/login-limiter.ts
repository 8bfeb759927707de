/**
 * Failed logins per client, counted in this process's memory. A "client" is whatever key the caller
 * chooses: the dashboard uses the address and the user name offered together, so that guesses from
 * one address cannot lock out a user who signs in from another, and guesses made under other user
 * names (a NAT neighbour's, say) cannot lock out the real user at that same address.
 *
 * Each lockout of the same client lasts twice as long as the one before (from `lockoutMs` up to
 * `maxLockoutMs`): a patient guesser gets fewer and fewer tries, while a user who mistyped is
 * locked out briefly. A successful login forgets the client.
 *
 * In memory on purpose: each gateway guards its own dashboard, so a lockout need not be shared
 * through Redis (a client spreading its guesses over N gateways gets N × the budget, which still
 * caps guessing at a few dozen per minute). `rate-limiter-flexible` is not a dependency of the
 * gateway; this is the small subset it would give us. Memory is bounded: at most `maxClients`
 * entries, the least recently failed one that is not locked out evicted first (a Map iterates in
 * insertion order and an entry is re-inserted on every failure), so a flood of new keys costs at
 * most that many entries (~100 bytes each) and cannot push a locked-out client out of the table.
 */
export interface LoginLimits {
  /** Failures allowed within `windowMs` before the client is locked out. */
  readonly maxFailures: number;
  readonly windowMs: number;
  /** The first lockout; each further one of the same client doubles, up to `maxLockoutMs`. */
  readonly lockoutMs: number;
  readonly maxLockoutMs: number;
  readonly maxClients: number;
}

export const DASHBOARD_LOGIN_LIMITS: LoginLimits = {
  maxFailures: 10,
  windowMs: 60_000,
  lockoutMs: 60_000,
  maxLockoutMs: 60 * 60_000,
  maxClients: 10_000,
};

interface Entry {
  windowStart: number;
  failures: number;
  lockedUntil: number;
  /** Lockouts so far: the next lasts lockoutMs × 2^lockouts. */
  lockouts: number;
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
    const entry = this.clients.get(client) ?? { windowStart: now, failures: 0, lockedUntil: 0, lockouts: 0 };
    if (entry.lockedUntil <= now) {
      if (now - entry.windowStart >= this.limits.windowMs) {
        entry.windowStart = now;
        entry.failures = 0;
      }
      entry.failures += 1;
      if (entry.failures >= this.limits.maxFailures) {
        entry.lockedUntil = now + Math.min(this.limits.lockoutMs * 2 ** entry.lockouts, this.limits.maxLockoutMs);
        entry.lockouts += 1;
        entry.failures = 0;
        entry.windowStart = now;
      }
    }
    this.clients.delete(client);
    this.clients.set(client, entry);
    if (this.clients.size > this.limits.maxClients) this.evict(now);
  }

  /** Drops the least recently failed entry that is not locked out (the oldest of all if every one is). */
  private evict(now: number): void {
    for (const [key, entry] of this.clients) {
      if (entry.lockedUntil <= now) {
        this.clients.delete(key);
        return;
      }
    }
    const oldest = this.clients.keys().next();
    if (!oldest.done) this.clients.delete(oldest.value);
  }

  /** A successful login clears the client's count (unless it is locked out: then it never got this far). */
  succeed(client: string): void {
    this.clients.delete(client);
  }

  get size(): number {
    return this.clients.size;
  }
}
