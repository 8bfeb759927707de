import type { Redis } from '@conveyor/shared/redis';
import type { ModelRef } from '@conveyor/shared/contract/queue.contract';
import type { FeatureState } from '../alerts/alert-state.js';
import type { Observation } from '../drift/features.js';
import type { Labelled } from '../quality/quality.js';

/**
 * The monitor's state lives in Redis, not in a process: any number of monitors share the work of
 * one consumer group and see the same windows. A batch of predictions is applied by one Lua script
 * per model version that first claims each job's prediction key (SET NX), so an event seen again —
 * redelivered after a crash, reclaimed from a dead consumer, or the same job published twice by two
 * workers — is never counted twice.
 */
export const modelKey = (m: ModelRef) => `${m.name}@${m.version}`;

// KEYS: window, seq, closed-zset, models-set, then one prediction key per event (`pred:<jobId>`).
// ARGV: ttl, window size, closed-prefix, model key, then observation and prediction per event.
// Returns { applied, { index of each window closed } }. The prediction key doubles as the job's
// "already counted" marker (feedback reads it too), so a fresh event costs one SET and a share of
// one RPUSH. A batch that fills the window closes it where the event-by-event order would, and the
// rest of the batch goes into the next window.
const APPEND = `
local size = tonumber(ARGV[2])
local fresh = {}
for i = 5, #KEYS do
  local o = 2 * i - 5
  if redis.call('SET', KEYS[i], ARGV[o + 1], 'NX', 'EX', ARGV[1]) then fresh[#fresh + 1] = ARGV[o] end
end
local closed = {}
if #fresh == 0 then return { 0, closed } end
redis.call('SADD', KEYS[4], ARGV[4])
local n = redis.call('LLEN', KEYS[1])
local at = 1
while at <= #fresh do
  -- at least one: a window already at or over size (WINDOW_SIZE lowered) closes on the next event
  local last = math.min(#fresh, at + math.max(1, size - n) - 1, at + 999)
  n = redis.call('RPUSH', KEYS[1], unpack(fresh, at, last))
  at = last + 1
  if n >= size then
    local index = redis.call('INCR', KEYS[2])
    redis.call('RENAME', KEYS[1], ARGV[3] .. index)
    redis.call('ZADD', KEYS[3], index, ARGV[4] .. '|' .. index)
    closed[#closed + 1] = index
    n = 0
  end
end
return { #fresh, closed }`;

// KEYS: done, quality list. ARGV: ttl, item, max length.
const LABEL = `
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return -1 end
redis.call('LPUSH', KEYS[2], ARGV[2])
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[3]) - 1)
return 1`;

// KEYS: lock. ARGV: token.
const UNLOCK = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

/** The scripts, registered once per connection and sent by SHA (EVALSHA; ioredis falls back on NOSCRIPT). */
type ScriptedRedis = Redis & {
  conveyorMonitorAppend(numKeys: number, ...args: (string | number)[]): Promise<[number, number[]]>;
  conveyorMonitorLabel(done: string, list: string, ttl: number, item: string, max: number): Promise<number>;
  conveyorMonitorUnlock(key: string, token: string): Promise<number>;
};

function withScripts(redis: Redis): ScriptedRedis {
  redis.defineCommand('conveyorMonitorAppend', { lua: APPEND });
  redis.defineCommand('conveyorMonitorLabel', { lua: LABEL, numberOfKeys: 2 });
  redis.defineCommand('conveyorMonitorUnlock', { lua: UNLOCK, numberOfKeys: 1 });
  return redis as ScriptedRedis;
}

/** One prediction event as the window keeps it. */
export interface PredictionItem {
  readonly jobId: string;
  readonly observation: Observation;
  readonly prediction: StoredPrediction;
}

export interface AppendResult {
  /** Events counted now; the others of the batch had been counted before. */
  readonly applied: number;
  readonly duplicates: number;
  /** Indexes of the windows this batch closed, in order. */
  readonly closed: readonly number[];
}

export interface StoredPrediction {
  label: string;
  confidence: number;
  model: ModelRef;
}

export class MonitorStore {
  private readonly p: string;
  private readonly redis: ScriptedRedis;

  constructor(redis: Redis, prefix: string) {
    this.redis = withScripts(redis);
    this.p = `${prefix}:monitor`;
  }

  /** Applies one model version's predictions in stream order, each job at most once, in one script call. */
  async appendPredictions(
    model: ModelRef,
    items: readonly PredictionItem[],
    windowSize: number,
    ttlSeconds: number,
  ): Promise<AppendResult> {
    if (items.length === 0) return { applied: 0, duplicates: 0, closed: [] };
    const mk = modelKey(model);
    const keys: string[] = [`${this.p}:window:${mk}`, `${this.p}:seq:${mk}`, `${this.p}:closed`, `${this.p}:models`];
    const args: (string | number)[] = [ttlSeconds, windowSize, `${this.p}:closedwin:${mk}:`, mk];
    for (const item of items) {
      keys.push(`${this.p}:pred:${item.jobId}`);
      args.push(JSON.stringify(item.observation), JSON.stringify(item.prediction));
    }
    const [applied, closed] = await this.redis.conveyorMonitorAppend(keys.length, ...keys, ...args);
    return { applied, duplicates: items.length - applied, closed };
  }

