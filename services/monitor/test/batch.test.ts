import { randomUUID } from 'node:crypto';
import { expect } from 'chai';
import type { Redis } from 'ioredis';
import pino from 'pino';
import { redisKeys } from '@conveyor/shared/contract/redis-keys';
import type { ModelRef } from '@conveyor/shared/contract/common.contract';
import type { PredictionEvent } from '@conveyor/shared/contract/events.contract';
import { publish } from '../../../test/support/events.js';
import { keysUnder, randomPrefix, testRedis } from '../../../test/support/redis.js';
import { until } from '../../../test/support/wait.js';
import { AlertSink } from '../src/alerts/alert-sink.js';
import type { Observation } from '../src/drift/features.js';
import { Monitor } from '../src/monitor.js';
import { References } from '../src/reference/learned-reference.js';
import { ProfileSource } from '../src/reference/profile-source.js';
import { MonitorStore, type PredictionItem } from '../src/store/monitor-store.js';
import { trackedKey, type TrackedModel } from '../src/store/store-records.js';
import { StreamConsumer, type BatchHandler, type ConsumerOptions } from '../src/store/stream-consumer.js';

/**
 * Batched application of prediction events against real Redis: the windows a batch produces are
 * the ones the event-by-event script produced, a job is counted once however often it is
 * published, and the consumer acknowledges, retries, dead-letters and reclaims per entry.
 */
const log = pino({ level: 'silent' });
const model: ModelRef = { name: 'digits', version: 'test-1' };
const tracked: TrackedModel = { name: 'digits', model };

