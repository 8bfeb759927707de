import type { Redis } from 'ioredis';
import { settlesWithin } from '@conveyor/shared/lifecycle';
import type { Logger } from '@conveyor/shared/logger';

/**
 * At-least-once consumption of a Redis stream through a consumer group: entries are acknowledged
 * only after they were processed; entries left pending by a consumer that died are reclaimed
 * (XAUTOCLAIM) after `claimIdleMs`; an entry that keeps failing is dead-lettered after
 * `maxDeliveries` (logged and acknowledged) so it cannot block the stream forever.
 */
export type Outcome = 'ack' | 'retry';
export type EntryHandler = (id: string, fields: Record<string, string>, deliveries: number) => Promise<Outcome>;

export interface ConsumerOptions {
  readonly stream: string;
  readonly group: string;
  readonly consumer: string;
  readonly count: number;
  readonly blockMs: number;
  readonly claimIdleMs: number;
  readonly maxDeliveries: number;
}

export class StreamConsumer {
  private running = false;
  private loop: Promise<void> | undefined;

  constructor(
    private readonly redis: Redis,
    private readonly options: ConsumerOptions,
    private readonly handle: EntryHandler,
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
        for (const [, entries] of reply ?? []) await this.process(entries, 1);
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
      const live = entries.filter((e): e is [string, string[]] => e[1] !== null);
      if (live.length === 0) continue;
      this.log.info({ stream: this.options.stream, entries: live.length }, 'reclaimed pending entries of another consumer');
      const pending = (await this.redis.xpending(
        this.options.stream,
        this.options.group,
        live[0]![0],
        live.at(-1)![0],
        live.length,
      )) as [string, string, number, number][];
      const deliveries = new Map(pending.map(([id, , , count]) => [id, count]));
      for (const entry of live) await this.process([entry], deliveries.get(entry[0]) ?? 2);
    } while (cursor !== '0-0' && this.running);
  }

  private async process(entries: [string, string[]][], deliveries: number): Promise<void> {
    for (const [id, flat] of entries) {
      const fields: Record<string, string> = {};
      for (let i = 0; i + 1 < flat.length; i += 2) fields[flat[i]!] = flat[i + 1]!;
      let outcome: Outcome;
      try {
        outcome = await this.handle(id, fields, deliveries);
      } catch (error) {
        this.log.warn({ err: error, id, stream: this.options.stream }, 'processing an entry failed; it stays pending');
        outcome = 'retry';
      }
      if (outcome === 'retry' && deliveries >= this.options.maxDeliveries) {
        this.log.error(
          { id, stream: this.options.stream, deliveries },
          'giving up on an entry after repeated failures (dead-lettered)',
        );
        outcome = 'ack';
      }
      if (outcome === 'ack') await this.redis.xack(this.options.stream, this.options.group, id);
    }
  }
}
