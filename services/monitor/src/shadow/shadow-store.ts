import { z } from 'zod';
import { ModelRef } from '@conveyor/shared/contract/common.contract';
import type { Redis } from '@conveyor/shared/redis';

/**
 * The shadow pairs' figures per served model and shadow version, in Redis like every monitor state
 * (`<prefix>:monitor:shadow:*`, owned here), so every monitor shows the same. Pairs are counted in
 * windows of WINDOW_SIZE, as drift's: the window filling now and the last one closed, each as the
 * count of pairs, of agreeing pairs (same top-1 label) and the sum of confidence shifts. A script
 * per batch claims each pair's job first (SET NX), so a redelivered entry is never counted twice.
 */
export interface ShadowTracked {
  /** The serving name. */
  readonly name: string;
  readonly shadow: ModelRef;
}

/** One pair as a window counts it. */
export interface ShadowItem {
  readonly jobId: string;
  readonly agree: boolean;
  /** |shadow's probability of production's label − production's confidence| (compare.ts's figure). */
  readonly shift: number;
}

export const ShadowRecord = z.object({
  name: z.string(),
  shadow: ModelRef,
  /** The production versions its pairs were made beside (the last one). */
  production: ModelRef,
  lastPairAt: z.string(),
});
export type ShadowRecord = z.infer<typeof ShadowRecord>;

export interface WindowCounts {
  readonly size: number;
  readonly agree: number;
  readonly shift: number;
}

export interface ShadowState {
  readonly record: ShadowRecord;
  /** Pairs counted since the shadow was first seen. */
  readonly pairs: number;
  readonly open: WindowCounts;
  readonly last: (WindowCounts & { closedAt: string }) | undefined;
}

// KEYS: open hash, last hash, records hash, then one claim key per pair. ARGV: ttl, window size,
// tracked key, record JSON, now, then agree (0/1) and shift per pair. Returns the pairs counted.
const APPLY = `
local size = tonumber(ARGV[2])
local counted = 0
for i = 4, #KEYS do
  if redis.call('SET', KEYS[i], '1', 'NX', 'EX', ARGV[1]) then
    local o = 2 * i - 2
    counted = counted + 1
    redis.call('HINCRBY', KEYS[1], 'total', 1)
    local n = redis.call('HINCRBY', KEYS[1], 'size', 1)
    redis.call('HINCRBY', KEYS[1], 'agree', tonumber(ARGV[o]))
    redis.call('HINCRBYFLOAT', KEYS[1], 'shift', ARGV[o + 1])
    if n >= size then
      local open = redis.call('HMGET', KEYS[1], 'size', 'agree', 'shift')
      redis.call('HSET', KEYS[2], 'size', open[1], 'agree', open[2], 'shift', open[3], 'closedAt', ARGV[5])
      redis.call('HSET', KEYS[1], 'size', 0, 'agree', 0, 'shift', 0)
    end
  end
end
if counted > 0 then redis.call('HSET', KEYS[3], ARGV[3], ARGV[4]) end
return counted`;

type ScriptedRedis = Redis & { conveyorShadowApply(numKeys: number, ...args: (string | number)[]): Promise<number> };

export const shadowKey = (t: ShadowTracked) => `${t.name}@${t.shadow.version}`;

export class ShadowStore {
  private readonly p: string;
  private readonly redis: ScriptedRedis;

  constructor(redis: Redis, prefix: string) {
    redis.defineCommand('conveyorShadowApply', { lua: APPLY });
    this.redis = redis as ScriptedRedis;
    this.p = `${prefix}:monitor:shadow`;
  }

  /** Counts one shadow's pairs in stream order, each job once; returns how many were new. */
  async apply(
    tracked: ShadowTracked,
    production: ModelRef,
    items: readonly ShadowItem[],
    lastPairAt: string,
    windowSize: number,
    ttlSeconds: number,
  ): Promise<number> {
    if (items.length === 0) return 0;
    const key = shadowKey(tracked);
    const record: ShadowRecord = { name: tracked.name, shadow: tracked.shadow, production, lastPairAt };
    const keys = [
      `${this.p}:open:${key}`,
      `${this.p}:last:${key}`,
      `${this.p}:records`,
      ...items.map((i) => `${this.p}:seen:${key}:${i.jobId}`),
    ];
    const args = [ttlSeconds, windowSize, key, JSON.stringify(record), new Date().toISOString()];
    for (const i of items) args.push(i.agree ? 1 : 0, String(i.shift));
    return this.redis.conveyorShadowApply(keys.length, ...keys, ...args);
  }

  /** Every shadow seen, with its windows. */
  async states(): Promise<ShadowState[]> {
    const records = await this.redis.hgetall(`${this.p}:records`);
    return Promise.all(
      Object.entries(records).map(async ([key, json]) => {
        const record = ShadowRecord.parse(JSON.parse(json));
        const [open, last] = await Promise.all([
          this.redis.hgetall(`${this.p}:open:${key}`),
          this.redis.hgetall(`${this.p}:last:${key}`),
        ]);
        return {
          record,
          pairs: Number(open.total ?? 0),
          open: counts(open),
          last: last.closedAt ? { ...counts(last), closedAt: last.closedAt } : undefined,
        };
      }),
    );
  }
}

function counts(hash: Record<string, string>): WindowCounts {
  return { size: Number(hash.size ?? 0), agree: Number(hash.agree ?? 0), shift: Number(hash.shift ?? 0) };
}
