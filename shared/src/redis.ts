import { Cluster, Redis as SingleRedis, type ClusterOptions, type RedisOptions } from 'ioredis';
import { settlesWithin } from './lifecycle.js';
import type { Logger } from './logger.js';

/**
 * A connection to the deployment's Redis: one server (`redis://`, `rediss://`), a master found
 * through Sentinel (`redis+sentinel://`, an ioredis `Redis` too) or a Redis Cluster
 * (`redis+cluster://`, an ioredis `Cluster`). Both answer the same commands, so the code that uses a
 * connection does not care which; BullMQ takes either.
 */
export type Redis = SingleRedis | Cluster;

interface HostPort {
  readonly host: string;
  readonly port: number;
}

/** Where REDIS_URL points, parsed (parseRedisUrl). */
export type RedisTarget =
  | { readonly kind: 'standalone'; readonly url: string }
  | {
      readonly kind: 'cluster';
      /** Seed nodes: any reachable master or replica; ioredis learns the rest from CLUSTER SLOTS. */
      readonly nodes: readonly HostPort[];
      readonly username?: string;
      readonly password?: string;
      readonly tls: boolean;
    }
  | {
      readonly kind: 'sentinel';
      readonly sentinels: readonly HostPort[];
      /** The master's name in the Sentinels' configuration (`sentinel monitor <name> …`). */
      readonly name: string;
      readonly username?: string;
      readonly password?: string;
      readonly sentinelPassword?: string;
      readonly db: number;
      readonly tls: boolean;
    };

const SCHEME = /^(rediss?)(?:\+(cluster|sentinel))?:\/\/(.*)$/;

/**
 * REDIS_URL's three forms. Cluster and Sentinel list several hosts, which WHATWG URLs cannot hold,
 * so those are read here (the same shape as the `redis+sentinel://` URLs of redis-py and Lettuce):
 *
 * - `redis://[user:password@]host:port[/db]` (or `rediss://` for TLS): one server;
 * - `redis+cluster://[user:password@]host:port[,host:port…]`: a Redis Cluster, from seed nodes;
 * - `redis+sentinel://[user:password@]host:port[,host:port…]/<master>[/db][?sentinelPassword=…]`:
 *   the master Sentinels call `<master>`; the password is the master's (and the Sentinels' unless
 *   `sentinelPassword` says otherwise).
 *
 * Throws an Error whose message says what is wrong (config validation shows it).
 */
export function parseRedisUrl(url: string): RedisTarget {
  const match = SCHEME.exec(url);
  if (!match) throw new Error('must be a redis://, rediss://, redis+cluster:// or redis+sentinel:// URL');
  const [, scheme = 'redis', mode, rest = ''] = match;
  if (mode === undefined) {
    if (!URL.canParse(url)) throw new Error('not a valid URL');
    return { kind: 'standalone', url };
  }
  const tls = scheme === 'rediss';
  const [beforeQuery = '', query = ''] = rest.split('?', 2);
  const at = beforeQuery.lastIndexOf('@');
  const userinfo = at >= 0 ? beforeQuery.slice(0, at) : '';
  const [hostList = '', ...pathParts] = beforeQuery.slice(at + 1).split('/');
  const credentials = parseUserinfo(userinfo);
  const hosts = hostList.split(',').map((part, i, all) => parseHostPort(part, i, all));
  const params = new URLSearchParams(query);
  if (mode === 'cluster') {
    if (pathParts.some((p) => p !== '')) throw new Error('a cluster URL has no path (Redis Cluster has only database 0)');
    return { kind: 'cluster', nodes: hosts, ...credentials, tls };
  }
  const [name = '', db = '0', ...extra] = pathParts;
  if (!/^[A-Za-z0-9._-]+$/.test(name))
    throw new Error('a sentinel URL ends with the master name: redis+sentinel://host:26379,host:26379/mymaster');
  if (extra.length > 0 || !/^\d{1,2}$/.test(db)) throw new Error('after the master name, only a database number');
  const sentinelPassword = params.get('sentinelPassword') ?? credentials.password;
  return {
    kind: 'sentinel',
    sentinels: hosts,
    name,
    ...credentials,
    ...(sentinelPassword === undefined ? {} : { sentinelPassword }),
    db: Number(db),
    tls,
  };
}