  async prediction(jobId: string): Promise<StoredPrediction | undefined> {
    const raw = await this.redis.get(`${this.p}:pred:${jobId}`);
    return raw ? (JSON.parse(raw) as StoredPrediction) : undefined;
  }

  /** Adds one labelled prediction to a model version's quality window, once per feedback entry. */
  async appendLabel(entryId: string, model: ModelRef, item: Labelled, max: number, ttlSeconds: number): Promise<boolean> {
    const result = await this.redis.conveyorMonitorLabel(
      `${this.p}:done:f:${entryId}`,
      `${this.p}:quality:${modelKey(model)}`,
      ttlSeconds,
      JSON.stringify(item),
      max,
    );
    return result === 1;
  }

  async labels(model: ModelRef): Promise<Labelled[]> {
    return (await this.redis.lrange(`${this.p}:quality:${modelKey(model)}`, 0, -1)).map((s) => JSON.parse(s) as Labelled);
  }

  async openWindow(model: ModelRef): Promise<Observation[]> {
    return (await this.redis.lrange(`${this.p}:window:${modelKey(model)}`, 0, -1)).map((s) => JSON.parse(s) as Observation);
  }

  async models(): Promise<ModelRef[]> {
    const keys = await this.redis.smembers(`${this.p}:models`);
    return keys.map((k) => {
      const at = k.lastIndexOf('@');
      return { name: k.slice(0, at), version: k.slice(at + 1) };
    });
  }

  /** Closed windows waiting for evaluation, oldest first: `model@version|index`. */
  async closedWindows(): Promise<{ model: ModelRef; index: number; member: string }[]> {
    const members = await this.redis.zrange(`${this.p}:closed`, 0, -1);
    return members.map((member) => {
      const bar = member.lastIndexOf('|');
      const mk = member.slice(0, bar);
      const at = mk.lastIndexOf('@');
      return { model: { name: mk.slice(0, at), version: mk.slice(at + 1) }, index: Number(member.slice(bar + 1)), member };
    });
  }

  async closedWindow(model: ModelRef, index: number): Promise<Observation[]> {
    return (await this.redis.lrange(`${this.p}:closedwin:${modelKey(model)}:${index}`, 0, -1)).map(
      (s) => JSON.parse(s) as Observation,
    );
  }

  async lastEvaluated(model: ModelRef): Promise<number> {
    return Number((await this.redis.get(`${this.p}:last:${modelKey(model)}`)) ?? 0);
  }

  /** Marks a window evaluated: its record goes to the windows stream, its values are dropped. */
  async finishWindow(model: ModelRef, index: number, member: string, record: unknown): Promise<void> {
    const mk = modelKey(model);
    await this.redis
      .multi()
      .xadd(`${this.p}:windows`, 'MAXLEN', '~', 100_000, '*', 'window', JSON.stringify(record))
      .set(`${this.p}:last:${mk}`, index)
      .del(`${this.p}:closedwin:${mk}:${index}`)
      .zrem(`${this.p}:closed`, member)
      .exec();
  }

  async windowRecords(count = 10_000): Promise<unknown[]> {
    const entries = await this.redis.xrevrange(`${this.p}:windows`, '+', '-', 'COUNT', count);
    return entries.reverse().map(([, fields]) => JSON.parse(fields[1]!) as unknown);
  }

  async featureStates(model: ModelRef): Promise<Record<string, FeatureState>> {
    const raw = await this.redis.hgetall(`${this.p}:state:${modelKey(model)}`);
    return Object.fromEntries(Object.entries(raw).map(([k, v]) => [k, JSON.parse(v) as FeatureState]));
  }

  async saveFeatureStates(model: ModelRef, states: Readonly<Record<string, FeatureState>>): Promise<void> {
    const fields = Object.entries(states).flatMap(([feature, state]) => [feature, JSON.stringify(state)]);
    if (fields.length > 0) await this.redis.hset(`${this.p}:state:${modelKey(model)}`, ...fields);
  }

  async latest(model: ModelRef, field: 'drift' | 'quality'): Promise<unknown> {
    const raw = await this.redis.hget(`${this.p}:latest:${modelKey(model)}`, field);
    return raw ? (JSON.parse(raw) as unknown) : undefined;
  }

  async saveLatest(model: ModelRef, field: 'drift' | 'quality', value: unknown): Promise<void> {
    await this.redis.hset(`${this.p}:latest:${modelKey(model)}`, field, JSON.stringify(value));
  }

  /** A short exclusive lock: one monitor evaluates a model version's windows at a time, in order. */
  async withLock<T>(model: ModelRef, ttlMs: number, work: () => Promise<T>): Promise<T | undefined> {
    const key = `${this.p}:lock:${modelKey(model)}`;
    const token = `${process.pid}-${Math.random()}`;
    if ((await this.redis.set(key, token, 'PX', ttlMs, 'NX')) !== 'OK') return undefined;
    try {
      return await work();
    } finally {
      await this.redis.conveyorMonitorUnlock(key, token);
    }
  }
}
