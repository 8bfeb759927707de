import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import onnxProto from 'onnx-proto';
import { preprocess } from '@conveyor/shared/model/preprocess';
import { placeholderProfile, REFERENCE_PROFILE_FILE, ReferenceProfile } from '@conveyor/shared/model/reference-profile';
import { readManifest } from '@conveyor/shared/model/runtime';
import { loadCheckedModel } from '@conveyor/shared/validation/model-folder-checks';
import {
  ensureModelsVenv,
  ensureModerationModel,
  MODERATION_DIR,
  readPhoto,
  readReferencePredictions,
} from '../scripts/models/moderation.js';
import { CROPS_PER_PHOTO, PROFILE_PHOTOS } from '../scripts/models/moderation-profile.js';
import { ensureNsfwjs } from '../scripts/models/nsfwjs.js';

/**
 * models/moderation is converted at build time from the nsfwjs npm package; the repository holds
 * the converter and the sha256. When model.onnx is missing (a fresh clone), this builds it as
 * `make model-moderation` does (venv, npm pack, convert.py: seconds once installed) rather than
 * skipping, and then holds the file to its recorded checksum.
 */
describe('models/moderation: nsfwjs MobileNetV2 converted to ONNX at build time', function () {
  this.timeout(600_000);
  const file = path.join(MODERATION_DIR, 'model.onnx');

  before(async () => {
    await ensureModerationModel();
  });

  it('has exactly the sha256 its manifest records', async () => {
    const manifest = await readManifest(MODERATION_DIR);
    expect(createHash('sha256').update(readFileSync(file)).digest('hex')).to.equal(manifest.sha256);
    expect(manifest.version).to.equal(`sha-${manifest.sha256.slice(0, 12)}`);
  });

  it('is deterministic: converting again gives the same bytes', () => {
    const out = mkdtempSync(path.join(os.tmpdir(), 'conveyor-moderation-'));
    try {
      const python = path.join(ensureModelsVenv(), 'bin', 'python');
      const convert = path.join(MODERATION_DIR, 'convert.py');
      const run = spawnSync(python, [convert, '--tfjs', ensureNsfwjs().tfjsDir, '--out', path.join(out, 'model.onnx')], {
        encoding: 'utf8',
      });
      expect(run.status, run.stderr).to.equal(0);
      expect(readFileSync(path.join(out, 'model.onnx')).equals(readFileSync(file))).to.equal(true);
    } finally {
      rmSync(out, { recursive: true, force: true });
    }
  });

  it('is IR version 8, opset 13, with an NCHW 3×224×224 input (what onnxruntime-node 1.30 loads)', () => {
    const model = onnxProto.onnx.ModelProto.decode(readFileSync(file));
    expect(Number(model.irVersion)).to.equal(8);
    expect(model.opsetImport.map((o) => [o.domain ?? '', Number(o.version)])).to.deep.equal([['', 13]]);
    const [input] = model.graph?.input ?? [];
    const dims = input?.type?.tensorType?.shape?.dim?.map((d) => d.dimParam || Number(d.dimValue)) ?? [];
    expect([input?.name, dims]).to.deep.equal(['input', ['N', 3, 224, 224]]);
  });

  it("passes the worker's model-folder checks, with one label per output and a measured reference profile", async () => {
    const model = await loadCheckedModel(MODERATION_DIR);
    try {
      expect(model.outputSize).to.equal(5);
      expect(model.manifest.labels).to.deep.equal(['Drawing', 'Hentai', 'Neutral', 'Porn', 'Sexy']);
      const profile = ReferenceProfile.parse(JSON.parse(readFileSync(path.join(MODERATION_DIR, REFERENCE_PROFILE_FILE), 'utf8')));
      // Not the flat placeholder: measured through the serving pipeline (scripts/models/moderation-profile.ts).
      expect(profile).to.not.deep.equal(placeholderProfile(model.manifest));
      expect(profile.model).to.deep.equal({ name: model.manifest.name, version: model.manifest.version });
      expect(profile.dataset.n).to.equal((CROPS_PER_PHOTO + 1) * Object.keys(PROFILE_PHOTOS).length);
      expect(profile.predictedClass.categories).to.deep.equal(model.manifest.labels);
      expect(profile.predictedClass.counts.reduce((a, b) => a + b, 0)).to.equal(profile.dataset.n);
      for (const [feature, f] of Object.entries(profile.features)) {
        expect(f.n, feature).to.equal(profile.dataset.n);
        expect(
          f.counts.reduce((a, b) => a + b, 0),
          feature,
        ).to.equal(f.n);
        // Decile bins of a real sample hold about a tenth each (ties merge some).
        expect(Math.max(...f.counts) / f.n, feature).to.be.below(0.25);
      }
      // The photos of reference-predictions.json, served, land inside the reference's ranges.
      for (const image of readReferencePredictions().images) {
        const prepared = await preprocess({ kind: 'encoded', bytes: readPhoto(image.name).bytes }, model.manifest, {
          maxPixels: 40_000_000,
        });
        for (const feature of ['brightness', 'contrast', 'inkRatio'] as const) {
          const f = profile.features[feature]!;
          expect(prepared.descriptors[feature], `${image.name} ${feature}`).to.be.within(f.min, f.max);
        }
      }
    } finally {
      await model.close();
    }
  });

  it('has reference predictions recorded for this very model version', async () => {
    const manifest = await readManifest(MODERATION_DIR);
    const reference = readReferencePredictions();
    expect(reference.model).to.deep.equal({ name: manifest.name, version: manifest.version });
    expect(reference.labels).to.deep.equal(manifest.labels);
    expect(reference.images.map((i) => i.name)).to.deep.equal(['chelsea', 'astronaut', 'coffee']);
    // The package's own figure for the cat photo: Neutral ≈ 0.93.
    const chelsea = reference.images[0]!;
    expect(chelsea.label).to.equal('Neutral');
    expect(chelsea.probabilities[manifest.labels.indexOf('Neutral')]).to.be.closeTo(0.93, 0.01);
  });
});
