import { expect } from 'chai';
import sharp from 'sharp';
import { ModelManifest } from '../src/model/manifest.js';
import { preprocess } from '../src/model/preprocess.js';
import { resizeAlignedIntoTensor } from '../src/model/preprocess/aligned.js';
import { lumaOf } from '../src/model/preprocess/pixels.js';
import { resizeAlignedBilinear } from '../src/model/preprocess/resample.js';
import { floatTensor } from '../src/model/preprocess/tensor.js';
import type { PreprocessSpec } from '../src/model/manifest.js';

/**
 * The fused `bilinear-align-corners` pass must give bit for bit what the separate passes give: the
 * resize to float32 and its 8-bit rounding, then luma, mean/std and the dark count over the
 * rounding, then the tensor from the float32 values. Compared as raw bits (a Uint32Array view of
 * the tensor), on random images of several sizes, channel counts, layouts, channel orders and
 * normalisations.
 */
function random(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    return s >>> 8;
  };
}

function image(w: number, h: number, channels: number, seed: number): Uint8Array {
  const next = random(seed);
  // Smooth areas (as in photos) and noise, so both exact and fractional values occur.
  return Uint8Array.from({ length: w * h * channels }, (_, i) => (i % 7 < 3 ? (i * 13) & 255 : next() & 255));
}

/** The composition the frame pipeline ran before the fused pass. */
function separately(
  src: Uint8Array,
  w: number,
  h: number,
  channels: 1 | 3,
  outW: number,
  outH: number,
  layout: 'NCHW' | 'NHWC',
  spec: PreprocessSpec,
): { tensor: Float32Array; sum: number; sumSq: number; dark: number } {
  const rounded = new Uint8Array(outW * outH * channels);
  const resampled = resizeAlignedBilinear(src, w, h, channels, outW, outH, { rounded });
  const gray = channels === 1 ? rounded : lumaOf(rounded);
  // meanAndStd's sums, and the frame pipeline's dark count.
  let sum = 0;
  let sumSq = 0;
  let dark = 0;
  for (const v of gray) {
    sum += v;
    sumSq += v * v;
    if (v < 128) dark++;
  }
  return { tensor: floatTensor(resampled, channels, outW, outH, layout, spec, false, undefined), sum, sumSq, dark };
}

const bits = (tensor: Float32Array) => new Uint32Array(tensor.buffer, tensor.byteOffset, tensor.length);

function spec(channels: 1 | 3, normalize: PreprocessSpec['normalize'], channelOrder?: 'rgb' | 'bgr'): PreprocessSpec {
  return {
    color: channels === 3 ? 'rgb' : 'gray',
    resize: 'bilinear-align-corners',
    polarity: 'none',
    background: [255, 255, 255],
    normalize,
    ...(channelOrder ? { channelOrder } : {}),
  };
}

describe('the fused bilinear-align-corners pass (resize, tensor and statistics in one walk)', () => {
  const sizes = [
    [451, 300, 224, 224], // the bench's photos: shrinking, aspect not kept
    [600, 400, 224, 224],
    [512, 512, 224, 224],
    [224, 224, 224, 224], // the identity
    [5, 9, 13, 11], // enlarging
    [7, 5, 3, 4], // odd sizes
    [6, 1, 4, 1], // one row
    [1, 6, 1, 3], // one column
    [97, 61, 1, 1], // a single output pixel
  ] as const;
  const normalisations: PreprocessSpec['normalize'][] = [
    { scale: 1 / 255, mean: [0, 0, 0], std: [1, 1, 1] }, // nsfwjs
    { scale: 1 / 255, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] }, // ImageNet
    { scale: 1, mean: [103.939, 116.779, 123.68], std: [1, 1, 1] }, // Caffe, BGR means
    { scale: 2 / 255, mean: [1, 1, 1], std: [1, 1, 1] }, // [-1, 1]
  ];
  let seed = 1;
  for (const [w, h, outW, outH] of sizes) {
    for (const channels of [3, 1] as const) {
      for (const layout of ['NCHW', 'NHWC'] as const) {
        for (const order of channels === 3 ? (['rgb', 'bgr', undefined] as const) : ([undefined] as const)) {
          for (const normalize of normalisations) {
            const n =
              channels === 3 ? normalize : { scale: normalize.scale, mean: [normalize.mean[1]!], std: [normalize.std[1]!] };
            const s = spec(channels, n, order);
            const src = image(w, h, channels, seed++);
            const name = `${w}×${h}×${channels} → ${outW}×${outH} ${layout} ${order ?? '(order unset)'} scale ${n.scale.toFixed(4)} mean ${n.mean[0]}`;
            it(name, () => {
              const before = separately(src, w, h, channels, outW, outH, layout, s);
              const out = new Float32Array(outW * outH * channels).fill(NaN);
              const totals = resizeAlignedIntoTensor(src, w, h, channels, outW, outH, layout, s, out);
              expect(Array.from(bits(out))).to.deep.equal(Array.from(bits(before.tensor)));
              expect(totals).to.deep.equal({ sum: before.sum, sumSq: before.sumSq, dark: before.dark });
            });
          }
        }
      }
    }
  }

  it('refuses a tensor of the wrong size', () => {
    const s = spec(3, normalisations[0]!);
    expect(() => resizeAlignedIntoTensor(image(8, 8, 3, 1), 8, 8, 3, 4, 4, 'NCHW', s, new Float32Array(47))).to.throw(
      /47 values/,
    );
  });
});

