import { cpSync, mkdtempSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import type { Redis } from 'ioredis';
import { AlertEvent } from '@conveyor/shared/contract/events.contract';
import { redisKeys } from '@conveyor/shared/contract/redis-keys';
import { placeholderProfile, REFERENCE_PROFILE_FILE } from '@conveyor/shared/model/reference-profile';
import { loadModel, readManifest, type LoadedModel } from '@conveyor/shared/model/runtime';
import { ROOT } from '../../harness/service-process.js';
import { MonitorStore } from '../../services/monitor/src/store/monitor-store.js';
import type { WindowRecord } from '../../services/monitor/src/store/store-records.js';
import { predictionEvents, publish } from '../support/events.js';
import { heldOutDigits } from '../support/images.js';
import { request } from '../support/http.js';
import { randomPrefix, testRedis } from '../support/redis.js';
import { dumpLogsOnFailure, startMonitor, stopAll } from '../support/services.js';
import { until } from '../support/wait.js';

/**
 * A model served without a measured reference profile is monitored without false alarms: the real
 * monitor process pools its first REFERENCE_LEARN_WINDOWS windows into a learned reference and judges
 * later windows against it. The model folder holds the placeholder profile users were once told to
 * write (five flat values): against it, ordinary digits scored a PSI near 5 on every feature and
 * raised drift alerts. Traffic here is ordinary: MNIST digits through the real digits model.
 */
const WINDOW = 500;

/**
 * Ordinary traffic: digits in a seeded shuffle. The mnist package lists its digits grouped by class
 * (0s, then 1s, …), so its first thousand would teach a reference of 0s and 1s and every later
 * window would rightly read as drifted.
 */
function shuffled<T>(items: readonly T[], seed = 20261206): T[] {
  const out = [...items];
  let s = seed >>> 0;
  for (let i = out.length - 1; i > 0; i--) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    // The high bits: an LCG's low bits repeat with short periods (a shuffle by them kept the classes bunched).
    const j = Math.floor((s / 4294967296) * (i + 1));
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
}

interface DriftView {
  models: { name: string; currentWindow: { status: string; have?: number; need?: number } }[];
}

describe('drift monitoring of a model without a measured reference', function () {
  this.timeout(180_000);
  const prefix = randomPrefix('learned');
  let dir: string;
  let redis: Redis;
  let model: LoadedModel;
  let monitor: Awaited<ReturnType<typeof startMonitor>>;

  before(async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'conveyor-learned-'));
    const folder = path.join(dir, 'digits');
    cpSync(path.join(ROOT, 'models/digits'), folder, { recursive: true });
    unlinkSync(path.join(folder, REFERENCE_PROFILE_FILE));
    writeFileSync(path.join(folder, REFERENCE_PROFILE_FILE), JSON.stringify(placeholderProfile(await readManifest(folder))));
    redis = testRedis();
    model = await loadModel(path.join(ROOT, 'models/digits'));
    monitor = await startMonitor(prefix, {
      MODELS_DIR: dir,
      MODEL_DIR: folder,
      WINDOW_SIZE: String(WINDOW),
      MIN_WINDOW: '100',
      REFERENCE_LEARN_WINDOWS: '2',
    });
  });
  afterEach(function () {
    dumpLogsOnFailure(this, monitor);
  });
  after(async () => {
    await stopAll(monitor);
    await model.close();
    redis.disconnect();
    rmSync(dir, { recursive: true, force: true });
  });

  it('says "learning" before any traffic is judged', async () => {
    const events = await predictionEvents(
      model,
      (await heldOutDigits()).dataset.samples.slice(0, 10).map((s) => s.pixels),
    );
    await publish(redis, redisKeys(prefix).predictions, events);
    const view = await until('the model on /drift', async () => {
      const { body } = await request<DriftView>(`${monitor.url}/drift`);
      return body.models.find((m) => m.name === 'digits');
    });
    expect(view.currentWindow).to.deep.include({ status: 'learning', need: 2 * WINDOW });
  });

  it('learns from the first two windows, then judges ordinary traffic as stable: no PSI near 5, no alert', async () => {
    const { dataset } = await heldOutDigits();
    // Five windows in all (with the ten above): two to learn from, three judged.
    const pixels = shuffled(dataset.samples)
      .slice(10, 5 * WINDOW)
      .map((s) => s.pixels);
    await publish(redis, redisKeys(prefix).predictions, await predictionEvents(model, pixels));
    const store = new MonitorStore(redis, prefix);
    const windows = await until('five windows recorded', async () => {
      const records = await store.windowRecords();
      return records.length >= 5 ? records : undefined;
    });
    const byIndex = (i: number) => windows.find((w) => w.index === i)!;
    const judged: WindowRecord[] = [3, 4, 5].map(byIndex);
    const worst = Math.max(...judged.flatMap((w) => Object.values(w.features).map((f) => f.value)));
    const alerts = (await redis.xrange(redisKeys(prefix).alerts, '-', '+')).map(([, f]) => AlertEvent.parse(JSON.parse(f[1]!)));
    expect(alerts, 'drift alerts on ordinary traffic').to.deep.equal([]);
    expect(worst, 'the largest PSI of a judged window').to.be.below(0.25);
    expect([1, 2].map((i) => byIndex(i).status)).to.deep.equal(['learning', 'learning']);
    expect(byIndex(2).learning).to.deep.equal({ have: 2 * WINDOW, need: 2 * WINDOW });
    for (const w of judged) {
      expect(w.status).to.equal('evaluated');
      expect(w.reference).to.equal('learned');
      expect(Object.keys(w.features)).to.include.members(['brightness', 'contrast', 'inkRatio', 'confidence', 'predicted-class']);
    }
    console.log(`      largest PSI over the three judged windows: ${worst.toFixed(4)}`);
  });
});
