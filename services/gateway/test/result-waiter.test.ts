import { expect } from 'chai';
import type { Redis } from 'ioredis';
import pino from 'pino';
import { JobStore } from '@conveyor/shared/contract/job-store';
import { redisKeys } from '@conveyor/shared/contract/redis-keys';
import type { ReplyMessage } from '@conveyor/shared/contract/jobs.contract';
import { randomPrefix, testRedis } from '../../../test/support/redis.js';
import { completedResult } from '../../../test/support/results.js';
import { ResultWaiter } from '../src/jobs/result-waiter.js';

describe('result waiter (real Redis)', () => {
  const prefix = randomPrefix('waiter');
  const keys = redisKeys(prefix);
  let subscriber: Redis;
  let reader: Redis;
  let waiter: ResultWaiter;

  const result = completedResult;
  const uuid = () => crypto.randomUUID();

  beforeEach(async () => {
    subscriber = testRedis();
    reader = testRedis();
    waiter = new ResultWaiter(
      subscriber,
      new JobStore(reader, keys, { resultTtlSeconds: 60 }),
      keys,
      'gw-1',
      pino({ level: 'silent' }),
      100,
    );
    await waiter.start();
  });
  afterEach(async () => {
    await waiter.close();
    await Promise.all([subscriber.quit(), reader.quit()]);
  });

  it('delivers a published reply to its waiter', async () => {
    const id = uuid();
    const ticket = waiter.register(id);
    const message: ReplyMessage = { kind: 'job-finished', version: 1, result: result(id) };
    await reader.publish(keys.replies('gw-1'), JSON.stringify(message));
    expect((await ticket.wait(2000))?.id).to.equal(id);
    expect(waiter.waiting).to.equal(0);
  });

  it('delivers one reply to every waiter of the same job (a replayed request waits beside the first)', async () => {
    const id = uuid();
    // Two requests for one job on one gateway: the first and its retry with the same Idempotency-Key.
    const first = waiter.register(id);
    const replay = waiter.register(id);
    expect(waiter.waiting).to.equal(2);
    const waits = [first.wait(10_000), replay.wait(10_000)];
    const message: ReplyMessage = { kind: 'job-finished', version: 1, result: result(id) };
    await reader.publish(keys.replies('gw-1'), JSON.stringify(message));
    const [a, b] = await Promise.all(waits);
    expect(a?.id).to.equal(id);
    expect(b?.id).to.equal(id);
    expect(waiter.waiting).to.equal(0);
  });

  it('lets one waiter of a job go without settling the others', async () => {
    const id = uuid();
    const gone = new AbortController();
    const leaving = waiter.register(id).wait(10_000, gone.signal);
    const staying = waiter.register(id);
    const stays = staying.wait(20_000);
    expect(waiter.waiting).to.equal(2);
    gone.abort();
    expect(await leaving).to.equal(undefined);
    expect(waiter.waiting).to.equal(1);
    await reader.set(keys.result(id), JSON.stringify(result(id)), 'EX', 60); // found by the sweep
    expect((await stays)?.id).to.equal(id);
    expect(waiter.waiting).to.equal(0);
  });

  it('still delivers a result whose notification was lost, from the stored result', async () => {
    const id = uuid();
    const ticket = waiter.register(id);
    await reader.set(keys.result(id), JSON.stringify(result(id)), 'EX', 60); // no PUBLISH
    // Only the sweep (every 100 ms here) can find it: a wait that runs out answers undefined. The
    // wait is generous for a loaded machine; how soon the sweep comes is the sweep interval's matter.
    expect((await ticket.wait(20_000))?.id).to.equal(id);
    expect(waiter.waiting).to.equal(0);
  });

  it('gives up after the timeout and when the client goes away', async () => {
    expect(await waiter.register(uuid()).wait(50)).to.equal(undefined);
    const gone = new AbortController();
    const pending = waiter.register(uuid()).wait(5000, gone.signal);
    gone.abort();
    expect(await pending).to.equal(undefined);
    expect(waiter.waiting).to.equal(0);
  });

  it('ignores malformed and foreign messages', async () => {
    const id = uuid();
    const ticket = waiter.register(id);
    await reader.publish(keys.replies('gw-1'), 'not json');
    await reader.publish(keys.replies('gw-1'), JSON.stringify({ kind: 'job-finished', version: 1, result: result(uuid()) }));
    expect(await ticket.wait(300)).to.equal(undefined);
  });

  it('releases every waiter on close', async () => {
    const pending = [waiter.register(uuid()).wait(10_000), waiter.register(uuid()).wait(10_000)];
    await waiter.close();
    expect(await Promise.all(pending)).to.deep.equal([undefined, undefined]);
  });
});
