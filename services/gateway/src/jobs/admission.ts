import type { Redis } from '@conveyor/shared/redis';
import { ProblemError } from '@conveyor/shared/problem';
import type { QueuePlace } from '../http/context.js';
import type { DeadlineLimit } from './deadline-admission.js';
import { FAIR_PLACE_FUNCTION, type FairStep } from './fair-queue.js';
import type { InferenceQueue } from './model-queues.js';
import type { FairPlace } from '../http/context.js';

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
/** Idempotent `release`: gives back whatever `queued` did not keep (the place, the reserved bytes). */
export type Reservation = QueuePlace;

// Admission counts bytes as well as jobs: images wait in Redis, and 100 async uploads of 3 MB with
// no worker alive grew it by 354 MB (the depth limit alone allowed ~35 GB). Each admitted job holds
// its bytes under its own id (redisKeys().queuedImages, with their sum beside it): a request reserves
// its declared length, corrected once the image is stored; the worker's result commit
// (JobStore.commit, shared/src/contract/job-store.ts) removes the job's field, and so does
// reconcile() once a job left BullMQ without a commit. Whoever removes the field gives its bytes
// back, so each job's bytes are given back exactly once and the sum cannot drift.
//
// The scan over the reservations is bounded by the requests being admitted at that moment (each
// gateway holds at most MAX_CONNECTIONS), not by the queue. The job hashes are read by name, as
// BullMQ's own scripts do: the whole queue lives under one prefix, on one Redis (or one hash slot).
// KEYS: wait list, prioritized set, reservations set, queued bytes (sum), queued images (hash).
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
redis.call('HSET', KEYS[5], ARGV[5], ARGV[4] .. ' ' .. ARGV[6] .. ' ' .. KEYS[3])
redis.call('INCRBY', KEYS[4], ARGV[4])
return { 0 }`;

// RESERVE, then (once the place is reserved) fair queuing's placement of the job (fair-queue.ts), in
// one call: a request pays one round trip for both. Beyond the tenant's share the reservation just
// made is undone here, as RELEASE would undo it.
// KEYS: RESERVE's five, then FAIR_PLACE_FUNCTION's five. ARGV: RESERVE's six, then its nine.
// Returns RESERVE's refusals, { 0, priority, places held } admitted and placed, or { 3, places held }
// beyond the tenant's share.
const RESERVE_AND_PLACE = `${FAIR_PLACE_FUNCTION}
local reserved = (function()
${RESERVE.replace(/\n/g, '\n  ')}
end)()
if reserved[1] ~= 0 then return reserved end
local placed = fairPlace({ KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10] },
  { ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[11], ARGV[12], ARGV[13], ARGV[14], ARGV[15] })
if placed[1] < 0 then
  redis.call('ZREM', KEYS[3], ARGV[5])
  redis.call('HDEL', KEYS[5], ARGV[5])
  if redis.call('DECRBY', KEYS[4], ARGV[4]) < 0 then redis.call('SET', KEYS[4], 0) end
  return { 3, placed[2] }
end
return { 0, placed[1], placed[2] }`;

// Gives a reservation's place back, and either sets the job's bytes to what was stored (ARGV[1]) or,
// when ARGV[1] is '', gives them all back. A job whose field is gone (committed already, or
// reconciled) is left alone. Allowed on a full Redis: it only frees memory.
// KEYS: reservations set, queued images (hash), queued bytes (sum). ARGV: stored bytes or '', job id.
const RELEASE = `#!lua flags=allow-oom
redis.call('ZREM', KEYS[1], ARGV[2])
local held = redis.call('HGET', KEYS[2], ARGV[2])
if not held then return 0 end
local bytes, rest = string.match(held, '^(%d+)(.*)$')
local change = -tonumber(bytes)
if ARGV[1] == '' then
  redis.call('HDEL', KEYS[2], ARGV[2])
else
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[1] .. rest)
  change = change + tonumber(ARGV[1])
