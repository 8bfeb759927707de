import type { Middleware } from 'koa';
import type { Redis } from '@conveyor/shared/redis';
import { RateLimiterRedis, RateLimiterRes } from 'rate-limiter-flexible';
import { ProblemError } from '@conveyor/shared/problem';
import { addressKey } from '../http/client-identity.js';
import { bindLog, type GatewayState } from '../http/context.js';
import type { Priority } from '../http/priority.js';
import type { ApiKeyStore, Scope } from './api-keys.js';

/**
 * Who may call the API, and how often. With keys required, a request carries
 * `Authorization: Bearer <key>` (or `X-API-Key`) whose key has the route's scope: 401 without a
 * valid key, 403 without the scope. The rate limit is per key (per client IP when keys are off),
 * counted in Redis so every gateway instance enforces one shared limit (rate-limiter-flexible);
 * beyond it, 429 with Retry-After and the IETF RateLimit headers. Both are off unless configured.
 *
 * Invalid keys are counted per client address (`ctx.ip`), shared through Redis as well: past
 * `authFailurePoints` in the window, a request carrying a key from that address is answered 429
 * before its key is looked at (unlimited, one address tried 738 keys a second, each a hash and a
 * Redis read). Requests without any key cost nothing to refuse and are not counted.
 */
export interface AccessOptions {
  readonly keysRequired: boolean;
  /** Requests per window per key (or IP); 0 = no limit. */
  readonly ratePoints: number;
  readonly rateWindowSeconds: number;
  /** Invalid keys one address may present per window before its keyed requests are refused unread. */
  readonly authFailurePoints: number;
  readonly authFailureWindowSeconds: number;
  /** The highest priority a request is served at when keys are off (a key carries its own). */
  readonly addressMaxPriority: Priority;
}

export interface Access {
  /** Authentication and rate limiting for a route needing `scope`. */
  require(scope: Scope): Middleware<GatewayState>;
}

export function createAccess(redis: Redis, prefix: string, store: ApiKeyStore, options: AccessOptions): Access {
  const limiter =
    options.ratePoints > 0
      ? new RateLimiterRedis({
          storeClient: redis,
          keyPrefix: `${prefix}:ratelimit`,
          points: options.ratePoints,
          duration: options.rateWindowSeconds,
        })
      : undefined;
  const failures = new RateLimiterRedis({
    storeClient: redis,
    keyPrefix: `${prefix}:authfail`,
    points: options.authFailurePoints,
    duration: options.authFailureWindowSeconds,
  });
  // Addresses this gateway has seen go past the limit, until their window ends: checked in memory,
  // so a valid key costs no extra Redis read. The count itself is shared (consume, above), so on
  // another gateway an address gets at most one more key check before it is blocked there too.
  const blocked = new Map<string, number>();
  const block = (subject: string, ms: number) => {
    const now = Date.now();
    if (blocked.size >= 10_000) for (const [key, until] of blocked) if (until <= now) blocked.delete(key);
    if (blocked.size < 10_000) blocked.set(subject, now + ms);
  };
  const tooManyFailures = (msBeforeNext: number) =>
    new ProblemError(
      'rate-limited',
      `More than ${options.authFailurePoints} invalid API keys from this address in ${options.authFailureWindowSeconds} s`,
      { retryAfterSeconds: Math.max(1, Math.ceil(msBeforeNext / 1000)) },
    );

  return {
    require: (scope) => async (ctx, next) => {
      let subject = `ip:${addressKey(ctx.ip)}`;
      // The tenant of fair queuing (jobs/fair-queue.ts): the key when keys are required, else the address.
      ctx.state.tenant = { id: subject, weight: 1, maxPriority: options.addressMaxPriority };
      if (options.keysRequired) {
        const presented = bearer(ctx.get('authorization')) ?? (ctx.get('x-api-key') || undefined);
        if (!presented) {
          ctx.set('WWW-Authenticate', 'Bearer realm="conveyor"');
          throw new ProblemError('unauthorized', 'Send an API key: Authorization: Bearer <key>');
        }
        const blockedMs = (blocked.get(subject) ?? 0) - Date.now();
        if (blockedMs > 0) throw tooManyFailures(blockedMs);
        const identity = await store.verify(presented);
        if (!identity) {
          try {
            await failures.consume(subject);
          } catch (rejection) {
            if (!(rejection instanceof RateLimiterRes)) throw rejection;
            block(subject, rejection.msBeforeNext);
            throw tooManyFailures(rejection.msBeforeNext);
          }
          ctx.set('WWW-Authenticate', 'Bearer realm="conveyor", error="invalid_token"');
          throw new ProblemError('unauthorized', 'The API key is not valid');
        }
        if (!identity.scopes.includes(scope) && !identity.scopes.includes('admin')) {
          throw new ProblemError('forbidden', `The API key "${identity.name}" lacks the ${scope} scope`);
        }
        ctx.state.apiKey = identity;
        bindLog(ctx.state, { apiKey: identity.id });
        subject = `key:${identity.id}`;
        ctx.state.tenant = { id: subject, weight: identity.weight, maxPriority: identity.maxPriority };
      }
      if (limiter) await consumeRate(ctx, limiter, subject, options);
      await next();
    },
  };
}

/** Counts the request against its subject's rate, with the RateLimit headers; over the rate, a 429. */
async function consumeRate(
  ctx: { set(name: string, value: string): void },
  limiter: RateLimiterRedis,
  subject: string,
  options: AccessOptions,
): Promise<void> {
  const policy = `${options.ratePoints};w=${options.rateWindowSeconds}`;
  try {
    const used = await limiter.consume(subject);
    rateHeaders(ctx, policy, options.ratePoints, used);
  } catch (rejection) {
    if (!(rejection instanceof RateLimiterRes)) throw rejection; // Redis trouble: the usual 503
    rateHeaders(ctx, policy, options.ratePoints, rejection);
    throw new ProblemError('rate-limited', `More than ${options.ratePoints} requests in ${options.rateWindowSeconds} s`, {
      retryAfterSeconds: Math.max(1, Math.ceil(rejection.msBeforeNext / 1000)),
    });
  }
}

function bearer(header: string): string | undefined {
  const match = /^Bearer\s+(\S+)$/i.exec(header);
  return match?.[1];
}

function rateHeaders(ctx: { set(name: string, value: string): void }, policy: string, limit: number, res: RateLimiterRes): void {
  const reset = Math.max(0, Math.ceil(res.msBeforeNext / 1000));
  ctx.set('RateLimit-Policy', policy);
  ctx.set('RateLimit', `limit=${limit}, remaining=${res.remainingPoints}, reset=${reset}`);
}
