import type { Redis } from '@conveyor/shared/redis';
import { ReferenceProfile } from '@conveyor/shared/model/reference-profile';
import type { z } from 'zod';
import {
  FeatureState,
  Labelled,
  Observation,
  QualitySnapshot,
  StoredPrediction,
  TrackedModel,
  trackedKey,
  WindowRecord,
  WindowStreamEntry,
} from './store-records.js';

/**
 * The monitor's state lives in Redis, not in a process: any number of monitors share the work of
 * one consumer group and see the same windows. A batch of predictions is applied by one Lua script
 * per model version that first claims each job's prediction key (SET NX), so an event seen again —
 * redelivered after a crash, reclaimed from a dead consumer, or the same job published twice by two
 * workers — is never counted twice. Every key of a model version ends in its trackedKey
 * (`<serving name>@<version>`), so the versions of one model, and the models, never share a window,
 * a state or a quality list. What is read back is parsed with the schemas of store-records.ts.
 */

// KEYS: window, seq, closed-zset, models-set, tracked-hash, then one prediction key per event
// (`pred:<jobId>`). ARGV: ttl, window size, closed-prefix, model key, tracked record, then
// observation and prediction per event. Returns { applied, { index of each window closed } }. The
// prediction key doubles as the job's "already counted" marker (feedback reads it too), so a fresh
// event costs one SET and a share of one RPUSH. A batch that fills the window closes it where the
// event-by-event order would, and the rest of the batch goes into the next window. The models set
// is what monitors of the release before several models read; the tracked hash says more.
const APPEND = `
local size = tonumber(ARGV[2])
local fresh = {}
for i = 6, #KEYS do
  local o = 2 * i - 6
  if redis.call('SET', KEYS[i], ARGV[o + 1], 'NX', 'EX', ARGV[1]) then fresh[#fresh + 1] = ARGV[o] end
end
local closed = {}
if #fresh == 0 then return { 0, closed } end
redis.call('SADD', KEYS[4], ARGV[4])
redis.call('HSET', KEYS[5], ARGV[4], ARGV[5])
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

/** A tracked key split back into a model version, for keys written by monitors without the tracked hash. */
function untracked(key: string): TrackedModel {
  const at = key.lastIndexOf('@');
  const name = key.slice(0, at);
  return { name, model: { name, version: key.slice(at + 1) } };
}

const parseJson = <S extends z.ZodType>(schema: S, text: string): z.output<S> => schema.parse(JSON.parse(text));

export class MonitorStore {
  private readonly p: string;
  private readonly redis: ScriptedRedis;

  constructor(redis: Redis, prefix: string) {
    this.redis = withScripts(redis);
    this.p = `${prefix}:monitor`;
  }

  /** Applies one model version's predictions in stream order, each job at most once, in one script call. */
  async appendPredictions(
    tracked: TrackedModel,
    items: readonly PredictionItem[],
    windowSize: number,
    ttlSeconds: number,
  ): Promise<AppendResult> {
    if (items.length === 0) return { applied: 0, duplicates: 0, closed: [] };
    const mk = trackedKey(tracked);
    const lastEventAt = items.reduce((latest, i) => (i.observation.at > latest ? i.observation.at : latest), '');
    const record: TrackedModel = { name: tracked.name, model: tracked.model, lastEventAt };
    const keys: string[] = [
      `${this.p}:window:${mk}`,
      `${this.p}:seq:${mk}`,
      `${this.p}:closed`,
      `${this.p}:models`,
      `${this.p}:tracked`,
    ];
    const args: (string | number)[] = [ttlSeconds, windowSize, `${this.p}:closedwin:${mk}:`, mk, JSON.stringify(record)];
    for (const item of items) {
      keys.push(`${this.p}:pred:${item.jobId}`);
      args.push(JSON.stringify(item.observation), JSON.stringify(item.prediction));
    }
    const [applied, closed] = await this.redis.conveyorMonitorAppend(keys.length, ...keys, ...args);
    return { applied, duplicates: items.length - applied, closed };
  }

  async prediction(jobId: string): Promise<StoredPrediction | undefined> {
    const raw = await this.redis.get(`${this.p}:pred:${jobId}`);
    return raw ? parseJson(StoredPrediction, raw) : undefined;
  }

  /** Adds one labelled prediction to a model version's quality window, once per feedback entry. */
  async appendLabel(entryId: string, model: TrackedModel, item: Labelled, max: number, ttlSeconds: number): Promise<boolean> {
    const result = await this.redis.conveyorMonitorLabel(
      `${this.p}:done:f:${entryId}`,
      `${this.p}:quality:${trackedKey(model)}`,
      ttlSeconds,
      JSON.stringify(item),
      max,
    );
    return result === 1;
  }

  async labels(model: TrackedModel): Promise<Labelled[]> {
    return (await this.redis.lrange(`${this.p}:quality:${trackedKey(model)}`, 0, -1)).map((s) => parseJson(Labelled, s));
  }

  async openWindow(model: TrackedModel): Promise<Observation[]> {
    return (await this.redis.lrange(`${this.p}:window:${trackedKey(model)}`, 0, -1)).map((s) => parseJson(Observation, s));
  }

  /** Events in each model version's open window, in the order given (one pipeline). */
  async openWindowSizes(models: readonly TrackedModel[]): Promise<number[]> {
    if (models.length === 0) return [];
    const pipeline = this.redis.pipeline();
    for (const m of models) pipeline.llen(`${this.p}:window:${trackedKey(m)}`);
    const replies = (await pipeline.exec()) ?? [];
    return models.map((_, i) => Number(replies[i]?.[1] ?? 0));
  }

  /** Every model version seen, ordered by serving name then version. */
  async models(): Promise<TrackedModel[]> {
    const [tracked, members] = await Promise.all([
      this.redis.hgetall(`${this.p}:tracked`),
      this.redis.smembers(`${this.p}:models`),
    ]);
    const byKey = new Map<string, TrackedModel>();
    for (const [key, value] of Object.entries(tracked)) byKey.set(key, parseJson(TrackedModel, value));
    // Versions only monitors of the previous release saw have no tracked record.
    for (const key of members) if (!byKey.has(key)) byKey.set(key, untracked(key));
    return [...byKey.values()].sort((a, b) => a.name.localeCompare(b.name) || a.model.version.localeCompare(b.model.version));
  }

  /** Closed windows waiting for evaluation, oldest first: `<key>|index`. */
  async closedWindows(): Promise<{ model: TrackedModel; index: number; member: string }[]> {
    const members = await this.redis.zrange(`${this.p}:closed`, 0, -1);
    if (members.length === 0) return [];
    const tracked = new Map((await this.models()).map((m) => [trackedKey(m), m]));
    return members.map((member) => {
      const bar = member.lastIndexOf('|');
      const mk = member.slice(0, bar);
      return { model: tracked.get(mk) ?? untracked(mk), index: Number(member.slice(bar + 1)), member };
    });
  }

  async closedWindow(model: TrackedModel, index: number): Promise<Observation[]> {
    return (await this.redis.lrange(`${this.p}:closedwin:${trackedKey(model)}:${index}`, 0, -1)).map((s) =>
      parseJson(Observation, s),
    );
  }

  async lastEvaluated(model: TrackedModel): Promise<number> {
    return Number((await this.redis.get(`${this.p}:last:${trackedKey(model)}`)) ?? 0);
  }

  /**
   * Dequeues a closed window that another evaluation (this monitor's sweeper, or another monitor)
   * already finished: nothing is recorded twice.
   */
  async discardWindow(model: TrackedModel, index: number, member: string): Promise<void> {
    await this.redis
      .multi()
      .del(`${this.p}:closedwin:${trackedKey(model)}:${index}`)
      .zrem(`${this.p}:closed`, member)
      .exec();
  }

  /** Marks a window evaluated: its record goes to the windows stream, its values are dropped. */
  async finishWindow(model: TrackedModel, index: number, member: string, record: WindowRecord): Promise<void> {
    const mk = trackedKey(model);
    await this.redis
      .multi()
      .xadd(`${this.p}:windows`, 'MAXLEN', '~', 100_000, '*', 'window', JSON.stringify(record))
      .set(`${this.p}:last:${mk}`, index)
      .del(`${this.p}:closedwin:${mk}:${index}`)
      .zrem(`${this.p}:closed`, member)
      .exec();
  }

  /** The evaluated windows, oldest first (stale markers of older monitors left out): what the reports draw. */
  async windowRecords(count = 10_000): Promise<WindowRecord[]> {
    const entries = await this.redis.xrevrange(`${this.p}:windows`, '+', '-', 'COUNT', count);
    return entries
      .reverse()
      .map(([, fields]) => parseJson(WindowStreamEntry, fields[1]!))
      .filter((r): r is WindowRecord => !('stale' in r));
  }

  async featureStates(model: TrackedModel): Promise<Record<string, FeatureState>> {
    const raw = await this.redis.hgetall(`${this.p}:state:${trackedKey(model)}`);
    return Object.fromEntries(Object.entries(raw).map(([k, v]) => [k, parseJson(FeatureState, v)]));
  }

  async saveFeatureStates(model: TrackedModel, states: Readonly<Record<string, FeatureState>>): Promise<void> {
    const fields = Object.entries(states).flatMap(([feature, state]) => [feature, JSON.stringify(state)]);
    if (fields.length > 0) await this.redis.hset(`${this.p}:state:${trackedKey(model)}`, ...fields);
  }

  async latestDrift(model: TrackedModel): Promise<WindowRecord | undefined> {
    const raw = await this.redis.hget(`${this.p}:latest:${trackedKey(model)}`, 'drift');
    return raw ? parseJson(WindowRecord, raw) : undefined;
  }

  async latestQuality(model: TrackedModel): Promise<QualitySnapshot | undefined> {
    const raw = await this.redis.hget(`${this.p}:latest:${trackedKey(model)}`, 'quality');
    return raw ? parseJson(QualitySnapshot, raw) : undefined;
  }

  async saveLatestDrift(model: TrackedModel, record: WindowRecord): Promise<void> {
    await this.redis.hset(`${this.p}:latest:${trackedKey(model)}`, 'drift', JSON.stringify(record));
  }

  async saveLatestQuality(model: TrackedModel, snapshot: QualitySnapshot): Promise<void> {
    await this.redis.hset(`${this.p}:latest:${trackedKey(model)}`, 'quality', JSON.stringify(snapshot));
  }

  /**
   * The sample a reference is being learned from (`monitor:learning:<key>`, one observation per
   * element), and the reference learned (`monitor:learned:<key>`, JSON), kept for the version's life.
   */
  async addToLearning(model: TrackedModel, observations: readonly Observation[]): Promise<number> {
    if (observations.length === 0) return this.learningSize(model);
    return this.redis.rpush(`${this.p}:learning:${trackedKey(model)}`, ...observations.map((o) => JSON.stringify(o)));
  }

  async learningSize(model: TrackedModel): Promise<number> {
    return this.redis.llen(`${this.p}:learning:${trackedKey(model)}`);
  }

  async learningSample(model: TrackedModel): Promise<Observation[]> {
    const raw = await this.redis.lrange(`${this.p}:learning:${trackedKey(model)}`, 0, -1);
    return raw.map((r) => parseJson(Observation, r));
  }

  async learnedProfile(model: TrackedModel): Promise<ReferenceProfile | undefined> {
    const raw = await this.redis.get(`${this.p}:learned:${trackedKey(model)}`);
    return raw ? parseJson(ReferenceProfile, raw) : undefined;
  }

  async saveLearnedProfile(model: TrackedModel, profile: ReferenceProfile): Promise<void> {
    const key = trackedKey(model);
    await this.redis.multi().set(`${this.p}:learned:${key}`, JSON.stringify(profile)).del(`${this.p}:learning:${key}`).exec();
  }

  /** A short exclusive lock: one monitor evaluates a model version's windows at a time, in order. */
  async withLock<T>(model: TrackedModel, ttlMs: number, work: () => Promise<T>): Promise<T | undefined> {
    const key = `${this.p}:lock:${trackedKey(model)}`;
    const token = `${process.pid}-${Math.random()}`;
    if ((await this.redis.set(key, token, 'PX', ttlMs, 'NX')) !== 'OK') return undefined;
    try {
      return await work();
    } finally {
      await this.redis.conveyorMonitorUnlock(key, token);
    }
  }
}
