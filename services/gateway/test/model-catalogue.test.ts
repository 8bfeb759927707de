import { expect } from 'chai';
import type { Redis } from 'ioredis';
import pino from 'pino';
import { redisKeys } from '@conveyor/shared/contract/redis-keys';
import { FleetStore } from '@conveyor/shared/contract/fleet-store';
import type { ModelAnnouncement, WorkerHeartbeat } from '@conveyor/shared/contract/workers.contract';
import { randomPrefix, testRedis } from '../../../test/support/redis.js';
import { ModelCatalogue } from '../src/models/model-catalogue.js';

/**
 * The gateway's view of the models, against real Redis with heartbeats written as workers write
 * them, including a worker of the previous release (one model, no `models` field).
 */
describe('model catalogue (real Redis, heartbeats written by hand)', () => {
  const log = pino({ level: 'silent' });
  let redis: Redis;

  before(() => {
    redis = testRedis();
  });
  after(() => redis.quit());

  const heartbeat = (id: string, models?: WorkerHeartbeat['models']): WorkerHeartbeat => ({
    kind: 'worker-heartbeat',
    version: 1,
    id,
    hostname: 'h',
    pid: 1,
    model: models?.[0]?.model ?? { name: 'digits', version: 'old-1' },
    concurrency: 4,
    ...(models ? { models } : {}),
    startedAt: new Date().toISOString(),
    at: new Date().toISOString(),
    processed: 0,
    failed: 0,
  });
  const beat = async (prefix: string, body: WorkerHeartbeat) => {
    const keys = redisKeys(prefix);
    await redis.set(keys.worker(body.id), JSON.stringify(body), 'PX', 60_000);
    await redis.zadd(keys.workers, Date.now() + 60_000, body.id);
  };
  const announcement = (name: string, version: string): ModelAnnouncement => ({
    kind: 'model-announcement',
    version: 1,
    name,
    model: { name, version },
    input: { name: 'input', layout: 'NCHW', channels: 3, height: 224, width: 224, color: 'rgb', resize: 'fill' },
    labels: ['a', 'b'],
    at: new Date().toISOString(),
  });

  it('knows the default and configured models before any worker, and none of them is ready', async () => {
    const prefix = randomPrefix('catalogue');
    const catalogue = new ModelCatalogue(
      new FleetStore(redis, redisKeys(prefix)),
      { defaultModel: 'digits', configured: ['moderation'] },
      log,
    );
    expect(catalogue.known()).to.deep.equal(['digits', 'moderation']);
    const view = await catalogue.current();
    expect([...view.models.values()].map((m) => [m.name, m.ready, m.configured, m.queue])).to.deep.equal([
      ['digits', false, true, 'inference'],
      ['moderation', false, true, 'inference.moderation'],
    ]);
    expect(await catalogue.resolve('nothing-like-it')).to.equal(undefined);
  });

  it("counts a previous release's worker (no `models`) as serving the legacy queue's model", async () => {
    const prefix = randomPrefix('catalogue');
    await beat(prefix, heartbeat('old-worker'));
    await beat(
      prefix,
      heartbeat('new-worker', [
        { name: 'digits', model: { name: 'digits', version: 'new-2' }, concurrency: 2 },
        { name: 'moderation', model: { name: 'moderation', version: 'm-1' }, concurrency: 1 },
      ]),
    );
    const catalogue = new ModelCatalogue(
      new FleetStore(redis, redisKeys(prefix)),
      { defaultModel: 'digits', configured: [] },
      log,
    );
    const digits = (await catalogue.resolve('digits'))!;
    expect(digits).to.deep.include({ ready: true, workers: 2, concurrency: 6, versions: ['new-2', 'old-1'] });
    expect(await catalogue.resolve('moderation')).to.deep.include({ ready: true, workers: 1, configured: false });
  });

  it('learns a model from its announcement once and for all, and ignores one filed under another name', async () => {
    const prefix = randomPrefix('catalogue');
    const keys = redisKeys(prefix);
    await redis.hset(keys.models, 'moderation', JSON.stringify(announcement('moderation', 'm-1')));
    await redis.hset(keys.models, 'impostor', JSON.stringify(announcement('moderation', 'm-2')));
    await redis.hset(keys.models, 'garbage', '{not json');
    const catalogue = new ModelCatalogue(new FleetStore(redis, keys), { defaultModel: 'digits', configured: [] }, log);
    const moderation = (await catalogue.resolve('moderation'))!;
    expect(moderation).to.deep.include({ ready: false, workers: 0, configured: false });
    expect(moderation.announced?.model).to.deep.equal({ name: 'moderation', version: 'm-1' });
    expect(catalogue.known()).to.deep.equal(['digits', 'moderation']);
  });

  it('re-reads before answering "unknown" or "no worker", at most every minRefreshMs', async () => {
    const prefix = randomPrefix('catalogue');
    const rare = new ModelCatalogue(
      new FleetStore(redis, redisKeys(prefix)),
      { defaultModel: 'digits', configured: [], minRefreshMs: 60_000 },
      log,
    );
    const eager = new ModelCatalogue(
      new FleetStore(redis, redisKeys(prefix)),
      { defaultModel: 'digits', configured: [], minRefreshMs: 0 },
      log,
    );
    expect(await rare.resolve('moderation')).to.equal(undefined);
    expect(await eager.resolve('moderation')).to.equal(undefined);
    // A worker announces it a moment later.
    await beat(prefix, heartbeat('w', [{ name: 'moderation', model: { name: 'moderation', version: 'm-1' }, concurrency: 1 }]));
    expect(await eager.resolve('moderation')).to.deep.include({ ready: true });
    // Within minRefreshMs of its last read, a flood of requests for it costs no further reads.
    expect(await rare.resolve('moderation')).to.equal(undefined);
  });
});
