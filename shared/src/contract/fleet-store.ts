import type { Redis } from '@conveyor/shared/redis';
import type { ModelName, ModelRef } from './common.contract.js';
import type { RedisKeys } from './redis-keys.js';
import { ModelAnnouncement, WorkerHeartbeat } from './workers.contract.js';

/** The keys of the worker fleet: who is alive (`workers`, `worker`), what each model is (`models`, `modelLabels`). */
export type FleetKeys = Pick<RedisKeys, 'workers' | 'worker' | 'models' | 'modelLabels'>;

const Labels = ModelAnnouncement.shape.labels;

/**
 * The one owner of the worker fleet's state in Redis, beside JobStore for the jobs': the workers
 * beat and leave through it, the gateways read who is alive, which models were announced and a
 * loaded model's labels through it. No other module reads or writes `redisKeys().workers`,
 * `worker`, `models` or `modelLabels`, so the fleet's layout in Redis can be read in this file
 * alone, and every read is parsed with the contract's schemas.
 *
 * Liveness is a key with a TTL per worker plus a sorted-set entry scored by its expiry, so "who is
 * alive" is one ZRANGEBYSCORE and never a KEYS scan. Announcements and labels never expire: a
 * model once served stays known, and every beat rewrites them, so they survive a Redis that
 * restarted empty.
 */
export class FleetStore {
  constructor(
    private readonly redis: Redis,
    private readonly keys: FleetKeys,
  ) {}

  /** Whether the connection is up (a worker leaving with Redis away lets its entry expire instead). */
  get ready(): boolean {
    return this.redis.status === 'ready';
  }

  // --- the workers' side ---

  /**
   * One beat of a worker, in one transaction: what it serves (each announcement, and each loaded
   * model's labels, written once per version), its heartbeat for `ttlMs`, and the pruning of the
   * entries of workers whose heartbeat expired.
   */
  async beat(
    heartbeat: WorkerHeartbeat,
    announcements: readonly ModelAnnouncement[],
    ttlMs: number,
    now = Date.now(),
  ): Promise<void> {
    const multi = this.redis.multi();
    for (const a of announcements) {
      multi
        .hsetnx(this.keys.modelLabels, labelsField(a.model), JSON.stringify(a.labels))
        // seenAt: this beat, so gateways can retire a model no live worker has served for a while.
        .hset(this.keys.models, a.name, JSON.stringify({ ...a, seenAt: heartbeat.at }));
    }
    await multi
      .set(this.keys.worker(heartbeat.id), JSON.stringify(heartbeat), 'PX', ttlMs)
      .zadd(this.keys.workers, now + ttlMs, heartbeat.id)
      .zremrangebyscore(this.keys.workers, '-inf', now)
      .exec();
  }

  /** Deregisters a worker at once, so readiness stops counting it (its announcements stay). */
  async leave(workerId: string): Promise<void> {
    await this.redis.multi().zrem(this.keys.workers, workerId).del(this.keys.worker(workerId)).exec();
  }

  // --- the gateways' side ---

  /** Workers whose heartbeat has not expired, with the models each one serves (unparseable entries left out). */
  async liveWorkers(now = Date.now()): Promise<WorkerHeartbeat[]> {
    const ids = await this.redis.zrangebyscore(this.keys.workers, now, '+inf');
    if (ids.length === 0) return [];
    const values = await this.redis.mget(ids.map((id) => this.keys.worker(id)));
    return values.flatMap((value) => {
      if (value === null) return [];
      const parsed = WorkerHeartbeat.safeParse(safeJson(value));
      return parsed.success ? [parsed.data] : [];
    });
  }

  /**
   * Every model ever announced, by serving name. An entry that does not parse, or whose
   * announcement names another model than its field, is left out.
   */
  async announcements(): Promise<Map<ModelName, ModelAnnouncement>> {
    const raw = await this.redis.hgetall(this.keys.models);
    const announced = new Map<ModelName, ModelAnnouncement>();
    for (const [name, value] of Object.entries(raw)) {
      const parsed = ModelAnnouncement.safeParse(safeJson(value));
      if (parsed.success && parsed.data.name === name) announced.set(name, parsed.data);
    }
    return announced;
  }

  /** The labels of a loaded model (name and version), as the workers serving it published them; undefined until then. */
  async labels(model: ModelRef): Promise<string[] | undefined> {
    const value = await this.redis.hget(this.keys.modelLabels, labelsField(model));
    if (value === null) return undefined;
    const parsed = Labels.safeParse(safeJson(value));
    return parsed.success ? parsed.data : undefined;
  }
}

/** The field of a loaded model in `modelLabels`: `name@version` of the loaded model, not its serving name. */
function labelsField(model: ModelRef): string {
  return `${model.name}@${model.version}`;
}

function safeJson(raw: string): unknown {
  try {
    return JSON.parse(raw);
  } catch {
    return undefined;
  }
}
