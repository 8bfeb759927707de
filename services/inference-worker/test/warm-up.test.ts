import { expect } from 'chai';
import { ModelLoadError, type LoadedModel } from '@conveyor/shared/model/runtime';
import { checkWarmUp } from '../src/model/warm-up.js';

/** A loaded model whose warm-up run answered `probabilities` (only what checkWarmUp reads). */
function modelAnswering(probabilities: number[], labels = ['a', 'b', 'c']): LoadedModel {
  return {
    dir: '/models/x',
    manifest: { labels },
    warmUp: { ms: 1.5, probabilities: Float32Array.from(probabilities) },
  } as unknown as LoadedModel;
}

describe('warm-up check', () => {
  it('passes a model that answers one finite probability per label, with the time it took', () => {
    expect(checkWarmUp(modelAnswering([0.2, 0.3, 0.5]))).to.equal(1.5);
  });

  it('refuses a model whose answer to zeros is not finite, or not one value per label', () => {
    expect(() => checkWarmUp(modelAnswering([0.2, NaN, 0.5]))).to.throw(ModelLoadError, /not all finite/);
    expect(() => checkWarmUp(modelAnswering([0.5, 0.5]))).to.throw(ModelLoadError, /gave 2 values; the manifest has 3 labels/);
  });
});
