import { expect } from 'chai';
import { JobCounts } from '../src/job-counts.js';

/**
 * The drain rate deadline admission plans with: measured only while every slot is busy, from the
 * intervals between ends of jobs that ran the model (test clock, no timing).
 */
describe('a model’s jobs in a worker: the saturated drain rate', () => {
  const clocked = (slots: number) => {
    let now = 0;
    const counts = new JobCounts(slots, () => now);
    return { counts, at: (ms: number) => (now = ms) };
  };

  it('is the inverse of the interval between ends while all slots stay taken', () => {
    const { counts, at } = clocked(2);
    counts.started();
    counts.started();
    // With a backlog, each end is followed by the next start at once.
    for (let t = 10; t <= 200; t += 10) {
      at(t);
      counts.ended(20);
      counts.started();
    }
    expect(counts.saturatedJobsPerSecond).to.be.closeTo(100, 1e-9); // one end every 10 ms
    // Where slots / serviceMs would say 2 / 20 ms = 100 per second too; it is the measure that
    // includes what the slot spends outside the processor when the two differ (below).
  });

  it('counts the time a slot takes to be refilled, which slots / serviceMs leaves out', () => {
    const { counts, at } = clocked(1);
    counts.started();
    for (let t = 30; t <= 300; t += 30) {
      at(t);
      counts.ended(10); // 10 ms in the processor, 20 ms taking and finishing the job around it
      counts.started();
    }
    expect(counts.serviceMs).to.be.closeTo(10, 1e-9);
    expect(counts.saturatedJobsPerSecond).to.be.closeTo(1000 / 30, 1e-9); // not 1000 / 10
  });

  it('is not measured while a slot stands idle (no backlog), nor from jobs that did not run the model', () => {
    const { counts, at } = clocked(2);
    counts.started();
    at(10);
    counts.ended(5); // one slot idle: not saturated
    at(500);
    counts.started();
    counts.started();
    at(510);
    counts.ended(); // expired unread: not a served job
    counts.started();
    at(520);
    counts.ended(8); // the first saturated end: nothing to measure from yet
    expect(counts.saturatedJobsPerSecond).to.equal(undefined);
    counts.started();
    at(530);
    counts.ended(8);
    expect(counts.saturatedJobsPerSecond).to.be.closeTo(100, 1e-9);
  });
});
