import { Cluster } from 'ioredis';
import type { Redis } from '@conveyor/shared/redis';
import { storeFullProblem } from '../http/problem-answer.js';
import type { RoomCheck } from './admission.js';

/** What `INFO memory` says, as far as admission cares. */
export interface MemoryReading {
  readonly used: number;
  /** 0: Redis has no limit. */
  readonly max: number;
}

/** `used_memory` and `maxmemory` from an `INFO memory` answer. */
export function parseMemoryInfo(info: string): MemoryReading {
  const field = (pattern: RegExp) => Number(pattern.exec(info)?.[1] ?? 0);
  return { used: field(/^used_memory:(\d+)/m), max: field(/^maxmemory:(\d+)/m) };
}

/**
 * Refuses new jobs while Redis is nearly full, before anything of theirs is written: once Redis is
 * at its maxmemory (noeviction), its writes fail one by one — the upload's image, the job, a
 * worker's commit — and a job accepted just before could not finish. Refusing at a fraction of
 * maxmemory (ADMISSION_MEMORY_FRACTION) keeps the rest for the jobs already accepted: their
 * results, their events, their retries. `INFO memory` is read at most every `refreshMs`, shared by
 * concurrent requests (a few µs of Redis time per read, not per request). On a cluster, every
 * master is read and the fullest decides (the deployment's keys share one slot, but which master
 * holds it is the cluster's business). A reading that fails lets requests through: Redis itself
 * still refuses what it cannot hold, and that refusal is a 503 too.
 */
export class MemoryGuard implements RoomCheck {
  private reading: { fraction: number; at: number } | undefined;
  private inflight: Promise<number> | undefined;

  constructor(
    private readonly redis: Redis,
    private readonly maxFraction: number,
    private readonly refreshMs = 500,
  ) {}

  async check(): Promise<void> {
    if (this.maxFraction >= 1) return; // only Redis's own refusal
    const fraction = await this.fraction();
    if (fraction >= this.maxFraction) throw storeFullProblem();
  }

  /** used_memory / maxmemory (0 without a limit or without a reading). */
  async fraction(): Promise<number> {
    if (this.reading && Date.now() - this.reading.at < this.refreshMs) return this.reading.fraction;
    this.inflight ??= this.read()
      .then((fraction) => {
        this.reading = { fraction, at: Date.now() };
        return fraction;
      })
      .catch(() => this.reading?.fraction ?? 0)
      .finally(() => (this.inflight = undefined));
    return this.inflight;
  }

  private async read(): Promise<number> {
    const nodes = this.redis instanceof Cluster ? this.redis.nodes('master') : [this.redis];
    const readings = await Promise.all(nodes.map(async (node) => parseMemoryInfo(await node.info('memory'))));
    return Math.max(0, ...readings.map(({ used, max }) => (max > 0 ? used / max : 0)));
  }
}
