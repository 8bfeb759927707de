import { loadModel, readManifest } from './shared/src/model/runtime.js';
import { preprocess } from './shared/src/model/preprocess.js';
import { evaluate } from './services/trainer/src/pipeline/evaluate.js';
import { toFeatures } from './services/trainer/src/pipeline/features.js';
import { digitPng, heldOutDigits } from './test/support/images.js';
const { dataset, split } = await heldOutDigits();
const manifest = await readManifest('models/digits');
const model = await loadModel('models/digits');
const offline = await evaluate(model, await toFeatures(dataset, split.test, manifest));
let differ = 0;
for (let p = 0; p < split.test.length; p++) {
  const png = await digitPng(dataset.samples[split.test[p]!]!.pixels);
  const prep = await preprocess({ kind: 'encoded', bytes: png }, manifest, { maxPixels: 40_000_000 });
  const [out] = await model.run([prep.tensor]);
  let best = 0;
  for (let c = 1; c < out!.probabilities.length; c++) if (out!.probabilities[c]! > out!.probabilities[best]!) best = c;
  if (best !== offline.predictions[p]) differ++;
}
console.log('n', split.test.length, 'differ', differ, 'offline acc', offline.accuracy);
await model.close();
