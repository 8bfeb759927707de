import { createRequire } from 'node:module';
import type * as PerfHooks from 'node:perf_hooks';
import { expect } from 'chai';
import { WorkerMetrics } from '../src/metrics/worker-metrics.js';

// prom-client reads perf_hooks through require(); the same module object is patched here.
const perfHooks = createRequire(import.meta.url)('node:perf_hooks') as typeof PerfHooks;

describe('worker metrics: the event-loop lag sampling', () => {
  it('samples the event loop every 100 ms, not every 10 ms (each sample is a timer wake-up of an idle worker)', () => {
    const original = perfHooks.monitorEventLoopDelay;
    const resolutions: (number | undefined)[] = [];
    perfHooks.monitorEventLoopDelay = (options) => {
      resolutions.push(options?.resolution);
      return original(options);
    };
    try {
      new WorkerMetrics({ models: [] });
    } finally {
      perfHooks.monitorEventLoopDelay = original;
    }
    expect(resolutions).to.deep.equal([100]);
  });
});
