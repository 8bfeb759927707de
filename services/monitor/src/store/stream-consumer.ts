import type { Redis } from '@conveyor/shared/redis';
import { settlesWithin } from '@conveyor/shared/lifecycle';
import type { Logger } from '@conveyor/shared/logger';

/**
 * At-least-once consumption of a Redis stream through a consumer group: entries are acknowledged
 * only after they were processed; entries left pending by a consumer that died are reclaimed
 * (XAUTOCLAIM) after `claimIdleMs`; an entry that keeps failing is dead-lettered after
 * `maxDeliveries` (logged and acknowledged) so it cannot block the stream forever.
 *
 * The handler gets a whole read at once and answers one outcome per entry, and the entries it
 * accepts are acknowledged with one XACK: per-entry round trips were most of the monitor's cost.
 */
export type Outcome = 'ack' | 'retry';

export interface StreamEntry {
  readonly id: string;
  readonly fields: Record<string, string>;
  /** How often the entry was delivered, this delivery included (1 on a first read). */
  readonly deliveries: number;
}

/** One outcome per entry, in the order of `entries`. Throwing leaves the whole batch pending. */
export type BatchHandler = (entries: readonly StreamEntry[]) => Promise<Outcome[]>;
export type EntryHandler = (entry: StreamEntry) => Promise<Outcome>;

export interface ConsumerOptions {
  readonly stream: string;
  readonly group: string;
  readonly consumer: string;
  readonly count: number;
  readonly blockMs: number;
  readonly claimIdleMs: number;
  readonly maxDeliveries: number;
  /**
   * After a read that did not fill a batch, wait this long before the next one. At a steady trickle
   * (a few hundred events per second) every read returns one or two events, and the per-read costs
   * (the blocking read, the script call, the XACK) are paid per event: lingering lets a batch gather.
   * Measured with the full system at c16: 0.30 ms of monitor CPU per event without it.
   */
  readonly lingerMs?: number;
}

/**
 * A batch handler that runs an entry handler one entry at a time, for streams that are not hot
 * (feedback): an entry that throws stays pending without holding back the others.
 */
export function oneByOne(handle: EntryHandler, log: Logger): BatchHandler {
  return async (entries) => {
    const outcomes: Outcome[] = [];
    for (const entry of entries) {
      try {
        outcomes.push(await handle(entry));
      } catch (error) {
        log.warn({ err: error, id: entry.id }, 'processing an entry failed; it stays pending');
        outcomes.push('retry');
      }
    }
    return outcomes;
  };
}

export class StreamConsumer {
  /** Since this consumer started; `reclaimed` counts entries taken over from other consumers. */
  readonly stats = { delivered: 0, acknowledged: 0, reclaimed: 0, deadLettered: 0 };
  private running = false;
  private loop: Promise<void> | undefined;

  constructor(
    private readonly redis: Redis,
    private readonly options: ConsumerOptions,
    private readonly handle: BatchHandler,
    private readonly log: Logger,
  ) {}

  async start(): Promise<void> {
    await this.ensureGroup();
    this.running = true;
    this.loop = this.run();
  }

  /**
   * Stops after the batch in hand; the blocking read returns within `blockMs`. While Redis is away
   * the read never returns, so the wait is bounded: closing the connection afterwards ends the loop,
   * and whatever was delivered but not acknowledged is reclaimed by the next monitor.
   */
  async stop(): Promise<void> {
    this.running = false;
    this.wake?.();
    if (this.loop && !(await settlesWithin(this.loop, this.options.blockMs + 1000))) {
      this.log.warn({ stream: this.options.stream }, 'stream read did not return; stopping without it');
    }
  }

  /** From the beginning of the stream: events produced before the first monitor started count too. */
  private async ensureGroup(): Promise<void> {
    try {
      await this.redis.xgroup('CREATE', this.options.stream, this.options.group, '0', 'MKSTREAM');
    } catch (error) {
      if (!(error as Error).message.includes('BUSYGROUP')) throw error;
    }
  }

