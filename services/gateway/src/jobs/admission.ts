import type { Redis } from '@conveyor/shared/redis';
import { ProblemError } from '@conveyor/shared/problem';
import type { InferenceQueue } from './model-queues.js';

/**
 * Backpressure: when more jobs wait than the workers can reasonably catch up with, new work is
 * refused at once with 503 and Retry-After rather than queued to time out.
 *
 * Jobs are counted per model (each model has its own queue and MAX_QUEUE_DEPTH): a model whose
 * workers fall behind sheds its own load and does not refuse requests for the others. Queued bytes
 * are counted across models: they are one Redis's memory.
 *
 * The bound is strict across concurrent requests and gateway instances: a request reserves its
 * place atomically (one Lua call counting the waiting jobs plus the places reserved by requests
 * not yet queued), and gives the reservation back once its job is queued or it failed.
 *
 * A reservation is held under the job id the request will use, so the count never holds a job
 * twice: a reserved place whose job hash already exists is queued (counted as waiting, or already
 * taken by a worker) and is not counted again, however late its release arrives. (A plain counter
 * of reservations counted every job twice between its add and its release: with 150 concurrent
 * requests and a limit of 50, CI admitted 49.) A gateway that dies holding reservations leaves them
 * to lapse RESERVATION_TTL_MS after they were made. Before any of this, the depth was read at most
 * every 250 ms, and 66 jobs got into a queue limited to 50.
 */
export interface Reservation {
  /** The id the request's job is to have: the place is reserved under it. */
  readonly jobId: string;
  /** The job is queued with an image of `bytes` (it now counts as waiting, its bytes as queued). */
  queued(bytes: number): void;
  /** Idempotent; gives back whatever `queued` did not keep (the place, the reserved bytes). */
  release(): void;
}

// Admission counts bytes as well as jobs: images wait in Redis, and 100 async uploads of 3 MB with
// no worker alive grew it by 354 MB (the depth limit alone allowed ~35 GB). The queued-bytes counter
// rises by what a request reserves (its declared length, corrected once the image is stored) and
// falls when a worker commits the job's result (JobStore.commit, shared/src/contract/job-store.ts), once per job.
//
// The scan over the reservations is bounded by the requests being admitted at that moment (each
// gateway holds at most MAX_CONNECTIONS), not by the queue. The job hashes are read by name, as
// BullMQ's own scripts do: the whole queue lives under one prefix, on one Redis (or one hash slot).
// KEYS: wait list, prioritized set, reservations set, queued-bytes counter.
// ARGV: max depth, reservation TTL (ms), max queued bytes, bytes to reserve, job id, job key prefix.
// Returns { 0 } admitted, { 1, depth } queue full, { 2, queued bytes } byte budget full.
const RESERVE = `
local now = redis.call('TIME')
local nowMs = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', nowMs)
for _, id in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
  if redis.call('EXISTS', ARGV[6] .. id) == 1 then redis.call('ZREM', KEYS[3], id) end
end
local depth = redis.call('LLEN', KEYS[1]) + redis.call('ZCARD', KEYS[2]) + redis.call('ZCARD', KEYS[3])
if depth >= tonumber(ARGV[1]) then return { 1, depth } end
local queued = tonumber(redis.call('GET', KEYS[4]) or '0')
if queued + tonumber(ARGV[4]) > tonumber(ARGV[3]) then return { 2, queued } end
redis.call('ZADD', KEYS[3], nowMs + tonumber(ARGV[2]), ARGV[5])
redis.call('PEXPIRE', KEYS[3], ARGV[2])
redis.call('INCRBY', KEYS[4], ARGV[4])
return { 0 }`;

// Gives a reservation's place back and corrects the queued bytes by ARGV[1], in one call; the
// byte counter never goes below zero.
// KEYS: reservations set, queued-bytes counter. ARGV: bytes change, job id.
const RELEASE = `
redis.call('ZREM', KEYS[1], ARGV[2])
if tonumber(ARGV[1]) ~= 0 and redis.call('INCRBY', KEYS[2], ARGV[1]) < 0 then redis.call('SET', KEYS[2], 0) end
return 1`;

const RESERVATION_TTL_MS = 60_000;

type AdmissionRedis = Redis & {
  conveyorReserve(
    wait: string,
    prioritized: string,
    reservations: string,
    queuedBytes: string,
    max: number,
    ttlMs: number,
    maxBytes: number,
    bytes: number,
    jobId: string,
    jobKeyPrefix: string,
  ): Promise<[number, number?]>;
  conveyorRelease(reservations: string, queuedBytes: string, bytesChange: number, jobId: string): Promise<number>;
};

export interface AdmissionLimits {
  readonly maxDepth: number;
  readonly maxQueuedBytes: number;
}

interface DepthReading {
  depth: number;
  readAt: number;
  inflight?: Promise<number> | undefined;
}

export class Admission {
  private readonly depths = new Map<string, DepthReading>();
  private readonly redis: AdmissionRedis;

  constructor(
    redis: Redis,
    private readonly keys: { readonly reserved: (queue: string) => string; readonly queuedBytes: string },
    private readonly limits: AdmissionLimits,
    private readonly refreshMs = 250,
  ) {
    redis.defineCommand('conveyorReserve', { numberOfKeys: 4, lua: RESERVE });
    redis.defineCommand('conveyorRelease', { numberOfKeys: 2, lua: RELEASE });
    this.redis = redis as AdmissionRedis;
  }

  /** The waiting jobs of `queue`, read at most every `refreshMs` (for the metrics gauge; admission is exact). */
  async waiting(queue: InferenceQueue): Promise<number> {
    let reading = this.depths.get(queue.name);
    if (!reading) this.depths.set(queue.name, (reading = { depth: 0, readAt: 0 }));
    if (Date.now() - reading.readAt < this.refreshMs) return reading.depth;
    const current = reading;
    // Fair queuing puts every job in BullMQ's prioritized set, which getWaitingCount leaves out.
    current.inflight ??= queue
      .getJobCountByTypes('waiting', 'prioritized')
      .then((n) => {
        current.depth = n;
        current.readAt = Date.now();
        return n;
      })
      .finally(() => (current.inflight = undefined));
    return current.inflight;
  }

  /**
   * A place on `queue` (one model's) for the job `jobId` will have; `bytes`: what it may store (its
   * declared length, or the upload limit).
   */
  async admit(queue: InferenceQueue, jobId: string, bytes: number): Promise<Reservation> {
    const { wait, prioritized } = queue.keys;
    const reserved = this.keys.reserved(queue.name);
    const { queuedBytes } = this.keys;
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
      jobId,
      queue.toKey(''),
    );
    if (code === 1) {
      throw new ProblemError('overloaded', `${value} jobs are waiting or being queued for this model; the limit is ${maxDepth}`, {
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
      this.redis.conveyorRelease(reserved, queuedBytes, bytesChange, jobId).catch(() => undefined);
    };
    return {
      jobId,
      // The image stays counted (the worker's result commit takes it off); only the estimate is corrected.
      queued: (stored) => giveBack(stored - bytes),
      release: () => giveBack(-bytes),
    };
  }
}