end
if change ~= 0 and redis.call('INCRBY', KEYS[3], change) < 0 then redis.call('SET', KEYS[3], 0) end
return 1`;

// One step of the reconciliation: the jobs of the next HSCAN batch of the queued images that no
// longer wait — their BullMQ job is gone (an operator emptied, cleaned or obliterated the queue;
// the job was removed) or finished (failed without a commit: a contract violation, stalled too
// often) and no request holds a live reservation for them — give their bytes back, and their
// images, which nothing will read any more, are deleted. Allowed on a full Redis: it only frees.
// KEYS: queued images (hash), queued bytes (sum). ARGV: cursor, batch size, input key prefix.
// Returns { next cursor, jobs released, bytes released }.
const RECONCILE = `#!lua flags=allow-oom
local now = redis.call('TIME')
local nowMs = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local scan = redis.call('HSCAN', KEYS[1], ARGV[1], 'COUNT', ARGV[2])
local fields = scan[2]
local released, freed = 0, 0
for i = 1, #fields, 2 do
  local id, held = fields[i], fields[i + 1]
  local bytes, jobPrefix, reservations = string.match(held, '^(%d+) (%S+) (%S+)$')
  local waiting = false
  if jobPrefix then
    local job = jobPrefix .. id
    if redis.call('EXISTS', job) == 1 then
      waiting = redis.call('HEXISTS', job, 'finishedOn') == 0
    else
      local lapses = redis.call('ZSCORE', reservations, id)
      waiting = lapses ~= false and tonumber(lapses) > nowMs
    end
  end
  if not waiting then
    redis.call('HDEL', KEYS[1], id)
    redis.call('DEL', ARGV[3] .. id)
    local n = tonumber(bytes) or 0
    if n > 0 and redis.call('DECRBY', KEYS[2], n) < 0 then redis.call('SET', KEYS[2], 0) end
    released = released + 1
    freed = freed + n
  end
