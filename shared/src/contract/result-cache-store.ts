import type { Redis } from '@conveyor/shared/redis';
import { CachedAnswer } from './cache.contract.js';
import type { RedisKeys } from './redis-keys.js';

/** What a gateway's look-up found. */
export type CacheFind =
  /** A stored answer (and its age). */
  | { readonly kind: 'hit'; readonly answer: CachedAnswer }
  /** Nothing stored, and the request does not merge (or merging was not asked for). */
  | { readonly kind: 'miss' }
  /** Nothing stored; an identical request's job `jobId` is queued or running: wait for it. */
  | { readonly kind: 'follow'; readonly jobId: string }
  /** Nothing stored and nothing in flight: this request's job leads the in-flight record now. */
  | { readonly kind: 'lead' };

export interface ResultCacheOptions {
  /** How long an answer is kept (RESULT_CACHE_TTL_SECONDS). */
  readonly ttlSeconds: number;
  /** A model's budget: bytes of answers (and their accounting) kept at most (RESULT_CACHE_MAX_BYTES_PER_MODEL). */
  readonly maxBytesPerModel: number;
  /** Entries one client's jobs may hold in a model's cache (RESULT_CACHE_ENTRIES_PER_CLIENT). */
  readonly entriesPerClient: number;
}

/**
 * Bytes an entry is counted for beyond its JSON: its key, its members in the model's and the
 * client's index and its field in the sizes hash (~4 × 60 bytes of names, plus Redis's own overhead).
 */
export const ENTRY_OVERHEAD_BYTES = 300;

// An entry is `<generation>|<answer JSON>`; it is served only while its generation is the model's
// current one (KEYS[3], field `gen`), which a worker bumps before it serves a (version, spec) other
// than the last one begun. So once a new version has begun, no gateway finds an older version's
// answer, however stale its view of the fleet (see begin()).
const CURRENT = `
local function current(entry)
  if not entry then return false end
  local gen = redis.call('HGET', KEYS[3], 'gen')
  local at = string.find(entry, '|', 1, true)
  if gen and at and string.sub(entry, 1, at - 1) == gen then return string.sub(entry, at + 1) end
  return false
end
`;

// KEYS: the entry, the in-flight record, the model's serving generation. ARGV: the job id that would
// lead, the record's TTL (ms). Either the stored answer, or the job to follow (counted as one more
// follower), or this request leads: one script, so of 100 identical requests exactly one leads.
const FIND = `${CURRENT}
local entry = current(redis.call('GET', KEYS[1]))
if entry then return {'hit', entry} end
local job = redis.call('HGET', KEYS[2], 'job')
if job then
  redis.call('HINCRBY', KEYS[2], 'followers', 1)
  return {'follow', job}
end
redis.call('HSET', KEYS[2], 'job', ARGV[1], 'followers', 0)
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return {'lead'}`;

// KEYS: the entry, (unused), the model's serving generation. The answer, if current.
const LOOKUP = `${CURRENT}
return current(redis.call('GET', KEYS[1]))`;

// KEYS: the model's serving generation. ARGV: `<version>|<spec>` a worker is about to serve. The
// generation its answers are stored under: the current one if that pair is the last one begun,
// else the next (which retires every answer stored before).
const BEGIN = `
if redis.call('HGET', KEYS[1], 'serving') == ARGV[1] then
  local gen = redis.call('HGET', KEYS[1], 'gen')
  if gen then return tonumber(gen) end
end
redis.call('HSET', KEYS[1], 'serving', ARGV[1])
return redis.call('HINCRBY', KEYS[1], 'gen', 1)`;

// KEYS: the in-flight record. ARGV: the job. A follower gone: one fewer waits (if the record is still the job's).
const LEAVE = `
if redis.call('HGET', KEYS[1], 'job') == ARGV[1] and tonumber(redis.call('HGET', KEYS[1], 'followers') or '0') > 0 then
  redis.call('HINCRBY', KEYS[1], 'followers', -1)
end
return 0`;

// KEYS: the in-flight record. ARGV: the job, '1' to drop the record even with followers (its job
// was never made). Returns how many follow the job through it (0: nobody; the record is dropped
// then, so nobody can start following after this answer).
const RELEASE = `
if redis.call('HGET', KEYS[1], 'job') ~= ARGV[1] then return 0 end
local followers = tonumber(redis.call('HGET', KEYS[1], 'followers') or '0')
if followers == 0 or ARGV[2] == '1' then redis.call('DEL', KEYS[1]) end
return followers`;

