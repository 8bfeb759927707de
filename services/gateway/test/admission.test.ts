import { expect } from 'chai';
import { ProblemError } from '@conveyor/shared/problem';
import type { Redis } from '@conveyor/shared/redis';
import { Admission, type AdmissionKeys } from '../src/jobs/admission.js';
import type { InferenceQueue } from '../src/jobs/model-queues.js';

/**
 * Admission's side of the bargain with fakes at its boundary (no Redis): the counting itself is the
 * Lua script's, tested against real Redis in test/e2e/admission.e2e.test.ts; here, what admission
 * makes of its answers — refusals and their wording, settling before refusing for bytes, the room
 * check first, and a reservation given back exactly once.
 */
type Answer = [number, number?];

class FakeRedis {
  readonly reserves: unknown[][] = [];
  readonly releases: unknown[][] = [];
  answers: Answer[] = [];
  reconciled: [string, number, number] = ['0', 0, 0];
  reconciles = 0;

  defineCommand(): void {
    // The scripts are not run here.
  }
  conveyorReserve(...args: unknown[]): Promise<Answer> {
    this.reserves.push(args);
    return Promise.resolve(this.answers.shift() ?? [0]);
  }
  conveyorRelease(...args: unknown[]): Promise<number> {
    this.releases.push(args);
    return Promise.resolve(1);
  }
  conveyorReconcile(): Promise<[string, number, number]> {
    this.reconciles++;
    return Promise.resolve(this.reconciled);
  }
}

const keys: AdmissionKeys = {
  reserved: (queue) => `reserved:${queue}`,
  queuedImages: 'queued-images',
  queuedBytes: 'queued-bytes',
  input: (jobId) => `input:${jobId}`,
};
const queue = {
  name: 'inference:digits',
  keys: { wait: 'wait', prioritized: 'prioritized' },
  toKey: (type: string) => `bull:inference:digits:${type}`,
} as unknown as InferenceQueue;

function admission(redis: FakeRedis, room?: () => Promise<void>): Admission {
  return new Admission(
    redis as unknown as Redis,
    keys,
    { maxDepth: 50, maxQueuedBytes: 1000 },
    250,
    room ? { check: room } : undefined,
  );
}

async function refusal(promise: Promise<unknown>): Promise<ProblemError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).to.be.instanceOf(ProblemError);
  return error as ProblemError;
}

describe('admission (fakes, no Redis)', () => {
  it('reserves the place under the job id with the declared bytes, and gives it back once', async () => {
    const redis = new FakeRedis();
    const place = await admission(redis).admit(queue, 'job-1', 300);
    expect(place.jobId).to.equal('job-1');
    expect(redis.reserves[0]).to.deep.equal([
      'wait',
      'prioritized',
      'reserved:inference:digits',
      'queued-bytes',
      'queued-images',
      50,
      60_000,
      1000,
      300,
      'job-1',
      'bull:inference:digits:',
    ]);
    place.release();
    place.release();
    expect(redis.releases).to.deep.equal([['reserved:inference:digits', 'queued-images', 'queued-bytes', '', 'job-1']]);
  });

  it('corrects the bytes to what was stored once queued, and a later release changes nothing', async () => {
    const redis = new FakeRedis();
    const place = await admission(redis).admit(queue, 'job-1', 300);
    place.queued(123);
    place.release();
    expect(redis.releases).to.deep.equal([['reserved:inference:digits', 'queued-images', 'queued-bytes', '123', 'job-1']]);
  });

  it('refuses a full queue with 503 overloaded, the depth and Retry-After', async () => {
    const redis = new FakeRedis();
    redis.answers = [[1, 50]];
    const problem = await refusal(admission(redis).admit(queue, 'job-1', 300));
    expect(problem.slug).to.equal('overloaded');
    expect(problem.status).to.equal(503);
    expect(problem.detail).to.equal('50 jobs are waiting or being queued for this model; the limit is 50');
    expect(problem.extra).to.include({ retryAfterSeconds: 5 });
    expect(redis.reconciles).to.equal(0);
  });

  it('settles the bytes of jobs that left before refusing for bytes, and admits if that made room', async () => {
    const redis = new FakeRedis();
    redis.answers = [[2, 990], [0]];
    redis.reconciled = ['0', 2, 600];
    const place = await admission(redis).admit(queue, 'job-1', 300);
    expect(place.jobId).to.equal('job-1');
    expect(redis.reconciles).to.equal(1);
    expect(redis.reserves).to.have.length(2);
  });

  it('refuses for bytes when settling found nothing to give back', async () => {
    const redis = new FakeRedis();
    redis.answers = [[2, 990]];
    const problem = await refusal(admission(redis).admit(queue, 'job-1', 300));
    expect(problem.detail).to.equal('Queued images hold 990 bytes; the limit is 1000');
    expect(redis.reserves).to.have.length(1);
  });

  it('asks the room check first, and reserves nothing when Redis is full', async () => {
    const redis = new FakeRedis();
    const full = new ProblemError('overloaded', 'The queue store is full; retry later', { retryAfterSeconds: 5 });
    const problem = await refusal(admission(redis, () => Promise.reject(full)).admit(queue, 'job-1', 300));
    expect(problem).to.equal(full);
    expect(redis.reserves).to.deep.equal([]);
  });
});
