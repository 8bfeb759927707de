import { randomUUID } from 'node:crypto';
import type { InferenceQueue } from '../src/jobs/model-queues.js';
import { expect } from 'chai';
import type { Redis } from 'ioredis';
import { JobStore } from '@conveyor/shared/contract/job-store';
import { redisKeys } from '@conveyor/shared/contract/redis-keys';
import { randomPrefix, testRedis } from '../../../test/support/redis.js';
import { completedResult } from '../../../test/support/results.js';
import { JobLookup } from '../src/jobs/job-lookup.js';

/**
 * A poll racing the job's completion: the result is stored, then BullMQ removes the job. A lookup
 * that read "no result" just before, then "no such job" just after, must still find the result.
 */
describe('job lookup (real Redis, BullMQ state faked)', () => {
  const prefix = randomPrefix('lookup');
  const keys = redisKeys(prefix);
  let redis: Redis;

  before(() => {
    redis = testRedis();
  });
  after(() => redis.quit());

  const result = completedResult;

  it('finds a job that completed between reading its result and reading its state', async () => {
    const id = randomUUID();
    // The job completes (result stored, job removed) while the lookup asks BullMQ for its state.
    const queue = {
      getJobState: async () => {
        await redis.set(keys.result(id), JSON.stringify(result(id)), 'EX', 60);
        return 'unknown';
      },
    } as unknown as InferenceQueue;
    const view = await new JobLookup(
      () => Promise.resolve([{ model: 'digits', queue }]),
      new JobStore(redis, keys, { resultTtlSeconds: 60 }),
    ).find(id);
    expect(view).to.deep.include({ kind: 'finished' });
  });

  it('still answers "no such job" for an id that never existed', async () => {
    const queue = { getJobState: () => Promise.resolve('unknown') } as unknown as InferenceQueue;
    expect(
      await new JobLookup(
        () => Promise.resolve([{ model: 'digits', queue }]),
        new JobStore(redis, keys, { resultTtlSeconds: 60 }),
      ).find(randomUUID()),
    ).to.equal(undefined);
  });
});