  private async run(): Promise<void> {
    let lastClaim = 0;
    while (this.running) {
      try {
        if (Date.now() - lastClaim > Math.min(this.options.claimIdleMs, 5000)) {
          lastClaim = Date.now();
          await this.reclaim();
        }
        const reply = (await this.redis.xreadgroup(
          'GROUP',
          this.options.group,
          this.options.consumer,
          'COUNT',
          this.options.count,
          'BLOCK',
          this.options.blockMs,
          'STREAMS',
          this.options.stream,
          '>',
        )) as [string, [string, string[]][]][] | null;
        let read = 0;
        for (const [, entries] of reply ?? []) {
          read += entries.length;
          await this.process(entries, () => 1);
        }
        if (read > 0 && read < this.options.count && this.options.lingerMs) await this.linger(this.options.lingerMs);
      } catch (error) {
        if (!this.isRunning()) break;
        // Redis restarted without its data (or someone deleted the stream): the group is gone.
        if ((error as Error).message.startsWith('NOGROUP')) {
          this.log.warn({ stream: this.options.stream, group: this.options.group }, 'consumer group missing; creating it again');
          const created = await this.ensureGroup().then(
            () => true,
            () => false,
          );
          if (created) continue;
        }
        this.log.warn({ err: error, stream: this.options.stream }, 'stream read failed; retrying');
        await new Promise((r) => setTimeout(r, 500));
      }
    }
  }

  private wake: (() => void) | undefined;

  /** A pause that stop() cuts short. */
  private linger(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.wake = undefined;
        resolve();
      }, ms);
      this.wake = () => {
        clearTimeout(timer);
        this.wake = undefined;
        resolve();
      };
    });
  }

  /** Read through a method: stop() flips the flag while the loop awaits. */
  private isRunning(): boolean {
    return this.running;
  }

  private async reclaim(): Promise<void> {
    let cursor = '0-0';
    do {
      const [next, entries] = (await this.redis.xautoclaim(
        this.options.stream,
        this.options.group,
        this.options.consumer,
        this.options.claimIdleMs,
        cursor,
        'COUNT',
        this.options.count,
      )) as [string, [string, string[] | null][]];
      cursor = next;
      // Entries trimmed from the stream meanwhile: Redis 6.2 returns them without fields (7 leaves them out).
      const live = entries.filter((e): e is [string, string[]] => e[1] !== null);
      if (live.length === 0) continue;
      this.stats.reclaimed += live.length;
      this.log.info({ stream: this.options.stream, entries: live.length }, 'reclaimed pending entries of another consumer');
      const pending = (await this.redis.xpending(
        this.options.stream,
        this.options.group,
        live[0]![0],
        live.at(-1)![0],
        live.length,
      )) as [string, string, number, number][];
      const deliveries = new Map(pending.map(([id, , , count]) => [id, count]));
      await this.process(live, (id) => deliveries.get(id) ?? 2);
    } while (cursor !== '0-0' && this.running);
  }

  private async process(raw: [string, string[]][], deliveriesOf: (id: string) => number): Promise<void> {
    const entries: StreamEntry[] = raw.map(([id, flat]) => {
      const fields: Record<string, string> = {};
      for (let i = 0; i + 1 < flat.length; i += 2) fields[flat[i]!] = flat[i + 1]!;
      return { id, fields, deliveries: deliveriesOf(id) };
    });
    this.stats.delivered += entries.length;
    let outcomes: Outcome[];
    try {
      outcomes = await this.handle(entries);
      if (outcomes.length !== entries.length) throw new Error(`${outcomes.length} outcomes for ${entries.length} entries`);
    } catch (error) {
      this.log.warn(
        { err: error, stream: this.options.stream, entries: entries.length },
        'processing a batch failed; its entries stay pending',
      );
      outcomes = entries.map(() => 'retry');
    }
    const ack: string[] = [];
    for (const [i, entry] of entries.entries()) {
      if (outcomes[i] === 'ack') {
        ack.push(entry.id);
      } else if (entry.deliveries >= this.options.maxDeliveries) {
        this.log.error(
          { id: entry.id, stream: this.options.stream, deliveries: entry.deliveries },
          'giving up on an entry after repeated failures (dead-lettered)',
        );
        this.stats.deadLettered++;
        ack.push(entry.id);
      }
    }
    if (ack.length === 0) return;
    await this.redis.xack(this.options.stream, this.options.group, ...ack);
    this.stats.acknowledged += ack.length;
  }
}
