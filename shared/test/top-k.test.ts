import { expect } from 'chai';
import { classify, topKFor } from '../src/model/runtime.js';

/** How many classes an answer lists, per model: the whole distribution of a small classifier by default. */
describe('top-k per model', () => {
  const labels = (n: number) => Array.from({ length: n }, (_, i) => `c${i}`);

  it('lists every class of a model with up to 10 when neither the manifest nor TOP_K says otherwise', () => {
    expect(topKFor({ labels: labels(5) }, undefined)).to.equal(5);
    expect(topKFor({ labels: labels(10) }, undefined)).to.equal(10);
    const probabilities = Float32Array.from([0.1, 0.2, 0.3, 0.25, 0.15]);
    expect(classify(probabilities, labels(5), topKFor({ labels: labels(5) }, undefined)).top).to.have.length(5);
  });

  it('lists 5 of a larger model by default', () => {
    expect(topKFor({ labels: labels(1000) }, undefined)).to.equal(5);
  });

  it("takes the manifest's topK over TOP_K, and TOP_K over the default; never more than the classes", () => {
    expect(topKFor({ labels: labels(5), topK: 2 }, 3)).to.equal(2);
    expect(topKFor({ labels: labels(5) }, 3)).to.equal(3);
    expect(topKFor({ labels: labels(5) }, 50)).to.equal(5);
  });
});
