import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect } from 'chai';
import { ModelManifest } from '../src/model/manifest.js';
import { preprocess, shorterSideCrop } from '../src/model/preprocess.js';

/**
 * The `shorter-side-crop` policy (torchvision's Resize(256) + CenterCrop(224)) and the BGR channel
 * order, against tensors computed independently with numpy (support/shorter-side-crop.reference.py:
 * torchvision's geometry, an exact box-average resize, normalisation in the model's channel order).
 */
interface Reference {
  source: { width: number; height: number; pixels: number[] };
  input: number;
  cropFraction: number;
  crop: { left: number; top: number; resized: [number, number] };
  cases: { channelOrder: 'rgb' | 'bgr'; layout: 'NCHW' | 'NHWC'; mean: number[]; std: number[]; tensor: number[] }[];
}

const here = path.dirname(fileURLToPath(import.meta.url));
const reference = JSON.parse(readFileSync(path.join(here, 'support/shorter-side-crop.reference.json'), 'utf8')) as Reference;

function manifestFor(c: Reference['cases'][number], resize: 'shorter-side-crop' | 'cover' = 'shorter-side-crop'): ModelManifest {
  return ModelManifest.parse({
    schema: 'conveyor.model/v1',
    name: 'crop-test',
    version: '1',
    sha256: '0'.repeat(64),
    input: { name: 'x', layout: c.layout, channels: 3, height: reference.input, width: reference.input },
    output: { name: 'y', kind: 'logits' },
    preprocess: {
      color: 'rgb',
      resize,
      cropFraction: reference.cropFraction,
      channelOrder: c.channelOrder,
      normalize: { scale: 1 / 255, mean: c.mean, std: c.std },
    },
    labels: ['a', 'b'],
  });
}

const source = {
  kind: 'raw' as const,
  data: Uint8Array.from(reference.source.pixels),
  width: reference.source.width,
  height: reference.source.height,
  channels: 3 as const,
};

/** The largest difference, in 8-bit levels of the channel (std × 255 per normalised unit). */
function maxLevelDifference(actual: Float32Array, expected: number[], c: Reference['cases'][number]): number {
  let worst = 0;
  const plane = reference.input * reference.input;
  expected.forEach((v, i) => {
    const channel = c.layout === 'NCHW' ? Math.floor(i / plane) : i % 3;
    worst = Math.max(worst, (Math.abs(actual[i]! - v) * c.std[channel]! * 255) | 0);
  });
  return worst;
}

describe('preprocessing: shorter side, centre crop, channel order', function () {
  this.timeout(30_000);

  it("computes torchvision's sizes and crop offsets (Python's round: halves to even)", function () {
    // Resize(256) on 640×480: shorter side 256, longer int(256 · 640 / 480) = 341; CenterCrop(224)
    // at round(58.5) = 58 (not 59), round(16) = 16.
    expect(shorterSideCrop({ width: 640, height: 480 }, 224, 224, 0.875)).to.deep.equal({
      resized: { width: 341, height: 256 },
      crop: { left: 58, top: 16, width: 224, height: 224 },
    });
    // Portrait 480×640: the same, transposed.
    expect(shorterSideCrop({ width: 480, height: 640 }, 224, 224, 0.875)).to.deep.equal({
      resized: { width: 256, height: 341 },
      crop: { left: 16, top: 58, width: 224, height: 224 },
    });
    expect(shorterSideCrop({ width: 123, height: 96 }, 16, 16, 0.5).crop).to.include({
      left: reference.crop.left,
      top: reference.crop.top,
    });
  });

  for (const c of reference.cases) {
    it(`matches the numpy reference (${c.channelOrder}, ${c.layout})`, async function () {
      const { tensor } = await preprocess(source, manifestFor(c), { maxPixels: 1e7 });
      expect(tensor.length).to.equal(c.tensor.length);
      // Within two 8-bit levels: sharp's resampling kernel is not numpy's exact box average.
      expect(maxLevelDifference(tensor, c.tensor, c)).to.be.at.most(2);
    });
  }

  it('differs from `cover`, which crops at the input size (the reference tells them apart)', async function () {
    const c = reference.cases[0]!;
    const { tensor } = await preprocess(source, manifestFor(c, 'cover'), { maxPixels: 1e7 });
    expect(maxLevelDifference(tensor, c.tensor, c)).to.be.greaterThan(10);
  });

  it('refuses bgr with gray colour in the manifest', function () {
    const parsed = ModelManifest.safeParse({
      ...manifestFor(reference.cases[0]!),
      input: { name: 'x', layout: 'NCHW', channels: 1, height: 16, width: 16 },
      preprocess: { color: 'gray', resize: 'fill', channelOrder: 'bgr', normalize: { mean: [0], std: [1] } },
    });
    expect(parsed.success).to.equal(false);
  });
});
