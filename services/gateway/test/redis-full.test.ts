import { expect } from 'chai';
import { isRedisOutOfMemory } from '@conveyor/shared/redis';
import { toProblem } from '../src/http/problem.middleware.js';
import { parseMemoryInfo } from '../src/jobs/memory-guard.js';
import { lostJob } from '../src/routes/jobs.route.js';

const OOM =
  "OOM command not allowed when used memory > 'maxmemory'. script: d93210c537df30add6785981da70a2afc00f4369, on @user_script:4.";

describe('a full Redis, as clients see it', () => {
  it("recognises Redis's refusal for memory, from a script or a plain command", () => {
    expect(isRedisOutOfMemory(new Error(OOM))).to.equal(true);
    expect(isRedisOutOfMemory(new Error("OOM command not allowed when used memory > 'maxmemory'."))).to.equal(true);
    expect(isRedisOutOfMemory(new Error('ECONNREFUSED'))).to.equal(false);
    expect(isRedisOutOfMemory(undefined)).to.equal(false);
  });

  it('answers it 503 + Retry-After in its own words', () => {
    const problem = toProblem(new Error(OOM));
    expect(problem.status).to.equal(503);
    expect(problem.detail).to.equal('The queue store is full; retry later');
    expect(problem.extra).to.include({ retryAfterSeconds: 5 });
  });

  it("never shows Redis's error text as the reason of a lost job, and keeps BullMQ's own", () => {
    expect(lostJob('x', OOM).error.detail).to.equal('The job could not be completed; submit it again');
    expect(lostJob('x', 'ERR Error running script').error.detail).to.equal('The job could not be completed; submit it again');
    expect(lostJob('x', 'job stalled more than allowable limit').error.detail).to.equal('job stalled more than allowable limit');
  });

  it('reads used_memory and maxmemory from INFO memory (0: no limit)', () => {
    const info = '# Memory\r\nused_memory:1048576\r\nused_memory_human:1.00M\r\nmaxmemory:2097152\r\nmaxmemory_human:2.00M\r\n';
    expect(parseMemoryInfo(info)).to.deep.equal({ used: 1_048_576, max: 2_097_152 });
    expect(parseMemoryInfo('used_memory:10\r\nmaxmemory:0\r\n')).to.deep.equal({ used: 10, max: 0 });
  });
});
