import { Redis, type RedisOptions } from 'ioredis';

/**
 * Redis connections by role. BullMQ's guidance: producers fail fast when Redis is away (so a
 * request gets a clear 503 instead of hanging), workers and subscribers wait and reconnect
 * forever (`maxRetriesPerRequest: null`, required for blocking commands).
 */
export type RedisRole = 'producer' | 'consumer' | 'subscriber';

export function createRedis(url: string, role: RedisRole, name: string, extra: RedisOptions = {}): Redis {
  const common: RedisOptions = {
    connectionName: name,
    lazyConnect: false,
    // Reconnect with a capped backoff; never give up (the process's health checks say when it matters).
    retryStrategy: (attempt) => Math.min(50 * 2 ** attempt, 2000),
  };
  const byRole: Record<RedisRole, RedisOptions> = {
    // Commands issued in the same tick (by concurrent requests or jobs) go out in one write.
    producer: { enableOfflineQueue: false, maxRetriesPerRequest: 1, connectTimeout: 5000, enableAutoPipelining: true },
    consumer: { maxRetriesPerRequest: null, enableReadyCheck: true, enableAutoPipelining: true },
    subscriber: { maxRetriesPerRequest: null },
  };
  return new Redis(url, { ...common, ...byRole[role], ...extra });
}

/** Resolves when the connection is ready, rejects after `timeoutMs`. */
export async function waitForReady(redis: Redis, timeoutMs = 10_000): Promise<void> {
  if (redis.status === 'ready') return;
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`Redis not ready after ${timeoutMs} ms (status ${redis.status})`));
    }, timeoutMs);
    const onReady = () => {
      cleanup();
      resolve();
    };
    const cleanup = () => {
      clearTimeout(timer);
      redis.off('ready', onReady);
    };
    redis.on('ready', onReady);
  });
}

/** QUIT politely, DISCONNECT if that fails; safe to call twice. */
export async function closeRedis(redis: Redis): Promise<void> {
  if (redis.status === 'end') return;
  try {
    await redis.quit();
  } catch {
    redis.disconnect();
  }
}