// The per-event script the batched one replaced (dedup key aside), kept here as the reference.
const PER_EVENT = `
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

function items(n: number, from = 0): PredictionItem[] {
  return Array.from({ length: n }, (_, i) => {
    const observation: Observation = {
      at: new Date(Date.UTC(2026, 0, 1, 0, 0, from + i)).toISOString(),
      numeric: { brightness: (from + i) / 10_000, contrast: 0.5, inkRatio: 0.2, confidence: 0.9 },
      predictedClass: String((from + i) % 10),
    };
    return { jobId: randomUUID(), observation, prediction: { label: observation.predictedClass, confidence: 0.9, model } };
  });
}

async function appendPerEvent(redis: Redis, prefix: string, item: PredictionItem, windowSize: number): Promise<void> {
  const p = `${prefix}:monitor`;
  const mk = trackedKey(tracked);
  await redis.sadd(`${p}:models`, mk);
  await redis.eval(
    PER_EVENT,
    5,
    `${p}:done:ref:${item.jobId}`,
    `${p}:window:${mk}`,
    `${p}:seq:${mk}`,
    `${p}:closed`,
    `${p}:pred:${item.jobId}`,
    3600,
    JSON.stringify(item.observation),
    JSON.stringify(item.prediction),
    windowSize,
    `${p}:closedwin:${mk}:`,
    mk,
  );
}

/** Every window a prefix holds: closed ones by index, the open one, the counters. */
async function windowsOf(redis: Redis, prefix: string) {
  const p = `${prefix}:monitor`;
  const mk = trackedKey(tracked);
  const seq = Number((await redis.get(`${p}:seq:${mk}`)) ?? 0);
  const closed: string[][] = [];
  for (let i = 1; i <= seq; i++) closed.push(await redis.lrange(`${p}:closedwin:${mk}:${i}`, 0, -1));
  return {
    seq,
    closed,
    open: await redis.lrange(`${p}:window:${mk}`, 0, -1),
    queue: await redis.zrange(`${p}:closed`, 0, -1, 'WITHSCORES'),
    models: await redis.smembers(`${p}:models`),
  };
}

function event(jobId = randomUUID(), brightness = 0.1): PredictionEvent {
  return {
    kind: 'prediction',
    version: 1,
    jobId,
    requestId: `req-${jobId.slice(0, 8)}`,
    at: new Date().toISOString(),
    model,
    prediction: { label: '7', index: 7, confidence: 0.9, top: [{ label: '7', confidence: 0.9 }] },
    timings: { queueMs: 1, preprocessMs: 1, inferenceMs: 1, totalMs: 3 },
    input: { format: 'png', bytes: 10, width: 28, height: 28, brightness, contrast: 0.2, inkRatio: 0.1, inverted: false },
  };
}

describe('batched prediction windows (real Redis)', () => {
  let redis: Redis;
  const prefixes: string[] = [];
  const prefix = (name: string) => {
    const p = randomPrefix(name);
    prefixes.push(p);
    return p;
  };
  before(() => {
    redis = testRedis();
  });
  after(async () => {
    for (const p of prefixes) {
      const found = await keysUnder(redis, p);
      if (found.length > 0) await redis.del(...found);
    }
    await redis.quit();
  });

  for (const { name, windowSize, batches } of [
    // 200 leave the window two thirds full; the batch of 500 closes it after its 100th event, fills
    // and closes the next one, and leaves 100 in a third.
    { name: 'a batch of 500 closing a window of 300 in its middle', windowSize: 300, batches: [200, 500, 137, 263] },
    { name: 'batches that close many small windows each', windowSize: 7, batches: [1, 6, 500, 13, 3, 4] },
    { name: 'single events', windowSize: 5, batches: [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1] },
  ]) {
    it(`gives the windows of event-by-event application: ${name}`, async () => {
      const all = items(batches.reduce((a, b) => a + b, 0));
      const reference = prefix('win-ref');
      const batched = prefix('win-batch');
      for (const item of all) await appendPerEvent(redis, reference, item, windowSize);
      const store = new MonitorStore(redis, batched);
      let at = 0;
      const closedByBatches: number[] = [];
      for (const size of batches) {
        const result = await store.appendPredictions(tracked, all.slice(at, at + size), windowSize, 3600);
        expect(result).to.include({ applied: size, duplicates: 0 });
        closedByBatches.push(...result.closed);
        at += size;
      }
      const expected = await windowsOf(redis, reference);
      const actual = await windowsOf(redis, batched);
      expect(actual).to.deep.equal(expected);
      expect(expected.seq).to.equal(Math.floor(all.length / windowSize));
      expect(closedByBatches).to.deep.equal(Array.from({ length: expected.seq }, (_, i) => i + 1));
      // Feedback joins on the stored prediction, as before.
      expect(await store.prediction(all[0]!.jobId)).to.deep.equal(all[0]!.prediction);
    });
  }

  it('closes an over-full window on the next event after the window size was lowered, as before', async () => {
    const all = items(15);
    const reference = prefix('shrink-ref');
    const batched = prefix('shrink-batch');
    for (const item of all.slice(0, 10)) await appendPerEvent(redis, reference, item, 20);
    for (const item of all.slice(10)) await appendPerEvent(redis, reference, item, 5);
    const store = new MonitorStore(redis, batched);
    await store.appendPredictions(tracked, all.slice(0, 10), 20, 3600);
    expect((await store.appendPredictions(tracked, all.slice(10), 5, 3600)).closed).to.deep.equal([1]);
    expect(await windowsOf(redis, batched)).to.deep.equal(await windowsOf(redis, reference));
  });

  it('counts a job once within a batch, across batches, and when applied again', async () => {
    const store = new MonitorStore(redis, prefix('dup-store'));
    const [a, b, c] = items(3);
    const first = await store.appendPredictions(tracked, [a!, b!, { ...a!, observation: c!.observation }], 10, 3600);
    expect(first).to.deep.equal({ applied: 2, duplicates: 1, closed: [] });
    const again = await store.appendPredictions(tracked, [b!, c!, a!], 10, 3600);
    expect(again).to.deep.equal({ applied: 1, duplicates: 2, closed: [] });
    expect((await store.openWindow(tracked)).map((o) => o.at)).to.deep.equal([a, b, c].map((i) => i!.observation.at));
  });

  describe('through the stream consumer and the monitor', () => {
    const group = 'monitor';
    const options = (stream: string, extra: Partial<ConsumerOptions> = {}): ConsumerOptions => ({
      stream,
      group,
      consumer: `test-${randomUUID().slice(0, 8)}`,
      count: 500,
      blockMs: 100,
      claimIdleMs: 60_000,
      maxDeliveries: 3,
      ...extra,
    });
    const monitorOn = (p: string, windowSize = 1000) =>
      new Monitor(
        new MonitorStore(redis, p),
        new References(new ProfileSource({}, log), new MonitorStore(redis, p), { windows: 0, windowSize }, log),
        new AlertSink(redis, redisKeys(p).alerts, log, undefined),
        {
          windowSize,
          minWindow: 1,
          thresholdsFor: () => ({ warn: 0.1, alert: 0.25 }),
          policy: { consecutive: 2, cooldownMs: 60_000 },
          quality: { window: 100, minLabels: 10, target: 0.9, confidence: 0.5 },
          predictionTtlSeconds: 3600,
        },
        log,
      );
    const pendingCount = async (stream: string) => ((await redis.xpending(stream, group)) as [number])[0];
    // Each consumer blocks in XREADGROUP on a connection of its own, as in the service.
    const consumers: { consumer: StreamConsumer; connection: Redis }[] = [];
    const consumerOf = (stream: string, extra: Partial<ConsumerOptions>, handler: BatchHandler) => {
      const connection = redis.duplicate();
      const consumer = new StreamConsumer(connection, options(stream, extra), handler, log);
      consumers.push({ consumer, connection });
      return consumer;
    };
    afterEach(async () => {
      for (const { consumer, connection } of consumers.splice(0)) {
        await consumer.stop();
        await connection.quit();
      }
    });

    it('counts a job published twice (two stream entries, as by two workers) once', async () => {
      const p = prefix('dup-stream');
      const stream = redisKeys(p).predictions;
      const monitor = monitorOn(p);
      const twice = randomUUID();
      // The second copy differs, as a rerun on another worker may: the first one counts.
      await publish(redis, stream, [event(twice, 0.1), event(), event(twice, 0.9), event()]);
      const consumer = consumerOf(stream, {}, (e) => monitor.handlePredictions(e));
      await consumer.start();
      await until('first entries acknowledged', () => Promise.resolve(consumer.stats.acknowledged >= 4 || undefined));
      // And once more, in a later read.
      await publish(redis, stream, [event(twice, 0.5)]);
      await until('all entries acknowledged', () => Promise.resolve(consumer.stats.acknowledged >= 5 || undefined));
      expect(monitor.stats).to.include({ predictions: 3, duplicates: 2 });
      const open = await new MonitorStore(redis, p).openWindow(tracked);
      expect(open.map((o) => o.numeric.brightness)).to.deep.equal([0.1, 0.1, 0.1]);
      expect(await pendingCount(stream)).to.equal(0);
    });

    it('acknowledges a batch with one XACK, keeps retried entries pending, and dead-letters them after maxDeliveries', async () => {
      const stream = redisKeys(prefix('consumer')).predictions;
      for (let i = 0; i < 6; i++) await redis.xadd(stream, '*', 'n', String(i));
      const seen: { n: string; deliveries: number }[][] = [];
      const handler: BatchHandler = (entries) => {
        seen.push(entries.map((e) => ({ n: e.fields.n!, deliveries: e.deliveries })));
        return Promise.resolve(entries.map((e) => (e.fields.n === '3' ? 'retry' : 'ack')));
      };
      const xacks: number[] = [];
      // MONITOR (a connection of its own) shows the commands the consumer sends.
      const watcher = await redis.monitor();
      watcher.on('monitor', (_time: string, args: string[]) => {
        if (args[0]?.toLowerCase() === 'xack' && args[1] === stream) xacks.push(args.length - 3);
      });
      const consumer = consumerOf(stream, { claimIdleMs: 100 }, handler);
      await consumer.start();
      await until('entry 3 dead-lettered', () => Promise.resolve(consumer.stats.deadLettered === 1 || undefined));
      await consumer.stop();
      watcher.disconnect();
      expect(seen[0]!.map((e) => e.n)).to.deep.equal(['0', '1', '2', '3', '4', '5']);
      // Entry 3 came back alone (reclaimed from this consumer's own pending list) until it was given up.
      expect(seen.slice(1).map((batch) => batch.map((e) => `${e.n}@${e.deliveries}`))).to.deep.equal([['3@2'], ['3@3']]);
      expect(xacks[0], 'one XACK for the first batch').to.equal(5);
      expect(await pendingCount(stream)).to.equal(0);
      expect(consumer.stats).to.include({ delivered: 8, acknowledged: 6, reclaimed: 2, deadLettered: 1 });
    });

    it('records each closed window once when evaluations race (the sweeper and a batch, or two monitors)', async () => {
      const p = prefix('race');
      const store = new MonitorStore(redis, p);
      await store.appendPredictions(tracked, items(12), 4, 3600);
      const [a, b] = [monitorOn(p, 4), monitorOn(p, 4)];
      await Promise.all([a.evaluatePending(), b.evaluatePending(), a.evaluatePending()]);
      // What a locked-out call skipped, a later sweep finishes.
      await a.evaluatePending();
      expect((await store.windowRecords()).map((r) => r.index)).to.deep.equal([1, 2, 3]);
      expect(await redis.xlen(`${p}:monitor:windows`)).to.equal(3);
      expect(await redis.zcard(`${p}:monitor:closed`)).to.equal(0);
    });

    it('reclaims what a dead consumer held and counts it once', async () => {
      const p = prefix('reclaim');
      const stream = redisKeys(p).predictions;
      const monitor = monitorOn(p, 4);
      await redis.xgroup('CREATE', stream, group, '0', 'MKSTREAM');
      await publish(
        redis,
        stream,
        Array.from({ length: 10 }, () => event()),
      );
      // A consumer that reads six entries, applies them, and dies before acknowledging.
      const dead = (await redis.xreadgroup('GROUP', group, 'dead', 'COUNT', 6, 'STREAMS', stream, '>')) as [
        string,
        [string, string[]][],
      ][];
      const held = dead[0]![1].map(([id, flat]) => ({ id, fields: { [flat[0]!]: flat[1]! }, deliveries: 1 }));
      await monitor.handlePredictions(held);
      const consumer = consumerOf(stream, { claimIdleMs: 200 }, (e) => monitor.handlePredictions(e));
      await consumer.start();
      await until('everything acknowledged', async () => ((await pendingCount(stream)) === 0 ? true : undefined));
      expect(consumer.stats.reclaimed).to.equal(6);
      expect(monitor.stats).to.include({ predictions: 10, duplicates: 6, windows: 2 });
      const store = new MonitorStore(redis, p);
      expect((await store.openWindow(tracked)).length).to.equal(2);
    });
  });
});
