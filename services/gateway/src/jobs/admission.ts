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
  /** The job is queued with an image of `bytes` (it now counts as waiting, its bytes as queued). */
  queued(bytes: number): void;
  /** Idempotent; gives back whatever `queued` did not keep (the place, the reserved bytes). */
  release(): void;
}

// Admission counts bytes as well as jobs: images wait in Redis, and 100 async uploads of 3 MB with
// no worker alive grew it by 354 MB (the depth limit alone allowed ~35 GB). The queued-bytes counter
// rises by what a request reserves (its declared length, corrected once the image is stored) and
// falls when a worker commits the job's result (result-publisher.ts), once per job.
// KEYS: wait list, prioritized set, reservations counter, queued-bytes counter.
// ARGV: max depth, counter TTL (ms), max queued bytes, bytes to reserve.
// Returns { 0 } admitted, { 1, depth } queue full, { 2, queued bytes } byte budget full.
const RESERVE = `
local depth = redis.call('LLEN', KEYS[1]) + redis.call('ZCARD', KEYS[2]) + tonumber(redis.call('GET', KEYS[3]) or '0')
if depth >= tonumber(ARGV[1]) then return { 1, depth } end
local queued = tonumber(redis.call('GET', KEYS[4]) or '0')
if queued + tonumber(ARGV[4]) > tonumber(ARGV[3]) then return { 2, queued } end
redis.call('INCR', KEYS[3])
redis.call('PEXPIRE', KEYS[3], ARGV[2])
redis.call('INCRBY', KEYS[4], ARGV[4])
return { 0 }`;

// Gives a reservation's place back and corrects the queued bytes by ARGV[1], in one call; neither
// counter goes below zero (the reservations counter may have expired meanwhile).
// KEYS: reservations counter, queued-bytes counter. ARGV: bytes change.
const RELEASE = `
if tonumber(redis.call('GET', KEYS[1]) or '0') > 0 then redis.call('DECR', KEYS[1]) end
if tonumber(ARGV[1]) ~= 0 and redis.call('INCRBY', KEYS[2], ARGV[1]) < 0 then redis.call('SET', KEYS[2], 0) end
return 1`;

const RESERVATION_TTL_MS = 60_000;

type AdmissionRedis = Redis & {
  conveyorReserve(
    wait: string,
    prioritized: string,
    counter: string,
    queuedBytes: string,
    max: number,
    ttlMs: number,
    maxBytes: number,
    bytes: number,
  ): Promise<[number, number?]>;
  conveyorRelease(counter: string, queuedBytes: string, bytesChange: number): Promise<number>;
};

export interface AdmissionLimits {
  readonly maxDepth: number;
  readonly maxQueuedBytes: number;
}

export class Admission {
  private depth = 0;
  private readAt = 0;
  private inflight: Promise<number> | undefined;
  private readonly redis: AdmissionRedis;

  constructor(
    private readonly queue: Queue,
    redis: Redis,
    private readonly keys: { readonly reserved: string; readonly queuedBytes: string },
    private readonly limits: AdmissionLimits,
    private readonly refreshMs = 250,
  ) {
    redis.defineCommand('conveyorReserve', { numberOfKeys: 4, lua: RESERVE });
    redis.defineCommand('conveyorRelease', { numberOfKeys: 2, lua: RELEASE });
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

  /** `bytes`: what the request may store (its declared length, or the upload limit). */
  async admit(bytes: number): Promise<Reservation> {
    const { wait, prioritized } = this.queue.keys;
    const { reserved, queuedBytes } = this.keys;
    const { maxDepth, maxQueuedBytes } = this.limits;
    const [code, value] = await this.redis.conveyorReserve(
      wait!,
      prioritized!,
      reserved,
      queuedBytes,
      maxDepth,
      RESERVATION_TTL_MS,
      maxQueuedBytes,
      bytes,
    );
    if (code === 1) {
      throw new ProblemError('overloaded', `${value} jobs are waiting or being queued; the limit is ${maxDepth}`, {
        retryAfterSeconds: 5,
      });
    }
    if (code === 2) {
      throw new ProblemError('overloaded', `Queued images hold ${value} bytes; the limit is ${maxQueuedBytes}`, {
        retryAfterSeconds: 5,
      });
    }
    let held = true;
    // Fire and forget: a lost release only makes admission stricter until the counters settle.
    const giveBack = (bytesChange: number) => {
      if (!held) return;
      held = false;
      this.redis.conveyorRelease(reserved, queuedBytes, bytesChange).catch(() => undefined);
    };
    return {
      // The image stays counted (the worker's result commit takes it off); only the estimate is corrected.
      queued: (stored) => giveBack(stored - bytes),
      release: () => giveBack(-bytes),
    };
  }
}
