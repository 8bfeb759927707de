import { expect } from 'chai';
import { RecordedExample } from '@conveyor/shared/contract/replay.contract';
import { proportions, psi } from '@conveyor/shared/stats/psi';
import { compareAnswers, percentile, type CandidateAnswer } from '../src/replay/compare.js';

const LABELS = ['0', '1', '2'];
const production = { name: 'digits', version: 'sha-aaaaaaaaaaaa' };
const candidateRef = { name: 'digits', version: 'sha-bbbbbbbbbbbb' };

/** A prediction putting `confidence` on `label` and sharing the rest evenly. */
function prediction(label: string, confidence: number) {
  const rest = (1 - confidence) / (LABELS.length - 1);
  const top = LABELS.map((l) => ({ label: l, confidence: l === label ? confidence : rest })).sort(
    (a, b) => b.confidence - a.confidence,
  );
  return { label, index: LABELS.indexOf(label), confidence, top };
}

function example(id: string, label: string, confidence: number, inferenceMs = 1): RecordedExample {
  return RecordedExample.parse({
    kind: 'recorded-example',
    version: 1,
    id,
    model: 'digits',
    recordedAt: '2026-12-06T17:00:00.000Z',
    input: { file: `${id}.png`, format: 'png', bytes: 100, sha256: 'a'.repeat(64) },
    production: { model: production, prediction: prediction(label, confidence), inferenceMs },
  });
}

const answer = (id: string, label: string, confidence: number, inferenceMs = 1): CandidateAnswer => ({
  id,
  status: 'completed',
  model: candidateRef,
  prediction: prediction(label, confidence),
  inferenceMs,
});

describe('replay comparison', () => {
  it('finds full agreement, no shift and zero PSI for answers identical to production', () => {
    const examples = [example('a', '0', 0.9), example('b', '1', 0.8), example('c', '2', 0.7)];
    const c = compareAnswers(
      examples,
      examples.map((e) => answer(e.id, e.production.prediction.label, e.production.prediction.confidence)),
    );
    expect(c).to.include({ examples: 3, failed: 0, top1Agreement: 1, meanConfidenceShift: 0, labelPsi: 0, p95InferenceRatio: 1 });
    expect(c.labels).to.deep.equal(['0', '1', '2']);
    expect(c.confusion).to.deep.equal([
      [1, 0, 0],
      [0, 1, 0],
      [0, 0, 1],
    ]);
  });

  it('measures agreement, the shift on production’s label, the confusion and the label PSI of a candidate that swaps two labels', () => {
    // Production: 0, 0, 1, 1 at 0.9. The candidate answers the 1s as 2 (0.9 on 2, so 0.05 on 1).
    const examples = [example('a', '0', 0.9), example('b', '0', 0.9), example('c', '1', 0.9), example('d', '1', 0.9)];
    const c = compareAnswers(examples, [
      answer('a', '0', 0.9),
      answer('b', '0', 0.9),
      answer('c', '2', 0.9),
      answer('d', '2', 0.9),
    ]);
    expect(c.top1Agreement).to.equal(0.5);
    // Two unchanged (0) and two from 0.9 to 0.05 on label 1: (0.85 + 0.85) / 4.
    expect(c.meanConfidenceShift).to.be.closeTo(0.425, 1e-12);
    expect(c.labels).to.deep.equal(['0', '1', '2']);
    expect(c.confusion).to.deep.equal([
      [2, 0, 0],
      [0, 0, 2],
      [0, 0, 0],
    ]);
    // Production counts [2, 2, 0] against the candidate's [2, 0, 2], both Jeffreys-smoothed.
    expect(c.labelPsi).to.be.closeTo(psi(proportions([2, 2, 0]), proportions([2, 0, 2])), 1e-12);
    expect(c.labelPsi).to.be.greaterThan(1);
  });

  it('counts a missing or failed answer as a disagreement in a column of its own', () => {
    const examples = [example('a', '0', 0.9), example('b', '1', 0.9), example('c', '1', 0.9)];
    const c = compareAnswers(examples, [
      answer('a', '0', 0.9),
      { id: 'b', status: 'failed', reason: '422 unsupported-media-type' },
    ]);
    expect(c).to.include({ examples: 3, failed: 2 });
    expect(c.top1Agreement).to.be.closeTo(1 / 3, 1e-12);
    expect(c.labels).to.deep.equal(['0', '1', '(no answer)']);
    expect(c.confusion).to.deep.equal([
      [1, 0, 0],
      [0, 0, 2],
      [0, 0, 0],
    ]);
  });

  it('gives the p95 inference time ratio of candidate over production', () => {
    const examples = Array.from({ length: 20 }, (_, i) => example(`e${i}`, '0', 0.9, i + 1));
    const c = compareAnswers(
      examples,
      examples.map((e, i) => answer(e.id, '0', 0.9, 2 * (i + 1))),
    );
    expect(c.productionP95InferenceMs).to.equal(19);
    expect(c.candidateP95InferenceMs).to.equal(38);
    expect(c.p95InferenceRatio).to.equal(2);
  });

  it('uses the nearest-rank percentile', () => {
    expect(percentile([], 95)).to.equal(null);
    expect(percentile([5], 95)).to.equal(5);
    expect(percentile([1, 2, 3, 4], 50)).to.equal(2);
    expect(percentile([4, 3, 2, 1], 100)).to.equal(4);
  });

  it('refuses a recorded example whose image file name leaves the set folder', () => {
    const bad = { ...example('a', '0', 0.9), input: { file: '../etc/passwd', format: 'png', bytes: 1, sha256: 'a'.repeat(64) } };
    expect(RecordedExample.safeParse(bad).success).to.equal(false);
  });

  it('reads the hand-checked PSI of [0.5, 0.5] against [0.6, 0.4] from the shared PSI', () => {
    expect(psi([0.5, 0.5], [0.6, 0.4])).to.be.closeTo(0.0405465, 1e-7);
  });
});
