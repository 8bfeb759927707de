import { expect } from 'chai';
import { numericProfile, type ReferenceProfile } from '@conveyor/shared/model/reference-profile';
import { INITIAL_STATE, step, type AlertPolicy, type FeatureState } from '../src/alerts/alert-state.js';
import { jsDistance, noiseFloor, proportions, psi } from '../src/drift/divergence.js';
import type { Observation } from '../src/drift/features.js';
import { evaluateWindow, levelOf, type Thresholds } from '../src/drift/window.js';
import { mulberry32 } from '../../../harness/seeded-random.js';

/** A seeded normal sampler (mulberry32 + Box–Muller), so every "random" window is reproducible. */
function normals(seed: number) {
  const uniform = mulberry32(seed);
  return (mean = 0) => mean + Math.sqrt(-2 * Math.log(1 - uniform())) * Math.cos(2 * Math.PI * uniform());
}

/** Φ via a series for erf, accurate to ~1e-12 in the range used here. */
function phi(x: number): number {
  const z = x / Math.SQRT2;
  let term = z;
  let sum = z;
  for (let n = 1; n < 200; n++) {
    term *= (-z * z) / n;
    sum += term / (2 * n + 1);
  }
  return 0.5 * (1 + (2 / Math.sqrt(Math.PI)) * sum);
}

function phiInverse(p: number): number {
  let lo = -10;
  let hi = 10;
  for (let i = 0; i < 200; i++) {
    const mid = (lo + hi) / 2;
    if (phi(mid) < p) lo = mid;
    else hi = mid;
  }
  return (lo + hi) / 2;
}

describe('drift math', () => {
  it('PSI matches the hand-computed values', () => {
    expect(psi([0.25, 0.25, 0.5], [0.25, 0.25, 0.5])).to.equal(0);
    expect(psi([0.5, 0.5], [0.6, 0.4])).to.be.closeTo(0.0405465, 1e-7);
    expect(psi(new Array(10).fill(0.1), [0.2, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.05, 0.05])).to.be.closeTo(0.1386294, 1e-7);
  });

  it('PSI of a normal shifted by 0.25σ, 0.5σ and 1σ over the reference deciles', () => {
    const edges = Array.from({ length: 9 }, (_, i) => phiInverse((i + 1) / 10));
    const shifted = (delta: number) => {
      const cdf = [0, ...edges.map((e) => phi(e - delta)), 1];
      return cdf.slice(1).map((c, i) => c - cdf[i]!);
    };
    const reference = new Array(10).fill(0.1);
    expect(psi(reference, shifted(0.25))).to.be.closeTo(0.059816, 1e-6);
    expect(psi(reference, shifted(0.5))).to.be.closeTo(0.237749, 1e-6);
    expect(psi(reference, shifted(1))).to.be.closeTo(0.926142, 1e-6);
  });

  it('smooths empty bins so PSI stays finite, and JS distance is 0 for identical and 1 for disjoint', () => {
    const value = psi(proportions([50, 50, 0]), proportions([0, 50, 50]));
    expect(Number.isFinite(value)).to.equal(true);
    expect(value).to.be.greaterThan(1);
    expect(jsDistance([0.5, 0.5], [0.5, 0.5])).to.equal(0);
    expect(jsDistance([1, 0], [0, 1])).to.be.closeTo(1, 1e-12);
  });

  it('puts reference bins on deciles with open outer bins', () => {
    const sample = Array.from({ length: 1000 }, (_, i) => i);
    const profile = numericProfile(sample);
    expect(profile.edges).to.have.length(9);
    expect(profile.counts).to.deep.equal(new Array(10).fill(100));
    expect(levelOf(0.05, { warn: 0.1, alert: 0.25 })).to.equal('ok');
    expect(levelOf(0.25, { warn: 0.1, alert: 0.25 })).to.equal('alert');
  });
});

