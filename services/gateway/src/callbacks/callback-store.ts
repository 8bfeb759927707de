import type { Redis } from '@conveyor/shared/redis';
import { CallbackState } from '@conveyor/shared/contract/api.contract';
import type { RedisKeys } from '@conveyor/shared/contract/redis-keys';

/**
 * The callback records in Redis, and nothing else touches them: each job's delivery state
 * (redisKeys().callback, shown with the job) and each client's pending callbacks (redisKeys().callbacksPending,
 * a sorted set of job ids scored by the moment each stops counting).
 */
export class CallbackStore {
  constructor(
    private readonly redis: Redis,
    private readonly keys: Pick<RedisKeys, 'callback' | 'callbacksPending'>,
  ) {
    // Defined now, not on first use: a script defined while an auto-pipeline is open on the
    // connection is missing from that pipeline (see JobStore's constructor).
    const reserving = redis as ReserveRedis;
    if (!reserving.conveyorReserveCallback) redis.defineCommand('conveyorReserveCallback', { numberOfKeys: 1, lua: RESERVE });
  }

  /**
   * Counts `jobId` against `client`'s pending callbacks until `deadline` (epoch ms), if the client
   * has fewer than `cap` pending; whether it was counted. Members past their deadline stop counting,
   * so a delivery that never settles (a gateway killed mid-way) cannot hold a share forever.
   */
  async reserve(client: string, jobId: string, deadline: number, cap: number): Promise<boolean> {
    const redis = this.redis as ReserveRedis as Required<Pick<ReserveRedis, 'conveyorReserveCallback'>>;
    const admitted = await redis.conveyorReserveCallback(
      this.keys.callbacksPending(client),
      String(Date.now()),
      String(deadline),
      jobId,
      String(cap),
    );
    return admitted === 1;
  }

  /** The delivery has settled (or never will): it no longer counts against its client. */
  async release(client: string, jobId: string): Promise<void> {
    await this.redis.zrem(this.keys.callbacksPending(client), jobId);
  }

  async read(jobId: string): Promise<CallbackState | undefined> {
    const raw = await this.redis.get(this.keys.callback(jobId));
    return raw === null ? undefined : CallbackState.parse(JSON.parse(raw));
  }

  async write(jobId: string, state: CallbackState, ttlSeconds: number): Promise<void> {
    await this.redis.set(this.keys.callback(jobId), JSON.stringify(state), 'EX', ttlSeconds);
  }

  /** Changes a record that still exists (one that expired with its job stays gone). */
  async update(jobId: string, change: Partial<CallbackState>, ttlSeconds: number): Promise<void> {
    const current = await this.read(jobId);
    if (!current) return;
    await this.write(jobId, { ...current, ...change }, ttlSeconds);
  }

  /** The job was never queued: its record goes, and its client's share comes back. */
  async drop(jobId: string, client: string): Promise<void> {
    await Promise.allSettled([this.redis.del(this.keys.callback(jobId)), this.release(client, jobId)]);
  }
}

/** What the delivery side needs of the store (a fake in tests). */
export type CallbackRecords = Pick<CallbackStore, 'update' | 'release'>;

/**
 * KEYS[1] the client's pending set; ARGV now, the new member's deadline, job id, cap (all as
 * strings). Drops members past their deadline, then adds the job if the client is under its cap.
 * Returns 1 if added, 0 if refused. The key lives as long as its newest member.
 */
const RESERVE = `
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('PEXPIREAT', KEYS[1], ARGV[2])
return 1
`;

type ReserveRedis = Redis & {
  conveyorReserveCallback?: (key: string, now: string, deadline: string, jobId: string, cap: string) => Promise<number>;
};
