import { expect } from 'chai';
import { quality, qualityLevel, wilson } from '../src/quality/quality.js';

describe('rolling quality', () => {
  it('computes accuracy above a confidence threshold, coverage and a Wilson interval', () => {
    const window = [
      ...Array.from({ length: 90 }, () => ({ correct: true, confidence: 0.99 })),
      ...Array.from({ length: 10 }, () => ({ correct: false, confidence: 0.95 })),
      ...Array.from({ length: 50 }, () => ({ correct: false, confidence: 0.3 })),
    ];
    const q = quality(window, 0.5);
    expect(q).to.include({ labelled: 150, covered: 100, accuracy: 0.9 });
    expect(q.coverage).to.be.closeTo(2 / 3, 1e-12);
    expect(q.lower).to.be.closeTo(0.8256, 1e-3);
    expect(q.upper).to.be.closeTo(0.9448, 1e-3);
  });

  it('matches the textbook Wilson interval', () => {
    const [lo, hi] = wilson(8, 10);
    expect(lo).to.be.closeTo(0.4902, 1e-4);
    expect(hi).to.be.closeTo(0.9433, 1e-4);
  });

  it('says insufficient_data until enough labels, warns below target, alerts when the whole interval is below', () => {
    const make = (right: number, wrong: number) => [
      ...Array.from({ length: right }, () => ({ correct: true, confidence: 1 })),
      ...Array.from({ length: wrong }, () => ({ correct: false, confidence: 1 })),
    ];
    expect(qualityLevel(quality(make(10, 0), 0.5), 0.95, 100)).to.equal('insufficient_data');
    expect(qualityLevel(quality(make(990, 10), 0.5), 0.95, 100)).to.equal('ok');
    expect(qualityLevel(quality(make(188, 12), 0.5), 0.95, 100)).to.equal('warn');
    expect(qualityLevel(quality(make(160, 40), 0.5), 0.95, 100)).to.equal('alert');
  });
});
