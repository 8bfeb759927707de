import type { Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import { ProblemError } from '@conveyor/shared/problem';

/**
 * Backpressure: when more jobs wait than the workers can reasonably catch up with, new work is
 * refused at once with 503 and Retry-After rather than queued to time out.
 *
 * The bound is strict across concurrent requests and gateway instances: a request reserves its
 * place atomically (one Lua call counting the waiting jobs plus the places reserved by requests
 * not yet queued), and gives the reservation back once its job is queued or it failed. A gateway
 * that dies holding reservations leaves them to expire with the counter (RESERVATION_TTL_MS after
 * the last reservation). Before, the depth was read at most every 250 ms, and 66 jobs got into a
 * queue limited to 50.
 */
export interface Reservation {
  /** Idempotent; call once the job is queued (it then counts as waiting) or the request failed. */
  release(): void;
}

// KEYS: wait list, prioritized set, reservations counter. ARGV: max depth, counter TTL (ms).
const RESERVE = `
local depth = redis.call('LLEN', KEYS[1]) + redis.call('ZCARD', KEYS[2]) + tonumber(redis.call('GET', KEYS[3]) or '0')
if depth >= tonumber(ARGV[1]) then return depth end
redis.call('INCR', KEYS[3])
redis.call('PEXPIRE', KEYS[3], ARGV[2])
return -1`;

// KEYS: reservations counter. Never below zero (the counter may have expired meanwhile).
const RELEASE = `
if tonumber(redis.call('GET', KEYS[1]) or '0') > 0 then return redis.call('DECR', KEYS[1]) end
return 0`;

const RESERVATION_TTL_MS = 60_000;

type AdmissionRedis = Redis & {
  conveyorReserve(wait: string, prioritized: string, counter: string, max: number, ttlMs: number): Promise<number>;
  conveyorRelease(counter: string): Promise<number>;
};

export class Admission {
  private depth = 0;
  private readAt = 0;
  private inflight: Promise<number> | undefined;
  private readonly redis: AdmissionRedis;

  constructor(
    private readonly queue: Queue,
    redis: Redis,
    private readonly counterKey: string,
    private readonly maxDepth: number,
    private readonly refreshMs = 250,
  ) {
    redis.defineCommand('conveyorReserve', { numberOfKeys: 3, lua: RESERVE });
    redis.defineCommand('conveyorRelease', { numberOfKeys: 1, lua: RELEASE });
    this.redis = redis as AdmissionRedis;
  }

  /** The waiting jobs, read at most every `refreshMs` (for the metrics gauge; admission is exact). */
  async waiting(): Promise<number> {
    if (Date.now() - this.readAt < this.refreshMs) return this.depth;
    this.inflight ??= this.queue
      .getWaitingCount()
      .then((n) => {
        this.depth = n;
        this.readAt = Date.now();
        return n;
      })
      .finally(() => (this.inflight = undefined));
    return this.inflight;
  }

  async admit(): Promise<Reservation> {
    const { wait, prioritized } = this.queue.keys;
    const depth = await this.redis.conveyorReserve(wait!, prioritized!, this.counterKey, this.maxDepth, RESERVATION_TTL_MS);
    if (depth >= 0) {
      throw new ProblemError('overloaded', `${depth} jobs are waiting or being queued; the limit is ${this.maxDepth}`, {
        retryAfterSeconds: 5,
      });
    }
    let released = false;
    return {
      release: () => {
        if (released) return;
        released = true;
        // Fire and forget: a failed release only makes admission stricter until the counter expires.
        this.redis.conveyorRelease(this.counterKey).catch(() => undefined);
      },
    };
  }
}