function parseUserinfo(userinfo: string): { username?: string; password?: string } {
  if (userinfo === '') return {};
  const colon = userinfo.indexOf(':');
  const username = decodeURIComponent(colon >= 0 ? userinfo.slice(0, colon) : userinfo);
  const password = colon >= 0 ? decodeURIComponent(userinfo.slice(colon + 1)) : undefined;
  return { ...(username ? { username } : {}), ...(password ? { password } : {}) };
}

function parseHostPort(part: string, index: number, all: readonly string[]): HostPort {
  // host:port, or [v6]:port
  const match = /^(?:\[([0-9a-fA-F:.]+)\]|([A-Za-z0-9._-]+)):(\d{1,5})$/.exec(part);
  const port = Number(match?.[3]);
  // The part is not quoted: in a malformed URL it may hold the password (a '?' or '/' in it moves
  // where the hosts seem to start). The configuration error shows the whole URL, redacted.
  if (!match || port < 1 || port > 65_535)
    throw new Error(`host ${index + 1} of ${all.length} is not host:port (a port from 1 to 65535)`);
  return { host: match[1] ?? match[2] ?? '', port };
}

/**
 * REDIS_URL (or any URL-like value) without its secrets, for messages and logs: the userinfo's
 * password — everything between the scheme and the last `@`, whatever it holds, since a malformed
 * URL cannot be trusted to split where a parser would — and every query parameter whose name says
 * password. Works on strings no URL parser accepts (several hosts, bad ports, garbage): those are
 * exactly the ones printed in an error. `redis://app:pw@h:1` → `redis://app:***@h:1`.
 */