// KEYS: the entry, the model's index, the model's sizes, the client's index, the in-flight record.
// ARGV: the answer JSON ('' = store nothing, only clear the record), the entry key, now (ms), TTL (ms),
// the model's budget (bytes), entries per client, the prefix of the model's entries, the client,
// the prefix of the model's client indexes, the job id, the overhead counted per entry.
// The job's in-flight record is cleared (if still its own); then the entry is stored and the
// accounts kept: entries past their TTL leave them, the client's oldest beyond its share go, then
// the model's oldest until its bytes fit the budget. Each entry is forgotten by one function, which
// removes it everywhere, so the sum cannot drift from the entries kept.
const STORE = `
local function forget(member)
  local held = redis.call('HGET', KEYS[3], member)
  if not held then return end
  local bytes, client = string.match(held, '^(%d+) (.*)$')
  redis.call('HDEL', KEYS[3], member)
  redis.call('HINCRBY', KEYS[3], '#bytes', -(tonumber(bytes) or 0))
  redis.call('ZREM', KEYS[2], member)
  if client then redis.call('ZREM', ARGV[9] .. client, member) end
  redis.call('DEL', ARGV[7] .. member)
end
if redis.call('HGET', KEYS[5], 'job') == ARGV[10] then redis.call('DEL', KEYS[5]) end
if ARGV[1] == '' then return 0 end
local now, ttl = tonumber(ARGV[3]), tonumber(ARGV[4])
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - ttl, 'LIMIT', 0, 100)) do forget(m) end
forget(ARGV[2])
local size = string.len(ARGV[1]) + tonumber(ARGV[11])
-- Stored within one millisecond, entries still go oldest first: a sequence breaks the tie.
local score = now + (redis.call('HINCRBY', KEYS[3], '#seq', 1) % 1000) / 1000
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
redis.call('ZADD', KEYS[2], score, ARGV[2])
redis.call('ZADD', KEYS[4], score, ARGV[2])
redis.call('HSET', KEYS[3], ARGV[2], size .. ' ' .. ARGV[8])
redis.call('HINCRBY', KEYS[3], '#bytes', size)
local over = redis.call('ZCARD', KEYS[4]) - tonumber(ARGV[6])
if over > 0 then
  for _, m in ipairs(redis.call('ZRANGE', KEYS[4], 0, over - 1)) do forget(m) end
end
local budget = tonumber(ARGV[5])
while tonumber(redis.call('HGET', KEYS[3], '#bytes') or '0') > budget do
  local oldest = redis.call('ZRANGE', KEYS[2], 0, 0)
  if #oldest == 0 then break end
  forget(oldest[1])
end
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('PEXPIRE', KEYS[3], ttl)
redis.call('PEXPIRE', KEYS[4], ttl)
return 1`;

type CacheRedis = Redis & {
  conveyorCacheFind(entry: string, inflight: string, serving: string, jobId: string, ttlMs: number): Promise<string[]>;
  conveyorCacheLookup(entry: string, unused: string, serving: string): Promise<string | null>;
  conveyorCacheBegin(serving: string, pair: string): Promise<number>;
  conveyorCacheLeave(inflight: string, jobId: string): Promise<number>;
  conveyorCacheRelease(inflight: string, jobId: string, force: string): Promise<number>;
  conveyorCacheStore(
    entry: string,
    index: string,
    sizes: string,
    clientIndex: string,
    inflight: string,
    answer: string,
    entryKey: string,
    now: number,
    ttlMs: number,
    budget: number,
    perClient: number,
    entryPrefix: string,
    client: string,
    clientPrefix: string,
    jobId: string,
    overhead: number,
  ): Promise<number>;
};

/**
 * The one owner of the shared result cache's keys (`redisKeys().resultCache*`, docs/result-cache.md):
 * gateways look answers up and keep the in-flight records of identical requests; workers store
 * answers and clear the records when a job's result is committed. Every change that touches more
 * than one key is one Lua script, so concurrent gateways and workers never see half of one.
 */
export class ResultCacheStore {
  private readonly redis: CacheRedis;

  constructor(
    redis: Redis,
    private readonly keys: RedisKeys,
  ) {
    // Defined now, not on first use (see JobStore: auto-pipelining copies commands when it opens a pipeline).
    if (typeof (redis as Partial<CacheRedis> & Redis).conveyorCacheFind !== 'function') {
      redis.defineCommand('conveyorCacheFind', { numberOfKeys: 3, lua: FIND });
      redis.defineCommand('conveyorCacheLookup', { numberOfKeys: 3, lua: LOOKUP });
      redis.defineCommand('conveyorCacheBegin', { numberOfKeys: 1, lua: BEGIN });
      redis.defineCommand('conveyorCacheLeave', { numberOfKeys: 1, lua: LEAVE });
      redis.defineCommand('conveyorCacheRelease', { numberOfKeys: 1, lua: RELEASE });
      redis.defineCommand('conveyorCacheStore', { numberOfKeys: 5, lua: STORE });
    }
    this.redis = redis as CacheRedis;
  }