end
if redis.call('HLEN', KEYS[1]) == 0 then redis.call('DEL', KEYS[2]) end
return { scan[1], released, freed }`;

const RESERVATION_TTL_MS = 60_000;

/** RESERVE's arguments: max depth, reservation TTL (ms), max queued bytes, bytes, job id, job key prefix. */
type ReserveArgs = [number, number, number, number, string, string];

type AdmissionRedis = Redis & {
  conveyorReserve(
    wait: string,
    prioritized: string,
    reservations: string,
    queuedBytes: string,
    queuedImages: string,
    ...args: ReserveArgs
  ): Promise<[number, number?, number?]>;
  conveyorReservePlace(...keysThenArgs: (string | number)[]): Promise<[number, number?, number?]>;
  conveyorRelease(
    reservations: string,
    queuedImages: string,
    queuedBytes: string,
    stored: string,
    jobId: string,
  ): Promise<number>;
  conveyorReconcile(
    queuedImages: string,
    queuedBytes: string,
    cursor: string,
    count: number,
    inputPrefix: string,
  ): Promise<[string, number, number]>;
};

/** Admission's keys (see redisKeys() in contract/redis-keys.ts). */
export interface AdmissionKeys {
  readonly reserved: (queue: string) => string;
  readonly queuedImages: string;
  readonly queuedBytes: string;
  /** A job's stored image (deleted when reconciliation finds the job gone). */
  readonly input: (jobId: string) => string;
}

/** Reads whether Redis has room for more work (memory-guard.ts); throws the refusal when it has not. */
export interface RoomCheck {
  check(): Promise<void>;
}

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
    private readonly keys: AdmissionKeys,
    private readonly limits: AdmissionLimits,
    private readonly refreshMs = 250,
    /** Refuses before anything is reserved when Redis itself is (nearly) full. */
    private readonly room?: RoomCheck,
  ) {
    redis.defineCommand('conveyorReserve', { numberOfKeys: 5, lua: RESERVE });
    redis.defineCommand('conveyorReservePlace', { numberOfKeys: 10, lua: RESERVE_AND_PLACE });
    redis.defineCommand('conveyorRelease', { numberOfKeys: 3, lua: RELEASE });
    redis.defineCommand('conveyorReconcile', { numberOfKeys: 2, lua: RECONCILE });
    this.redis = redis as AdmissionRedis;
  }

  /**
   * Gives back the bytes of every counted job that no longer waits (see RECONCILE) and deletes its
   * image; the gateways run it now and then, and before refusing an upload for want of bytes.
   */
  async reconcile(): Promise<{ jobs: number; bytes: number }> {
    const { queuedImages, queuedBytes } = this.keys;
    const inputPrefix = this.keys.input('');
    let cursor = '0';
    const total = { jobs: 0, bytes: 0 };
    do {
      const [next, jobs, bytes] = await this.redis.conveyorReconcile(queuedImages, queuedBytes, cursor, 500, inputPrefix);
      cursor = next;
      total.jobs += jobs;
      total.bytes += bytes;
    } while (cursor !== '0');
    return total;
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
  async admit(queue: InferenceQueue, jobId: string, bytes: number, deadline?: DeadlineLimit): Promise<Reservation> {
    return (await this.reserve(queue, jobId, bytes, deadline)).place;
  }

  /**
   * As `admit`, and fair queuing's place for the job (`fair`: FairQueue.step) in the same call to
   * Redis. Beyond the tenant's share, nothing stays reserved and the 429 is thrown.
   */
  async admitPlaced(
    queue: InferenceQueue,
    jobId: string,
    bytes: number,
    deadline: DeadlineLimit | undefined,
    fair: FairStep,
  ): Promise<{ place: Reservation; fair: FairPlace }> {
    const { place, placed } = await this.reserve(queue, jobId, bytes, deadline, fair);
    return { place, fair: fair.settle(placed!) };
  }

  private async reserve(
    queue: InferenceQueue,
    jobId: string,
    bytes: number,
    deadline: DeadlineLimit | undefined,
    fair?: FairStep,
  ): Promise<{ place: Reservation; placed?: [number, number] }> {
    const { wait, prioritized } = queue.keys;
    const reserved = this.keys.reserved(queue.name);
    const { queuedBytes, queuedImages } = this.keys;
    const { maxQueuedBytes } = this.limits;
    // A deadline is one more bound on the depth, checked in the same call as MAX_QUEUE_DEPTH.
    const maxDepth = Math.min(this.limits.maxDepth, deadline?.maxDepth ?? Infinity);
    await this.room?.check();
    const keys = [wait!, prioritized!, reserved, queuedBytes, queuedImages];
    const args = [maxDepth, RESERVATION_TTL_MS, maxQueuedBytes, bytes, jobId, queue.toKey('')];
    const reserve = () =>
      fair
        ? this.redis.conveyorReservePlace(...keys, ...fair.keys, ...args, ...fair.args)
        : this.redis.conveyorReserve(...(keys as [string, string, string, string, string]), ...(args as ReserveArgs));
    let [code, value, held] = await reserve();
    // Bytes of jobs that left without a commit may still be counted: settle them before refusing.
    if (code === 2 && (await this.reconcile()).jobs > 0) [code, value, held] = await reserve();
    if (code === 1 && deadline && value !== undefined && value < this.limits.maxDepth) deadline.refuse(value);
    if (code === 1) {
      throw new ProblemError(
        'overloaded',
        `${value} jobs are waiting or being queued for this model; the limit is ${this.limits.maxDepth}`,
        {
          retryAfterSeconds: 5,
        },
      );
    }
    if (code === 2) {
      throw new ProblemError('overloaded', `Queued images hold ${value} bytes; the limit is ${maxQueuedBytes}`, {
        retryAfterSeconds: 5,
      });
    }
    // Beyond the tenant's share: the script reserved nothing; fair queuing words the refusal.
    if (code === 3) fair!.settle([-1, value!]);
    let kept = true;
    // Fire and forget: a lost release only makes admission stricter until reconcile() settles it.
    const giveBack = (stored: string) => {
      if (!kept) return;
      kept = false;
      this.redis.conveyorRelease(reserved, queuedImages, queuedBytes, stored, jobId).catch(() => undefined);
    };
    const place: Reservation = {
      jobId,
      // The image stays counted (the worker's result commit takes it off); only the estimate is corrected.
      queued: (stored) => giveBack(String(stored)),
      release: () => giveBack(''),
    };
    return fair ? { place, placed: [value!, held!] } : { place };
  }
}
