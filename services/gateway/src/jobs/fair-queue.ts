import type { Redis } from '@conveyor/shared/redis';
import { ProblemError } from '@conveyor/shared/problem';
import type { InferenceQueue } from './model-queues.js';
import type { FairPlace, Tenant } from '../http/context.js';
import type { Priority } from '../http/priority.js';

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
 * Request priorities (`Prefer: priority=`): the range is cut into bands, `high` first (BullMQ pops
 * the lowest number), then `normal`, then `low`. Each band is a fair queue of its own — its own
 * virtual time (read from its own head), its own tenants' finish times, its own restart when it is
 * found empty — and every job of a higher band goes before any of a lower one. A tenant's places
 * in the queue count its jobs of every band.
 *
 * Cost: a job's start time charges one unit; a large image charges its tenant the rest of its cost
 * (1 unit per `pixelsPerCost` decoded pixels) once it is inspected (`charge`), pushing back that
 * tenant's next jobs: worker time, not job counts, is what is shared out.
 *
 * Limits, by design:
 * - BullMQ's priorities stop at 2²¹ − 1. The range is split into four bands of 2¹⁹ (three used);
 *   a band's virtual time restarts at 0 whenever the band is found empty. A band that stays
 *   non-empty long enough for its V to pass 2¹⁹ units (524,288 jobs of one weight-1 tenant; more
 *   with several tenants, whose weights divide the advance) puts every new job of that band at its
 *   last priority: they are then served first come, first served among themselves, until the band
 *   empties once.
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

/** Width of one priority band: four fit in BullMQ's priorities (1 … 2²¹ − 1; 0 means none). */
export const BAND_SPAN = 2 ** 19;
/** Where each request priority's band lies: BullMQ pops the lowest number, so `high` is first. The fourth band is spare. */
const BAND_INDEX: Record<Priority, number> = { high: 0, normal: 1, low: 2 };
const TENANT_TTL_SECONDS = 24 * 3600;
/** BullMQ scores a prioritized job priority × 2³² + its insertion counter (getPriorityScore.lua). */
const SCORE_UNIT = 2 ** 32;

/** The BullMQ priorities of a request priority's band: `first` … `last`, both included. */
export interface Band {
  readonly first: number;
  readonly last: number;
}

export function band(priority: Priority): Band {
  const base = BAND_INDEX[priority] * BAND_SPAN;
  return { first: base + 1, last: base + BAND_SPAN };
}

// KEYS: prioritized set, wait list, the band's finish hash, the tenant's places, reservations (admission).
// ARGV: tenant, weight, job id, places allowed, the band's first priority, band span, TTL (s),
// the band's lowest BullMQ score, the score just past the band (exclusive).
// Returns { priority, places held } or { -1, places held } beyond the share.
// A Lua function, so that admission can run it in the script that reserves the place (one round
// trip per request instead of two; admission.ts); PLACE runs it on its own.
export const FAIR_PLACE_FUNCTION = `
local function fairPlace(KEYS, ARGV)
local places = KEYS[4]
local held = redis.call('ZCARD', places)
while held > 0 do
  local oldest = redis.call('ZRANGE', places, 0, 0)[1]
  if redis.call('ZSCORE', KEYS[1], oldest) or redis.call('ZSCORE', KEYS[5], oldest) then break end
  redis.call('ZREM', places, oldest)
  held = held - 1
end
if held >= tonumber(ARGV[4]) then return { -1, held } end
local first = tonumber(ARGV[5])
local span = tonumber(ARGV[6])
local v = 0
-- The band's own head: the job of this band a worker takes next (higher bands go before it).
local head = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[8], '(' .. ARGV[9], 'LIMIT', 0, 1, 'WITHSCORES')
if head[2] then
  v = math.floor(tonumber(head[2]) / 4294967296) - first
  if v < 0 then v = 0 end
elseif redis.call('LLEN', KEYS[2]) == 0 then
  redis.call('DEL', KEYS[3])
end
local start = tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or '0')
if start < v then start = v end
redis.call('HSET', KEYS[3], ARGV[1], tostring(start + 1 / tonumber(ARGV[2])))
redis.call('EXPIRE', KEYS[3], ARGV[7])
local at = start
if at > span - 1 then at = span - 1 end
-- Scored where the job stands among all bands (about the order workers take them), so the pruning
-- above, from the lowest score, meets jobs in the order they leave the queue.
redis.call('ZADD', places, first + at, ARGV[3])
redis.call('EXPIRE', places, ARGV[7])
return { first + math.floor(at), held + 1 }
end
`;

