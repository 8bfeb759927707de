import type { ShadowEvent } from '@conveyor/shared/contract/shadow.contract';
import type { Logger } from '@conveyor/shared/logger';
import { parseShadow } from '../events/stream-events.js';
import type { Outcome, StreamEntry } from '../store/stream-consumer.js';
import { shadowKey, type ShadowItem, type ShadowStore, type ShadowTracked } from './shadow-store.js';

/**
 * Where shadow pairs (the shadow stream, written by workers in shadow mode) become agreement
 * windows per served model and shadow version. The figures are those of the replay report
 * (services/trainer/src/replay/compare.ts): top-1 agreement and the shift of the shadow's
 * probability of production's label from production's confidence.
 */
export function itemOf(event: ShadowEvent): ShadowItem {
  const production = event.production.prediction;
  const shadow = event.shadow.prediction;
  const onProductionLabel = shadow.top.find((t) => t.label === production.label)?.confidence ?? 0;
  return {
    jobId: event.jobId,
    agree: shadow.label === production.label,
    shift: Math.abs(onProductionLabel - production.confidence),
  };
}

export class ShadowPairs {
  /** Pairs counted by this instance since it started. */
  counted = 0;

  constructor(
    private readonly store: ShadowStore,
    private readonly options: { windowSize: number; ttlSeconds: number },
    private readonly log: Logger,
  ) {}

  /** Applies a read of the shadow stream: malformed entries skipped, each shadow's pairs in one script call. */
  async handle(entries: readonly StreamEntry[]): Promise<Outcome[]> {
    const outcomes: Outcome[] = entries.map(() => 'ack');
    const groups = new Map<string, { tracked: ShadowTracked; events: ShadowEvent[]; at: number[] }>();
    for (const [i, entry] of entries.entries()) {
      const event = parseShadow(entry, this.log);
      if (!event) continue;
      const tracked = { name: event.name, shadow: event.shadow.model };
      const key = shadowKey(tracked);
      let group = groups.get(key);
      if (!group) groups.set(key, (group = { tracked, events: [], at: [] }));
      group.events.push(event);
      group.at.push(i);
    }
    for (const { tracked, events, at } of groups.values()) {
      const newest = events.at(-1)!;
      try {
        this.counted += await this.store.apply(
          tracked,
          newest.production.model,
          events.map(itemOf),
          newest.at,
          this.options.windowSize,
          this.options.ttlSeconds,
        );
      } catch (error) {
        this.log.warn({ err: error, shadow: tracked, pairs: events.length }, 'applying shadow pairs failed; they stay pending');
        for (const i of at) outcomes[i] = 'retry';
      }
    }
    return outcomes;
  }
}
