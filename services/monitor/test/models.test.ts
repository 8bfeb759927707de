import { createRequire } from 'node:module';
import type * as PerfHooks from 'node:perf_hooks';
import { randomUUID } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import type { Redis } from 'ioredis';
import pino from 'pino';
import { AlertEvent, type PredictionEvent } from '@conveyor/shared/contract/events.contract';
import { redisKeys } from '@conveyor/shared/contract/redis-keys';
import type { ModelRef } from '@conveyor/shared/contract/common.contract';
import { numericProfile, REFERENCE_PROFILE_FILE, type ReferenceProfile } from '@conveyor/shared/model/reference-profile';
import { keysUnder, randomPrefix, testRedis } from '../../../test/support/redis.js';
import { AlertSink } from '../src/alerts/alert-sink.js';
import { alertMessage } from '../src/alerts/alert-wording.js';
import { monitorMetrics } from '../src/http/metrics.js';
import { Monitor } from '../src/monitor.js';
import { References } from '../src/reference/learned-reference.js';
import { ProfileSource } from '../src/reference/profile-source.js';
import { MonitorStore } from '../src/store/monitor-store.js';
import type { StreamEntry } from '../src/store/stream-consumer.js';
import { DriftViews } from '../src/views/drift-view.js';
import { mulberry32 } from '../../../harness/seeded-random.js';

/**
 * Several models through one monitor, against real Redis: each model version has its own window,
 * its own reference profile (from its own folder), its own PSI, states and quality; an alert names
 * the model that drifted; a hot swap of one model's version starts a fresh window for that model
 * alone; the view and the metrics say all of it per model.
 */
const log = pino({ level: 'silent' });
const WINDOW = 300;

/** Draws of one model's "normal" inputs: each model has a distribution of its own. */
interface Traffic {
  readonly brightness: [number, number];
  readonly labels: readonly string[];
}
const ALPHA: Traffic = { brightness: [0.1, 0.4], labels: ['cat', 'dog'] };
const BETA: Traffic = { brightness: [0.5, 0.9], labels: ['one', 'two', 'three'] };

function sampleOf(traffic: Traffic, u: () => number, shift = 0) {
  const [lo, hi] = traffic.brightness;
  return {
    brightness: Math.min(1, lo + (hi - lo) * u() + shift),
    contrast: 0.3 + 0.2 * u(),
    inkRatio: 0.1 + 0.1 * u(),
    confidence: Math.round((0.6 + 0.4 * u()) * 1e4) / 1e4,
    label: traffic.labels[Math.floor(u() * traffic.labels.length)]!,
  };
}

function profileOf(model: ModelRef, traffic: Traffic, seed: number): ReferenceProfile {
  const u = mulberry32(seed);
  const samples = Array.from({ length: 3000 }, () => sampleOf(traffic, u));
  return {
    schema: 'conveyor.reference/v1',
    model,
    dataset: { hash: `test-${model.name}`, split: 'validation', n: samples.length },
    image: { width: 28, height: 28, channels: 1 },
    features: Object.fromEntries(
      (['brightness', 'contrast', 'inkRatio', 'confidence'] as const).map((f) => [f, numericProfile(samples.map((s) => s[f]))]),
    ),
    predictedClass: {
      kind: 'categorical',
      n: samples.length,
      categories: [...traffic.labels],
      counts: traffic.labels.map((l) => samples.filter((s) => s.label === l).length),
    },
    quality: { accuracy: 0.9, atThreshold: [] },
  };
}

function events(
  model: ModelRef,
  traffic: Traffic,
  n: number,
  seed: number,
  options: { shift?: number; name?: string } = {},
): PredictionEvent[] {
  const u = mulberry32(seed);
  return Array.from({ length: n }, (_, i) => {
    const s = sampleOf(traffic, u, options.shift ?? 0);
    return {
      kind: 'prediction',
      version: 1,
      jobId: randomUUID(),
      requestId: `req-${seed}-${i}`,
      at: new Date(Date.UTC(2026, 0, 1) + seed * 1e6 + i).toISOString(),
      ...(options.name ? { name: options.name } : {}),
      model,
      prediction: { label: s.label, index: 0, confidence: s.confidence, top: [{ label: s.label, confidence: s.confidence }] },
      timings: { queueMs: 1, preprocessMs: 1, inferenceMs: 1, totalMs: 3 },
      input: {
        format: 'png',
        bytes: 100,
        width: 28,
        height: 28,
        brightness: s.brightness,
        contrast: s.contrast,
        inkRatio: s.inkRatio,
        inverted: false,
      },
    };
  });
}

