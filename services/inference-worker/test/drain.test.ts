import { expect } from 'chai';
import type { Worker } from 'bullmq';
import pino from 'pino';
import { drain } from '../src/drain.js';

/** A stand-in for BullMQ's Worker: only the calls drain() makes. */
function fakeWorker(closeTakesMs: number | 'never') {
  const calls: string[] = [];
  const worker = {
    close: (force?: boolean) => {
      calls.push(force ? 'close(force)' : 'close');
      if (force) return Promise.resolve();
      return closeTakesMs === 'never'
        ? new Promise<void>(() => undefined)
        : new Promise<void>((r) => setTimeout(r, closeTakesMs));
    },
    cancelAllJobs: () => calls.push('cancelAllJobs'),
  };
  return { worker: worker as unknown as Worker, calls };
}

describe('worker drain', () => {
  const log = pino({ level: 'silent' });

  it('waits for in-flight jobs that finish within the budget', async () => {
    const { worker, calls } = fakeWorker(20);
    await drain(worker, 500, log);
    expect(calls).to.deep.equal(['close']);
  });

  it('cancels (hands back) and then abandons jobs that outlast the budget', async () => {
    const { worker, calls } = fakeWorker('never');
    // close() never settles: that drain() returns at all shows it abandoned the jobs.
    await drain(worker, 100, log);
    expect(calls).to.deep.equal(['close', 'cancelAllJobs', 'close(force)']);
  });

  it('does not wait out the budget while Redis is unreachable and no job runs', async function () {
    const { worker, calls } = fakeWorker('never');
    // A budget longer than the test's own timeout: waiting it out fails the test; and a drain that
    // ran out its budget would have cancelled the jobs, which the calls would show.
    this.timeout(20_000);
    await drain(worker, 60_000, log, { inFlight: () => 0, redisReady: () => false });
    expect(calls).to.deep.equal(['close']);
  });

  it('still waits for a running job while Redis is unreachable, up to the budget', async () => {
    const { worker, calls } = fakeWorker('never');
    // cancelAllJobs is called only once the budget has run out: the drain waited for it.
    await drain(worker, 300, log, { inFlight: () => 1, redisReady: () => false });
    expect(calls).to.deep.equal(['close', 'cancelAllJobs', 'close(force)']);
  });
});
