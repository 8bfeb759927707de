import { expect } from 'chai';
import { WorkerMetrics } from '../src/metrics/worker-metrics.js';
import { until } from '../../../test/support/wait.js';

describe('worker metrics: the event-loop lag sampling', () => {
  it('samples the event loop every 100 ms, not every 10 ms (each sample is a timer wake-up of an idle worker)', async () => {
    const metrics = new WorkerMetrics({ models: [] });
    /** The lag histogram's min and max (s) since the last scrape: a scrape resets it. */
    const lag = async () => {
      const json = await metrics.registry.getMetricsAsJSON();
      const value = (name: string) =>
        json.find((m) => m.name === `conveyor_worker_nodejs_eventloop_lag_${name}_seconds`)?.values[0]?.value;
      return { min: value('min'), max: value('max') };
    };
    // The first scrape clears what start-up (module loading) left in the histogram; a later one
    // with any sample in its window (max > 0: an empty histogram reads max 0) gives that window's
    // smallest delay, which is the sampling timer's own period: ~0.01 s at prom-client's default.
    // A window must span several periods to hold a sample, so each probe lets 300 ms pass before
    // it scrapes (the time is what is measured here, not a stand-in for a condition).
    await lag();
    const min = await until('an event-loop lag sample', async () => {
      await new Promise((resolve) => setTimeout(resolve, 300));
      const { min, max } = await lag();
      return max !== undefined && max > 0 ? min : undefined;
    });
    expect(min).to.be.at.least(0.09);
  });
});