export function redactUrl(value: string): string {
  const withoutQuerySecrets = value.replace(/([?&][^=&#]*(?:password|secret|token)[^=&#]*=)[^&#]*/gi, '$1***');
  const at = withoutQuerySecrets.lastIndexOf('@');
  if (at < 0) return withoutQuerySecrets;
  const scheme = /^[A-Za-z][A-Za-z0-9+.-]*:\/\//.exec(withoutQuerySecrets)?.[0] ?? '';
  const userinfo = withoutQuerySecrets.slice(scheme.length, at);
  const colon = userinfo.indexOf(':');
  const user = colon >= 0 ? userinfo.slice(0, colon) : '';
  // A user name is shown when it plainly is one; anything odder may be a password that lost its colon.
  const shownUser = /^[A-Za-z0-9._-]*$/.test(user) ? user : '***';
  return `${scheme}${colon >= 0 ? `${shownUser}:` : ''}***${withoutQuerySecrets.slice(at)}`;
}

/**
 * The hash tag of a key prefix: Redis Cluster hashes only the part between the first `{` and the
 * next `}` when there is one, so every key that starts with `{conveyor}` lands in one slot.
 */
export function hashTag(prefix: string): string | undefined {
  const open = prefix.indexOf('{');
  if (open < 0) return undefined;
  const close = prefix.indexOf('}', open + 1);
  return close > open + 1 ? prefix.slice(open + 1, close) : undefined;
}

/**
 * Redis connections by role. BullMQ's guidance: producers fail fast when Redis is away (so a
 * request gets a clear 503 instead of hanging), workers and subscribers wait and reconnect
 * forever (`maxRetriesPerRequest: null`, required for blocking commands).
 */
export type RedisRole = 'producer' | 'consumer' | 'subscriber';

/**
 * The one place a service connects to Redis, whatever REDIS_URL's form. Every process's keys
 * (BullMQ's and Conveyor's) start with REDIS_PREFIX, which a cluster deployment must give a hash
 * tag (`{conveyor}`, checked by redisConfigShape's refinement): the queues' Lua scripts and
 * Conveyor's own touch several keys at once, and a cluster runs a script only on keys of one slot.
 */
export function createRedis(url: string, role: RedisRole, name: string, log: Logger, extra: RedisOptions = {}): Redis {
  const target = parseRedisUrl(url);
  // Reconnect with a capped backoff; never give up (the process's health checks say when it matters).
  const retryStrategy = (attempt: number) => Math.min(50 * 2 ** attempt, 2000);
  const byRole: Record<RedisRole, RedisOptions> = {
    // No auto-pipelining on the request path: ioredis builds a Pipeline for every batch it makes (one
    // command included), copying every script defined on the connection into it; the gateway's
    // producer connection spent 0.07–0.09 ms more CPU per digit request and 0.18–0.22 ms per photo
    // with it than without (bench/builds-together.bench.ts, c16, 3 rounds each, 2026-12-07).
    producer: { enableOfflineQueue: false, maxRetriesPerRequest: 1, connectTimeout: 5000, enableAutoPipelining: false },
    // Commands issued in the same tick (by concurrent reads) go out in one write.
    consumer: { maxRetriesPerRequest: null, enableReadyCheck: true, enableAutoPipelining: true },
    subscriber: { maxRetriesPerRequest: null },
  };
  const options: RedisOptions = { connectionName: name, lazyConnect: false, retryStrategy, ...byRole[role], ...extra };
  let redis: Redis;
  switch (target.kind) {
    case 'standalone':
      redis = new SingleRedis(url, options);
      break;
    case 'sentinel':
      redis = new SingleRedis({
        ...options,
        sentinels: [...target.sentinels],
        name: target.name,
        db: target.db,
        ...(target.username ? { username: target.username } : {}),
        ...(target.password ? { password: target.password } : {}),
        ...(target.sentinelPassword ? { sentinelPassword: target.sentinelPassword } : {}),
        ...(target.tls ? { tls: {}, enableTLSForSentinelMode: true } : {}),
        // Every reconnect asks the Sentinels where the master is: after a failover the old address
        // is a dead or demoted server (ioredis checks the ROLE of what it reaches).
        sentinelRetryStrategy: retryStrategy,
      });
      break;
    case 'cluster': {
      // Cluster-wide settings live on the Cluster; per-node ones (timeouts, retries per command,
      // credentials) in redisOptions. A failed command is redirected or retried after a topology refresh.
      const { enableOfflineQueue, enableReadyCheck, enableAutoPipelining, retryStrategy: _perNode, ...perNode } = options;
      const clusterOptions: ClusterOptions = {
        clusterRetryStrategy: retryStrategy,
        ...(enableOfflineQueue === undefined ? {} : { enableOfflineQueue }),
        ...(enableReadyCheck === undefined ? {} : { enableReadyCheck }),
        ...(enableAutoPipelining === undefined ? {} : { enableAutoPipelining }),
        redisOptions: {
          ...perNode,
          ...(target.username ? { username: target.username } : {}),
          ...(target.password ? { password: target.password } : {}),
          ...(target.tls ? { tls: {} } : {}),
        },
      };
      redis = new Cluster([...target.nodes], clusterOptions);
      break;
    }
    default: {
      const never: never = target;
      return never;
    }
  }
  reportConnectionErrors(redis, log.child({ redisConnection: name }));
  return redis;
}

/**
 * The connection a service gives BullMQ (its Queues or Workers), ready: a Queue made on a
 * fail-fast connection that is still connecting fails its first command and stays broken (with a
 * cluster, whose first connect takes longer, every request got 503). The warnings BullMQ re-emits
 * on every Queue and Worker are collapsed into one per outage: `errors.error` is the listener to
 * hang on them. BullMQ does not close a connection it was given; the caller closes it at shutdown.
 * Auto-pipelining stays off: BullMQ sends its own pipelines and MULTIs.
 */
export async function createBullConnection(
  url: string,
  role: Exclude<RedisRole, 'subscriber'>,
  name: string,
  log: Logger,
  messages: { readonly error: string; readonly restored: string },
  readyTimeoutMs = 30_000,
): Promise<{ readonly connection: Redis; readonly errors: { error(error: unknown): void } }> {
  const connection = createRedis(url, role, name, log, { enableAutoPipelining: false });
  const errors = connectionErrorLog(log, messages);
  connection.on('ready', () => errors.restored());
  await waitForReady(connection, readyTimeoutMs);
  return { connection, errors };
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
 * Whether Redis refused a write because it is at its `maxmemory` (with `noeviction`): the system is
 * full for now, not broken — a transient condition, never a reason to fail a job for good.
 */
export function isRedisOutOfMemory(error: unknown): boolean {
  const message = (error as { message?: unknown } | null)?.message;
  return typeof message === 'string' && /^OOM |OOM command not allowed/.test(message);
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
