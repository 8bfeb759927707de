import { expect } from 'chai';
import type { Redis } from 'ioredis';
import { AlertEvent } from '@conveyor/shared/contract/events.contract';
import { redisKeys } from '@conveyor/shared/contract/redis-keys';
import { readManifest } from '@conveyor/shared/model/runtime';
import { ensureModerationModel, MODERATION_DIR, PHOTOS, readPhoto } from '../../scripts/models/moderation.js';
import { digitPng, heldOutDigits } from '../support/images.js';
import { predictModel, request } from '../support/http.js';
import { keysUnder, randomPrefix, testRedis } from '../support/redis.js';
import { dumpLogsOnFailure, startGateway, startMonitor, startWorker, stopAll, type Gateway } from '../support/services.js';
import { until } from '../support/wait.js';

/**
 * The drift monitor with several models, end to end: real Redis, a real gateway, one real worker
 * process serving the digit CNN and the nsfwjs MobileNetV2, and a real monitor reading their
 * prediction events. Traffic to the moderation model shows up as a drift state of its own, judged
 * against its own reference profile (models/moderation), and leaves the digits' windows, states and
 * figures exactly as they were.
 */
interface VersionView {
  name: string;
  model: { name: string; version: string };
  current: boolean;
  states: Record<string, string>;
  lastWindow: { index: number; size: number; status: string; features: Record<string, { value: number }> } | null;
  currentWindow: { status: string; size: number };
}
interface View {
  byModel: Record<string, { current: string | null; versions: string[] }>;
  models: VersionView[];
}

const WINDOW = 40;

