import { expect } from 'chai';
import { readManifest } from '@conveyor/shared/model/runtime';
import {
  ensureModerationModel,
  MODERATION_DIR,
  readPhoto,
  readReferencePredictions,
  TOLERANCE,
} from '../../scripts/models/moderation.js';
import { predictModel } from '../support/http.js';
import { randomPrefix } from '../support/redis.js';
import { dumpLogsOnFailure, startGateway, startWorker, stopAll, type Gateway } from '../support/services.js';

/**
 * A second, real model served end to end: a worker serving models/moderation (the nsfwjs
 * MobileNetV2 converted to ONNX) on its own queue answers real photos through the HTTP API
 * (`/v1/models/moderation/predict`) with the probabilities
 * the original model gives in tfjs (reference-predictions.json, recorded by
 * `make model-moderation`), so the conversion and the manifest's preprocessing are both right.
 */
describe('the moderation model (nsfwjs MobileNetV2) through the API', function () {
  this.timeout(600_000);
  const prefix = randomPrefix('moderation');
  let gateway: Gateway;
  let worker: Awaited<ReturnType<typeof startWorker>>;

  before(async () => {
    // Builds model.onnx if this clone has not yet (see test/moderation-model.test.ts).
    await ensureModerationModel();
    const labels = String((await readManifest(MODERATION_DIR)).labels.length);
    [gateway, worker] = await Promise.all([startGateway(prefix), startWorker(prefix, { MODELS: 'moderation', TOP_K: labels })]);
  });
  afterEach(function () {
    dumpLogsOnFailure(this, gateway, worker);
  });
  after(() => stopAll(gateway, worker));

  for (const name of ['chelsea', 'astronaut', 'coffee']) {
    it(`classifies ${name}.png (scikit-image's photo) as the original model does, within ${TOLERANCE}`, async () => {
      const reference = readReferencePredictions();
      const expected = reference.images.find((i) => i.name === name)!;
      const reply = await predictModel(gateway.url, 'moderation', readPhoto(name).bytes);
      expect(reply.status).to.equal(200);
      const body = reply.body as {
        model: { name: string; version: string };
        prediction: { label: string; top: { label: string; confidence: number }[] };
        input: { width: number; height: number };
      };
      expect(body.model).to.deep.equal(reference.model);
      expect(body.input).to.include({ width: expected.width, height: expected.height });
      expect(body.prediction.label).to.equal(expected.label);
      // TOP_K = every label: the whole distribution comes back (rounded to 1e-6 by the worker).
      const served = reference.labels.map((label) => body.prediction.top.find((t) => t.label === label)?.confidence ?? NaN);
      const diff = Math.max(...served.map((p, i) => Math.abs(p - expected.probabilities[i]!)));
      console.log(
        `      ${name}: ${expected.label} ${served[reference.labels.indexOf(expected.label)]!.toFixed(6)}, max |Δp| ${diff.toExponential(1)}`,
      );
      expect(diff).to.be.at.most(TOLERANCE);
    });
  }
});
