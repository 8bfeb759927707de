import type { Redis } from 'ioredis';
import type { ModelRef } from '@conveyor/shared/contract/queue.contract';
import { INITIAL_STATE, type FeatureState } from '../alerts/alert-state.js';
import type { Observation } from '../drift/features.js';
import type { Labelled } from '../quality/quality.js';

/**
 * The monitor's state lives in Redis, not in a process: any number of monitors share the work of
 * one consumer group and see the same windows. Each event is applied by a Lua script that first
 * marks its stream entry as done (SET NX), so a redelivered event — after a crash, or reclaimed
 * from a dead consumer — is never counted twice.
 */
export const modelKey = (m: ModelRef) => `${m.name}@${m.version}`;

// KEYS: done, window, seq, closed-zset, prediction. ARGV: ttl, observation, prediction, size, closed-prefix, model key.
const APPEND = `
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return -1 end
if ARGV[3] ~= '' then redis.call('SET', KEYS[5], ARGV[3], 'EX', ARGV[1]) end
local n = redis.call('RPUSH', KEYS[2], ARGV[2])
if n >= tonumber(ARGV[4]) then
  local index = redis.call('INCR', KEYS[3])
  redis.call('RENAME', KEYS[2], ARGV[5] .. index)
  redis.call('ZADD', KEYS[4], index, ARGV[6] .. '|' .. index)
  return index
end
return 0`;

// KEYS: done, quality list. ARGV: ttl, item, max length.
const LABEL = `
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return -1 end
redis.call('LPUSH', KEYS[2], ARGV[2])
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[3]) - 1)
return 1`;

export interface StoredPrediction {
  label: string;
  confidence: number;
  model: ModelRef;
}

export class MonitorStore {
  private readonly p: string;

  constructor(
    private readonly redis: Redis,
    prefix: string,
  ) {
    this.p = `${prefix}:monitor`;
  }

  /** Applies a prediction once; returns the index of the window it closed, 0, or -1 for a duplicate. */
  async appendPrediction(
    entryId: string,
    model: ModelRef,
    jobId: string,
    observation: Observation,
    prediction: StoredPrediction,
    windowSize: number,
    ttlSeconds: number,
  ): Promise<number> {
    const mk = modelKey(model);
    await this.redis.sadd(`${this.p}:models`, mk);
    return (await this.redis.eval(
      APPEND,
      5,
      `${this.p}:done:p:${entryId}`,
      `${this.p}:window:${mk}`,
      `${this.p}:seq:${mk}`,
      `${this.p}:closed`,
      `${this.p}:pred:${jobId}`,
      ttlSeconds,
      JSON.stringify(observation),
      JSON.stringify(prediction),
      windowSize,
      `${this.p}:closedwin:${mk}:`,
      mk,
    )) as number;
  }

  async prediction(jobId: string): Promise<StoredPrediction | undefined> {
    const raw = await this.redis.get(`${this.p}:pred:${jobId}`);
    return raw ? (JSON.parse(raw) as StoredPrediction) : undefined;
  }

  /** Adds one labelled prediction to a model version's quality window, once per feedback entry. */
  async appendLabel(entryId: string, model: ModelRef, item: Labelled, max: number, ttlSeconds: number): Promise<boolean> {
    const result = (await this.redis.eval(
      LABEL,
      2,
      `${this.p}:done:f:${entryId}`,
      `${this.p}:quality:${modelKey(model)}`,
      ttlSeconds,
      JSON.stringify(item),
      max,
    )) as number;
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

  async featureState(model: ModelRef, feature: string): Promise<FeatureState> {
    const raw = await this.redis.hget(`${this.p}:state:${modelKey(model)}`, feature);
    return raw ? (JSON.parse(raw) as FeatureState) : INITIAL_STATE;
  }

  async saveFeatureState(model: ModelRef, feature: string, state: FeatureState): Promise<void> {
    await this.redis.hset(`${this.p}:state:${modelKey(model)}`, feature, JSON.stringify(state));
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
      await this.redis.eval(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
        1,
        key,
        token,
      );
    }
  }
}