describe('drift windows', function () {
  this.timeout(20_000);
  const thresholds: Thresholds = { warn: 0.1, alert: 0.25 };
  const policy: AlertPolicy = { consecutive: 2, cooldownMs: 600_000 };
  const window = 500;
  const referenceSize = 1500;
  const reference = (() => {
    const draw = normals(1);
    const sample = Array.from({ length: referenceSize }, () => draw());
    const flat = numericProfile(sample);
    return {
      schema: 'conveyor.reference/v1',
      model: { name: 'm', version: '1' },
      dataset: { hash: 'h', split: 'validation', n: referenceSize },
      image: { width: 28, height: 28, channels: 1 },
      features: { brightness: flat },
      predictedClass: { kind: 'categorical', n: referenceSize, categories: ['a', 'b'], counts: [750, 750] },
      quality: { accuracy: 1, atThreshold: [] },
    } satisfies ReferenceProfile;
  })();
  const makeWindow = (seed: number, shift: number, classes = ['a', 'b']): Observation[] => {
    const draw = normals(seed);
    return Array.from({ length: window }, (_, i) => ({
      at: new Date(i).toISOString(),
      numeric: { brightness: draw(shift) },
      predictedClass: classes[i % classes.length]!,
    }));
  };
  const brightness = (w: Observation[]) => evaluateWindow(reference, w, () => thresholds).features.brightness!;

  it('keeps the thresholds above the sampling noise at the default window', () => {
    expect(noiseFloor(10, window, referenceSize)).to.be.lessThan(thresholds.warn / 3);
  });

  it('stays quiet on same-distribution windows across many seeds (and never alerts)', () => {
    let warned = 0;
    let notifications = 0;
    for (let seed = 100; seed < 300; seed++) {
      let state: FeatureState = INITIAL_STATE;
      for (let w = 0; w < 5; w++) {
        const drift = brightness(makeWindow(seed * 10 + w, 0));
        if (drift.level !== 'ok') warned++;
        const next = step(state, drift.level, w * 60_000, policy);
        state = next.state;
        if (next.transition?.notify) notifications++;
      }
    }
    expect(warned / 1000, 'single windows over the warn threshold').to.be.lessThan(0.01);
    expect(notifications).to.equal(0);
  });

  it('catches known shifts: 0.5σ warns in every window, 1σ alerts in every window', () => {
    for (let seed = 1; seed <= 50; seed++) {
      expect(brightness(makeWindow(seed, 0.5)).level).to.not.equal('ok');
      expect(brightness(makeWindow(seed, 1)).level).to.equal('alert');
    }
  });

  it('gives classes the reference never saw a bucket of their own', () => {
    const drift = evaluateWindow(reference, makeWindow(7, 0, ['a', 'b', 'zebra']), () => thresholds).features['predicted-class']!;
    expect(Number.isFinite(drift.value)).to.equal(true);
    expect(drift.level).to.equal('alert');
  });

  it('a sustained drift produces one alert and one resolution', () => {
    let state: FeatureState = INITIAL_STATE;
    const notified: string[] = [];
    const shifts = [0, 0, 0, 1, 1, 1, 1, 1, 1, 0.5, 1, 1, 0, 0, 0, 0];
    shifts.forEach((shift, w) => {
      const next = step(state, brightness(makeWindow(1000 + w, shift)).level, w * 60_000, policy);
      state = next.state;
      if (next.transition?.notify) notified.push(next.transition.notify);
    });
    expect(notified).to.deep.equal(['alert', 'resolved']);
  });
});

describe('alert state machine', () => {
  const policy: AlertPolicy = { consecutive: 2, cooldownMs: 10_000 };
  const run = (levels: ('ok' | 'warn' | 'alert')[], spacingMs = 1000) => {
    let state: FeatureState = INITIAL_STATE;
    const out: string[] = [];
    levels.forEach((level, i) => {
      const next = step(state, level, i * spacingMs, policy);
      state = next.state;
      if (next.transition?.notify) out.push(next.transition.notify);
    });
    return out;
  };

  it('needs consecutive windows to agree before changing state', () => {
    expect(run(['ok', 'alert', 'ok', 'alert', 'ok'])).to.deep.equal([]);
    expect(run(['ok', 'alert', 'alert'])).to.deep.equal(['alert']);
  });

  it('announces escalations once and does not repeat them while flapping', () => {
    expect(run(['warn', 'warn', 'alert', 'alert', 'warn', 'warn', 'alert', 'alert', 'ok', 'ok'])).to.deep.equal([
      'warn',
      'alert',
      'resolved',
    ]);
  });

  it('does not announce a new episode inside the cooldown after a resolution', () => {
    expect(run(['alert', 'alert', 'ok', 'ok', 'alert', 'alert', 'ok', 'ok'])).to.deep.equal(['alert', 'resolved']);
    expect(run(['alert', 'alert', 'ok', 'ok', 'alert', 'alert', 'ok', 'ok'], 20_000)).to.deep.equal([
      'alert',
      'resolved',
      'alert',
      'resolved',
    ]);
  });
});
