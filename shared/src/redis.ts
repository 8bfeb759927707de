import { Redis, type RedisOptions } from 'ioredis';
import { settlesWithin } from './lifecycle.js';
import type { Logger } from './logger.js';

/**
 * Redis connections by role. BullMQ's guidance: producers fail fast when Redis is away (so a
 * request gets a clear 503 instead of hanging), workers and subscribers wait and reconnect
 * forever (`maxRetriesPerRequest: null`, required for blocking commands).
 */
export type RedisRole = 'producer' | 'consumer' | 'subscriber';

export function createRedis(url: string, role: RedisRole, name: string, log: Logger, extra: RedisOptions = {}): Redis {
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
  const redis = new Redis(url, { ...common, ...byRole[role], ...extra });
  reportConnectionErrors(redis, log.child({ redisConnection: name }));
  return redis;
}

/** How often a connection that keeps failing to reconnect repeats its warning. */
const ERROR_REPEAT_MS = 30_000;

// Socket errors, and ioredis refusing commands outright while a fail-fast (producer) connection is down.
const UNAVAILABLE =
  /ECONNREFUSED|ECONNRESET|ETIMEDOUT|EHOSTUNREACH|ENOTFOUND|EAI_AGAIN|EPIPE|Connection is closed|enableOfflineQueue|Stream isn't writeable|MaxRetriesPerRequest/i;

/** Whether an error says Redis cannot be reached (as opposed to a command that failed). */
export function isRedisUnavailable(error: unknown): boolean {
  if (typeof error !== 'object' || error === null) return false;
  const { code, message } = error as { code?: unknown; message?: unknown };
  return UNAVAILABLE.test(`${typeof code === 'string' ? code : ''} ${typeof message === 'string' ? message : ''}`);
}

/**
 * Logs connection errors the way people can read them during an outage: one warning when it
 * starts, a reminder every 30 s while it lasts (with how many attempts failed), instead of a line per
 * reconnect attempt. `restored()` logs the end of the outage. Other errors are not throttled.
 */
export function connectionErrorLog(
  log: Logger,
  messages: { readonly error: string; readonly restored: string },
): { error(error: unknown): void; restored(): void } {
  let failures = 0;
  let warnedAt = 0;
  return {
    error(error) {
      if (!isRedisUnavailable(error)) {
        log.error({ err: error }, messages.error);
        return;
      }
      failures++;
      const now = Date.now();
      if (now - warnedAt < ERROR_REPEAT_MS) return;
      warnedAt = now;
      const { code, message: detail } = error as { code?: string; message?: string };
      // The message is the whole story (a refused or reset connection): no stack.
      log.warn({ error: detail, code, failures }, messages.error);
    },
    restored() {
      if (failures === 0) return;
      log.info({ failures }, messages.restored);
      failures = 0;
      warnedAt = 0;
    },
  };
}

/**
 * Every connection gets an error listener: without one, ioredis prints "Unhandled error event" with a
 * stack for every failed reconnect attempt (several a second while Redis is away), outside the
 * structured logs.
 */
function reportConnectionErrors(redis: Redis, log: Logger): void {
  const errors = connectionErrorLog(log, { error: 'redis connection error', restored: 'redis connection restored' });
  redis.on('error', (error: Error) => errors.error(error));
  redis.on('ready', () => errors.restored());
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

/**
 * QUIT politely when connected (replies still in flight arrive first), DISCONNECT otherwise: a
 * QUIT queued on a connection that is trying to reconnect would wait for Redis to come back. Safe
 * to call twice; bounded by `timeoutMs` either way.
 */
export async function closeRedis(redis: Redis, timeoutMs = 2000): Promise<void> {
  if (redis.status === 'end') return;
  if (redis.status !== 'ready') {
    redis.disconnect();
    return;
  }
  // A QUIT that fails (the connection broke meanwhile) or times out leaves nothing to flush: drop it.
  const quit = await settlesWithin(redis.quit(), timeoutMs).catch(() => false);
  if (!quit) redis.disconnect();
}
