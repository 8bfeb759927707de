import { Counter, type Registry } from 'prom-client';
import type { ModelName } from '@conveyor/shared/contract/common.contract';
import type { CompletedResult } from '@conveyor/shared/contract/jobs.contract';
import type { RecordedExample } from '@conveyor/shared/contract/replay.contract';
import type { RedisKeys } from '@conveyor/shared/contract/redis-keys';
import type { Logger } from '@conveyor/shared/logger';
import type { Redis } from '@conveyor/shared/redis';
import {
  dayOf,
  imageFileName,
  purgeRecordedDays,
  retentionCutoff,
  sha256Hex,
  writeRecordedExample,
  type ReplayStore,
} from '@conveyor/shared/replay/replay-store';
import { openReplayStore } from '@conveyor/shared/replay/open-replay-store';
import type { ReplayPlan } from './replay-config.js';

/**
 * The live replay recorder (docs/replay.md, "Recording"): a sampled share of each model's completed
 * jobs becomes RecordedExamples in the replay store, so production's own traffic is the set a
 * candidate is replayed over. It must cost the job nothing: whether a job is sampled is decided on
 * the spot, the write happens afterwards in the background, a full recorder drops the sample
 * (counted), and a failing store is logged and counted, never thrown into the job.
 */
export const RECORD_OUTCOMES = ['recorded', 'dropped_busy', 'over_daily_limit', 'failed'] as const;
export type RecordOutcome = (typeof RECORD_OUTCOMES)[number];

/** What the processor sees: one call per published completed job, which returns at once. */
export interface LiveRecorder {
  offer(model: ModelName, result: CompletedResult, bytes: Buffer): void;
}

/** The per-model, per-day budget every worker draws from. */
export interface DailyQuota {
  /** True when one more example of `model` may be recorded on `day`. */
  take(model: ModelName, day: string): Promise<boolean>;
}

/** The quota in Redis: one counter per model and day, shared by every worker. */
export function redisDailyQuota(redis: Pick<Redis, 'multi'>, keys: Pick<RedisKeys, 'replayDaily'>, limit: number): DailyQuota {
  return {
    async take(model, day) {
      const key = keys.replayDaily(model, day);
      // Two days: the key outlives its day wherever the workers' clocks put midnight.
      const replies = await redis
        .multi()
        .incr(key)
        .expire(key, 2 * 86_400)
        .exec();
      const [error, count] = replies?.[0] ?? [new Error('the daily count was not answered'), undefined];
      if (error) throw error;
      return Number(count) <= limit;
    },
  };
}

export interface RecorderOptions {
  readonly store: ReplayStore;
  /** Sample rate per served model (models absent: not recorded). */
  readonly rates: ReadonlyMap<ModelName, number>;
  readonly quota: DailyQuota;
  readonly maxInFlight: number;
  readonly maxInFlightBytes: number;
  readonly log: Logger;
  /** Where `conveyor_replay_records_total` is registered (the worker's registry). */
  readonly registry?: Registry;
  /** For tests: the draw that decides sampling, uniform in [0, 1). */
  readonly random?: () => number;
}

export class ReplayRecorder implements LiveRecorder {
  private readonly writes = new Set<Promise<void>>();
  private bytesInFlight = 0;
  private closed = false;
  private readonly counts = new Map<string, number>();
  private readonly counter: Counter<'model' | 'outcome'> | undefined;
  private readonly random: () => number;

  constructor(private readonly options: RecorderOptions) {
    this.random = options.random ?? Math.random;
    this.counter = options.registry
      ? new Counter({
          name: 'conveyor_replay_records_total',
          help: 'Completed jobs sampled for replay recording (REPLAY_SAMPLE_RATE), by model and outcome: recorded (written to REPLAY_STORE); dropped_busy (REPLAY_MAX_IN_FLIGHT or its bytes reached); over_daily_limit (REPLAY_DAILY_LIMIT reached for the day); failed (the store or Redis failed; logged)',
          labelNames: ['model', 'outcome'] as const,
          registers: [options.registry],
        })
      : undefined;
    for (const model of options.rates.keys()) for (const outcome of RECORD_OUTCOMES) this.counter?.inc({ model, outcome }, 0);
  }

  offer(model: ModelName, result: CompletedResult, bytes: Buffer): void {
    const rate = this.options.rates.get(model);
    if (this.closed || rate === undefined || this.random() >= rate) return;
    if (this.writes.size >= this.options.maxInFlight || this.bytesInFlight + bytes.length > this.options.maxInFlightBytes) {
      this.count(model, 'dropped_busy');
      return;
    }
    this.bytesInFlight += bytes.length;
    // Started on the next turn of the event loop: hashing and building the example are not the job's.
    const write: Promise<void> = new Promise<void>((resolve) => setImmediate(resolve))
      .then(() => this.record(model, result, bytes))
      .then(
        (outcome) => this.count(model, outcome),
        (error: unknown) => {
          this.count(model, 'failed');
          this.options.log.warn({ err: error, jobId: result.id, modelName: model }, 'could not record the input for replay');
        },
      )
      .finally(() => {
        this.bytesInFlight -= bytes.length;
        this.writes.delete(write);
      });
    this.writes.add(write);
  }

  /** Outcomes so far (for tests and the shutdown log). */
  outcomes(): Record<string, number> {
    return Object.fromEntries(this.counts);
  }