const PLACE = `${FAIR_PLACE_FUNCTION}
return fairPlace(KEYS, ARGV)`;

// KEYS: finish hash. ARGV: tenant, cost to add, TTL (s). Only a tenant still on record is charged.
const CHARGE = `
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  redis.call('HINCRBYFLOAT', KEYS[1], ARGV[1], ARGV[2])
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
return 1`;

type FairRedis = Redis & {
  conveyorFairPlace(...keysThenArgs: [...FairStep['keys'], ...FairStep['args']]): Promise<[number, number]>;
  conveyorFairCharge(finish: string, tenant: string, cost: string, ttl: number): Promise<number>;
};

export class FairQueue {
  private readonly redis: FairRedis;
  private readonly allowed: number;

  constructor(
    redis: Redis,
    private readonly keys: {
      readonly fairFinish: (queue: string, band?: Priority) => string;
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
   * A place for `tenant`'s job `jobId` on `queue` in `priority`'s band, whose admission reserved it
   * (the reservation keeps the place counted until the job is queued). 429 beyond the tenant's
   * share of the queue (all bands counted).
   */
  async place(queue: InferenceQueue, tenant: Tenant, jobId: string, priority: Priority): Promise<FairPlace> {
    const step = this.step(queue, tenant, jobId, priority);
    return step.settle(await this.redis.conveyorFairPlace(...step.keys, ...step.args));
  }

  /**
   * The same placement as `place`, as the keys and arguments of FAIR_PLACE_FUNCTION, for admission
   * to run in its reservation's script; `settle` reads its answer (and throws the 429 beyond the share).
   */
  step(queue: InferenceQueue, tenant: Tenant, jobId: string, priority: Priority): FairStep {
    const { prioritized, wait } = queue.keys;
    const { first, last } = band(priority);
    const finish = this.keys.fairFinish(queue.name, priority);
    return {
      keys: [prioritized!, wait!, finish, this.keys.fairPlaces(queue.name, tenant.id), this.keys.admissionReserved(queue.name)],
      args: [
        tenant.id,
        tenant.weight,
        jobId,
        this.allowed,
        first,
        BAND_SPAN,
        TENANT_TTL_SECONDS,
        String(first * SCORE_UNIT),
        String((last + 1) * SCORE_UNIT),
      ],
      settle: ([bullPriority, held]) => {
        if (bullPriority < 0) {
          throw new ProblemError(
            'rate-limited',
            `This client has ${held} jobs waiting for this model, its share of the queue (${this.allowed} of ${this.options.maxDepth}); retry once some are done`,
            { retryAfterSeconds: 5 },
          );
        }
        return {
          priority: bullPriority,
          charge: (pixels) => {
            const extra = Math.floor(pixels / this.options.pixelsPerCost) / tenant.weight;
            // Fire and forget: a lost charge only lets one large image go at the price of a small one.
            if (extra > 0)
              this.redis.conveyorFairCharge(finish, tenant.id, String(extra), TENANT_TTL_SECONDS).catch(() => undefined);
          },
        };
      },
    };
  }
}

/** A fair placement to run inside admission's script (FAIR_PLACE_FUNCTION's keys and arguments). */
export interface FairStep {
  readonly keys: readonly [string, string, string, string, string];
  readonly args: readonly [string, number, string, number, number, number, number, string, string];
  /** Reads FAIR_PLACE_FUNCTION's answer: the place, or the 429 beyond the tenant's share. */
  settle(placed: readonly [number, number]): FairPlace;
}

/**
 * FAIR_QUEUING=false: no virtual time and no share of places, but request priorities still hold:
 * a job gets its band's first priority, so every higher band goes first, and BullMQ's insertion
 * counter keeps each band first come, first served.
 */
export class PriorityBands {
  place(_queue: InferenceQueue, _tenant: Tenant, _jobId: string, priority: Priority): Promise<FairPlace> {
    return Promise.resolve({ priority: band(priority).first, charge: () => undefined });
  }
}
