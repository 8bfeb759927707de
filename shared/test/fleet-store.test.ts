import { expect } from 'chai';
import type { Redis } from 'ioredis';
import { FleetStore } from '@conveyor/shared/contract/fleet-store';
import { redisKeys } from '@conveyor/shared/contract/redis-keys';
import type { ModelAnnouncement, WorkerHeartbeat } from '@conveyor/shared/contract/workers.contract';
import { randomPrefix, testRedis } from '../../test/support/redis.js';

/** The worker fleet through its one owner, against a real Redis: beat, read who is alive, leave, announcements, labels. */
describe('fleet store (real Redis)', () => {
  let redis: Redis;

  before(() => {
    redis = testRedis();
  });
  after(() => redis.quit());

  const heartbeat = (id: string, serving = 'digits', loaded = 'digits'): WorkerHeartbeat => ({
    kind: 'worker-heartbeat',
    version: 1,
    id,
    hostname: 'h',
    pid: 1,
    model: { name: loaded, version: '3' },
    concurrency: 2,
    models: [{ name: serving, model: { name: loaded, version: '3' }, concurrency: 2 }],
    startedAt: new Date().toISOString(),
    at: new Date().toISOString(),
    processed: 0,
    failed: 0,
  });
  const announcement = (serving: string, loaded: string, labels = ['cat', 'dog']): ModelAnnouncement => ({
    kind: 'model-announcement',
    version: 1,
    name: serving,
    model: { name: loaded, version: '3' },
    input: { name: 'input', layout: 'NCHW', channels: 3, height: 224, width: 224, color: 'rgb', resize: 'fill' },
    labels,
    at: new Date().toISOString(),
  });

  it('reads back the workers that beat and have not expired, and forgets one that left', async () => {
    const fleet = new FleetStore(redis, redisKeys(randomPrefix('fleet')));
    const now = Date.now();
    await fleet.beat(heartbeat('w1'), [], 60_000, now);
    await fleet.beat(heartbeat('w2'), [], 60_000, now);
    expect((await fleet.liveWorkers(now)).map((w) => w.id).sort()).to.deep.equal(['w1', 'w2']);
    // A heartbeat whose time is up no longer counts, whether or not its key has gone yet.
    expect(await fleet.liveWorkers(now + 60_001)).to.deep.equal([]);

    await fleet.leave('w1');
    expect((await fleet.liveWorkers(now)).map((w) => w.id)).to.deep.equal(['w2']);
  });

  it('prunes the entries of workers whose heartbeat expired at the next beat', async () => {
    const keys = redisKeys(randomPrefix('fleet'));
    const fleet = new FleetStore(redis, keys);
    const then = Date.now() - 120_000;
    await fleet.beat(heartbeat('gone'), [], 1000, then);
    await fleet.beat(heartbeat('alive'), [], 60_000);
    expect(await redis.zrange(keys.workers, 0, -1)).to.deep.equal(['alive']);
  });

  it('leaves out a heartbeat that does not parse rather than failing the read', async () => {
    const keys = redisKeys(randomPrefix('fleet'));
    const fleet = new FleetStore(redis, keys);
    await fleet.beat(heartbeat('good'), [], 60_000);
    await redis.set(keys.worker('bad'), '{not json', 'PX', 60_000);
    await redis.zadd(keys.workers, Date.now() + 60_000, 'bad');
    expect((await fleet.liveWorkers()).map((w) => w.id)).to.deep.equal(['good']);
  });

  it('keeps announcements by serving name and labels by loaded model, past the heartbeat', async () => {
    const keys = redisKeys(randomPrefix('fleet'));
    const fleet = new FleetStore(redis, keys);
    // Served as "pets", loaded from a registry model of another name: the two keys must not mix them up.
    expect(await fleet.labels({ name: 'mobilenet', version: '3' })).to.equal(undefined);
    await fleet.beat(heartbeat('w1', 'pets', 'mobilenet'), [announcement('pets', 'mobilenet')], 60_000);
    await fleet.leave('w1');

    const announced = await fleet.announcements();
    expect([...announced.keys()]).to.deep.equal(['pets']);
    expect(announced.get('pets')?.model).to.deep.equal({ name: 'mobilenet', version: '3' });
    expect(await fleet.labels({ name: 'mobilenet', version: '3' })).to.deep.equal(['cat', 'dog']);
    expect(await fleet.labels({ name: 'pets', version: '3' })).to.equal(undefined);
  });

  it('writes a version’s labels once: a later beat cannot change them', async () => {
    const fleet = new FleetStore(redis, redisKeys(randomPrefix('fleet')));
    await fleet.beat(heartbeat('w1'), [announcement('digits', 'digits', ['0', '1'])], 60_000);
    await fleet.beat(heartbeat('w2'), [announcement('digits', 'digits', ['x'])], 60_000);
    expect(await fleet.labels({ name: 'digits', version: '3' })).to.deep.equal(['0', '1']);
    expect((await fleet.announcements()).get('digits')?.labels).to.deep.equal(['x']);
  });

  it('leaves out announcements that do not parse or name another model than their field', async () => {
    const keys = redisKeys(randomPrefix('fleet'));
    const fleet = new FleetStore(redis, keys);
    await fleet.beat(heartbeat('w1'), [announcement('digits', 'digits')], 60_000);
    await redis.hset(keys.models, 'impostor', JSON.stringify(announcement('digits', 'digits')));
    await redis.hset(keys.models, 'garbage', '{not json');
    await redis.hset(keys.modelLabels, 'broken@1', '{not json');
    expect([...(await fleet.announcements()).keys()]).to.deep.equal(['digits']);
    expect(await fleet.labels({ name: 'broken', version: '1' })).to.equal(undefined);
  });
});
