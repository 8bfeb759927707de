import { expect } from 'chai';
import { loadModel, readManifest } from '@conveyor/shared/model/runtime';
import { evaluate } from '../../services/trainer/src/pipeline/evaluate.js';
import { toFeatures } from '../../services/trainer/src/pipeline/features.js';
import { digitPng, heldOutDigits, scannedDigit } from '../support/images.js';
import { pool, predict } from '../support/http.js';
import { randomPrefix } from '../support/redis.js';
import { dumpLogsOnFailure, startGateway, startWorker, stopAll, type Gateway } from '../support/services.js';

/**
 * Serving matches training: the accuracy of the committed model measured through the HTTP API on
 * the held-out test split equals the offline evaluation of the same ONNX file.
 */
describe('accuracy through the API equals the offline evaluation', function () {
  this.timeout(180_000);
  const prefix = randomPrefix('acc');
  let gateway: Gateway;
  let worker: Awaited<ReturnType<typeof startWorker>>;

  before(async () => {
    [gateway, worker] = await Promise.all([startGateway(prefix), startWorker(prefix)]);
  });
  afterEach(function () {
    dumpLogsOnFailure(this, gateway, worker);
  });
  after(() => stopAll(gateway, worker));

  it('on every held-out test digit, sent as a PNG upload', async () => {
    const { dataset, split } = await heldOutDigits();
    const manifest = await readManifest('models/digits');

    const model = await loadModel('models/digits');
    const offline = await evaluate(model, await toFeatures(dataset, split.test, manifest));
    await model.close();

    let correct = 0;
    const served = new Set<string>();
    const disagreements: string[] = [];
    await pool(
      split.test.map((index, position) => ({ index, position })),
      16,
      async ({ index, position }) => {
        const sample = dataset.samples[index]!;
        const reply = await predict(gateway.url, await digitPng(sample.pixels));
        expect(reply.status).to.equal(200);
        served.add(JSON.stringify(reply.body.model));
        const label = (reply.body.prediction as { label: string }).label;
        const offlineLabel = dataset.labels[offline.predictions[position]!];
        if (label !== offlineLabel) disagreements.push(`sample ${index}: API ${label}, offline ${offlineLabel}`);
        if (label === dataset.labels[sample.label]) correct++;
      },
    );
    const api = correct / split.test.length;
    console.log(
      `      offline ${(offline.accuracy * 100).toFixed(2)} %, through the API ${(api * 100).toFixed(2)} % (n = ${split.test.length})`,
    );

    expect([...served]).to.deep.equal([JSON.stringify({ name: manifest.name, version: manifest.version })]);
    expect(offline.accuracy).to.be.closeTo(manifest.metrics.testAccuracy!, 1e-6);
    expect(offline.accuracy).to.be.at.least(0.975);
    // Equal, not close: the same preprocessing and the same ONNX file give the same label for every
    // digit, so the two accuracies are the same number.
    expect(disagreements, `${disagreements.length} of ${split.test.length} differ`).to.deep.equal([]);
    expect(api).to.equal(offline.accuracy);
  });

  it('on scans: dark ink on light paper, four times larger, JPEG-compressed', async () => {
    const { dataset, split } = await heldOutDigits();
    const sample = split.test.slice(0, 300);
    let correct = 0;
    await pool(sample, 16, async (index) => {
      const reply = await predict(gateway.url, await scannedDigit(dataset.samples[index]!.pixels));
      expect(reply.status).to.equal(200);
      expect(reply.body.input).to.include({ inverted: true, width: 112 });
      if ((reply.body.prediction as { label: string }).label === dataset.labels[dataset.samples[index]!.label]) correct++;
    });
    console.log(`      scans: ${((correct / sample.length) * 100).toFixed(1)} % (n = ${sample.length})`);
    expect(correct / sample.length).to.be.at.least(0.95);
  });
});