describe('drift monitor with several models', function () {
  this.timeout(300_000);
  const prefix = randomPrefix('mon-models');
  let redis: Redis;
  let gateway: Gateway;
  let worker: Awaited<ReturnType<typeof startWorker>>;
  let monitor: Awaited<ReturnType<typeof startMonitor>>;
  let digitsVersion: string;
  let moderationVersion: string;

  const view = async (model?: string) => (await request<View>(`${monitor.url}/drift${model ? `/${model}` : ''}`)).body;
  const alerts = async () =>
    (await redis.xrange(redisKeys(prefix).alerts, '-', '+')).map(([, f]) => AlertEvent.parse(JSON.parse(f[1]!)));

  before(async () => {
    await ensureModerationModel();
    redis = testRedis();
    digitsVersion = (await readManifest('models/digits')).version;
    moderationVersion = (await readManifest(MODERATION_DIR)).version;
    [gateway, worker, monitor] = await Promise.all([
      startGateway(prefix),
      startWorker(prefix, { MODELS: 'digits,moderation:2' }),
      // Small windows keep the test short; one window decides a state, so an alert needs one window.
      startMonitor(prefix, { WINDOW_SIZE: String(WINDOW), MIN_WINDOW: '20', ALERT_CONSECUTIVE: '1' }),
    ]);
    await until('both models ready', async () =>
      (await Promise.all(['digits', 'moderation'].map((m) => request(`${gateway.url}/v2/models/${m}/ready`)))).every(
        (r) => r.status === 200,
      ),
    );
  });
  afterEach(function () {
    dumpLogsOnFailure(this, gateway, worker, monitor);
  });
  after(async () => {
    await stopAll(gateway, worker, monitor);
    const found = await keysUnder(redis, prefix);
    if (found.length > 0) await redis.del(...found);
    await redis.quit();
  });

  let digitsBefore: VersionView;
  let alertsBefore: number;

  it('keeps the digits in windows of their own, against the digits profile', async () => {
    const { dataset, split } = await heldOutDigits();
    for (const i of split.test.slice(0, 2 * WINDOW)) {
      const reply = await predictModel(gateway.url, 'digits', await digitPng(dataset.samples[i]!.pixels));
      expect(reply.status, JSON.stringify(reply.body)).to.equal(200);
    }
    const digits = await until('two digits windows evaluated', async () => {
      const found = (await view('digits')).models[0];
      return found?.lastWindow?.index === 2 ? found : undefined;
    });
    expect(digits).to.deep.include({ name: 'digits', model: { name: 'digits', version: digitsVersion }, current: true });
    expect(digits.lastWindow).to.include({ size: WINDOW, status: 'evaluated' });
    // The digits' profile has an embedding: their windows judge it.
    expect(Object.keys(digits.lastWindow!.features)).to.include('embedding');
    expect(digits.currentWindow.size).to.equal(0);
    digitsBefore = digits;
    alertsBefore = (await alerts()).length;
  });

  it('shows moderation traffic as its own drift state, naming it in alerts, and leaves the digits alone', async () => {
    // The three photos of reference-predictions.json, one and a half windows' worth.
    const photos = PHOTOS.map((p) => readPhoto(p.name).bytes);
    const sent = WINDOW + WINDOW / 2;
    for (let i = 0; i < sent; i++) {
      const reply = await predictModel(gateway.url, 'moderation', photos[i % photos.length]!);
      expect(reply.status, JSON.stringify(reply.body)).to.equal(200);
    }
    const moderation = await until('a moderation window evaluated and the next one filling', async () => {
      const found = (await view('moderation')).models[0];
      return found?.lastWindow?.index === 1 && found.currentWindow.size === sent - WINDOW ? found : undefined;
    });
    expect(moderation).to.deep.include({ name: 'moderation', model: { name: 'moderation', version: moderationVersion } });
    // Judged against models/moderation's own profile (no embedding there), not the digits'.
    expect(moderation.lastWindow).to.include({ size: WINDOW, status: 'evaluated' });
    expect(Object.keys(moderation.lastWindow!.features).sort()).to.deep.equal([
      'brightness',
      'confidence',
      'contrast',
      'inkRatio',
      'predicted-class',
    ]);
    // Three photos over and over are nothing like a mix of sixteen: the drift is the moderation model's.
    expect(moderation.lastWindow!.features.brightness!.value).to.be.greaterThan(0.25);
    expect(moderation.states.brightness).to.equal('alert');
    const raised = (await alerts()).slice(alertsBefore);
    expect(raised.length).to.be.greaterThan(0);
    for (const a of raised) {
      expect(a, a.message).to.deep.include({ name: 'moderation', model: { name: 'moderation', version: moderationVersion } });
      expect(a.message.startsWith(`moderation@${moderationVersion}: `), a.message).to.equal(true);
    }

    // The digits are exactly as they were: same last window, same states, nothing added to their window.
    const all = await view();
    expect(Object.keys(all.byModel).sort()).to.deep.equal(['digits', 'moderation']);
    const digits = all.models.find((m) => m.name === 'digits')!;
    expect(digits.lastWindow).to.deep.equal(digitsBefore.lastWindow);
    expect(digits.states).to.deep.equal(digitsBefore.states);
    expect(digits.currentWindow.size).to.equal(0);
    const windows = (await redis.xrange(`${prefix}:monitor:windows`, '-', '+')).map(
      ([, f]) => JSON.parse(f[1]!) as { name: string; model: { name: string }; size: number },
    );
    expect(windows.map((w) => `${w.name}:${w.size}`)).to.deep.equal([
      `digits:${WINDOW}`,
      `digits:${WINDOW}`,
      `moderation:${WINDOW}`,
    ]);
  });

  it('exports the figures per model and version, and answers 404 for a model it has not seen', async () => {
    const metrics = await fetch(`${monitor.url}/metrics`).then((r) => r.text());
    /** The value of the sample whose name and labels are exactly `series`. */
    const sample = (series: string) => {
      const line = metrics.split('\n').find((l) => l.startsWith(`${series} `));
      return line === undefined ? undefined : Number(line.slice(series.length + 1));
    };
    const moderation = `model="moderation",version="${moderationVersion}"`;
    const digits = `model="digits",version="${digitsVersion}"`;
    expect(sample(`conveyor_drift_value{${moderation},feature="brightness",metric="psi"}`)).to.be.greaterThan(0.25);
    expect(sample(`conveyor_drift_state{${moderation},feature="brightness"}`)).to.equal(2);
    expect(sample(`conveyor_drift_window_events{${moderation}}`)).to.equal(WINDOW / 2);
    expect(sample(`conveyor_drift_window_events{${digits}}`)).to.equal(0);
    expect(sample(`conveyor_drift_value{${digits},feature="embedding",metric="drifted-component-share"}`)).to.be.a('number');
    const unknown = await request(`${monitor.url}/drift/no-such-model`);
    expect(unknown.status).to.equal(404);
    expect(unknown.headers.get('content-type')).to.match(/^application\/problem\+json/);
  });
});
