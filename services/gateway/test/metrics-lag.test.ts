import { createRequire } from 'node:module';
import type * as PerfHooks from 'node:perf_hooks';
import { expect } from 'chai';
import { HttpMetrics } from '../src/http/metrics.js';

// prom-client reads perf_hooks through require(); the same module object is patched here.
const perfHooks = createRequire(import.meta.url)('node:perf_hooks') as typeof PerfHooks;

describe("the gateway's default metrics", () => {
  it('samples the event-loop lag every 100 ms, not every 10 ms (100 wake-ups a second)', () => {
    const original = perfHooks.monitorEventLoopDelay;
    const resolutions: (number | undefined)[] = [];
    perfHooks.monitorEventLoopDelay = (options) => {
      resolutions.push(options?.resolution);
      return original(options);
    };
    try {
      new HttpMetrics({
        queueDepths: () => Promise.resolve([]),
        liveWorkers: () => Promise.resolve(0),
        modelWorkers: () => Promise.resolve([]),
      });
    } finally {
      perfHooks.monitorEventLoopDelay = original;
    }
    expect(resolutions).to.deep.equal([100]);
  });
});
