import { expect } from 'chai';
import type { Redis } from 'ioredis';
import pino from 'pino';
import { FleetStore } from '@conveyor/shared/contract/fleet-store';
import { redisKeys } from '@conveyor/shared/contract/redis-keys';
import type { ModelAnnouncement } from '@conveyor/shared/contract/workers.contract';
import { randomPrefix, testRedis } from '../../../test/support/redis.js';
import { ModelCatalogue } from '../src/models/model-catalogue.js';

/**
 * Which announced models the catalogue still lists when no worker serves them (real Redis,
 * announcements written as heartbeats write them): retired after `retireAfterMs` from the last
 * heartbeat that served them (`seenAt`; `at` for a worker of an earlier release), never when
 * configured, never with retireAfterMs 0.
 */
describe('model catalogue: retired models (real Redis)', () => {
  const log = pino({ level: 'silent' });
  const hour = 3_600_000;
  let redis: Redis;

  before(() => {
    redis = testRedis();
  });
  after(() => redis.quit());

  const announce = async (prefix: string, name: string, at: number, seenAt?: number) => {
    const body: ModelAnnouncement = {
      kind: 'model-announcement',
      version: 1,
      name,
      model: { name, version: 'v1' },
      input: { name: 'input', layout: 'NCHW', channels: 1, height: 28, width: 28, color: 'gray', resize: 'fill' },
      labels: ['a', 'b'],
      at: new Date(at).toISOString(),
      ...(seenAt === undefined ? {} : { seenAt: new Date(seenAt).toISOString() }),
    };
    await redis.hset(redisKeys(prefix).models, name, JSON.stringify(body));
  };

  it('leaves out a model last served longer ago than retireAfterMs, keeps a recent or configured one', async () => {
    const prefix = randomPrefix('retire');
    const now = Date.now();
    await announce(prefix, 'old', now - 10 * hour, now - 2 * hour);
    await announce(prefix, 'recent', now - 10 * hour, now - 1000);
    await announce(prefix, 'legacy-old', now - 2 * hour); // no seenAt: a worker of an earlier release
    await announce(prefix, 'kept', now - 10 * hour, now - 2 * hour);
    const catalogue = new ModelCatalogue(
      new FleetStore(redis, redisKeys(prefix)),
      { defaultModel: 'digits', configured: ['kept'], retireAfterMs: hour },
      log,
    );
    const view = await catalogue.current();
    expect([...view.models.keys()]).to.deep.equal(['digits', 'kept', 'recent']);
    expect(await catalogue.resolve('old')).to.equal(undefined);
    expect(await catalogue.resolve('kept')).to.deep.include({ ready: false, workers: 0, configured: true });
  });

  it('retires nothing with retireAfterMs 0', async () => {
    const prefix = randomPrefix('retire');
    await announce(prefix, 'old', Date.now() - 10 * hour, Date.now() - 9 * hour);
    const catalogue = new ModelCatalogue(
      new FleetStore(redis, redisKeys(prefix)),
      { defaultModel: 'digits', configured: [], retireAfterMs: 0 },
      log,
    );
    expect([...(await catalogue.current()).models.keys()]).to.deep.equal(['digits', 'old']);
  });
});
