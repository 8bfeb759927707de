import type { Redis } from '@conveyor/shared/redis';
import { ProblemError } from '@conveyor/shared/problem';
import type { InferenceQueue } from './model-queues.js';
import type { FairPlace, Tenant } from '../http/context.js';

/**
 * Weighted fair queuing between tenants on open-source BullMQ (whose Pro tier alone has groups):
 * start-time fair queuing (SFQ) carried by BullMQ's job priorities.
 *
 * Each job gets a virtual start time S = max(V, F_t) and moves its tenant's finish time to
 * F_t = S + 1/w_t, where V — the queue's virtual time — is the smallest start time still queued
 * (read from BullMQ's prioritized set, whose head a worker takes next), and w_t the tenant's weight.
 * A tenant with a backlog thus runs ahead of V by its backlog divided by its weight, and a tenant
 * arriving with one job starts at V: it waits for about one job of each backlogged tenant, not for
 * their backlogs. Among backlogged tenants, each is served in proportion to its weight.
 *
 * A job's priority is its start time, as an integer: BullMQ orders its prioritized set by
 * priority × 2³² + an insertion counter (commands/includes/getPriorityScore.lua), and a worker
 * pops the lowest (moveJobFromPrioritizedToActive.lua). Jobs of equal priority keep their arrival
 * order, so weight 3's three jobs per unit of virtual time share one priority and go in turn.
 * Every job gets a priority: BullMQ serves its `wait` list (priority 0) before any prioritized job.
 *
 * Cost: a job's start time charges one unit; a large image charges its tenant the rest of its cost
 * (1 unit per `pixelsPerCost` decoded pixels) once it is inspected (`charge`), pushing back that
 * tenant's next jobs: worker time, not job counts, is what is shared out.
 *
 * Limits, by design:
 * - BullMQ's priorities stop at 2²¹ − 1. The range is split into bands of 2¹⁹ (room for request
 *   priorities above and below `normal`); virtual time restarts at 0 whenever a model's queue is
 *   found empty. A queue that stays non-empty long enough for V to pass 2¹⁹ units (524,288 jobs of
 *   one weight-1 tenant; more with several tenants, whose weights divide the advance) puts every new
 *   job at the band's last priority: they are then served first come, first served among
 *   themselves, until the queue empties once.
 * - A tenant's places in the queue are counted in its own sorted set, pruned from its oldest end
 *   whenever it asks for a place (jobs taken by a worker or removed by an operator leave the count
 *   by themselves; nothing is decremented, so nothing can leak).
 * - Tenant state (its finish time, its places) expires a day after its last job.
 */

export interface FairQueueOptions {
  /** Places of one model's queue (MAX_QUEUE_DEPTH) a tenant may hold at once, as a share (0–1]. */
  readonly tenantShare: number;
  readonly maxDepth: number;
  /** Decoded pixels that cost one unit of virtual time (a job costs at least one). */
  readonly pixelsPerCost: number;
}

/** Width of one priority band; the `normal` band is the second of four (BullMQ allows < 2²¹). */
export const BAND_SPAN = 2 ** 19;
const NORMAL_BAND = 1;
const TENANT_TTL_SECONDS = 24 * 3600;

// KEYS: prioritized set, wait list, finish hash, the tenant's places, reservations (admission).
// ARGV: tenant, weight, job id, places allowed, band base, band span, TTL (s).
// Returns { priority, places held } or { -1, places held } beyond the share.
const PLACE = `
local places = KEYS[4]
local held = redis.call('ZCARD', places)
while held > 0 do
  local oldest = redis.call('ZRANGE', places, 0, 0)[1]
  if redis.call('ZSCORE', KEYS[1], oldest) or redis.call('ZSCORE', KEYS[5], oldest) then break end
  redis.call('ZREM', places, oldest)
  held = held - 1
end
if held >= tonumber(ARGV[4]) then return { -1, held } end
local base = tonumber(ARGV[5])
local span = tonumber(ARGV[6])
local v = 0
local head = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if head[2] then
  v = math.floor(tonumber(head[2]) / 4294967296) - 1 - base
  if v < 0 then v = 0 end
elseif redis.call('LLEN', KEYS[2]) == 0 then
  redis.call('DEL', KEYS[3])
end
local start = tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or '0')
if start < v then start = v end
redis.call('HSET', KEYS[3], ARGV[1], tostring(start + 1 / tonumber(ARGV[2])))
redis.call('EXPIRE', KEYS[3], ARGV[7])
redis.call('ZADD', places, start, ARGV[3])
redis.call('EXPIRE', places, ARGV[7])
local tag = math.floor(start)
if tag > span - 1 then tag = span - 1 end
return { 1 + base + tag, held + 1 }`;

// KEYS: finish hash. ARGV: tenant, cost to add, TTL (s). Only a tenant still on record is charged.
const CHARGE = `
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  redis.call('HINCRBYFLOAT', KEYS[1], ARGV[1], ARGV[2])
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
return 1`;

type FairRedis = Redis & {
  conveyorFairPlace(
    prioritized: string,
    wait: string,
    finish: string,
    places: string,
    reservations: string,
    tenant: string,
    weight: number,
    jobId: string,
    allowed: number,
    base: number,
    span: number,
    ttl: number,
  ): Promise<[number, number]>;
  conveyorFairCharge(finish: string, tenant: string, cost: string, ttl: number): Promise<number>;
};

export class FairQueue {
  private readonly redis: FairRedis;
  private readonly allowed: number;

  constructor(
    redis: Redis,
    private readonly keys: {
      readonly fairFinish: (queue: string) => string;
      readonly fairPlaces: (queue: string, tenant: string) => string;
      readonly admissionReserved: (queue: string) => string;
    },
    private readonly options: FairQueueOptions,
  ) {
    redis.defineCommand('conveyorFairPlace', { numberOfKeys: 5, lua: PLACE });
    redis.defineCommand('conveyorFairCharge', { numberOfKeys: 1, lua: CHARGE });
    this.redis = redis as FairRedis;
    this.allowed = Math.max(1, Math.floor(options.tenantShare * options.maxDepth));
  }

  /**
   * A place for `tenant`'s job `jobId` on `queue`, whose admission reserved it (the reservation
   * keeps the place counted until the job is queued). 429 beyond the tenant's share of the queue.
   */
  async place(queue: InferenceQueue, tenant: Tenant, jobId: string): Promise<FairPlace> {
    const { prioritized, wait } = queue.keys;
    const finish = this.keys.fairFinish(queue.name);
    const [priority, held] = await this.redis.conveyorFairPlace(
      prioritized!,
      wait!,
      finish,
      this.keys.fairPlaces(queue.name, tenant.id),
      this.keys.admissionReserved(queue.name),
      tenant.id,
      tenant.weight,
      jobId,
      this.allowed,
      NORMAL_BAND * BAND_SPAN,
      BAND_SPAN,
      TENANT_TTL_SECONDS,
    );
    if (priority < 0) {
      throw new ProblemError(
        'rate-limited',
        `This client has ${held} jobs waiting for this model, its share of the queue (${this.allowed} of ${this.options.maxDepth}); retry once some are done`,
        { retryAfterSeconds: 5 },
      );
    }
    return {
      priority,
      charge: (pixels) => {
        const extra = Math.floor(pixels / this.options.pixelsPerCost) / tenant.weight;
        // Fire and forget: a lost charge only lets one large image go at the price of a small one.
        if (extra > 0) this.redis.conveyorFairCharge(finish, tenant.id, String(extra), TENANT_TTL_SECONDS).catch(() => undefined);
      },
    };
  }
}
