import type { Redis } from '@conveyor/shared/redis';
import { WorkerHeartbeat } from '@conveyor/shared/contract/workers.contract';
import type { RedisKeys } from '@conveyor/shared/contract/redis-keys';

/** Workers whose heartbeat has not expired, with the models each one serves. */
export async function liveWorkers(redis: Redis, keys: RedisKeys): Promise<WorkerHeartbeat[]> {
  const ids = await redis.zrangebyscore(keys.workers, Date.now(), '+inf');
  if (ids.length === 0) return [];
  const values = await redis.mget(ids.map((id) => keys.worker(id)));
  return values.flatMap((value) => {
    if (value === null) return [];
    const parsed = WorkerHeartbeat.safeParse(JSON.parse(value));
    return parsed.success ? [parsed.data] : [];
  });
}
