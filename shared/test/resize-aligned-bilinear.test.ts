import * as tf from '@tensorflow/tfjs';
import { expect } from 'chai';
import sharp from 'sharp';
import { ModelManifest } from '../src/model/manifest.js';
import { preprocess, resizeAlignedBilinear } from '../src/model/preprocess.js';

/**
 * The `bilinear-align-corners` resize policy must be TensorFlow's resizeBilinear with
 * alignCorners, not merely a bilinear resize: models served that way (nsfwjs) are compared
 * against tfjs to 1e-4 in their probabilities. Checked against tfjs' own CPU kernel.
 */
function noise(w: number, h: number, channels: number, seed: number): Uint8Array {
  let s = seed >>> 0;
  return Uint8Array.from({ length: w * h * channels }, () => {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    return s >>> 24;
  });
}

async function tfjsResize(
  pixels: Uint8Array,
  w: number,
  h: number,
  channels: number,
  outW: number,
  outH: number,
): Promise<Float32Array> {
  const image = tf.tensor3d(Int32Array.from(pixels), [h, w, channels], 'int32');
  const resized = tf.image.resizeBilinear(image, [outH, outW], true);
  const values = (await resized.data()) as Float32Array;
  tf.dispose([image, resized]);
  return values;
}

const maxDiff = (a: Float32Array, b: Float32Array) => a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i]!)), 0);

describe('the bilinear-align-corners resize (TensorFlow resizeBilinear, alignCorners: true)', () => {
  before(async () => {
    await tf.setBackend('cpu');
  });

  for (const [w, h, channels, outW, outH] of [
    [451, 300, 3, 224, 224], // shrinking, aspect not kept
    [5, 9, 3, 13, 11], // enlarging
    [7, 5, 1, 3, 4], // gray, odd sizes
    [224, 224, 3, 224, 224], // the identity
    [6, 1, 3, 4, 1], // one row: no vertical interpolation
  ] as const) {
    it(`${w}×${h}×${channels} → ${outW}×${outH} as tfjs computes it`, async () => {
      const pixels = noise(w, h, channels, w * 31 + h);
      const ours = resizeAlignedBilinear(pixels, w, h, channels, outW, outH);
      const theirs = await tfjsResize(pixels, w, h, channels, outW, outH);
      expect(ours.length).to.equal(theirs.length);
      expect(maxDiff(ours, theirs)).to.be.at.most(1e-4); // in grey levels: float32 rounding only
    });
  }

  it('keeps the corner pixels exactly', () => {
    const pixels = noise(9, 7, 3, 5);
    const out = resizeAlignedBilinear(pixels, 9, 7, 3, 4, 3);
    const corner = (data: ArrayLike<number>, x: number, y: number, w: number) =>
      Array.from({ length: 3 }, (_, c) => data[(y * w + x) * 3 + c]);
    expect(corner(out, 0, 0, 4)).to.deep.equal(corner(pixels, 0, 0, 9));
    expect(corner(out, 3, 2, 4)).to.deep.equal(corner(pixels, 8, 6, 9));
  });

  it('is what preprocess() feeds the model, normalised and laid out as the manifest says', async () => {
    const w = 37;
    const h = 23;
    const pixels = noise(w, h, 3, 99);
    const png = await sharp(pixels, { raw: { width: w, height: h, channels: 3 } })
      .png()
      .toBuffer();
    const manifest = ModelManifest.parse({
      schema: 'conveyor.model/v1',
      name: 'aligned',
      version: '1',
      sha256: '0'.repeat(64),
      input: { name: 'x', layout: 'NCHW', channels: 3, height: 8, width: 10 },
      output: { name: 'y', kind: 'probabilities' },
      preprocess: {
        color: 'rgb',
        resize: 'bilinear-align-corners',
        normalize: { scale: 1 / 255, mean: [0, 0, 0], std: [1, 1, 1] },
      },
      labels: ['a', 'b'],
    });
    const { tensor } = await preprocess({ kind: 'encoded', bytes: png }, manifest, { maxPixels: 1e6 });
    // nsfwjs: toFloat, ÷ 255, resizeBilinear(alignCorners), here transposed to NCHW.
    const image = tf.tensor3d(Int32Array.from(pixels), [h, w, 3], 'int32');
    const expected = tf.tidy(() =>
      tf.image.resizeBilinear(image.toFloat().div<tf.Tensor3D>(255), [8, 10], true).transpose([2, 0, 1]),
    );
    const values = (await expected.data()) as Float32Array;
    tf.dispose([image, expected]);
    expect(maxDiff(tensor, values)).to.be.at.most(1e-6);
  });
});
