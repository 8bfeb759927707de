import { writeFile } from 'node:fs/promises';
import os from 'node:os';
import type { Redis } from 'ioredis';
import type { Keys, ModelRef, WorkerHeartbeat } from '@conveyor/shared/contract/queue.contract';
import { settlesWithin } from '@conveyor/shared/lifecycle';
import type { Logger } from '@conveyor/shared/logger';

/**
 * Tells the rest of the system that this worker is alive and which model it serves: a key with a
 * TTL of three beats plus a sorted-set entry scored by its expiry, so the gateway's readiness
 * check is one ZRANGEBYSCORE and never a KEYS scan.
 */
export class Heartbeat {
  private timer: NodeJS.Timeout | undefined;
  private readonly startedAt = new Date().toISOString();

  constructor(
    private readonly redis: Redis,
    private readonly keys: Keys,
    private readonly id: string,
    private readonly intervalMs: number,
    private readonly describe: () => { model: ModelRef; concurrency: number; processed: number; failed: number },
    /** The labels of the model served now: published so the gateway can check feedback against them. */
    private readonly labels: () => readonly string[],
    private readonly log: Logger,
    private readonly healthFile?: string,
  ) {}

  async start(): Promise<void> {
    await this.beat();
    this.timer = setInterval(() => {
      this.beat().catch((error: unknown) => this.log.warn({ err: error }, 'heartbeat failed'));
    }, this.intervalMs);
    this.timer.unref();
  }

  /** Deregisters at once, so /ready stops counting this worker; with Redis away, the entry expires with its TTL. */
  async stop(timeoutMs = 2000): Promise<void> {
    clearInterval(this.timer);
    this.timer = undefined;
    if (this.redis.status !== 'ready') {
      this.log.warn('Redis is unreachable: the heartbeat entry is left to expire');
      return;
    }
    await settlesWithin(this.redis.multi().zrem(this.keys.workers, this.id).del(this.keys.worker(this.id)).exec(), timeoutMs);
  }

  private async beat(): Promise<void> {
    const now = Date.now();
    const ttl = this.intervalMs * 3;
    const body: WorkerHeartbeat = {
      kind: 'worker-heartbeat',
      version: 1,
      id: this.id,
      hostname: os.hostname(),
      pid: process.pid,
      startedAt: this.startedAt,
      at: new Date(now).toISOString(),
      ...this.describe(),
    };
    await this.redis
      .multi()
      .hsetnx(this.keys.modelLabels, `${body.model.name}@${body.model.version}`, JSON.stringify(this.labels()))
      .set(this.keys.worker(this.id), JSON.stringify(body), 'PX', ttl)
      .zadd(this.keys.workers, now + ttl, this.id)
      .zremrangebyscore(this.keys.workers, '-inf', now)
      .exec();
    if (this.healthFile) await writeFile(this.healthFile, body.at);
  }
}
