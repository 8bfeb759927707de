import type { Redis } from '@conveyor/shared/redis';
import { WorkerHeartbeat, type Keys } from '@conveyor/shared/contract/queue.contract';

/** Workers whose heartbeat has not expired, with the models each one serves. */
export async function liveWorkers(redis: Redis, keys: Keys): Promise<WorkerHeartbeat[]> {
  const ids = await redis.zrangebyscore(keys.workers, Date.now(), '+inf');
  if (ids.length === 0) return [];
  const values = await redis.mget(ids.map((id) => keys.worker(id)));
  return values.flatMap((value) => {
    if (value === null) return [];
    const parsed = WorkerHeartbeat.safeParse(JSON.parse(value));
    return parsed.success ? [parsed.data] : [];
  });
}
