import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';

/** The Redis started by the global fixture, and a random key prefix per suite. */
export function testRedisUrl(): string {
  const url = process.env.CONVEYOR_TEST_REDIS_URL;
  if (!url)
    throw new Error('CONVEYOR_TEST_REDIS_URL is not set: run the tests with `npm test` (the global fixture starts Redis)');
  return url;
}

export function randomPrefix(name: string): string {
  return `t-${name}-${randomBytes(4).toString('hex')}`;
}

export function testRedis(): Redis {
  return new Redis(testRedisUrl(), { maxRetriesPerRequest: null });
}

/** Every key under a prefix (SCAN, not KEYS). */
export async function keysUnder(redis: Redis, prefix: string): Promise<string[]> {
  const found: string[] = [];
  let cursor = '0';
  do {
    const [next, batch] = await redis.scan(cursor, 'MATCH', `${prefix}:*`, 'COUNT', 1000);
    cursor = next;
    found.push(...batch);
  } while (cursor !== '0');
  return found.sort();
}
