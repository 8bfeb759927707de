import { expect } from 'chai';
import { LoginLimiter } from '../src/http/login-limiter.js';

describe('LoginLimiter: failed logins per client', () => {
  const limits = { maxFailures: 3, windowMs: 60_000, lockoutMs: 1000, maxLockoutMs: 4000, maxClients: 2 };

  it('locks a client out for longer each time, up to the cap, and forgets it on success', () => {
    let now = 0;
    const limiter = new LoginLimiter(limits, () => now);
    const lockouts: number[] = [];
    for (let round = 0; round < 4; round++) {
      for (let i = 0; i < 3; i++) limiter.fail('a');
      lockouts.push(limiter.lockedFor('a'));
      now += limiter.lockedFor('a');
    }
    expect(lockouts).to.deep.equal([1000, 2000, 4000, 4000]);
    limiter.succeed('a');
    for (let i = 0; i < 3; i++) limiter.fail('a');
    expect(limiter.lockedFor('a')).to.equal(1000);
  });

  it('cannot be made to forget a locked-out client by a flood of other clients', () => {
    const limiter = new LoginLimiter(limits, () => 0);
    for (let i = 0; i < 3; i++) limiter.fail('a');
    for (let i = 0; i < 50; i++) limiter.fail(`other-${i}`);
    expect(limiter.lockedFor('a')).to.equal(1000);
    expect(limiter.size).to.equal(2);
  });
});