  // --- the gateway's side ---

  /** The stored answer of `entry`, if of the current generation (one script); an unreadable one is a miss. */
  async lookup(model: string, entry: string): Promise<CacheFind> {
    const key = this.keys.resultCache(model, entry);
    return found(await this.redis.conveyorCacheLookup(key, key, this.keys.resultCacheServing(model)));
  }

  /**
   * The stored answer of `entry`, else the job an identical request of the same client waits for
   * (`inflight`), else `jobId` leads from now on (for `ttlMs` at most): one round trip.
   */
  async lookupOrJoin(model: string, entry: string, inflight: string, jobId: string, ttlMs: number): Promise<CacheFind> {
    const [kind, value] = await this.redis.conveyorCacheFind(
      this.keys.resultCache(model, entry),
      this.keys.resultCacheInflight(model, inflight),
      this.keys.resultCacheServing(model),
      jobId,
      ttlMs,
    );
    if (kind === 'hit') return found(value ?? null);
    if (kind === 'follow' && value) return { kind: 'follow', jobId: value };
    return { kind: 'lead' };
  }

  /** A follower of `jobId` hung up: it no longer counts among those who want the job. */
  async leave(model: string, inflight: string, jobId: string): Promise<void> {
    await this.redis.conveyorCacheLeave(this.keys.resultCacheInflight(model, inflight), jobId);
  }

  /**
   * The leader of `inflight` is gone (its caller hung up) or its job was never made (`force`): how
   * many identical requests still wait for `jobId`. When none does, the record is dropped in the same
   * script, so no request can start following a job that is about to be cancelled.
   */
  async release(model: string, inflight: string, jobId: string, force = false): Promise<number> {
    return this.redis.conveyorCacheRelease(this.keys.resultCacheInflight(model, inflight), jobId, force ? '1' : '');
  }

  // --- the worker's side (and the gateway's cancellations) ---

  /**
   * A worker is about to serve `version` with answer spec `spec` (before the model takes its first
   * job, at start and at every swap): the generation to store its answers under. A pair other than
   * the last one begun starts a new generation, so every answer stored before stops being served at
   * once, on every gateway — a gateway's view of which version is live may lag a heartbeat, this
   * does not. (During a rolling swap the older version's answers are stored under a generation
   * already past: harmless, never served.)
   */
  async begin(model: string, version: string, spec: string): Promise<number> {
    return this.redis.conveyorCacheBegin(this.keys.resultCacheServing(model), `${version}|${spec}`);
  }

  /**
   * A job's final result is committed: its in-flight record (if it still leads one) is cleared, and
   * a completed answer is stored under `entry` within the model's budget and `client`'s share.
   */
  async settle(
    model: string,
    jobId: string,
    inflight: string | undefined,
    store?: {
      readonly entry: string;
      readonly answer: CachedAnswer;
      /** The generation begun for the version that ran (begin()). */
      readonly generation: number;
      readonly client: string;
      readonly options: ResultCacheOptions;
    },
  ): Promise<void> {
    if (!store && !inflight) return;
    const { keys } = this;
    // A job that leads no record clears a key nobody can hold (the job id is not an inflight name).
    const record = keys.resultCacheInflight(model, inflight ?? `none:${jobId}`);
    const entry = store?.entry ?? '';
    const client = store?.client ?? '';
    await this.redis.conveyorCacheStore(
      keys.resultCache(model, entry),
      keys.resultCacheIndex(model),
      keys.resultCacheSizes(model),
      keys.resultCacheClient(model, client),
      record,
      store ? `${store.generation}|${JSON.stringify(store.answer)}` : '',
      entry,
      Date.now(),
      (store?.options.ttlSeconds ?? 1) * 1000,
      store?.options.maxBytesPerModel ?? 0,
      store?.options.entriesPerClient ?? 0,
      keys.resultCache(model, ''),
      client,
      keys.resultCacheClient(model, ''),
      jobId,
      ENTRY_OVERHEAD_BYTES,
    );
  }

  /** A model's cache: entries and the bytes they are counted for (for tests and operators). */
  async usage(model: string): Promise<{ entries: number; bytes: number }> {
    const [entries, bytes] = await Promise.all([
      this.redis.zcard(this.keys.resultCacheIndex(model)),
      this.redis.hget(this.keys.resultCacheSizes(model), '#bytes'),
    ]);
    return { entries, bytes: Number(bytes ?? 0) };
  }
}

function found(raw: string | null): CacheFind {
  if (raw === null) return { kind: 'miss' };
  try {
    const parsed = CachedAnswer.safeParse(JSON.parse(raw));
    return parsed.success ? { kind: 'hit', answer: parsed.data } : { kind: 'miss' };
  } catch {
    return { kind: 'miss' };
  }
}
