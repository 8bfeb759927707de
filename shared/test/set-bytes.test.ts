import { randomBytes } from 'node:crypto';
import { expect } from 'chai';
import { Redis } from 'ioredis';
import { setBytes } from '@conveyor/shared/contract/set-bytes';
import { randomPrefix, testRedisUrl } from '../../test/support/redis.js';

/**
 * An image put with setBytes is the same bytes, with the same expiry, as `redis.set` stores, and
 * stays in order with the commands issued around it, on a plain connection (the direct write) and
 * on an auto-pipelined one (ioredis's own encoding).
 */
describe('setBytes (real Redis)', () => {
  const prefix = randomPrefix('set-bytes');
  const connections: Redis[] = [];
  after(() => Promise.all(connections.map((c) => c.quit())));

  for (const autoPipelining of [false, true]) {
    describe(autoPipelining ? 'auto-pipelined connection' : 'plain connection', () => {
      let redis: Redis;
      before(() => {
        redis = new Redis(testRedisUrl(), { maxRetriesPerRequest: null, enableAutoPipelining: autoPipelining });
        connections.push(redis);
      });

      it('stores 1 MB of binary (CR LF and all) exactly, with its TTL', async () => {
        const bytes = Buffer.concat([randomBytes(1024 * 1024), Buffer.from('\r\n$5\r\n*1\r\n')]);
        const key = `${prefix}:big:${String(autoPipelining)}`;
        await setBytes(redis, key, bytes, 90);
        expect((await redis.getBuffer(key))?.equals(bytes)).to.equal(true);
        const ttl = await redis.ttl(key);
        expect(ttl).to.be.within(1, 90);
      });

      it('keeps the order of the commands issued before and after it, and answers each', async () => {
        const key = `${prefix}:order:${String(autoPipelining)}`;
        const small = Buffer.from([0xff, 0xd8, 0xff, 0x00]);
        const [before, put, after, len] = await Promise.all([
          redis.set(key, 'first'),
          setBytes(redis, key, small, 60),
          redis.getBuffer(key),
          redis.strlen(key),
          setBytes(redis, `${key}:empty`, Buffer.alloc(0), 60),
        ]);
        expect(before).to.equal('OK');
        expect(put).to.equal(undefined);
        expect(after?.equals(small)).to.equal(true);
        expect(len).to.equal(4);
        expect(await redis.strlen(`${key}:empty`)).to.equal(0);
      });
    });
  }
});