  /** Stops sampling and gives the writes in flight up to `budgetMs` to finish; the rest are abandoned (logged). */
  async close(budgetMs: number): Promise<void> {
    this.closed = true;
    if (this.writes.size === 0) return;
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<'timeout'>((resolve) => (timer = setTimeout(() => resolve('timeout'), budgetMs)));
    const pending = this.writes.size;
    const ending = await Promise.race([Promise.allSettled([...this.writes]).then(() => 'done' as const), timedOut]);
    clearTimeout(timer);
    if (ending === 'timeout')
      this.options.log.warn(
        { pending, left: this.writes.size, budgetMs },
        'replay recordings still being written at shutdown were abandoned',
      );
  }

  private async record(model: ModelName, result: CompletedResult, bytes: Buffer): Promise<RecordOutcome> {
    const day = dayOf(result.finishedAt);
    if (!(await this.options.quota.take(model, day))) return 'over_daily_limit';
    const sha256 = sha256Hex(bytes);
    // Only what a replay needs: no request id, job id, client key, address or callback.
    const example: RecordedExample = {
      kind: 'recorded-example',
      version: 1,
      id: sha256,
      model,
      recordedAt: result.finishedAt,
      input: { file: imageFileName(sha256, result.input.format), format: result.input.format, bytes: bytes.length, sha256 },
      production: { model: result.model, prediction: result.prediction, inferenceMs: result.timings.inferenceMs },
    };
    await writeRecordedExample(this.options.store, example, bytes);
    return 'recorded';
  }

  private count(model: ModelName, outcome: RecordOutcome): void {
    const key = `${model}:${outcome}`;
    this.counts.set(key, (this.counts.get(key) ?? 0) + 1);
    this.counter?.inc({ model, outcome });
  }
}

/**
 * REPLAY_RETENTION_DAYS, applied by the workers themselves: every `intervalMs`, the one worker that
 * takes a Redis lease (SET NX with an expiry of the interval) deletes the days of its recorded models
 * older than the retention, every S3 version of them. The others skip the round, so a fleet purges
 * once an interval, not once per worker. A failure is logged; the next holder tries again.
 */
export class RetentionSweeper {
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly options: {
      readonly store: ReplayStore;
      readonly models: readonly ModelName[];
      readonly retentionDays: number;
      readonly redis: Pick<Redis, 'set'>;
      readonly key: string;
      readonly intervalMs: number;
      readonly log: Logger;
    },
  ) {}

  start(firstDelayMs: number): void {
    const tick = () => {
      void this.sweep();
      this.timer = setTimeout(tick, this.options.intervalMs);
      this.timer.unref();
    };
    this.timer = setTimeout(tick, firstDelayMs);
    this.timer.unref();
  }

  /** One round: purges if this worker holds the lease; how many days it removed (undefined: another worker's turn). */
  async sweep(now = new Date()): Promise<number | undefined> {
    const { store, models, retentionDays, redis, key, intervalMs, log } = this.options;
    try {
      const lease = await redis.set(key, String(process.pid), 'PX', intervalMs, 'NX');
      if (lease !== 'OK') return undefined;
      const before = retentionCutoff(retentionDays, now);
      const purged = await purgeRecordedDays(store, { models, before });
      if (purged.length > 0) log.info({ before, purged }, 'recorded days past REPLAY_RETENTION_DAYS deleted');
      return purged.length;
    } catch (error) {
      log.warn({ err: error }, 'could not apply REPLAY_RETENTION_DAYS to the replay store');
      return undefined;
    }
  }

  /** No more rounds. A round under way is not waited for: a purge cut short is finished by the next. */
  stop(): void {
    clearTimeout(this.timer);
  }
}

/** How often the fleet applies REPLAY_RETENTION_DAYS (one worker per round). */
const RETENTION_INTERVAL_MS = 3_600_000;

export interface ReplayRecording {
  readonly recorder: ReplayRecorder;
  /** Stops sampling and the retention sweeps; writes in flight get up to `budgetMs`. */
  close(budgetMs: number): Promise<void>;
}

/** The recorder a worker runs when its plan records any model (config.ts: `replay`); undefined: recording off. */
export async function startReplayRecording(
  plan: ReplayPlan | undefined,
  deps: { redis: Redis; keys: RedisKeys; registry: Registry; log: Logger },
): Promise<ReplayRecording | undefined> {
  if (!plan) return undefined;
  const log = deps.log.child({ module: 'replay-recorder' });
  const store = await openReplayStore(plan.store, { endpoint: plan.endpoint });
  const recorder = new ReplayRecorder({
    store,
    rates: plan.rates,
    quota: redisDailyQuota(deps.redis, deps.keys, plan.dailyLimit),
    maxInFlight: plan.maxInFlight,
    maxInFlightBytes: plan.maxInFlightBytes,
    log,
    registry: deps.registry,
  });
  const sweeper = new RetentionSweeper({
    store,
    models: [...plan.rates.keys()],
    retentionDays: plan.retentionDays,
    redis: deps.redis,
    key: deps.keys.replayRetention,
    intervalMs: RETENTION_INTERVAL_MS,
    log,
  });
  // A minute in: not on the start's critical path, and a crash-looping worker does not sweep at each start.
  sweeper.start(60_000);
  log.info(
    {
      store: store.where,
      rates: Object.fromEntries(plan.rates),
      dailyLimit: plan.dailyLimit,
      retentionDays: plan.retentionDays,
      ...(plan.unserved.length > 0 ? { notServedHere: plan.unserved } : {}),
    },
    'recording a sample of completed jobs for replay',
  );
  return {
    recorder,
    close: async (budgetMs) => {
      sweeper.stop();
      await recorder.close(budgetMs);
      log.info({ outcomes: recorder.outcomes() }, 'replay recorder closed');
    },
  };
}