/**
 * Through preprocess(), on encoded images of the kinds uploads bring: a manifest with a polarity
 * runs the separate passes, and when the picture's border is dark (nothing to invert) they must
 * give what the one walk (polarity none) gives, tensor bits and descriptors alike.
 */
describe('preprocess() with bilinear-align-corners: the one walk equals the separate passes', function () {
  this.timeout(60_000);
  const manifest = (color: 'rgb' | 'gray', polarity: 'none' | 'light-on-dark', layout: 'NCHW' | 'NHWC', channelOrder?: 'bgr') =>
    ModelManifest.parse({
      schema: 'conveyor.model/v1',
      name: 'aligned',
      version: '1',
      sha256: '0'.repeat(64),
      input: { name: 'x', layout, channels: color === 'rgb' ? 3 : 1, height: 57, width: 64 },
      output: { name: 'y', kind: 'probabilities' },
      preprocess: {
        color,
        resize: 'bilinear-align-corners',
        polarity,
        ...(channelOrder ? { channelOrder } : {}),
        normalize:
          color === 'rgb'
            ? { scale: 1 / 255, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] }
            : { scale: 1 / 255, mean: [0], std: [1] },
      },
      labels: ['a', 'b'],
    });

  /** A noisy picture on a dark frame, so a polarity finds nothing to invert. */
  function framed(w: number, h: number, channels: 3 | 4): Buffer {
    const pixels = Buffer.from(image(w, h, channels, w + h));
    for (let y = 0; y < h; y++)
      for (let x = 0; x < w; x++) {
        const o = (y * w + x) * channels;
        const frame = x < w / 8 || x >= (7 * w) / 8 || y < h / 8 || y >= (7 * h) / 8;
        if (frame) pixels.fill(10, o, o + 3);
        // Translucent inside (flattened onto the white background), opaque on the dark frame.
        if (channels === 4) pixels[o + 3] = frame ? 255 : (x * 7) & 255;
      }
    return pixels;
  }
  const raw = (w: number, h: number, channels: 3 | 4) =>
    sharp(framed(w, h, channels), { raw: { width: w, height: h, channels } });
  const uploads: [string, () => Promise<Buffer>][] = [
    ['a JPEG', () => raw(300, 200, 3).jpeg().toBuffer()],
    ['a PNG with alpha', () => raw(150, 190, 4).png().toBuffer()],
    ['a grey JPEG', () => raw(220, 180, 3).greyscale().jpeg().toBuffer()],
    ['a CMYK JPEG', () => raw(200, 160, 3).toColourspace('cmyk').jpeg().toBuffer()],
    ['an EXIF-rotated JPEG (orientation 6)', () => raw(240, 130, 3).jpeg().withMetadata({ orientation: 6 }).toBuffer()],
    ['a JPEG with an sRGB profile', () => raw(180, 120, 3).withIccProfile('srgb').jpeg().toBuffer()],
    ['a JPEG with a Display P3 profile', () => raw(180, 120, 3).withIccProfile('p3').jpeg().toBuffer()],
  ];
  const layouts = [
    ['rgb', 'NCHW', undefined],
    ['rgb', 'NHWC', 'bgr'],
    ['gray', 'NCHW', undefined],
  ] as const;
  for (const [name, make] of uploads) {
    for (const [color, layout, order] of layouts) {
      it(`${name}, ${color} ${layout}${order ? ' bgr' : ''}`, async () => {
        const bytes = await make();
        const input = { kind: 'encoded', bytes } as const;
        const separate = await preprocess(input, manifest(color, 'light-on-dark', layout, order), { maxPixels: 1e6 });
        const walked = await preprocess(input, manifest(color, 'none', layout, order), { maxPixels: 1e6 });
        expect(separate.descriptors.inverted).to.equal(false);
        expect(walked.descriptors).to.deep.equal(separate.descriptors);
        expect(Array.from(bits(walked.tensor))).to.deep.equal(Array.from(bits(separate.tensor)));
      });
    }
  }
});
