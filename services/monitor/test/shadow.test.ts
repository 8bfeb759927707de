import { expect } from 'chai';
import type { Redis } from 'ioredis';
import pino from 'pino';
import type { ShadowEvent } from '@conveyor/shared/contract/shadow.contract';
import { randomPrefix, testRedis } from '../../../test/support/redis.js';
import { itemOf, ShadowPairs } from '../src/shadow/shadow-pairs.js';
import { ShadowStore } from '../src/shadow/shadow-store.js';
import type { StreamEntry } from '../src/store/stream-consumer.js';
import { shownAgreement, ShadowViews } from '../src/views/shadow-view.js';

/**
 * The monitor's shadow windows against real Redis: pairs counted once per job (a redelivered entry
 * is not counted again), windows of WINDOW_SIZE closing as drift's do, figures as the replay
 * report's, malformed entries skipped.
 */
const labels = ['0', '1', '2', '3', '4', '5', '6', '7', '8', '9'];
const prediction = (label: string, confidence: number) => ({
  label,
  index: labels.indexOf(label),
  confidence,
  top: labels.map((l) => ({ label: l, confidence: l === label ? confidence : (1 - confidence) / 9 })),
});
let n = 0;
function pair(production: string, shadow: string, version = 'shadow-1'): ShadowEvent {
  n++;
  return {
    kind: 'shadow',
    version: 1,
    jobId: `00000000-0000-4000-8000-${String(n).padStart(12, '0')}`,
    at: new Date().toISOString(),
    name: 'digits',
    production: { model: { name: 'digits', version: 'prod-1' }, prediction: prediction(production, 0.9), inferenceMs: 0.2 },
    shadow: { model: { name: 'digits', version }, prediction: prediction(shadow, 0.8), inferenceMs: 0.3 },
  };
}
const entry = (event: unknown, id: string): StreamEntry => ({ id, fields: { event: JSON.stringify(event) }, deliveries: 1 });

describe('monitor: shadow agreement windows (real Redis)', () => {
  let redis: Redis;
  before(() => {
    redis = testRedis();
  });
  after(async () => {
    await redis.quit();
  });

  it('measures the shift of the shadow’s probability of production’s label, as the replay report does', () => {
    expect(itemOf(pair('3', '3'))).to.deep.include({ agree: true });
    expect(itemOf(pair('3', '3')).shift).to.be.closeTo(0.1, 1e-12);
    const swapped = itemOf(pair('3', '5'));
    expect(swapped.agree).to.equal(false);
    expect(swapped.shift).to.be.closeTo(0.9 - 0.2 / 9, 1e-12);
  });

  it('counts each job once, closes windows of WINDOW_SIZE and shows the last and the filling one', async () => {
    const store = new ShadowStore(redis, randomPrefix('shadow-monitor'));
    const pairs = new ShadowPairs(store, { windowSize: 4, ttlSeconds: 60 }, pino({ level: 'silent' }));
    const views = new ShadowViews(store, 2);
    const events = [pair('1', '1'), pair('3', '5'), pair('2', '2'), pair('4', '4'), pair('5', '3'), pair('6', '6')];
    const entries = events.map((e, i) => entry(e, `1-${i}`));
    expect(await pairs.handle([...entries.slice(0, 3), entry({ kind: 'nonsense' }, '1-99')])).to.deep.equal([
      'ack',
      'ack',
      'ack',
      'ack',
    ]);
    // The first three again (a redelivery), then the rest.
    await pairs.handle(entries);
    expect(pairs.counted).to.equal(6);
    const [view] = await views.view('digits');
    expect(view!.pairs).to.equal(6);
    expect(view!.lastWindow).to.include({ size: 4, top1Agreement: 0.75 });
    expect(view!.currentWindow).to.include({ status: 'provisional', size: 2, top1Agreement: 0.5 });
    expect(shownAgreement(view!)).to.equal(0.75);
    expect(await views.view('moderation')).to.deep.equal([]);
  });

  it('keeps each shadow version apart, and says insufficient_data below MIN_WINDOW', async () => {
    const store = new ShadowStore(redis, randomPrefix('shadow-monitor'));
    const pairs = new ShadowPairs(store, { windowSize: 10, ttlSeconds: 60 }, pino({ level: 'silent' }));
    await pairs.handle([entry(pair('1', '1', 'a'), '1-0'), entry(pair('1', '2', 'b'), '1-1'), entry(pair('1', '1', 'b'), '1-2')]);
    const views = await new ShadowViews(store, 2).view();
    expect(views.map((v) => [v.shadow.version, v.pairs, v.currentWindow.status, v.currentWindow.top1Agreement])).to.deep.equal([
      ['a', 1, 'insufficient_data', 1],
      ['b', 2, 'provisional', 0.5],
    ]);
    expect(shownAgreement(views[0]!)).to.equal(null);
  });
});
