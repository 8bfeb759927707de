import { expect } from 'chai';
import { ProblemError } from '@conveyor/shared/problem';
import { parseDeadline } from '../src/http/deadline.js';
import { checkDeadline, deadlineLimit, expectedFinishMs } from '../src/jobs/deadline-admission.js';

describe('Prefer: deadline=<seconds>', () => {
  it('reads the deadline beside other preferences, capped', () => {
    expect(parseDeadline('respond-async, deadline=2.5', 600)).to.equal(2.5);
    expect(parseDeadline('wait=5; deadline="3"', 600)).to.equal(3);
    expect(parseDeadline('deadline=9000', 600)).to.equal(600);
  });
  it('ignores an absent, zero, negative or non-numeric deadline', () => {
    expect(parseDeadline('', 600)).to.equal(undefined);
    expect(parseDeadline('wait=5', 600)).to.equal(undefined);
    expect(parseDeadline('deadline=0', 600)).to.equal(undefined);
    expect(parseDeadline('deadline=-1', 600)).to.equal(undefined);
    expect(parseDeadline('deadline=soon', 600)).to.equal(undefined);
  });
});

describe('deadline admission estimate', () => {
  it('drains the jobs waiting at the workers’ concurrency, then adds the job’s own service time', () => {
    expect(expectedFinishMs({ waiting: 0, concurrency: 2, serviceMs: 40 })).to.equal(40);
    expect(expectedFinishMs({ waiting: 10, concurrency: 2, serviceMs: 40 })).to.equal(240);
    expect(expectedFinishMs({ waiting: 10, concurrency: 0, serviceMs: 40 })).to.equal(Infinity);
    expect(expectedFinishMs({ waiting: 10, concurrency: 2, serviceMs: undefined })).to.equal(undefined);
  });
  it('admits a job that fits its deadline, and refuses one that cannot with a Retry-After for the excess', () => {
    expect(() => checkDeadline({ waiting: 10, concurrency: 2, serviceMs: 40 }, 240, 'digits')).to.not.throw();
    expect(() => checkDeadline({ waiting: 10, concurrency: 2, serviceMs: undefined }, 1, 'digits')).to.not.throw();
    let refusal: unknown;
    try {
      checkDeadline({ waiting: 100, concurrency: 1, serviceMs: 50 }, 1000, 'digits');
    } catch (error) {
      refusal = error;
    }
    expect(refusal).to.be.instanceOf(ProblemError);
    const problem = refusal as ProblemError;
    expect(problem.slug).to.equal('deadline-unmeetable');
    expect(problem.status).to.equal(503);
    // 101 × 50 ms = 5050 ms expected against 1000 ms: 4.05 s too many, rounded up.
    expect(problem.extra).to.include({ retryAfterSeconds: 5, expectedMs: 5050 });
  });
  it('turns a deadline into the deepest queue that still meets it, for admission to check atomically', () => {
    // (10 / 2 + 1) × 40 = 240 ms fits a 240 ms deadline; 11 waiting would be 260 ms: refused from 11 on.
    const limit = deadlineLimit({ concurrency: 2, serviceMs: 40 }, 240, 'digits')!;
    expect(limit.maxDepth).to.equal(11);
    expect(() => limit.refuse(11)).to.throw(ProblemError, /deadline|would finish/);
    // Shorter than one job: no depth meets it (checkDeadline with an empty queue refuses it first).
    expect(deadlineLimit({ concurrency: 2, serviceMs: 40 }, 30, 'digits')!.maxDepth).to.equal(1);
    expect(deadlineLimit({ concurrency: 2, serviceMs: undefined }, 240, 'digits')).to.equal(undefined);
  });
  it('drains at the workers’ measured saturated rate when they have one, never faster than their slots allow', () => {
    // Slots say 2 per 40 ms = 50 jobs/s; measured, the workers drain 20/s: 10 waiting take 500 ms, then 40 ms.
    expect(expectedFinishMs({ waiting: 10, concurrency: 2, serviceMs: 40, jobsPerSecond: 20 })).to.equal(540);
    // A measured rate above what the slots allow is not believed (slots: 200 ms for 10).
    expect(expectedFinishMs({ waiting: 10, concurrency: 2, serviceMs: 40, jobsPerSecond: 1000 })).to.equal(240);
    // (1000 − 40) ms × 20 jobs/s = 19.2 jobs ahead fit: 20 and more are refused.
    expect(deadlineLimit({ concurrency: 2, serviceMs: 40, jobsPerSecond: 20 }, 1000, 'digits')!.maxDepth).to.equal(20);
  });
  it('refuses when no live worker serves the model', () => {
    expect(() => checkDeadline({ waiting: 0, concurrency: 0, serviceMs: undefined }, 60_000, 'digits')).to.throw(ProblemError);
  });
});