/** Stream entries as the consumer hands them over. */
const entries = (list: readonly PredictionEvent[]): StreamEntry[] =>
  list.map((e, i) => ({ id: `${i + 1}-0`, fields: { event: JSON.stringify(e) }, deliveries: 1 }));

/** Two lists merged alternately, as two models' traffic arrives on one stream. */
function interleave<T>(a: readonly T[], b: readonly T[]): T[] {
  const out: T[] = [];
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    if (i < a.length) out.push(a[i]!);
    if (i < b.length) out.push(b[i]!);
  }
  return out;
}

// prom-client reads perf_hooks through require(); the same module object is patched here.
const perfHooks = createRequire(import.meta.url)('node:perf_hooks') as typeof PerfHooks;
describe('several models in one monitor (real Redis)', function () {
  this.timeout(60_000);
  const alphaV1: ModelRef = { name: 'alpha', version: '1' };
  const alphaV2: ModelRef = { name: 'alpha', version: '2' };
  const betaV1: ModelRef = { name: 'beta', version: 'sha-b1' };
  let redis: Redis;
  let modelsDir: string;
  const prefixes: string[] = [];

  before(() => {
    redis = testRedis();
    // One folder per model, as the workers lay them out (MODELS_DIR/<name>).
    modelsDir = mkdtempSync(path.join(os.tmpdir(), 'conveyor-monitor-models-'));
    const write = (dir: string, profile: ReferenceProfile) => {
      mkdirSync(path.join(modelsDir, dir), { recursive: true });
      writeFileSync(path.join(modelsDir, dir, REFERENCE_PROFILE_FILE), JSON.stringify(profile));
    };
    write('alpha', profileOf(alphaV1, ALPHA, 1));
    write('beta', profileOf(betaV1, BETA, 2));
  });
  after(async () => {
    for (const p of prefixes) {
      const found = await keysUnder(redis, p);
      if (found.length > 0) await redis.del(...found);
    }
    await redis.quit();
    rmSync(modelsDir, { recursive: true, force: true });
  });

  function setup(profiles = new ProfileSource({ modelsDir }, log)) {
    const prefix = randomPrefix('mon-models');
    prefixes.push(prefix);
    const store = new MonitorStore(redis, prefix);
    const thresholdsFor = () => ({ warn: 0.1, alert: 0.25 });
    // Measured profiles only: these tests are about them (learning has its own, learned-reference.test.ts).
    const references = new References(profiles, store, { windows: 0, windowSize: WINDOW }, log);
    const monitor = new Monitor(
      store,
      references,
      new AlertSink(redis, redisKeys(prefix).alerts, log, undefined),
      {
        windowSize: WINDOW,
        minWindow: 100,
        thresholdsFor,
        policy: { consecutive: 2, cooldownMs: 60_000 },
        quality: { window: 100, minLabels: 20, target: 0.9, confidence: 0.5 },
        predictionTtlSeconds: 3600,
      },
      log,
    );
    const views = new DriftViews(store, references, { windowSize: WINDOW, minWindow: 100, thresholdsFor });
    const alerts = async () =>
      (await redis.xrange(redisKeys(prefix).alerts, '-', '+')).map(([, f]) => AlertEvent.parse(JSON.parse(f[1]!)));
    return { prefix, store, monitor, views, alerts };
  }

  it('keeps one window per model, each judged against its own profile: only the drifting model alerts', async () => {
    const { monitor, views, alerts, store } = setup();
    // Three windows each: alpha's inputs shift after the first, beta's never do.
    const alpha = [
      ...events(alphaV1, ALPHA, WINDOW, 10),
      ...events(alphaV1, ALPHA, WINDOW, 11, { shift: 0.3 }),
      ...events(alphaV1, ALPHA, WINDOW, 12, { shift: 0.3 }),
    ];
    const beta = [...events(betaV1, BETA, WINDOW, 20), ...events(betaV1, BETA, WINDOW, 21), ...events(betaV1, BETA, WINDOW, 22)];
    const all = interleave(alpha, beta);
    for (let i = 0; i < all.length; i += 500) await monitor.handlePredictions(entries(all.slice(i, i + 500)));
    expect(monitor.stats).to.include({ predictions: 6 * WINDOW, windows: 6 });

    const view = await views.view();
    expect(view.models.map((m) => `${m.name}@${m.model.version}`)).to.deep.equal(['alpha@1', 'beta@sha-b1']);
    const [a, b] = view.models;
    expect(a!.lastWindow?.index).to.equal(3);
    expect(b!.lastWindow?.index).to.equal(3);
    // Beta's own profile fits beta's traffic, although it is nothing like alpha's.
    for (const f of Object.values(b!.lastWindow!.features)) expect(f.value, 'beta PSI').to.be.lessThan(0.1);
    expect(Object.values(b!.states).every((s) => s === 'ok')).to.equal(true);
    expect(a!.lastWindow!.features.brightness!.value).to.be.greaterThan(0.25);
    expect(a!.states.brightness).to.equal('alert');
    expect(view.byModel).to.deep.equal({
      alpha: { current: '1', versions: ['1'] },
      beta: { current: 'sha-b1', versions: ['sha-b1'] },
    });

    const raised = await alerts();
    expect(raised.length).to.be.greaterThan(0);
    expect(
      raised.every((e) => e.name === 'alpha' && e.model.version === '1'),
      'every alert is alpha',
    ).to.equal(true);
    const brightness = raised.find((e) => e.feature === 'brightness')!;
    expect(brightness.severity).to.equal('alert');
    expect(brightness.message).to.match(/^alpha@1: brightness drifted \(psi \d/);

    // The reports keep the models apart too.
    expect((await store.windowRecords()).map((r) => `${r.name}:${r.index}`).sort()).to.deep.equal(
      ['alpha:1', 'alpha:2', 'alpha:3', 'beta:1', 'beta:2', 'beta:3'].sort(),
    );
  });

  it('starts a fresh window when one model swaps its version, and leaves the other model alone', async () => {
    const { monitor, views } = setup();
    // Alpha v1 and beta fill part of a window each; then alpha is hot-swapped to v2.
    await monitor.handlePredictions(entries(interleave(events(alphaV1, ALPHA, 120, 30), events(betaV1, BETA, 150, 31))));
    await monitor.handlePredictions(entries(interleave(events(alphaV2, ALPHA, 120, 32), events(betaV1, BETA, 50, 33))));
    const view = await views.view();
    const sizes = Object.fromEntries(view.models.map((m) => [`${m.name}@${m.model.version}`, m.currentWindow.size]));
    expect(sizes).to.deep.equal({ 'alpha@1': 120, 'alpha@2': 120, 'beta@sha-b1': 200 });
    expect(view.byModel.alpha).to.deep.equal({ current: '2', versions: ['1', '2'] });
    expect(view.models.find((m) => m.model.version === '2')!.current).to.equal(true);
    expect(view.models.find((m) => m.model.version === '1')!.current).to.equal(false);
    // Alpha v1's profile is not v2's: the new version has no reference until its folder or the registry has one.
    expect(view.models.find((m) => m.model.version === '1')!.currentWindow.status).to.equal('provisional');
    expect(view.models.find((m) => m.model.version === '2')!.currentWindow.status).to.equal('no_reference');
    // Beta's window goes on where it was.
    expect(view.models.find((m) => m.name === 'beta')!.currentWindow).to.include({ status: 'provisional', size: 200 });
    // One serving name's view alone, as GET /drift/{name} answers.
    expect((await views.view('beta')).models.map((m) => m.name)).to.deep.equal(['beta']);
    expect((await views.view('nobody')).models).to.deep.equal([]);
  });

  it('keys a model by its serving name when a differently named model is loaded under it', async () => {
    const { monitor, views, alerts } = setup();
    // The worker serves "gamma" from the registry model "acme-gamma": its folder's profile says acme-gamma.
    const registryRef: ModelRef = { name: 'acme-gamma', version: '7' };
    mkdirSync(path.join(modelsDir, 'gamma'));
    writeFileSync(path.join(modelsDir, 'gamma', REFERENCE_PROFILE_FILE), JSON.stringify(profileOf(registryRef, ALPHA, 3)));
    await monitor.handlePredictions(
      entries([...events(registryRef, ALPHA, WINDOW * 2, 40, { name: 'gamma', shift: 0.3 }), ...events(betaV1, BETA, 10, 41)]),
    );
    const view = await views.view('gamma');
    expect(view.models).to.have.length(1);
    expect(view.models[0]).to.deep.include({ name: 'gamma', model: registryRef });
    expect(view.models[0]!.lastWindow?.status).to.equal('evaluated');
    const raised = await alerts();
    expect(raised.length).to.be.greaterThan(0);
    expect(raised.every((e) => e.name === 'gamma')).to.equal(true);
    expect(raised[0]!.model).to.deep.equal(registryRef);
    expect(raised[0]!.message).to.match(/^gamma@7: /);
  });

  it('keeps rolling quality per model version from feedback', async () => {
    const { monitor, views, prefix } = setup();
    const alpha = events(alphaV1, ALPHA, 30, 50);
    const beta = events(betaV1, BETA, 30, 51);
    await monitor.handlePredictions(entries([...alpha, ...beta]));
    const feedback = (event: PredictionEvent, label: string, i: number): StreamEntry => ({
      id: `${i + 1}-0`,
      fields: {
        event: JSON.stringify({
          kind: 'feedback',
          version: 1,
          jobId: event.jobId,
          label,
          at: new Date().toISOString(),
          requestId: `fb-${i}`,
        }),
      },
      deliveries: 1,
    });
    // Alpha's answers are all right, beta's all wrong.
    let i = 0;
    for (const e of alpha) expect(await monitor.handleFeedback(feedback(e, e.prediction.label, i++))).to.equal('ack');
    for (const e of beta) expect(await monitor.handleFeedback(feedback(e, 'nothing-it-said', i++))).to.equal('ack');
    const view = await views.view();
    const accuracy = Object.fromEntries(view.models.map((m) => [m.name, 'accuracy' in m.quality ? m.quality.accuracy : null]));
    expect(accuracy).to.deep.equal({ alpha: 1, beta: 0 });
    expect(Object.fromEntries(view.models.map((m) => [m.name, m.states.quality]))).to.deep.equal({ alpha: 'ok', beta: 'alert' });
    const quality = (await redis.xrange(redisKeys(prefix).alerts, '-', '+')).map(([, f]) => AlertEvent.parse(JSON.parse(f[1]!)));
    expect(quality.map((a) => `${a.name}:${a.feature}:${a.severity}`)).to.deep.equal(['beta:quality:alert']);
  });

  it('samples the event-loop lag every 100 ms, not every 10 ms (100 wake-ups a second of an idle monitor)', () => {
    const { monitor, store } = setup();
    const original = perfHooks.monitorEventLoopDelay;
    const resolutions: (number | undefined)[] = [];
    perfHooks.monitorEventLoopDelay = (options) => {
      resolutions.push(options?.resolution);
      return original(options);
    };
    try {
      monitorMetrics(store, monitor);
    } finally {
      perfHooks.monitorEventLoopDelay = original;
    }
    expect(resolutions).to.deep.equal([100]);
  });

  it('exports every figure labelled with the model and the version', async () => {
    const { monitor, store } = setup();
    await monitor.handlePredictions(
      entries([
        ...events(alphaV1, ALPHA, WINDOW, 60),
        ...events(betaV1, BETA, WINDOW + 25, 61),
        ...events(alphaV2, ALPHA, 5, 62),
      ]),
    );
    const text = await monitorMetrics(store, monitor).metrics();
    expect(text).to.match(/conveyor_drift_value\{model="alpha",version="1",feature="brightness",metric="psi"\} \d/);
    expect(text).to.match(/conveyor_drift_value\{model="beta",version="sha-b1",feature="predicted-class",metric="psi"\} \d/);
    expect(text).to.match(/conveyor_drift_state\{model="beta",version="sha-b1",feature="brightness"\} 0/);
    expect(text).to.include('conveyor_drift_window_events{model="alpha",version="1"} 0');
    expect(text).to.include('conveyor_drift_window_events{model="alpha",version="2"} 5');
    expect(text).to.include('conveyor_drift_window_events{model="beta",version="sha-b1"} 25');
    // Alpha's v2 came last: its v1 states stay exported, but are no longer the model's current ones.
    expect(text).to.include('conveyor_drift_version_current{model="alpha",version="1"} 0');
    expect(text).to.include('conveyor_drift_version_current{model="alpha",version="2"} 1');
    expect(text).to.include('conveyor_drift_version_current{model="beta",version="sha-b1"} 1');
  });

  it('words an alert with the model, the feature and the figures', () => {
    const model = { name: 'moderation', version: 'sha-0198cdb4ba8c' };
    expect(alertMessage(model, 'confidence', 'alert', { metric: 'psi', value: 0.412345, threshold: 0.25 })).to.equal(
      'moderation@sha-0198cdb4ba8c: confidence drifted (psi 0.4123, threshold 0.25)',
    );
    expect(alertMessage(model, 'quality', 'resolved', { metric: 'accuracy', value: null, threshold: null })).to.equal(
      'moderation@sha-0198cdb4ba8c: quality is back to normal (accuracy n/a)',
    );
  });
});
